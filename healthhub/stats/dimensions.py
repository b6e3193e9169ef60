"""The dimensions a statistics query groups by (CONTRACT §7) and how their values are shown.

``code`` (the resource's coding, ``system|code``), ``gender``, ``age-group`` (at the event
date), ``province`` / ``district`` (the patient's address state / district), ``organization``
(the sending Organization), ``period:day|week|month`` (the clinical date of the resource).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from ..outcome import invalid
from .sql import BAND_STARTS, GRAINS

NAMES = ("code", "gender", "age-group", "province", "district", "organization", "period")
#: At most this many dimensions in one query: more would only make cells that are all suppressed.
MAX_DIMENSIONS = 3
#: Age bands (years at the event date): (label, lowest age, first age of the next band).
AGE_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("0-4", 0, 5), ("5-14", 5, 15), ("15-24", 15, 25), ("25-44", 25, 45), ("45-64", 45, 65), ("65+", 65, None))
assert tuple(low for _, low, _ in AGE_GROUPS) == BAND_STARTS  # the SQL numbers the bands in this order


@dataclass(frozen=True)
class Dimension:
    name: str
    grain: str | None = None  # period only

    @property
    def label(self) -> str:
        """The name the client used: ``period:week``."""
        return f"{self.name}:{self.grain}" if self.grain else self.name

    def order(self, value: Any) -> tuple[Any, ...]:
        """Sort key of a published value: age bands in age order, missing values last."""
        if value is None:
            return (1, 0, "")
        if self.name == "age-group":
            return (0, [g[0] for g in AGE_GROUPS].index(value), "")
        return (0, 0, str(value))

    def show(self, value: Any) -> Any:
        """The published form of a grouped value (SQL gives a period as its first day)."""
        if self.name == "age-group":  # the band's number (stats/sql.py AgeBand): 0 is an age below zero
            return AGE_GROUPS[int(value) - 1][0] if value else None
        if value is None or self.name != "period":
            return value
        # Days and months come as yyyymmdd numbers, weeks as the database's date (stats/sql.py).
        first = (date(value // 10000, value // 100 % 100, value % 100) if isinstance(value, int)
                 else date.fromisoformat(str(value)[:10]))
        if self.grain == "week":
            year, week, _ = first.isocalendar()
            return f"{year}-W{week:02d}"
        return first.isoformat()[:7] if self.grain == "month" else first.isoformat()


def parse_group_by(values: list[str]) -> list[Dimension]:
    """``_group-by`` values (repeatable, comma-separated) → dimensions; 400 on anything else."""
    dims: list[Dimension] = []
    for raw in values:
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            name, _, grain = part.partition(":")
            if name not in NAMES:
                raise invalid(f"_group-by: unknown dimension {part[:40]!r}; use {', '.join(NAMES[:-1])} or "
                              f"period:day|week|month", ("_group-by",))
            if (name == "period") != bool(grain) or (grain and grain not in GRAINS):
                raise invalid(f"_group-by: {part[:40]!r} — only period takes a grain, one of "
                              f"{', '.join(GRAINS)} (period:week)", ("_group-by",))
            dim = Dimension(name, grain or None)
            if any(d.name == name for d in dims):
                raise invalid(f"_group-by: {name} is named twice", ("_group-by",))
            dims.append(dim)
    if not dims:
        raise invalid("_group-by is required: one to three of " + ", ".join(NAMES[:-1]) + ", period:week…",
                      ("_group-by",))
    if len(dims) > MAX_DIMENSIONS:
        raise invalid(f"_group-by: at most {MAX_DIMENSIONS} dimensions", ("_group-by",))
    return dims
