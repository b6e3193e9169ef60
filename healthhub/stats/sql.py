"""Date arithmetic for statistics, in the SQL of each database.

The index stores instants in UTC (``search_date.low``); days, ISO weeks and months are taken
in UTC, and an age is whole years between two instants, as a person's age is counted (the
birthday has to have come). PostgreSQL has ``age()`` and ``date_trunc``; SQLite has
``strftime`` and date modifiers (https://sqlite.org/lang_datefunc.html).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

#: The width of a period bucket, as ``period:<grain>`` names it.
GRAINS = ("day", "week", "month")


class AgeYears(FunctionElement[int]):
    """Whole years from ``birth`` to ``at`` (both instants)."""

    type = Integer()
    inherit_cache = True
    name = "age_years"


class AgeBand(FunctionElement[int]):
    """The number (1, 2, …) of the band of :data:`BAND_STARTS` the age from ``birth`` to ``at``
    falls in; 0 for a negative age (an event before the birth date), NULL without both dates.
    One call per row on PostgreSQL (``width_bucket``): a CASE over the age computed it once per
    branch, and the age was most of the time of a one-million-row grouping."""

    type = Integer()
    inherit_cache = True
    name = "age_band"


#: Where each age band starts (years): 0-4, 5-14, 15-24, 25-44, 45-64, 65+ (CONTRACT §7).
BAND_STARTS = (0, 5, 15, 25, 45, 65)


class PeriodStart(FunctionElement[str]):
    """The first day (``YYYY-MM-DD``, UTC) of the day / ISO week (Monday) / month holding an
    instant. One subclass per grain: the grain must be part of SQLAlchemy's statement cache key,
    and the class is (an attribute of the element would not be: ``period:week`` answered with
    the days of a cached ``period:day`` statement)."""

    type = String()
    inherit_cache = True
    name = "period_start"
    grain = "day"


class _DayStart(PeriodStart):
    inherit_cache = True
    grain = "day"


class _WeekStart(PeriodStart):
    inherit_cache = True
    grain = "week"


class _MonthStart(PeriodStart):
    inherit_cache = True
    grain = "month"


_BY_GRAIN: dict[str, type[PeriodStart]] = {"day": _DayStart, "week": _WeekStart, "month": _MonthStart}


def age_band(birth: ColumnElement[Any], at: ColumnElement[Any]) -> AgeBand:
    return AgeBand(birth, at)


def period_start(grain: str, value: ColumnElement[Any]) -> PeriodStart:
    return _BY_GRAIN[grain](value)


def _args(element: FunctionElement[Any], compiler: Any, **kw: Any) -> list[str]:
    return [str(compiler.process(c, **kw)) for c in element.clauses]


@compiles(AgeYears, "postgresql")
def _age_pg(element: AgeYears, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    return f"CAST(date_part('year', age(timezone('UTC', {at}), timezone('UTC', {birth}))) AS INTEGER)"


@compiles(AgeYears)
def _age_sqlite(element: AgeYears, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    return (f"(CAST(strftime('%Y', {at}) AS INTEGER) - CAST(strftime('%Y', {birth}) AS INTEGER)"
            f" - (strftime('%m-%d', {at}) < strftime('%m-%d', {birth})))")


@compiles(AgeBand, "postgresql")
def _band_pg(element: AgeBand, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    starts = ", ".join(str(n) for n in BAND_STARTS)
    return (f"width_bucket(date_part('year', age(timezone('UTC', {at}), timezone('UTC', {birth}))), "
            f"ARRAY[{starts}]::double precision[])")


@compiles(AgeBand)
def _band_sqlite(element: AgeBand, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    age = _age_sqlite(AgeYears(*element.clauses), compiler, **kw)
    whens = " ".join(f"WHEN {age} < {upper} THEN {i}" for i, upper in enumerate(BAND_STARTS))
    return f"(CASE WHEN {birth} IS NULL OR {at} IS NULL THEN NULL {whens} ELSE {len(BAND_STARTS)} END)"


@compiles(PeriodStart, "postgresql")
def _period_pg(element: PeriodStart, compiler: Any, **kw: Any) -> str:
    (value,) = _args(element, compiler, **kw)
    return f"to_char(date_trunc('{element.grain}', timezone('UTC', {value})), 'YYYY-MM-DD')"


@compiles(PeriodStart)
def _period_sqlite(element: PeriodStart, compiler: Any, **kw: Any) -> str:
    (value,) = _args(element, compiler, **kw)
    if element.grain == "day":
        return f"date({value})"
    if element.grain == "month":
        return f"strftime('%Y-%m-01', {value})"
    # 'weekday 0' moves forward to the next Sunday (or stays on one); six days back is the
    # Monday that starts the ISO week.
    return f"date({value}, 'weekday 0', '-6 days')"
