"""Run a SearchRequest: one SELECT for the page, one COUNT for the total, one SELECT per
``_include``/``_revinclude`` (and per ``:iterate`` round, at most three) — a bounded number of
statements whatever the size of the result.

Paging is keyset paging: the ``next`` link carries the sort values of the page's last row, so
rows written or deleted between pages never shift a page (no OFFSET over a moving set).
https://hl7.org/fhir/R4B/search.html#paging
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Float, Select, Text, and_, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import SQLCoreOperations

from ..clock import aware
from ..context import AccessPolicy
from ..outcome import invalid
from ..storage import models
from ..storage.repository import Stored, ordered
from . import cursor
from .compiler import REF, TABLES, Compiler, param_rows
from .registry import Registry
from .request import Include, SearchRequest, SortKey
from .values import UTC

R = models.Resource
MAX_ITERATE = 3
_SQL_TYPES: dict[str, Any] = {"str": Text(), "num": Float(precision=53), "time": DateTime(timezone=True)}
_MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass
class SearchResult:
    matches: list[Stored]
    included: list[Stored]
    total: int | None
    next_cursor: str | None


class SortColumn:
    """One ORDER BY key with a non-null sentinel, so keyset comparisons are total."""

    def __init__(self, expr: SQLCoreOperations[Any], descending: bool, kind: str, nullable: bool = True) -> None:
        self.descending = descending
        self.kind = kind  # str | num | time
        sentinel: Any = {"str": "\uffff" if not descending else "",
                         "num": 1e308 if not descending else -1e308,
                         "time": _MAX_TIME if not descending else _MIN_TIME}[kind]
        # A NOT NULL column stays bare, so ORDER BY can walk its index (the primary key for _id).
        self.expr: ColumnElement[Any] = (func.coalesce(expr, literal(sentinel, type_=_SQL_TYPES[kind]))
                                         if nullable else expr)  # type: ignore[assignment]

    def decode(self, raw: Any) -> Any:
        if self.kind == "time":
            return datetime.fromisoformat(raw)
        if self.kind == "num":
            return float(raw)
        return str(raw)


class Engine:
    """Searches of one request; ``access`` (the caller's token) confines matches in SQL and
    drops included resources it may not read."""

    def __init__(self, session: Session, registry: Registry, now: datetime, access: AccessPolicy | None = None) -> None:
        self.session = session
        self.registry = registry
        self.compiler = Compiler(registry, now, session.get_bind().dialect.name)
        self.access = access

    def search(self, req: SearchRequest, extra: Sequence[ColumnElement[bool]] = ()) -> SearchResult:
        rtype = req.resource_type
        visible = self.access.restriction(rtype, "s") if self.access is not None else None
        if visible is not None:
            extra = [*extra, R.id.in_(visible)]
        # Searches made only of index-table clauses (most) are answered from the index tables
        # first and touch `resources` only for the rows returned; the others join `resources`.
        sets = (self.compiler.index_sets(rtype, req.clauses)
                if not extra and not req.ids and not req.last_updated else None)
        where: list[ColumnElement[bool]] = [R.resource_type == rtype, R.deleted.is_(False), *extra]
        if sets is None:
            where += self.compiler.conditions(rtype, req.clauses, req.ids, req.last_updated)
        total = None
        if req.total != "none" or req.summary == "count":
            counted = (self.compiler.count(sets) if sets is not None
                       else select(func.count()).select_from(R).where(*where))
            total = self.session.scalar(counted) or 0
        if req.summary == "count" or req.count == 0:
            return SearchResult([], [], total, None)
        keys = [self._sort_column(rtype, k) for k in req.sort] + [SortColumn(R.id, False, "str", nullable=False)]
        after = _decode_cursor(req.cursor, keys) if req.cursor else None
        if sets is not None and len(sets) == 1 and len(keys) == 1:
            where.append(R.id.in_(self._page_ids(sets[0], after, req.count + 1)))
        elif sets is not None:
            # MATERIALIZED: PostgreSQL computes the match ids from the index tables before it
            # reads a resource; left to itself it joined `resources` first and fetched every
            # match of the less selective clause (1,444 rows for one page at 1M resources).
            ids = self.compiler.matching(sets).cte("matches").prefix_with("MATERIALIZED", dialect="postgresql")
            where.append(R.id.in_(select(ids.c[0])))
        stmt = select(R, *[k.expr for k in keys]).where(*where)
        if after is not None:
            stmt = stmt.where(_after(keys, after))
        stmt = stmt.order_by(*[k.expr.desc() if k.descending else k.expr.asc() for k in keys])
        rows = self.session.execute(stmt.limit(req.count + 1)).all()
        page = rows[:req.count]
        matches = [_stored(row[0]) for row in page]
        cursor = _encode_cursor(list(page[-1][1:]), keys) if len(rows) > req.count and page else None
        included = self._includes(req.includes, matches) if req.includes else []
        if included and self.access is not None:
            included = self.access.filter(self.session, included, "r")
        return SearchResult(matches, included, total, cursor)

    def _page_ids(self, ids: Select[Any], after: list[Any] | None, limit: int) -> list[str]:
        """The first ``limit`` ids (after the cursor) of a one-parameter search, in id order,
        read from its index table: with the lookup index ending in ``resource_id`` (tokens and
        references) this stops after ``limit`` entries instead of fetching every match from
        ``resources`` to sort them (43,543 primary-key probes and 430 ms for a common LOINC
        code at 1M resources; bench/RESULTS.md, finding 7)."""
        col = ids.selected_columns[0]
        if after is not None:
            ids = ids.where(col > after[0])
        return list(self.session.scalars(ids.distinct().order_by(col).limit(limit)))

    # -- sorting ---------------------------------------------------------------------------

    def _sort_column(self, rtype: str, key: SortKey) -> SortColumn:
        param = key.param
        if param.code == "_id":
            return SortColumn(R.id, key.descending, "str", nullable=False)
        if param.code == "_lastUpdated":
            return SortColumn(R.last_updated, key.descending, "time", nullable=False)
        table = TABLES[param.type]
        col, kind = {
            "string": ("value", "str"), "token": ("code", "str"), "reference": ("target_id", "str"),
            "uri": ("uri", "str"), "number": ("value", "num"), "quantity": ("value", "num"),
            "date": ("high" if key.descending else "low", "time"),
        }.get(param.type, ("", ""))
        if not col:
            raise invalid(f"_sort on {param.code} ({param.type}) is not supported", ("_sort",))
        agg = func.max if key.descending else func.min
        # coalesce(c, c): SQLite's min/max optimisation would otherwise read max(c) from the
        # (type, param, c) index, walking every row of the parameter until it meets this
        # resource's; as an expression it uses the (type, resource_id, param) index (finding 8).
        value = func.coalesce(table.c[col], table.c[col])
        expr = (select(agg(value)).where(param_rows(table, rtype, param.code, self.registry),
                                         table.c.resource_id == R.id).scalar_subquery())
        return SortColumn(expr, key.descending, kind)

    # -- _include / _revinclude --------------------------------------------------------------

    def _includes(self, includes: list[Include], matches: list[Stored]) -> list[Stored]:
        seen = {(s.resource_type, s.id) for s in matches}
        found: list[Stored] = []
        frontier = matches
        for round_ in range(MAX_ITERATE + 1):
            todo = includes if round_ == 0 else [i for i in includes if i.iterate]
            if not todo or not frontier:
                break
            fresh: list[Stored] = []
            for inc in todo:
                for stored in self._include_once(inc, frontier):
                    key = (stored.resource_type, stored.id)
                    if key not in seen:
                        seen.add(key)
                        fresh.append(stored)
            found.extend(fresh)
            frontier = fresh
        return found

    def _include_once(self, inc: Include, frontier: list[Stored]) -> list[Stored]:
        if inc.reverse:
            # _revinclude: resources of source_type whose reference points at a frontier resource
            # of the same type and id (types matter: client-assigned ids repeat across types).
            keys = [(s.resource_type, s.id) for s in frontier
                    if inc.target_type is None or s.resource_type == inc.target_type]
            if not keys:
                return []
            refs = select(REF.c.resource_id).where(REF.c.resource_type == inc.source_type,
                                                   tuple_(REF.c.target_type, REF.c.target_id).in_(keys))
            if inc.param is not None:
                refs = refs.where(param_rows(REF, inc.source_type, inc.param.code, self.registry))
            stmt = select(R).where(R.resource_type == inc.source_type, R.id.in_(refs), R.deleted.is_(False))
        else:
            ids = [s.id for s in frontier if s.resource_type == inc.source_type]
            if not ids:
                return []
            # No `target_id IS NOT NULL`: the tuple IN below never matches a NULL, and SQLite
            # read the condition as a range over the whole (type, param) of the lookup index
            # (every Observation.patient reference for 20 Observations at 1M resources).
            targets = select(REF.c.target_type, REF.c.target_id).where(
                REF.c.resource_type == inc.source_type, REF.c.resource_id.in_(ids))
            if inc.param is not None:
                targets = targets.where(param_rows(REF, inc.source_type, inc.param.code, self.registry))
            if inc.target_type is not None:
                targets = targets.where(REF.c.target_type == inc.target_type)
            stmt = select(R).where(tuple_(R.resource_type, R.id).in_(targets), R.deleted.is_(False))
        return [_stored(r) for r in self.session.scalars(stmt.order_by(R.resource_type, R.id))]


def _after(keys: list[SortColumn], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (mixed-direction) order of ``keys``."""
    alternatives = []
    for i, key in enumerate(keys):
        same = [keys[j].expr == values[j] for j in range(i)]
        beyond = key.expr < values[i] if key.descending else key.expr > values[i]
        alternatives.append(and_(*same, beyond))
    return or_(*alternatives)


def _encode_cursor(values: list[Any], keys: list[SortColumn]) -> str:
    return cursor.encode([v.isoformat() if isinstance(v, datetime) else v for v in values])


def _decode_cursor(token: str, keys: list[SortColumn]) -> list[Any]:
    raw = cursor.decode(token, len(keys))
    try:
        return [k.decode(v) for k, v in zip(keys, raw, strict=True)]
    except (ValueError, TypeError):
        raise invalid("_cursor is not a page token from this search's links", ("_cursor",)) from None


def _stored(row: models.Resource) -> Stored:
    return Stored(row.resource_type, row.id, row.version_id, aware(row.last_updated), row.deleted,
                  ordered(row.content))
