"""SearchRequest → SQL (https://hl7.org/fhir/R4B/search.html).

A search compiles to one SELECT over ``resources`` whose WHERE holds one ``id IN (…)`` per AND
clause; each sub-select reads one index table through its ``(resource_type, param, value)``
index. Chains and ``_has`` nest those sub-selects through ``search_reference``. Nothing is
filtered in Python.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import SQLCoreOperations
from sqlalchemy.sql.functions import FunctionElement

from ..outcome import not_supported
from ..storage import models
from . import ucum
from .cardinality import single_valued
from .registry import SearchParam, default_registry
from .request import (
    Chain,
    Clause,
    CompositeValue,
    DateValue,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    TokenValue,
    Value,
)
from .values import (
    MAX_CODE,
    MAX_INSTANT,
    MAX_STRING,
    MAX_URI,
    MIN_INSTANT,
    SPAN_WIDTHS,
    clip,
    normalize,
    number_range,
)

#: A column or mapped attribute: anything that compares into SQL.
Col = SQLCoreOperations

R = models.Resource
REF = models.SearchReference
TABLES: dict[str, Table] = {
    "string": models.SearchString, "token": models.SearchToken, "reference": models.SearchReference,
    "date": models.SearchDate, "number": models.SearchNumber, "quantity": models.SearchQuantity,
    "uri": models.SearchUri, "composite": models.SearchComposite,
}


def param_rows(table: Table, resource_type: str, code: str, registry: Any = None) -> ColumnElement[bool]:
    """The rows of ``table`` that hold parameter ``code`` of ``resource_type``: its own, or those
    of the parameters it is stored as (``Observation.patient`` = ``subject`` rows pointing at a
    Patient; ``combo-code`` = ``code`` and ``component-code`` rows; registry.Storage)."""
    storage = (registry if registry is not None else default_registry()).storage(resource_type, code)
    params = storage.params
    conds = [table.c.resource_type == resource_type,
             table.c.param == params[0] if len(params) == 1 else table.c.param.in_(params)]
    if storage.target_type is not None:
        conds.append(table.c.target_type == storage.target_type)
    return and_(*conds)


class Compiler:
    """Compile clauses for one database (``now`` anchors the ``ap`` prefix)."""

    def __init__(self, registry: Any, now: datetime, dialect: str | None = None) -> None:
        self.registry = registry
        self.now = now
        self.dialect = dialect

    # -- whole searches --------------------------------------------------------------------

    def ids(self, resource_type: str, clauses: Sequence[Clause], ids: Sequence[tuple[str, ...]] = (),
            last_updated: Sequence[tuple[DateValue, ...]] = ()) -> Select[Any]:
        """SELECT resources.id of the current ``resource_type`` resources matching everything."""
        stmt = select(R.id).where(R.resource_type == resource_type, R.deleted.is_(False))
        return stmt.where(*self.conditions(resource_type, clauses, ids, last_updated))

    def conditions(self, resource_type: str, clauses: Sequence[Clause], ids: Sequence[tuple[str, ...]] = (),
                   last_updated: Sequence[tuple[DateValue, ...]] = ()) -> list[ColumnElement[bool]]:
        """WHERE conditions on ``resources`` (R) for the AND of all clauses."""
        out: list[ColumnElement[bool]] = [R.id.in_(alternatives) for alternatives in ids]
        for alternatives in last_updated:
            out.append(or_(*(date_condition(R.last_updated, R.last_updated, v, self.now) for v in alternatives)))
        windows, rest = self._windows(resource_type, clauses)
        out.extend(R.id.in_(rows) for rows in windows)
        out.extend(self.clause(resource_type, c) for c in rest)
        return out

    def index_sets(self, resource_type: str, clauses: Sequence[Clause]) -> list[Select[Any]] | None:
        """One SELECT of resource ids per AND clause, each read from an index table alone; None
        when a clause needs ``resources`` (``:not``, ``:missing``, ``_id``, ``_has``…).

        Index rows exist only for the current version of live resources (the repository clears
        them on update and delete), so the intersection of these sets is the match set."""
        windows, rest = self._windows(resource_type, clauses)
        sets: list[Select[Any]] = list(windows)
        for clause in rest:
            rows = self._id_rows(resource_type, clause)
            if rows is None:
                return None
            sets.append(rows)
        return sets or None

    def matching(self, sets: Sequence[Select[Any]]) -> Select[Any]:
        """The ids in every set (possibly repeated), from the index tables alone.

        PostgreSQL: ``id IN (…)`` semi-joins, from which it picks the set to start from. SQLite
        turns every ``IN (subquery)`` into a list of all that subquery's ids before it probes
        it, whatever its size: ``patient=…&code=…`` listed every Observation with the code
        (16,113 at 1M resources, 3.65 ms) to keep the patient's 39. As a join of the sets
        (which SQLite flattens into a join of the index tables) it starts from the smaller side
        and probes the other's lookup index, which ends in ``resource_id``: 0.15 ms."""
        if self.dialect == "sqlite" and len(sets) > 1:
            subs = [s.subquery() for s in sets]
            key = subs[0].c[0]
            joined: Any = subs[0]
            for sub in subs[1:]:
                joined = joined.join(sub, sub.c[0] == key)
            return select(key).select_from(joined)
        first = sets[0]
        col = first.selected_columns[0]
        return first.where(*(col.in_(other) for other in sets[1:]))

    def count(self, sets: Sequence[Select[Any]]) -> Select[Any]:
        """SELECT count(*) of the matches of ``index_sets`` from the index tables alone: no
        lookup of each match in ``resources``, which made a broad count O(matches) in
        primary-key probes (bench/RESULTS.md, finding 7)."""
        return select(func.count()).select_from(self.matching(sets).distinct().subquery())

    def _id_rows(self, resource_type: str, clause: Clause) -> Select[Any] | None:
        """The ids matching a positive clause, straight from an index table."""
        if clause.chain:
            return self._chained(resource_type, clause) if isinstance(clause.chain[0], Chain) else None
        table = TABLES.get(clause.param.type)
        if table is None or clause.modifier in ("not", "missing") or clause.param.code in ("_id", "_lastUpdated"):
            return None
        return self._rows(table, resource_type, clause.param, clause.modifier, clause.values)

    def _windows(self, resource_type: str, clauses: Sequence[Clause]) -> tuple[list[Select[Any]], list[Clause]]:
        """Repeated date parameters that can only hold one value per resource, as one lookup each.

        ``date=ge2000-07-01&date=lt2000-08-01`` on ``Encounter.period`` must hold for the same
        (only) index row, so both bounds go into one sub-select over ``search_date`` with a
        lower bound on ``low`` per width class (``values.SPAN_WIDTHS``) — a range scan near the
        window instead of two open-ended ones. Several-valued parameters keep one sub-select
        per repetition, as the AND semantics of the spec require."""
        groups: dict[str, list[Clause]] = {}
        for c in clauses:
            if (not c.chain and c.modifier is None and c.param.type == "date" and c.param.code != "_lastUpdated"
                    and single_valued(resource_type, c.param)):
                groups.setdefault(c.param.code, []).append(c)
        merged = {code for code, group in groups.items() if len(group) > 1}
        windows = []
        for code in merged:
            windows.append(self._window(models.SearchDate, resource_type, code, groups[code]))
        return windows, [c for c in clauses if c.param.code not in merged or c.chain or c.modifier is not None]

    def _window(self, table: Table, resource_type: str, code: str, group: Sequence[Clause]) -> Select[Any]:
        """Ids whose one row meets every condition. When the conditions give both a floor for
        ``high`` and a ceiling for ``low``, one sub-select per width class adds the (redundant)
        bounds on ``low`` that make it a range scan of the (type, param, span, low) index; a
        UNION ALL of them, because neither planner reliably turns an OR of ranges into index
        scans (the resource is in one class only, so nothing repeats). In those sub-selects
        ``high`` is marked :class:`Unindexed`: with statistics, SQLite answered the widest class
        from the ``high`` index — every row ending after the window start, 763 ms at 1M
        (bench/RESULTS.md, second session)."""
        per_class = self._span_bounds(table, group)
        high: ColumnElement[Any] = Unindexed(table.c.high) if per_class else table.c.high
        conds = [or_(*(date_condition(table.c.low, high, v, self.now) for v in c.values if isinstance(v, DateValue)))
                 for c in group]
        mine = [param_rows(table, resource_type, code, self.registry), *conds]
        if not per_class:
            return select(table.c.resource_id).where(*mine)
        union = union_all(*(select(table.c.resource_id).where(*mine, bound) for bound in per_class)).subquery()
        return select(union.c.resource_id)

    def _span_bounds(self, table: Table, group: Sequence[Clause]) -> list[ColumnElement[bool]]:
        """Per width class, bounds on ``low`` from both sides, when the clauses give both a
        floor for ``high`` and a ceiling for ``low`` (else nothing)."""
        floors, ceilings = [], []
        for c in group:
            dates = [v for v in c.values if isinstance(v, DateValue)]
            lows = [_high_floor(v, self.now) for v in dates]
            highs = [_low_ceiling(v, self.now) for v in dates]
            if dates and all(x is not None for x in lows):
                floors.append(min(x for x in lows if x is not None))
            if dates and all(x is not None for x in highs):
                ceilings.append(max(x for x in highs if x is not None))
        if not floors or not ceilings:
            return []
        floor, ceiling = max(floors), min(ceilings)
        low, span = table.c.low, table.c.span
        per_class = [and_(span == k, low >= _minus(floor, width), low <= ceiling)
                     for k, width in enumerate(SPAN_WIDTHS)]
        return [*per_class, and_(span == len(SPAN_WIDTHS), low <= ceiling)]

    # -- one clause ------------------------------------------------------------------------

    def clause(self, resource_type: str, clause: Clause) -> ColumnElement[bool]:
        if not clause.chain:
            return self.param(resource_type, R.id, clause.param, clause.modifier, clause.values)
        return R.id.in_(self._chained(resource_type, clause))

    def _chained(self, resource_type: str, clause: Clause) -> Select[Any]:
        """Ids of ``resource_type`` reached through the clause's chain (innermost first)."""
        types = [resource_type]
        for link in clause.chain:
            types.append(link.target_type if isinstance(link, Chain) else link.source_type)
        end = Clause(clause.param, clause.modifier, clause.values)
        inner: Select[Any] = self.ids(types[-1], [end])
        for link, from_type in reversed(list(zip(clause.chain, types[:-1], strict=True))):
            if isinstance(link, Chain):
                inner = select(REF.c.resource_id).where(
                    param_rows(REF, from_type, link.param.code, self.registry),
                    REF.c.target_type == link.target_type, REF.c.target_id.in_(inner))
            else:  # _has: resources of source_type whose param points at from_type
                inner = select(REF.c.target_id).where(
                    param_rows(REF, link.source_type, link.param.code, self.registry),
                    REF.c.target_type == from_type, REF.c.resource_id.in_(inner))
        return inner

    def param(self, resource_type: str, id_col: Col[Any], param: SearchParam, modifier: str | None,
              values: Sequence[Value]) -> ColumnElement[bool]:
        """Condition on ``id_col`` (an id of ``resource_type``) for one parameter's OR values."""
        if param.code == "_id":
            return self._on_resources(resource_type, id_col, R.id.in_(_id_values(values)), modifier)
        if param.code == "_lastUpdated":
            cond = or_(*(date_condition(R.last_updated, R.last_updated, v, self.now)
                         for v in values if isinstance(v, DateValue)))
            return self._on_resources(resource_type, id_col, cond, modifier)
        table = TABLES.get(param.type)
        if table is None:
            raise not_supported(f"Search parameter {param.code!r} of type {param.type} is not supported")
        mine = param_rows(table, resource_type, param.code, self.registry)
        if modifier == "missing":
            has = select(table.c.resource_id).where(mine, table.c.resource_id == id_col).exists()
            return or_(*((~has if v else has) for v in values if isinstance(v, bool))) if values else true()
        rows = self._rows(table, resource_type, param, modifier, values)
        if modifier == "not":  # https://hl7.org/fhir/R4B/search.html#token : none of the values match
            return id_col.not_in(rows)
        return id_col.in_(rows)

    def _rows(self, table: Table, resource_type: str, param: SearchParam, modifier: str | None,
              values: Sequence[Value]) -> Select[Any]:
        """Ids of the ``resource_type`` resources with an index row matching one of ``values``."""
        matches = or_(*(self.value(table, param, modifier, v) for v in values))
        return select(table.c.resource_id).where(param_rows(table, resource_type, param.code, self.registry), matches)

    def _on_resources(self, resource_type: str, id_col: Col[Any], cond: ColumnElement[bool],
                      modifier: str | None) -> ColumnElement[bool]:
        if id_col is R.id:
            return not_(cond) if modifier == "not" else cond
        ids = select(R.id).where(R.resource_type == resource_type, cond)
        return id_col.not_in(ids) if modifier == "not" else id_col.in_(ids)

    # -- one value -------------------------------------------------------------------------

    def value(self, table: Table, param: SearchParam, modifier: str | None, v: Value) -> ColumnElement[bool]:
        kind = param.type
        c = table.c
        if kind == "string":
            return string_condition(c.value, c.exact, modifier, str(v))
        if kind == "token":
            return token_condition(c.system, c.code, c.text, modifier, v, c.type_system, c.type_code)
        if kind == "reference":
            return reference_condition(c, modifier, v)
        if kind == "date" and isinstance(v, DateValue):
            return date_condition(c.low, c.high, v, self.now)
        if kind == "number" and isinstance(v, NumberValue):
            return number_condition(c.value, v.prefix, v.value)
        if kind == "quantity" and isinstance(v, QuantityValue):
            return quantity_condition(c.value, c.system, c.code, c.canonical_value, c.canonical_code, v)
        if kind == "uri":
            return uri_condition(c.uri, modifier, str(v))
        if kind == "composite" and isinstance(v, CompositeValue):
            return self._composite(table, param, v)
        return false()

    def _composite(self, table: Table, param: SearchParam, v: CompositeValue) -> ColumnElement[bool]:
        conds = []
        for i, (component, part) in enumerate(zip(param.components, v.parts, strict=False)):
            sub = self.registry.by_url(component.definition)
            if sub is None or i > 2:
                return false()
            col = {k: table.c[f"c{i}_{k}"] for k in ("system", "code", "num", "low", "high")}
            if sub.type == "token":
                conds.append(token_condition(col["system"], col["code"], None, None, part))
            elif sub.type == "reference":
                conds.append(_composite_reference(col, part))
            elif sub.type == "string":
                conds.append(string_condition(col["code"], col["code"], None, str(part)))
            elif sub.type == "number" and isinstance(part, NumberValue):
                conds.append(number_condition(col["num"], part.prefix, part.value))
            elif sub.type == "quantity" and isinstance(part, QuantityValue):
                conds.append(_composite_quantity(col, part))
            elif sub.type == "date" and isinstance(part, DateValue):
                conds.append(date_condition(col["low"], col["high"], part, self.now))
            else:
                return false()
        return and_(*conds)


# -- value conditions (pure functions of columns and a value) --------------------------------

def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def string_condition(norm_col: Col[Any], exact_col: Col[Any], modifier: str | None, text: str) -> ColumnElement[bool]:
    """Starts-with, case/accent-insensitive by default; ``:exact``; ``:contains``."""
    if modifier == "exact":
        return exact_col == clip(text, MAX_STRING)
    pattern = like_escape(clip(normalize(text), MAX_STRING))
    if modifier == "contains":
        return norm_col.like(f"%{pattern}%", escape="\\")
    return norm_col.like(f"{pattern}%", escape="\\")


def token_condition(system_col: Col[Any], code_col: Col[Any], text_col: Col[Any] | None, modifier: str | None,
                    v: Value, type_system_col: Col[Any] | None = None,
                    type_code_col: Col[Any] | None = None) -> ColumnElement[bool]:
    if modifier == "text" and text_col is not None:
        return text_col.like(f"{like_escape(clip(normalize(str(v)), MAX_STRING))}%", escape="\\")
    if isinstance(v, OfTypeValue) and type_code_col is not None and type_system_col is not None:
        conds = [type_code_col == clip(v.type_code, MAX_CODE), code_col == clip(v.value, MAX_CODE)]
        if v.type_system is not None:
            conds.append(type_system_col == clip(v.type_system, MAX_CODE))
        return and_(*conds)
    if isinstance(v, TokenValue):  # token_matches below is this condition in Python
        conds = []
        if v.code is not None:
            conds.append(code_col == clip(v.code, MAX_CODE))
        if v.system is not None:
            conds.append(system_col == clip(v.system, MAX_CODE))
        return and_(*conds) if conds else true()
    return code_col == clip(str(v), MAX_CODE)


class Unindexed(FunctionElement[Any]):
    """A column that SQLite must not look up through an index: rendered ``+column`` there
    (https://sqlite.org/optoverview.html#disqualifying_where_clause_terms_using_unary_), as is
    elsewhere. It keeps the column's type, so compared values bind the same way."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def token_matches(system: str | None, code: str | None, v: TokenValue) -> bool:
    """Whether an index row (system, code) meets a plain TokenValue: :func:`token_condition`
    evaluated in Python, for lookups of many values at once (``Repository.match_many``)."""
    return (v.code is None or code == clip(v.code, MAX_CODE)) and (v.system is None or
                                                                 system == clip(v.system, MAX_CODE))


def reference_condition(c: Any, modifier: str | None, v: Value) -> ColumnElement[bool]:
    if modifier == "identifier" and isinstance(v, TokenValue):
        conds = []
        if v.code is not None:
            conds.append(c.ident_value == clip(v.code, MAX_CODE))
        if v.system is not None:
            conds.append(c.ident_system == clip(v.system, MAX_CODE))
        return and_(*conds) if conds else false()
    if not isinstance(v, ReferenceValue):
        return false()
    if v.id is not None:
        cond = c.target_id == v.id
        return and_(cond, c.target_type == v.resource_type) if v.resource_type else cond
    if v.url is not None:
        return c.url == clip(v.url, MAX_URI)
    return false()


def _composite_reference(col: Mapping[str, Col[Any]], v: Value) -> ColumnElement[bool]:
    if isinstance(v, ReferenceValue) and v.id is not None:
        cond = col["code"] == v.id
        return and_(cond, col["system"] == v.resource_type) if v.resource_type else cond
    return false()


def _composite_quantity(col: Mapping[str, Col[Any]], v: QuantityValue) -> ColumnElement[bool]:
    canon = ucum.canonical(v.value, v.code) if v.code else None
    if canon is not None:
        return and_(number_condition(col["num"], v.prefix, canon[0]), col["code"] == clip(canon[1], MAX_CODE))
    conds = [number_condition(col["num"], v.prefix, v.value)]
    if v.code is not None:  # clipped as the index rows are (search/store.py)
        conds.append(col["code"] == clip(v.code, MAX_CODE))
    if v.system is not None:
        conds.append(col["system"] == clip(v.system, MAX_CODE))
    return and_(*conds)


def date_condition(low: Col[Any], high: Col[Any], v: DateValue, now: datetime) -> ColumnElement[bool]:
    """Range semantics of https://hl7.org/fhir/R4B/search.html#prefix for a stored [low, high]."""
    p = v.prefix
    if p == "eq":
        return and_(low >= v.low, high <= v.high)
    if p == "ne":
        return or_(low < v.low, high > v.high)
    if p == "gt":
        return high > v.high
    if p == "lt":
        return low < v.low
    if p == "ge":
        return high >= v.low
    if p == "le":
        return low <= v.high
    if p == "sa":
        return low > v.high
    if p == "eb":
        return high < v.low
    margin = _ap_margin(v, now)
    return and_(low <= _plus(v.high, margin), high >= _minus(v.low, margin))


def _ap_margin(v: DateValue, now: datetime) -> timedelta:
    """``ap``: overlap, widened by 10% of the distance from now (at least a day), as the spec suggests."""
    return max(abs(now - v.low) / 10, timedelta(days=1))


def _high_floor(v: DateValue, now: datetime) -> datetime | None:
    """A lower bound on a matching row's ``high`` implied by ``v`` (None: no bound)."""
    if v.prefix in ("eq", "ge"):
        return v.low
    if v.prefix in ("gt", "sa"):
        return v.high
    if v.prefix == "ap":
        return _minus(v.low, _ap_margin(v, now))
    return None


def _low_ceiling(v: DateValue, now: datetime) -> datetime | None:
    """An upper bound on a matching row's ``low`` implied by ``v`` (None: no bound)."""
    if v.prefix in ("eq", "le"):
        return v.high
    if v.prefix in ("lt", "eb"):
        return v.low
    if v.prefix == "ap":
        return _plus(v.high, _ap_margin(v, now))
    return None


def _minus(t: datetime, delta: timedelta) -> datetime:
    try:
        return t - delta
    except OverflowError:
        return MIN_INSTANT


def _plus(t: datetime, delta: timedelta) -> datetime:
    try:
        return t + delta
    except OverflowError:
        return MAX_INSTANT


def number_condition(col: Col[Any], prefix: str, value: Decimal) -> ColumnElement[bool]:
    """Numbers: ``eq`` within the value's implied precision, the others as plain comparisons."""
    lo, hi = number_range(value)
    fv, flo, fhi = float(value), float(lo), float(hi)
    if prefix == "eq":
        return and_(col >= flo, col < fhi)
    if prefix == "ne":
        return or_(col < flo, col >= fhi)
    if prefix in ("gt", "sa"):
        return col > fv
    if prefix in ("lt", "eb"):
        return col < fv
    if prefix == "ge":
        return col >= fv
    if prefix == "le":
        return col <= fv
    margin = abs(fv) / 10  # ap: within 10%
    return and_(col >= fv - margin, col <= fv + margin)


def quantity_condition(value_col: Col[Any], system_col: Col[Any], code_col: Col[Any], canon_value_col: Col[Any],
                       canon_code_col: Col[Any], v: QuantityValue) -> ColumnElement[bool]:
    """As given (value + system/code), or after UCUM canonicalisation on both sides."""
    conds = [number_condition(value_col, v.prefix, v.value)]
    if v.code is not None:  # clipped as the index rows are (search/store.py)
        conds.append(code_col == clip(v.code, MAX_CODE))
    if v.system is not None:
        conds.append(system_col == clip(v.system, MAX_CODE))
    as_given = and_(*conds)
    canon = ucum.canonical(v.value, v.code) if v.code else None
    if canon is None:
        return as_given
    return or_(as_given, and_(canon_code_col == clip(canon[1], MAX_CODE),
                              number_condition(canon_value_col, v.prefix, canon[0])))


def uri_condition(col: Col[Any], modifier: str | None, text: str) -> ColumnElement[bool]:
    text = clip(text, MAX_URI)
    if modifier == "above":  # stored uri is a prefix of the value
        return literal(text).like(col.concat("%"))
    if modifier == "below":
        return col.like(f"{like_escape(text)}%", escape="\\")
    return col == text


def _id_values(values: Sequence[Value]) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, TokenValue) and v.code is not None:
            out.append(v.code)
        elif isinstance(v, str):
            out.append(v)
    return out
