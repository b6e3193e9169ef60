"""JSON in and out, keeping FHIR decimals exact.

FHIR requires a decimal's precision to survive a round trip (``1.50`` is not ``1.5``:
https://hl7.org/fhir/R4B/datatypes.html#decimal), so decimals are parsed as ``Decimal`` and
written back verbatim. orjson checks every body first: it is fast, refuses invalid UTF-8, lone
surrogates and nesting deeper than 1024, and gives precise error positions.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from .outcome import FhirError, Issue

_BOM = b"\xef\xbb\xbf"


def parse_json(data: bytes) -> Any:
    """Parse a request body or raise a 400 FhirError that says what is wrong and where."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip():
        raise FhirError(400, [Issue("error", "structure", "The request body is empty")])
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, [Issue("error", "structure", f"The body is not valid JSON: {exc}")]) from None
    return loads(data)


def loads(data: bytes | str) -> Any:
    """Parse JSON that is known to be well-formed, with decimals as ``Decimal``."""
    return json.loads(data, parse_float=Decimal, parse_int=_int)


def _int(text: str) -> int | Decimal:
    # orjson writes only 64-bit integers; PostgreSQL's JSONB turns 1e24 into 25 digits.
    return int(text) if len(text) < 19 else Decimal(text)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, pretty: bool = False) -> bytes:
    """Serialise compactly (or indented), writing decimals exactly as they were received."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2 if pretty else 0)


def dumps_str(value: Any) -> str:
    """``dumps`` as text, for SQLAlchemy's JSON columns."""
    return dumps(value).decode()
