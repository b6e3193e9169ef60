"""Small-cell suppression of a table of counts: primary, then complementary.

Primary: a cell counting fewer than ``min_cell`` (``HEALTHHUB_MIN_CELL``, default 11) is
published as ``null``. A count of zero is never a cell (``GROUP BY`` has no row for it).

Complementary — the rule, as documented in the README ("Privacy rule"): the table is seen as
*lines*, one per dimension and per value of all the other dimensions (in a district × sex table:
each district's row and each sex's column; in a one-dimension table: the whole table). The
total of every line is public or can be asked for: it is a cell of the query with that one
dimension fewer, or, for a one-dimension table, the table's own ``total``. If a line held exactly
one suppressed cell, that cell would be its line total minus the published cells. So, until no
line has exactly one: in every line with exactly one suppressed cell, the smallest other cell of
the line is suppressed too (ties: the first key in sort order, so the result is deterministic).
A line whose only cell is suppressed needs no partner: its total equals that cell, is below the
threshold too and is suppressed in the query with one dimension fewer.

This is the classic "at least two suppressed cells per line" heuristic of statistical offices
(e.g. the ONS and Eurostat disclosure-control guidance for frequency tables). What it does not
stop is said in the README: differences between queries with different *filters* (two cohorts
that differ by a handful of people), and exact recovery where lines overlap (a resource counted
under two codes, or a person counted in two weeks).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Suppressed:
    """The published cells (``None`` for suppressed ones) and how many were suppressed."""

    cells: dict[Key, int | None]
    primary: int
    complementary: int

    @property
    def suppressed(self) -> int:
        return self.primary + self.complementary


def suppress(cells: Mapping[Key, int], min_cell: int) -> Suppressed:
    """Apply primary and complementary suppression to ``cells`` (key tuples of equal length)."""
    hidden = {key for key, n in cells.items() if 0 < n < min_cell}
    primary = len(hidden)
    width = len(next(iter(cells))) if cells else 0
    changed = bool(hidden)
    while changed:
        changed = False
        for dim in range(width):
            for line in _lines(cells, dim).values():
                partner = _partner(line, cells, hidden)
                if partner is not None:
                    hidden.add(partner)
                    changed = True
    published = {key: (None if key in hidden else n) for key, n in cells.items()}
    return Suppressed(published, primary, len(hidden) - primary)


def _lines(cells: Mapping[Key, int], dim: int) -> dict[Hashable, list[Key]]:
    """The keys of ``cells`` grouped by every dimension except ``dim``."""
    lines: dict[Hashable, list[Key]] = defaultdict(list)
    for key in cells:
        lines[key[:dim] + key[dim + 1:]].append(key)
    return lines


def _partner(line: list[Key], cells: Mapping[Key, int], hidden: set[Key]) -> Key | None:
    """The cell to suppress with the line's only suppressed cell, or None when none is needed."""
    inside = [k for k in line if k in hidden]
    if len(inside) != 1:
        return None
    others = [k for k in line if k not in hidden and cells[k] > 0]
    if not others:
        return None
    return min(others, key=lambda k: (cells[k], sort_key(k)))


def sort_key(key: Key) -> tuple[Any, ...]:
    """A total order on keys holding None (missing values sort last)."""
    return tuple((v is None, "" if v is None else str(v)) for v in key)
