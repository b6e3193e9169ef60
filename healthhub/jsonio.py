"""JSON in and out, keeping FHIR decimals exact.

FHIR requires a decimal's precision to survive a round trip (``1.50`` is not ``1.5``:
https://hl7.org/fhir/R4B/datatypes.html#decimal), so decimals are parsed as ``Decimal`` and
written back verbatim. A request body is parsed once, by the standard library's C scanner with
``Decimal`` floats, under the rules orjson would apply: strict UTF-8, no lone surrogates (escaped
ones are checked by orjson, only when the text contains a surrogate escape), no ``NaN`` or
``Infinity``; and numbers within what both databases store (:data:`MAX_EXPONENT`,
:data:`MAX_LENGTH`). Parsing twice — orjson as a check, then the scanner — was 9 % of a
transaction Bundle's CPU time (bench/RESULTS.md, fourth session).

Two rules go beyond plain JSON:

- No object may repeat a property name: FHIR's JSON rules say "Property names SHALL be unique"
  (https://hl7.org/fhir/R4B/json.html), where RFC 8259 §4 only says SHOULD and leaves the
  result "unpredictable". Every JSON parser picks its own winner (this scanner and orjson keep
  the last, others the first or refuse), so a body the hub validated could mean something else
  to the next system reading the same bytes (a proxy, a replay of the archived payload, a
  downstream consumer): such a body is a 400 instead. Checked per object as it is built
  (:func:`_unique`, a Python call per object): 4-6 µs per Synthea resource, a quarter to a
  third of the parse, under 1 % of a resource's ingest (~800 µs, bench/RESULTS.md).
- Nesting is bounded by the interpreter's recursion limit (``sys.getrecursionlimit()``, 1000):
  the C scanner counts each array or object level against it, on top of the caller's own call
  depth, so a request body may nest about 980 levels (measured through the Flask test client).
  FHIR resources nest a few dozen; anything deeper is a 400, never a 500 (``RecursionError``
  below; tests/api/test_bad_input.py ``test_deeply_nested_json``). A check of its own would
  need a second pass over the text for a limit no real resource comes near.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

from .outcome import FhirError, Issue

_BOM = b"\xef\xbb\xbf"
#: A ``\\uD800``–``\\uDFFF`` escape: a lone one cannot be stored (orjson, PostgreSQL refuse it).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
#: An escaped control character other than tab, LF and CR (an escape: an odd run of backslashes).
#: FHIR strings cannot hold one (https://hl7.org/fhir/R4B/datatypes.html#string) and PostgreSQL's
#: jsonb cannot store U+0000. Raw control characters are already invalid JSON.
_CONTROL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F])|[bf])")


def parse_json(data: bytes) -> Any:
    """Parse a request body or raise a 400 FhirError that says what is wrong and where."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip():
        raise FhirError(400, [Issue("error", "structure", "The request body is empty")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"it is not valid UTF-8 ({exc})") from None
    if ("\\u00" in text or "\\b" in text or "\\f" in text) and _CONTROL_ESCAPE.search(text):
        raise FhirError(400, [Issue("error", "invalid", "The body holds a control character (U+0000-U+001F other "
                                    "than tab, line feed and carriage return), which FHIR strings cannot contain")])
    if _SURROGATE_ESCAPE.search(text):
        try:
            orjson.loads(data)  # knows a lone surrogate from a pair
        except orjson.JSONDecodeError as exc:
            raise _bad(str(exc)) from None
    try:
        return json.loads(text, parse_float=_number, parse_int=_checked_int, parse_constant=_constant,
                          object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise _bad(str(exc)) from None
    except RecursionError:
        raise _bad("it is nested too deeply (the limit is close to 1,000 levels of arrays and objects)") from None
    except _RepeatedName as exc:
        name = json.dumps(exc.args[0][:64], ensure_ascii=False)
        raise FhirError(400, [Issue("error", "structure", f"The body repeats the property name {name} in one "
                                    "object; FHIR JSON property names must be unique "
                                    "(https://hl7.org/fhir/R4B/json.html)")]) from None
    except _OutOfRange as exc:
        raise FhirError(400, [Issue("error", "value", f"The body holds the number {exc.args[0][:40]}, out of range: "
                                    f"numbers may be {MAX_LENGTH} characters long and have a magnitude between "
                                    f"1e-{MAX_EXPONENT} and 1e{MAX_EXPONENT}")]) from None
    except ValueError as exc:  # NaN / Infinity
        raise _bad(str(exc)) from None


#: Bounds of a JSON number in a request body. PostgreSQL's numeric, JSONB's number type, holds
#: no more than 131072 digits before the point and 16383 after: 1e999999999 or 0.(20000 zeros)1
#: answered 500 there ("value overflows numeric format") and 201 on SQLite. It also writes
#: 1E+100000 out in full, 100001 digits on every read. A double, which the search index compares
#: numbers as, spans 1e-308..1e308; clinical values need a few digits.
MAX_EXPONENT = 308
MAX_LENGTH = 1000


class _OutOfRange(ValueError):
    """A number in a request body beyond :data:`MAX_EXPONENT` or :data:`MAX_LENGTH`."""


class _RepeatedName(ValueError):
    """An object of a request body that names a property twice (its name is ``args[0]``)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The scanner's object_pairs_hook: the dict is built in C as the scanner would have built it,
    # and only a dict shorter than its pairs (a repeated name) costs a second look.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _RepeatedName(name)
            seen.add(name)
    return obj


def _number(text: str) -> Decimal:
    value = Decimal(text)
    if len(text) <= MAX_LENGTH and -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        return value
    raise _OutOfRange(text)


def _checked_int(text: str) -> int | Decimal:
    return int(text) if len(text) < 19 else _number(text)


def _bad(why: str) -> FhirError:
    return FhirError(400, [Issue("error", "structure", f"The body is not valid JSON: {why}")])


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(data: bytes | str) -> Any:
    """Parse JSON that is known to be well-formed, with decimals as ``Decimal``."""
    return json.loads(data, parse_float=Decimal, parse_int=_int)


def storable(value: Any) -> Any:
    """``value`` with every NUL character in its strings (and keys) replaced by U+FFFD: PostgreSQL's
    text and jsonb cannot hold U+0000, and a record of what arrived (the archive's metadata, the
    audit trail) must be written whatever arrived. The raw payload itself is kept as bytes."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    return value


def cut(value: str | None, n: int) -> str | None:
    """At most ``n`` characters of ``value``, :func:`storable`."""
    return storable(value[:n]) if value else value


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
