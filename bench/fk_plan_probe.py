"""PostgreSQL: show that foreign-key checks get slow on connections opened while the database
was empty (the cause of the slow first ingest in bench/RESULTS.md).

    .venv/bin/python bench/fk_plan_probe.py [--bundles 20]

Loads the first ``--bundles`` corpus Bundles through one in-process app into a fresh schema, so
its pooled connection runs its first foreign-key checks on empty tables, as any hub process that
starts on an empty database does. Then, on that connection and on a new one, it times the
``fk_search_token_resource`` trigger over a 20,000-row ``INSERT … SELECT`` into ``search_token``
(rolled back), prints the plan PostgreSQL uses for the check (``auto_explain`` of the nested
statement), and times the old connection again with ``plan_cache_mode = force_custom_plan``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from sqlalchemy import text  # noqa: E402

from bench import corpus as corpus_mod  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, bench_database  # noqa: E402
from bench.ingest import BASE_URL, FHIR_JSON, warm_up  # noqa: E402
from healthhub import create_app  # noqa: E402
from healthhub.config import Config  # noqa: E402

INSERT = ("INSERT INTO search_token (resource_type, resource_id, param, system, code, text, type_system, "
          "type_code) SELECT resource_type, resource_id, param, system, code, text, type_system, type_code "
          "FROM search_token LIMIT {n}")


def trigger_time(conn: Any, n: int = 20000, custom_plans: bool = False) -> str:
    """EXPLAIN ANALYZE of an n-row INSERT … SELECT, rolled back: the FK trigger line and total.
    ``custom_plans``: with ``plan_cache_mode = force_custom_plan`` for that transaction."""
    tx = conn.begin()
    try:
        if custom_plans:
            conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        plan = [r[0] for r in conn.execute(text("EXPLAIN (ANALYZE) " + INSERT.format(n=n)))]
    finally:
        tx.rollback()
    return "; ".join(line.strip() for line in plan if "fk_search_token" in line or "Execution Time" in line)


def cached_check_plan(conn: Any) -> str:
    """The plan of the FK check query as this connection runs it (auto_explain, nested statements)."""
    messages: list[str] = []
    conn.connection.dbapi_connection.add_notice_handler(lambda d: messages.append(d.message_primary or ""))
    tx = conn.begin()
    try:
        for stmt in ("LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                     "SET LOCAL auto_explain.log_nested_statements = on", "SET LOCAL client_min_messages = log"):
            conn.execute(text(stmt))
        conn.execute(text(INSERT.format(n=1)))
    finally:
        tx.rollback()
    checks = [m for m in messages if re.search(r"FOR KEY SHARE", m)]
    return checks[-1] if checks else "(no plan captured)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", type=int, default=20)
    args = p.parse_args()
    corpus = corpus_mod.load_corpus()
    with bench_database("postgres", os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)) as db:
        app = create_app(Config(database_url=db.url, base_url=BASE_URL))
        client = app.test_client()
        try:
            warm_up(corpus, client)
            for f in corpus.ordered[:args.bundles]:
                resp = client.post("/fhir", data=f.path.read_bytes(),
                                   headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"})
                if resp.status_code != 200:
                    raise RuntimeError(f"{f.path.name}: {resp.status_code}")
            print(f"loaded {db.count():,} resources through one app")
            with app.extensions["healthhub.db"].engine.connect() as conn:
                print("connection opened on the empty database:", trigger_time(conn))
                print(cached_check_plan(conn))
                print("same connection, force_custom_plan:      ", trigger_time(conn, custom_plans=True))
        finally:
            app.extensions["healthhub.db"].dispose()
        fresh = db.engine()
        try:
            with fresh.connect() as conn:
                print("new connection:                          ", trigger_time(conn))
                print(cached_check_plan(conn))
        finally:
            fresh.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
