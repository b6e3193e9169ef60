"""JSON bytes in: UTF-8, an optional BOM, depth ≤ 1024 (orjson's limit), else a 400."""
from __future__ import annotations

from typing import Any

import orjson

from .outcome import FhirError, Issue

_BOM = b"\xef\xbb\xbf"


def parse_json(data: bytes) -> Any:
    """Parse JSON bytes or raise a 400 FhirError that says what is wrong and where."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip():
        raise FhirError(400, [Issue("error", "structure", "The request body is empty")])
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, [Issue("error", "structure", f"The body is not valid JSON: {exc}")]) from None
