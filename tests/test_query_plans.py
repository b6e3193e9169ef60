"""SQLite has no statistics (the hub never runs ANALYZE), so its plans follow from the schema
alone; these guard the plans the benchmark showed to matter at 1M resources
(bench/RESULTS.md): every index-table read is a SEARCH on the intended index, never a walk of
all rows of a type."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from healthhub.clock import utcnow
from healthhub.search.compartment import everything
from healthhub.search.engine import Engine
from healthhub.search.parser import parse
from healthhub.search.registry import default_registry


@pytest.fixture
def sqlite_engine(app):
    engine = app.extensions["healthhub.db"].engine
    if engine.dialect.name != "sqlite":
        pytest.skip("plans without statistics are a SQLite matter")
    return engine


def plan(engine, statement, parameters=()) -> list[str]:
    with engine.connect() as conn:
        return [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]


def index_reads(lines: list[str]) -> list[str]:
    """Lines that read a table or index (not constant rows or subquery results)."""
    return [line for line in lines if re.match(r"(SEARCH|SCAN) (search_\w+|resources)", line)]


def test_everything_reads_references_by_resource(sqlite_engine):
    stmt = everything("p1").compile(sqlite_engine, compile_kwargs={"literal_binds": True})
    reads = index_reads(plan(sqlite_engine, str(stmt)))
    assert reads and all(r.startswith("SEARCH") for r in reads), reads
    assert any("ix_search_reference_resource (resource_type=? AND resource_id=?)" in r for r in reads), reads


@pytest.mark.parametrize("rtype,query", [
    ("Patient", [("name", "dick")]),
    ("Observation", [("patient", "Patient/1"), ("code", "http://loinc.org|1-8"), ("_sort", "-date")]),
    ("Observation", [("code", "http://loinc.org|1-8"), ("_include", "Observation:patient")]),
    ("Observation", [("patient", "Patient/1"), ("date", "ge2020-01-01"), ("date", "lt2021-01-01")]),
])
def test_searches_use_indexes(sqlite_engine, rtype, query):
    registry = default_registry()
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, many):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    event.listen(sqlite_engine, "before_cursor_execute", capture)
    try:
        with Session(sqlite_engine) as session:
            Engine(session, registry, utcnow()).search(parse(rtype, query, registry))
    finally:
        event.remove(sqlite_engine, "before_cursor_execute", capture)
    for statement, parameters in sent:
        reads = index_reads(plan(sqlite_engine, statement, parameters))
        assert all(r.startswith("SEARCH") for r in reads), (statement, reads)
        # a lookup names more than the type: "(resource_type=?)" alone walks every row of it
        assert not any(r.endswith("(resource_type=?)") for r in reads), (statement, reads)
        # the sort key is read through the per-resource index, not by walking the parameter
        assert not any("search_date USING INDEX ix_search_date_1 (resource_type=? AND param=?)" == r.split(" ", 1)[1]
                       for r in reads), reads
