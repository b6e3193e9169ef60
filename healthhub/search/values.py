"""Value semantics shared by indexing and searching (pure functions).

- Dates are ranges: ``2020-03`` is every instant of March 2020, so a stored date and a searched
  date are both ``[low, high]`` and prefixes compare ranges (https://hl7.org/fhir/R4B/search.html#date).
  A date-time without a zone is taken as UTC.
- Strings match case- and accent-insensitively (https://hl7.org/fhir/R4B/search.html#string).
- Numbers carry an implicit precision range: ``100`` means [99.5, 100.5)
  (https://hl7.org/fhir/R4B/search.html#number).
"""
from __future__ import annotations

import calendar
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import overload

UTC = UTC
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")


class BadValue(ValueError):
    """A search or resource value that cannot be read (the message says why)."""


def date_range(text: str) -> tuple[datetime, datetime]:
    """``[low, high]`` in UTC of a FHIR date, dateTime or instant at its own precision."""
    m = _DATE.match(text.strip())
    if not m:
        raise BadValue(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm])")
    y = int(m["y"])
    try:
        if m["m"] is None:
            return datetime(y, 1, 1, tzinfo=UTC), datetime(y, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        mo = int(m["m"])
        if m["d"] is None:
            last = calendar.monthrange(y, mo)[1]
            return datetime(y, mo, 1, tzinfo=UTC), datetime(y, mo, last, 23, 59, 59, 999999, tzinfo=UTC)
        d = int(m["d"])
        if m["H"] is None:
            return datetime(y, mo, d, tzinfo=UTC), datetime(y, mo, d, 23, 59, 59, 999999, tzinfo=UTC)
        tz = _zone(m["tz"])
        hh, mm = int(m["H"]), int(m["M"])
        if m["S"] is None:
            low = datetime(y, mo, d, hh, mm, tzinfo=tz)
            span = timedelta(minutes=1)
        else:
            frac = m["f"] or ""
            micro = int((frac + "000000")[:6]) if frac else 0
            low = datetime(y, mo, d, hh, mm, int(m["S"]), micro, tzinfo=tz)
            span = timedelta(microseconds=10 ** (6 - min(len(frac), 6))) if frac else timedelta(seconds=1)
    except ValueError as exc:  # e.g. 2021-02-30
        raise BadValue(f"{text!r} is not a valid date: {exc}") from None
    low = low.astimezone(UTC)
    return low, low + span - timedelta(microseconds=1)


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def normalize(text: str) -> str:
    """Case-, accent- and space-insensitive form of a string (``Zoë  O'Brien`` → ``zoe o'brien``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def decimal(text: str) -> Decimal:
    """A search number (``100``, ``1.5``, ``1e2``, ``-3``)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise BadValue(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise BadValue(f"{text!r} is not a finite number")
    return value


def number_range(value: Decimal) -> tuple[Decimal, Decimal]:
    """``[low, high)`` implied by the value's precision: 100 → [99.5, 100.5), 1.50 → [1.495, 1.505)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return value - half, value + half


#: Upper bounds of the width classes of a stored date range (``search_date.span``): a day, a
#: month, a year, ten years; wider or open ranges are class ``len(SPAN_WIDTHS)``. A range of
#: class k with ``high >= t`` has ``low >= t - SPAN_WIDTHS[k]``, which gives a date window a
#: lower bound on ``low`` — a btree range scan per class instead of every row before the window.
SPAN_WIDTHS = (timedelta(days=1), timedelta(days=31), timedelta(days=366), timedelta(days=3660))


def span_class(low: datetime, high: datetime) -> int:
    """The width class of ``[low, high]`` (see SPAN_WIDTHS)."""
    width = high - low
    for k, limit in enumerate(SPAN_WIDTHS):
        if width <= limit:
            return k
    return len(SPAN_WIDTHS)


#: The longest text an index row keeps of a string (characters): PostgreSQL's btree refuses an
#: entry above about 2.7 kB, so a long string (a 20 MB ``valueString``) made its whole write fail.
#: HAPI FHIR keeps 200 characters of a string too (HFJ_SPIDX_STRING). Searches clip their values
#: the same way, so a longer value still finds what it should (and, past the limit, may find more).
MAX_STRING = 200
#: The same for codes, systems, identifier values (token and reference rows: two per index entry).
MAX_CODE = 250
#: The same for URIs and absolute reference URLs.
MAX_URI = 500


@overload
def clip(text: str, limit: int) -> str: ...
@overload
def clip(text: None, limit: int) -> None: ...
@overload
def clip(text: str | None, limit: int) -> str | None: ...
def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (None stays None): index rows and the search values
    compared with them alike."""
    return text if text is None or len(text) <= limit else text[:limit]
