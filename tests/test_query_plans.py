"""SQLite plans from the schema alone until the hub's first ANALYZE (at 1,000 versions, see
``storage/planner_stats.py``); these guard the plans the benchmark showed to matter at 1M
resources (bench/RESULTS.md), without statistics and with them: every index-table read is a
SEARCH on the intended index, never a walk of all rows of a type or parameter."""
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
    for reads in _searched_plans(sqlite_engine, rtype, query):
        assert all(r.startswith("SEARCH") for r in reads), reads
        # a lookup names more than the type: "(resource_type=?)" alone walks every row of it
        assert not any(r.endswith("(resource_type=?)") for r in reads), reads
        # nor a range over every reference of a parameter (`_include` did, at 1M resources)
        assert not any("target_id>?" in r or "target_id<?" in r for r in reads), reads
        # the sort key is read through the per-resource index, not by walking the parameter
        assert not any("search_date USING INDEX ix_search_date_1 (resource_type=? AND param=?)" == r.split(" ", 1)[1]
                       for r in reads), reads


def _searched_plans(engine, rtype, query) -> list[list[str]]:
    registry = default_registry()
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, many):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:
            Engine(session, registry, utcnow()).search(parse(rtype, query, registry))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return [index_reads(plan(engine, statement, parameters)) for statement, parameters in sent]


def _patients_with_observations(client, patients: int, per_patient: int) -> list[str]:
    entries = []
    for p in range(patients):
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{p:012d}",
                        "resource": {"resourceType": "Patient", "gender": "female"},
                        "request": {"method": "POST", "url": "Patient"}})
        for o in range(per_patient):
            entries.append({"resource": {"resourceType": "Observation", "status": "final",
                                         "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]},
                                         "subject": {"reference": f"urn:uuid:00000000-0000-0000-0000-{p:012d}"},
                                         "effectiveDateTime": f"2020-01-{o % 28 + 1:02d}"},
                            "request": {"method": "POST", "url": "Observation"}})
    resp = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200, resp.json
    return [e["response"]["location"].split("/")[1] for e in resp.json["entry"]
            if e["response"]["location"].startswith("Patient/")]


def test_include_reads_references_of_the_page_only(sqlite_engine, client):
    _patients_with_observations(client, 3, 30)
    for reads in _searched_plans(sqlite_engine, "Observation",
                                 [("code", "http://loinc.org|1-8"), ("_include", "Observation:patient")]):
        assert not any("target_id>?" in r for r in reads), reads
        assert all(r.startswith("SEARCH") for r in reads), reads


def test_statistics_follow_growth_and_start_from_the_patient(sqlite_engine, app, client):
    """After 1,000 versions the hub has run ANALYZE; with statistics SQLite starts
    ``patient+code`` from the patient's references (10 rows here), not from the code (1,000)."""
    stats = app.extensions["healthhub.db"].planner_stats
    stats.check_every = 0
    patients = _patients_with_observations(client, 100, 10)
    with sqlite_engine.connect() as conn:
        analyzed = {r[0] for r in conn.exec_driver_sql("SELECT tbl FROM sqlite_stat1")}
        marker = conn.exec_driver_sql("SELECT value FROM app_state WHERE key = 'planner_analyzed_at_versions'").scalar()
    assert {"search_token", "search_reference", "resources"} <= analyzed
    assert int(marker) >= 1000
    for reads in _searched_plans(sqlite_engine, "Observation",
                                 [("patient", patients[7]), ("code", "http://loinc.org|1-8")]):
        refs = [r for r in reads if "search_reference" in r]
        if refs:
            assert "target_id=?" in refs[0], reads
            # ... and then probes the code's lookup index per reference, instead of listing all
            # 1,000 Observations with the code first (an IN subquery did: 16,113 rows at 1M)
            tokens = [r for r in reads if "search_token" in r]
            assert tokens and all("resource_id=?" in r for r in tokens), reads
    # a date window reads each width class by a range on `low`, never every row ending after
    # the window start through `high` (SQLite did for the widest class, with statistics, at 1M)
    dates = [r for reads in _searched_plans(sqlite_engine, "Observation",
                                            [("date", "ge2020-01-05"), ("date", "lt2020-01-09")])
             for r in reads if "search_date" in r]
    assert dates and all("low<?" in r and "high" not in r for r in dates), dates
    # ... per width class, from the covering (span, low, high, resource_id) index: no table lookup
    assert all("COVERING INDEX ix_search_date_2 (resource_type=? AND param=? AND span=?" in r for r in dates), dates
    # not doubled since: no second ANALYZE
    client.post("/fhir/Patient", json={"resourceType": "Patient"})
    with sqlite_engine.connect() as conn:
        again = conn.exec_driver_sql("SELECT value FROM app_state WHERE key = 'planner_analyzed_at_versions'").scalar()
    assert again == marker



def test_date_window_branches_keep_sqlite_off_the_high_index():
    """Whatever the statistics say, each width-class branch of a date window is compiled with
    `+search_date.high` on SQLite (no index for that term) and the bare column elsewhere."""
    from sqlalchemy.dialects import postgresql, sqlite

    from healthhub.search.compiler import Compiler

    registry = default_registry()
    req = parse("Encounter", [("date", "ge2000-07-01"), ("date", "lt2000-08-01")], registry)
    stmt = Compiler(registry, utcnow()).ids("Encounter", req.clauses)
    on_sqlite = str(stmt.compile(dialect=sqlite.dialect()))
    branches = on_sqlite.count("search_date.span = ")
    assert branches >= 5 and on_sqlite.count("+search_date.high") == branches
    assert "+search_date" not in str(stmt.compile(dialect=postgresql.dialect()))


def test_postgresql_statistics_follow_growth_too(app, client):
    """PostgreSQL's autovacuum can be off (it is on the benchmark machine): then the hub
    analyses its own tables when the store doubles; with it on, it leaves them to it. Read from ``pg_class.reltuples``
    (written by ANALYZE in its transaction; ``pg_stat_user_tables.last_analyze`` is reported
    by the analysing backend a moment later): -1 until a table was first analysed or vacuumed."""
    engine = app.extensions["healthhub.db"].engine
    if engine.dialect.name != "postgresql":
        pytest.skip("the SQLite side is test_statistics_follow_growth_and_start_from_the_patient")
    stats = app.extensions["healthhub.db"].planner_stats
    stats.check_every = 0
    tables = ("search_token", "search_reference", "resources", "resource_versions")

    def reltuples() -> dict[str, float]:
        with engine.connect() as conn:
            return {t: conn.exec_driver_sql(f"SELECT reltuples FROM pg_class WHERE oid = '{t}'::regclass").scalar()
                    for t in tables}

    def marker() -> str | None:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT value FROM app_state "
                                        "WHERE key = 'planner_analyzed_at_versions'").scalar()

    with engine.connect() as conn:
        autovacuum = conn.exec_driver_sql("SELECT current_setting('autovacuum')").scalar()
    _patients_with_observations(client, 50, 10)  # 550 versions: not due yet
    assert marker() is None
    _patients_with_observations(client, 50, 10)  # 1,100: due
    if autovacuum != "off":  # PostgreSQL's daemon keeps them: the hub does not analyse
        assert marker() is None and not stats.enabled
        return
    assert int(marker() or 0) >= 1000
    # the planner now knows the tables' sizes instead of guessing
    assert all(n >= 1000 for n in reltuples().values()), reltuples()
