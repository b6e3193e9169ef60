"""Measurement (c): the SQL the search engine generates for common searches, and its plan.

Each search is parsed with ``healthhub.search.parser.parse`` and run once with
``healthhub.search.engine.Engine`` in a session of the benchmark database, exactly as the
``/fhir`` search view does; a ``before_cursor_execute`` listener captures every statement it
sends (the COUNT for ``total``, the page SELECT, one SELECT per ``_include``). Each statement is
then explained with its own parameters: ``EXPLAIN (ANALYZE, BUFFERS)`` on PostgreSQL (after
``VACUUM (ANALYZE)``, see :meth:`BenchDatabase.analyze`), ``EXPLAIN QUERY PLAN`` on SQLite.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import event
from sqlalchemy.orm import Session

from healthhub.clock import utcnow
from healthhub.search.engine import Engine
from healthhub.search.parser import parse
from healthhub.search.registry import default_registry
from healthhub.storage.models import Base

from .database import BenchDatabase

#: Real tables: SQLite also prints SCAN for the rows of a subquery or CTE (``anon_1``, ``matches``).
_TABLES = frozenset(Base.metadata.tables)
_SEQ_SCAN = re.compile(r"Seq Scan on (\w+)")
_SQLITE_SCAN = re.compile(r"\bSCAN (\w+)")  # a full table (or full index) scan — or of a subquery's rows


@dataclass
class Plan:
    role: str  # "count", "page", "include", …
    sql: str
    plan: str
    uses_index: bool
    full_scans: list[str]  # tables read without an index
    execution_ms: float | None  # PostgreSQL EXPLAIN ANALYZE "Execution Time"

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Explained:
    name: str
    query: str
    plans: list[Plan]

    @property
    def uses_index(self) -> bool:
        return all(p.uses_index for p in self.plans)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "query": self.query, "uses_index": self.uses_index,
                "full_scans": sorted({t for p in self.plans for t in p.full_scans}),
                "plans": [p.as_json() for p in self.plans]}


def explain_search(db: BenchDatabase, name: str, query: str) -> Explained:
    """Run ``Type?params`` once through the engine and explain every statement it sent."""
    rtype, _, qs = query.partition("?")
    registry = default_registry()
    req = parse(rtype, parse_qsl(qs, keep_blank_values=True), registry, base_url="http://bench.local/fhir")
    engine = db.engine()
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):  # WITH: the page of a multi-clause search
            captured.append((statement, parameters))

    try:
        event.listen(engine, "before_cursor_execute", capture)
        with Session(engine) as session, session.begin():
            Engine(session, registry, utcnow()).search(req)
        event.remove(engine, "before_cursor_execute", capture)
        plans: list[Plan] = []
        with engine.connect() as conn:
            for i, (statement, parameters) in enumerate(captured):
                # Engine.search sends the COUNT for ``total`` first, then (one-parameter searches
                # sorted by id) the page's ids from the index table, then the page, then includes.
                if i == 0 and "count(*)" in statement.lower():
                    role = "count"
                elif not plans or plans[-1].role == "count" and "FROM resources" not in statement:
                    role = "page ids" if "FROM resources" not in statement else "page"
                elif not any(p.role == "page" for p in plans):
                    role = "page"
                else:
                    role = "include"
                plans.append(_explain(db.kind, conn, role, statement, parameters))
    finally:
        engine.dispose()
    return Explained(name, query, plans)


def _explain(kind: str, conn: Any, role: str, statement: str, parameters: Any) -> Plan:
    if kind == "postgres":
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
        plan = "\n".join(r[0] for r in rows)
        m = re.search(r"Execution Time: ([\d.]+) ms", plan)
        return Plan(role, statement, plan, "Index" in plan, sorted(set(_SEQ_SCAN.findall(plan))),
                    float(m.group(1)) if m else None)
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    plan = "\n".join(str(r[-1]) for r in rows)
    return Plan(role, statement, plan, "USING" in plan, sorted({t for t in _SQLITE_SCAN.findall(plan) if t in _TABLES}), None)
