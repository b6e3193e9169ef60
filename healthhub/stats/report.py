"""The published table: grouped counts after suppression, as JSON (CONTRACT §7) or CSV.

Only the dimension values, the counts and the suppression summary leave the hub: never an
identifier, a name, an exact birth date or free text (the dimensions are coded values, ages in
bands, dates as days/weeks/months, places and Organizations).
"""
from __future__ import annotations

import csv
import io
from typing import Any, TypedDict

from .query import Counts
from .suppression import suppress


class Group(TypedDict):
    """One cell: the dimension values by ``_group-by`` label, and the count (None: suppressed)."""

    key: dict[str, Any]
    count: int | None


class StatsDocument(TypedDict):
    """The JSON answer (CONTRACT §7). Built as plain values, not through a serialisation schema:
    every value is already a string, a number or null, and a marshmallow dump of 10,496 groups
    was a fifth of a week × district query at 1M Observations (bench/RESULTS.md)."""

    type: str
    groupBy: list[str]
    countBy: str
    minCell: int
    groups: list[Group]
    suppressed: int
    total: int | None


def publish(counts: Counts, min_cell: int) -> StatsDocument:
    """The JSON document of ``counts`` with cells below ``min_cell`` suppressed (primary and
    complementary, :mod:`healthhub.stats.suppression`)."""
    shown: dict[tuple[Any, ...], int] = {}
    for key, n in counts.cells.items():  # period: first day → 2026-W05; age band number → 25-44
        label = tuple(d.show(v) for d, v in zip(counts.dimensions, key, strict=True))
        # Two values can show alike (a negative age and no birth date are both unknown).
        shown[label] = shown.get(label, 0) + n
    result = suppress(shown, min_cell)
    labels = [d.label for d in counts.dimensions]
    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(d.order(v) for d, v in zip(counts.dimensions, key, strict=True))

    groups: list[Group] = [{"key": dict(zip(labels, key, strict=True)), "count": n}
                           for key, n in sorted(result.cells.items(), key=lambda kv: order(kv[0]))]
    total = counts.total if counts.total >= min_cell else None
    return {"type": counts.resource_type, "groupBy": labels, "countBy": counts.count_by, "minCell": min_cell,
            "groups": groups, "suppressed": result.suppressed, "total": total}


def as_csv(document: StatsDocument) -> str:
    """One row per group: the dimension values, then the count (empty where suppressed)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    labels = document["groupBy"]
    writer.writerow([*labels, "count"])
    for group in document["groups"]:
        writer.writerow([*(_cell(group["key"][label]) for label in labels),
                         "" if group["count"] is None else group["count"]])
    return out.getvalue()


def _cell(value: Any) -> str:
    """A text cell, defused against spreadsheet formula injection (OWASP "CSV Injection"):
    a value from hospital data starting with ``= + - @`` (or a tab / CR) gets a leading quote."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
