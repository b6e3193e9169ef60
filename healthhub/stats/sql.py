"""Date arithmetic for statistics, in the SQL of each database.

Days are ``yyyymmdd`` integers of the UTC day (``search_facts.event_day`` / ``birth_day``): a
whole-years age is ``(day - birth_day) / 10000`` — the birthday has to have come, as a person's
age is counted — and the month of a day is ``day / 100``, integer arithmetic on both databases
where ``age()`` and ``to_char(date_trunc())`` over a million rows were half of a grouping's time
(bench/RESULTS.md, eighth session). An ISO week (Monday) is truncated from the instant:
PostgreSQL's ``date_trunc('week')``, SQLite's date modifiers (https://sqlite.org/lang_datefunc.html).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

#: The width of a period bucket, as ``period:<grain>`` names it.
GRAINS = ("day", "week", "month")


class AgeBand(FunctionElement[int]):
    """The number (1, 2, …) of the band of :data:`BAND_STARTS` the age from day ``birth`` to day
    ``at`` (yyyymmdd) falls in; 0 for a negative age (an event before the birth date), NULL
    without both days. Age ≥ n years ⟺ ``at - birth ≥ n * 10000``, so the bands are bounds on
    the difference (``width_bucket`` on PostgreSQL, one call per row)."""

    type = Integer()
    inherit_cache = True
    name = "age_band"


#: Where each age band starts (years): 0-4, 5-14, 15-24, 25-44, 45-64, 65+ (CONTRACT §7).
BAND_STARTS = (0, 5, 15, 25, 45, 65)


class PeriodStart(FunctionElement[Any]):
    """The first day of the day / ISO week (Monday) / month holding an event, from its day
    (yyyymmdd) and its instant: a ``yyyymmdd`` integer for days and months, the week's first
    day as the database gives it (``Dimension.show`` reads both). One subclass per grain: the
    grain must be part of SQLAlchemy's statement cache key, and the class is (an attribute of the
    element would not be: ``period:week`` answered with the days of a cached ``period:day``
    statement)."""

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


def period_start(grain: str, day: ColumnElement[Any], at: ColumnElement[Any]) -> PeriodStart:
    return _BY_GRAIN[grain](day, at)


def _args(element: FunctionElement[Any], compiler: Any, **kw: Any) -> list[str]:
    return [str(compiler.process(c, **kw)) for c in element.clauses]


@compiles(AgeBand, "postgresql")
def _band_pg(element: AgeBand, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    bounds = ", ".join(str(n * 10000) for n in BAND_STARTS)
    return f"width_bucket({at} - {birth}, ARRAY[{bounds}])"


@compiles(AgeBand)
def _band_sqlite(element: AgeBand, compiler: Any, **kw: Any) -> str:
    birth, at = _args(element, compiler, **kw)
    whens = " ".join(f"WHEN {at} - {birth} < {upper * 10000} THEN {i}" for i, upper in enumerate(BAND_STARTS))
    return f"(CASE WHEN {birth} IS NULL OR {at} IS NULL THEN NULL {whens} ELSE {len(BAND_STARTS)} END)"


@compiles(PeriodStart, "postgresql")
def _period_pg(element: PeriodStart, compiler: Any, **kw: Any) -> str:
    day, at = _args(element, compiler, **kw)
    if element.grain == "week":
        return f"date_trunc('week', timezone('UTC', {at}))"
    return day if element.grain == "day" else f"({day} / 100 * 100 + 1)"


@compiles(PeriodStart)
def _period_sqlite(element: PeriodStart, compiler: Any, **kw: Any) -> str:
    day, at = _args(element, compiler, **kw)
    if element.grain == "week":
        # 'weekday 0' moves forward to the next Sunday (or stays on one); six days back is the
        # Monday that starts the ISO week.
        return f"date({at}, 'weekday 0', '-6 days')"
    return day if element.grain == "day" else f"({day} / 100 * 100 + 1)"
