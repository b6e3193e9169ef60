"""Small-cell suppression (healthhub/stats/suppression.py) and the dimension grammar, as pure functions."""
from __future__ import annotations

from itertools import product
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthhub.outcome import FhirError
from healthhub.stats.dimensions import Dimension, parse_group_by
from healthhub.stats.suppression import suppress

MIN = 11


def test_one_dimension_a_partner_is_suppressed_with_the_small_cell() -> None:
    out = suppress({("a",): 5, ("b",): 20, ("c",): 30}, MIN)
    assert out.cells == {("a",): None, ("b",): None, ("c",): 30}  # b: the smallest other cell
    assert (out.primary, out.complementary, out.suppressed) == (1, 1, 2)


def test_two_small_cells_protect_each_other() -> None:
    out = suppress({("a",): 5, ("b",): 3, ("c",): 30}, MIN)
    assert out.cells == {("a",): None, ("b",): None, ("c",): 30} and out.complementary == 0


def test_a_cell_alone_in_its_line_needs_no_partner() -> None:
    # Row "x" holds only one cell: its total (the one-dimension query's cell) is as small and
    # suppressed there. Column "p" then has one suppressed cell, so (y, p) goes too; (y, q) then
    # has a partner in row y; column q has one suppressed cell → (z, q) follows.
    cells = {("x", "p"): 4, ("y", "p"): 40, ("y", "q"): 50, ("z", "q"): 60, ("z", "p"): 70}
    out = suppress(cells, MIN)
    hidden = {k for k, v in out.cells.items() if v is None}
    assert ("x", "p") in hidden and ("y", "p") in hidden
    assert_no_line_gives_a_cell_away(cells, out.cells)


def test_the_smallest_partner_is_chosen_and_ties_go_to_the_first_key() -> None:
    out = suppress({("a",): 2, ("c",): 15, ("b",): 15, ("d",): 40}, MIN)
    assert out.cells == {("a",): None, ("b",): None, ("c",): 15, ("d",): 40}


def test_nothing_small_nothing_suppressed() -> None:
    cells = {("a", "x"): 11, ("b", "x"): 12}
    assert suppress(cells, MIN).cells == cells and suppress({}, MIN).cells == {}


def assert_no_line_gives_a_cell_away(true: dict[tuple[Any, ...], int], published: dict[tuple[Any, ...], Any]) -> None:
    width = len(next(iter(true)))
    for dim in range(width):
        lines: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for key in true:
            lines.setdefault(key[:dim] + key[dim + 1:], []).append(key)
        for keys in lines.values():
            hidden = [k for k in keys if published[k] is None]
            live = [k for k in keys if true[k] > 0]
            assert len(hidden) != 1 or live == hidden, (dim, keys, hidden)


tables = st.integers(1, 3).flatmap(lambda width: st.dictionaries(
    st.tuples(*[st.sampled_from("abcde")] * width), st.integers(1, 60), min_size=1, max_size=40))


@settings(max_examples=300, deadline=None)
@given(tables, st.integers(2, 20))
def test_suppression_invariants(cells: dict[tuple[str, ...], int], min_cell: int) -> None:
    out = suppress(cells, min_cell)
    for key, n in cells.items():
        assert out.cells[key] in (n, None)  # published counts are the true ones
        if n < min_cell:
            assert out.cells[key] is None  # primary
    assert out.suppressed == sum(v is None for v in out.cells.values())
    assert out.primary == sum(n < min_cell for n in cells.values())
    assert_no_line_gives_a_cell_away(cells, out.cells)
    assert suppress(dict(reversed(list(cells.items()))), min_cell).cells == out.cells  # deterministic


def test_full_grid_rows_and_columns() -> None:
    cells = {(r, c): 50 for r, c in product("abc", "xyz")}
    cells[("b", "y")] = 3
    out = suppress(cells, MIN)
    assert sum(v is None for v in out.cells.values()) == 4  # the smallest rectangle around it
    assert_no_line_gives_a_cell_away(cells, out.cells)


@pytest.mark.parametrize("raw,dims", [
    (["gender"], [Dimension("gender")]),
    (["period:week,district"], [Dimension("period", "week"), Dimension("district")]),
    (["code", " age-group "], [Dimension("code"), Dimension("age-group")]),
])
def test_group_by_grammar(raw: list[str], dims: list[Dimension]) -> None:
    assert parse_group_by(raw) == dims


@pytest.mark.parametrize("raw", [[], [""], ["sex"], ["period"], ["period:year"], ["gender:day"], ["gender,gender"],
                                 ["period:day,period:week"], ["code,gender,province,district"]])
def test_group_by_refusals(raw: list[str]) -> None:
    with pytest.raises(FhirError) as exc:
        parse_group_by(raw)
    assert exc.value.status == 400


@pytest.mark.parametrize("grain,first_day,shown", [("week", "2026-01-05", "2026-W02"), ("week", "2024-12-30", "2025-W01"),
                                                   ("month", "2026-03-01", "2026-03"), ("day", "2026-03-07", "2026-03-07")])
def test_periods_are_shown_as_iso_labels(grain: str, first_day: str, shown: str) -> None:
    assert Dimension("period", grain).show(first_day) == shown
