"""SQLite: ``_sort`` by a date parameter without statistics (finding 8 of bench/RESULTS.md).

    .venv/bin/python bench/sqlite_sort_probe.py [--resources 60000] [--queries 60]

Loads the corpus and re-identified copies (in-process) into a temporary SQLite database until it
holds ``--resources`` resources, then times ``Observation?patient=…&code=…`` through the search
engine with and without ``_sort=-date``; then with an extra index on ``search_date (resource_type,
resource_id, param)``; then without it after ``ANALYZE``. Prints the plan of the sort key each
time (the last statement of the search, ``EXPLAIN QUERY PLAN``).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from sqlalchemy import Engine as SqlEngine  # noqa: E402
from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench import corpus as corpus_mod  # noqa: E402
from bench.database import BenchDatabase, bench_database  # noqa: E402
from bench.ingest import BASE_URL, FHIR_JSON, ingest_corpus  # noqa: E402
from bench.workload import build_pools  # noqa: E402
from healthhub import create_app  # noqa: E402
from healthhub.clock import utcnow  # noqa: E402
from healthhub.config import Config  # noqa: E402
from healthhub.search.engine import Engine  # noqa: E402
from healthhub.search.parser import parse  # noqa: E402
from healthhub.search.registry import default_registry  # noqa: E402


def search(engine: SqlEngine, pid: str, code: str, sort: bool) -> list[tuple[str, Any]]:
    """Run one search; return the statements it sent."""
    registry = default_registry()
    pairs = [("patient", pid), ("code", code)] + ([("_sort", "-date")] if sort else [])
    req = parse("Observation", pairs, registry)
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:
            Engine(session, registry, utcnow()).search(req)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


def measure(db: BenchDatabase, queries: list[tuple[str, str]], sort: bool, label: str) -> None:
    engine = db.engine()
    try:
        ms = []
        for pid, code in queries:
            t0 = time.perf_counter()
            search(engine, pid, code, sort)
            ms.append((time.perf_counter() - t0) * 1000)
        ms.sort()
        print(f"{label:<58} p50 {ms[len(ms) // 2]:6.1f} ms   max {ms[-1]:6.1f} ms")
        if sort:
            statement, parameters = search(engine, *queries[0], sort=True)[-1]
            with engine.connect() as conn:
                plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            print("    sort key:", next((p for p in plan if "search_date" in p), "?"))
    finally:
        engine.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resources", type=int, default=60000)
    p.add_argument("--queries", type=int, default=60)
    args = p.parse_args()
    corpus = corpus_mod.load_corpus()
    with bench_database("sqlite") as db:
        _, loaded = ingest_corpus(db, corpus, lambda _msg: None)
        pools = build_pools(loaded)
        copies = corpus_mod.CopyFactory(corpus.patients, corpus_mod.pinned_references(loaded))
        app = create_app(Config(database_url=db.url, base_url=BASE_URL))
        client = app.test_client()
        try:
            while db.count() < args.resources:
                c = next(copies)
                resp = client.post("/fhir", data=c.body, headers={"Content-Type": FHIR_JSON,
                                                                  "Prefer": "return=minimal"})
                if resp.status_code != 200:
                    raise RuntimeError(f"copy of {c.source}: {resp.status_code}")
        finally:
            app.extensions["healthhub.db"].dispose()
        print(f"{db.count():,} resources stored")
        rng = random.Random(1)
        queries = [pools.patient_codes[rng.randrange(len(pools.patient_codes))] for _ in range(args.queries)]
        measure(db, queries, True, "patient + code + _sort=-date")
        measure(db, queries, False, "patient + code")
        engine = db.engine()
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX probe_search_date_res_param ON search_date "
                              "(resource_type, resource_id, param)"))
        measure(db, queries, True, "… + _sort, extra index (resource_type, resource_id, param)")
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX probe_search_date_res_param"))
            conn.execute(text("ANALYZE"))
        engine.dispose()
        measure(db, queries, True, "… + _sort, no extra index, after ANALYZE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
