"""HealthHub benchmark: ingest, search/read latency over HTTP at several scales, EXPLAIN plans.

    .venv/bin/python bench/run.py [--db sqlite|postgres|both] [--scales 10000,100000]
                                  [--out bench/results.json]

Per database (a fresh PostgreSQL schema ``bench_<random>`` from ``BENCH_POSTGRES_URL``, or a
temporary SQLite file; both removed at the end):

(a) the Synthea corpus (../shared/data/synthea) is ingested through the hub (in-process Flask
    test client, ``POST /fhir``) and through a minimal parse + validate + insert path; after the
    smallest scale is measured, a second pass does the same with one re-identified copy of every
    patient Bundle, on new database connections;
(b) for each scale, re-identified copies of the patient Bundles are POSTed to a
    ``healthhub serve`` (gunicorn) until the store holds at least that many resources, then
    read-by-id and five searches are timed over HTTP;
(c) the SQL the engine generates for common searches is explained (after VACUUM ANALYZE on
    PostgreSQL).

A scale smaller than the corpus (13,048 resources) is measured at the corpus size. Prints
tables, writes JSON (after each database, so a later failure keeps earlier results).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import orjson  # noqa: E402

from bench import access  # noqa: E402
from bench import corpus as corpus_mod  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, BenchDatabase, bench_database  # noqa: E402
from bench.explain import Explained, explain_search  # noqa: E402
from bench.ingest import IngestResult, ingest_copies, ingest_corpus  # noqa: E402
from bench.machine import describe  # noqa: E402
from bench.server import HubServer  # noqa: E402
from bench.workload import (  # noqa: E402
    Pools,
    QueryStats,
    build_pools,
    grow,
    read_query,
    run_query,
    sample_read_ids,
    search_queries,
)

# Targets of the issue.
INGEST_MIN_RATIO = 0.5
INGEST_MIN_RATE = 1000.0
P99_MAX_GROWTH = 3.0
READ_P50_MAX_MS = 5.0
AUDIT_MAX_OVERHEAD = 0.25


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--scales", default="10000,100000",
                   help="comma-separated resource counts to measure at (default 10000,100000)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    p.add_argument("--requests", type=int, default=200, help="requests per query and scale (default 200)")
    p.add_argument("--clients", type=int, default=2,
                   help="concurrent clients for the throughput pass (default 2)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--grow-parallel", type=int, default=2,
                   help="copies POSTed at once while growing the data set (default 2)")
    p.add_argument("--seed", type=int, default=20261127)
    args = p.parse_args(argv)
    try:
        args.scales = sorted({int(s.replace("_", "")) for s in args.scales.split(",") if s.strip()})
    except ValueError:
        p.error(f"--scales must be comma-separated integers, got {args.scales!r}")
    if not args.scales or min(args.scales) <= 0:
        p.error("--scales needs at least one positive resource count")
    return args


# -- one database -----------------------------------------------------------------------------

def explain_queries(pools: Pools) -> list[tuple[str, str]]:
    """The common searches whose SQL is explained (a fixed element of each pool: deterministic)."""
    pid, code = pools.patient_codes[len(pools.patient_codes) // 2]
    ypid, year = pools.patient_years[len(pools.patient_years) // 2]
    ge, lt = pools.encounter_months[len(pools.encounter_months) // 2]
    return [
        ("patient+code", f"Observation?patient={pid}&code={code}&_sort=-date"),
        ("patient+date range", f"Observation?patient={ypid}&date=ge{year}-01-01&date=lt{year + 1}-01-01"),
        ("identifier", f"Patient?identifier={pools.identifiers[0]}"),
        ("name", f"Patient?name={pools.patients[0][1]}"),
        ("date range (Encounter)", f"Encounter?date=ge{ge}&date=lt{lt}"),
        ("code + _include", f"Observation?code={pools.common_codes[0]}&_include=Observation:patient"),
    ]


def run_database(kind: str, args: argparse.Namespace, corpus: corpus_mod.Corpus) -> dict[str, Any]:
    log(f"\n=== {kind} ===")
    pg_url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    with bench_database(kind, pg_url) as db:
        log(f"database: {db.label}")
        log("(a) ingest")
        ingest, loaded = ingest_corpus(db, corpus, log)
        pools = build_pools(loaded)
        copies = corpus_mod.CopyFactory(corpus.patients, corpus_mod.pinned_references(loaded))
        searches = search_queries(pools, args.requests, args.seed)
        server_log = Path(tempfile.gettempdir()) / f"healthhub-bench-{kind}-{os.getpid()}.log"
        log(f"(b) starting healthhub serve --workers {args.workers} (log: {server_log})")
        scales: list[dict[str, Any]] = []
        with HubServer(db.url, server_log, args.workers) as server:
            for i, target in enumerate(args.scales):
                scales.append(run_scale(db, server, target, copies, pools, searches, args))
                if i == 0:
                    scales[0]["audit"] = audit_overhead(db, server, server_log, args)
                    # (a) pass 2, after the smallest scale is measured at the corpus size: one copy
                    # of every patient Bundle, in-process on new connections.
                    log("(a) ingest, pass 2")
                    ingest_copies(db, corpus, [next(copies) for _ in corpus.patients], ingest, log)
        return {"database": db.label, "ingest": ingest.as_json(), "scales": scales,
                "_ingest": ingest}


def run_scale(db: BenchDatabase, server: HubServer, target: int, copies: corpus_mod.CopyFactory,
              pools: Pools, searches: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Grow to ``target``, VACUUM ANALYZE (PostgreSQL), time the queries, explain the searches."""
    current = db.count()
    log(f"-- scale {target:,}: {current:,} resources stored")
    grown = grow(server.base, current, target, copies, args.grow_parallel, log)
    if grown.bundles:
        log(f"   grew by {grown.resources:,} resources in {grown.bundles} copies: {grown.seconds:,.0f} s, "
            f"{grown.rate:,.0f} resources/s ({args.grow_parallel} at once over HTTP)")
    stored = db.count()
    size = db.size_bytes()
    t0 = time.perf_counter()
    db.analyze()
    analyze_s = time.perf_counter() - t0
    ids = sample_read_ids(db, 1000, args.seed)
    queries = [read_query(ids, args.requests, args.seed), *searches]
    stats: list[QueryStats] = []
    for q in queries:
        s = run_query(server.base, q, args.clients)
        log(f"   {q.label:<52} p50 {s.p50_ms:8.1f} ms  p99 {s.p99_ms:8.1f} ms  "
            f"{s.rps_1_client:7.1f} req/s (1 client) {s.rps_concurrent:7.1f} req/s ({s.clients} clients)  "
            f"matches/resp {s.mean_matches:.1f}" + (f"  errors {s.errors}" if s.errors else ""))
        stats.append(s)
    log(f"(c) EXPLAIN at {stored:,} resources")
    explained: list[Explained] = [explain_search(db, name, q) for name, q in explain_queries(pools)]
    for e in explained:
        scans = sorted({t for p in e.plans for t in p.full_scans})
        log(f"   {e.name:<24} index used in every statement: {'yes' if e.uses_index else 'NO'}"
            + (f"; full scans of {', '.join(scans)}" if scans else "") + f"   [{e.query}]")
        if db.kind == "postgres" and target == args.scales[-1]:  # full plans at the largest scale
            for p in e.plans:
                log(f"     -- {p.role}: {p.execution_ms} ms\n" + _indent(p.plan, 7))
    return {"target": target, "resources": stored, "size_bytes": size, "grow": grown.as_json(),
            "analyze_seconds": round(analyze_s, 1),
            "queries": {s.name: s.as_json() for s in stats}, "explain": [e.as_json() for e in explained]}


def audit_overhead(db: BenchDatabase, server: HubServer, server_log: Path, args: argparse.Namespace
                   ) -> dict[str, Any]:
    """Read-by-id throughput with the audit trail on (the main server) and off (a second server
    on the same database), measured alternately, twice each, so drift hits both alike."""
    ids = sample_read_ids(db, 1000, args.seed + 1)
    query = read_query(ids, args.requests, args.seed + 1)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    p50: dict[str, list[float]] = {"on": [], "off": []}
    with HubServer(db.url, server_log, args.workers, audit=False) as quiet:
        for _ in range(2):
            for label, hub in (("on", server), ("off", quiet)):
                s = run_query(hub.base, query, args.clients)
                rates[label].append(s.rps_concurrent)
                p50[label].append(s.p50_ms)
    on, off = sum(rates["on"]) / 2, sum(rates["off"]) / 2
    overhead = 1 - on / off
    log(f"   audit trail: read-by-id {on:,.0f} req/s on, {off:,.0f} req/s off ({args.clients} clients): "
        f"overhead {overhead:.1%} (p50 {min(p50['on']):.1f} vs {min(p50['off']):.1f} ms)")
    return {"rps_on": round(on, 1), "rps_off": round(off, 1), "overhead": round(overhead, 3),
            "p50_ms_on": round(min(p50["on"]), 2), "p50_ms_off": round(min(p50["off"]), 2),
            "runs": {"on": rates["on"], "off": rates["off"]}}


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


# -- report -----------------------------------------------------------------------------------

def targets(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue, per database, with the measured value and pass/fail."""
    out: list[dict[str, Any]] = []
    for kind, run in runs.items():
        ingest: IngestResult = run["_ingest"]
        for group in ("transaction", "all", "copies/fresh-connections"):
            if not ingest.hub[group].bundles:
                continue
            ratio, rate = ingest.ratio(group), ingest.hub[group].rate
            if kind == "postgres":
                out.append({"db": kind, "target": f"ingest ({group}) >= {INGEST_MIN_RATIO:.0%} of minimal path",
                            "value": round(ratio, 3), "pass": ratio >= INGEST_MIN_RATIO})
                out.append({"db": kind, "target": f"ingest ({group}) >= {INGEST_MIN_RATE:,.0f} resources/s",
                            "value": round(rate, 1), "pass": rate >= INGEST_MIN_RATE})
        scales = run["scales"]
        audit = scales[0].get("audit") if scales else None
        if audit:
            out.append({"db": kind, "target": f"audit overhead on read-by-id req/s <= {AUDIT_MAX_OVERHEAD:.0%}",
                        "value": audit["overhead"], "pass": audit["overhead"] <= AUDIT_MAX_OVERHEAD})
        for sc in scales:
            p50 = sc["queries"]["read"]["p50_ms"]
            out.append({"db": kind, "target": f"read-by-id p50 <= {READ_P50_MAX_MS:g} ms at {sc['resources']:,}",
                        "value": p50, "pass": p50 <= READ_P50_MAX_MS})
        if len(scales) >= 2:
            small, large = scales[0], scales[-1]
            for name, q in large["queries"].items():
                if name == "read":
                    continue
                growth = q["p99_ms"] / small["queries"][name]["p99_ms"]
                out.append({"db": kind, "target": f"{q['label']} p99 at {large['resources']:,} <= "
                                                  f"{P99_MAX_GROWTH:g}x p99 at {small['resources']:,}",
                            "value": round(growth, 2), "pass": growth <= P99_MAX_GROWTH})
    return out


def print_report(runs: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    log("\n=== (a) ingest: hub (POST /fhir) vs minimal path (parse + validate + insert) ===")
    log(f"{'db':<9}{'bundles':<30}{'resources':>10}{'hub res/s':>11}{'minimal res/s':>15}{'hub/minimal':>13}")
    for kind, run in runs.items():
        for group, g in run["ingest"]["groups"].items():
            log(f"{kind:<9}{group:<30}{g['resources']:>10,}{g['hub_resources_per_s']:>11,.0f}"
                f"{g['minimal_resources_per_s']:>15,.0f}{g['ratio_hub_over_minimal']:>13.2f}")
    log("\n=== (b) HTTP latency (1 client; p50 / p99 ms) and throughput (req/s, concurrent clients) ===")
    for kind, run in runs.items():
        for sc in run["scales"]:
            log(f"{kind} at {sc['resources']:,} resources (target {sc['target']:,}; "
                f"{sc.get('size_bytes', 0) / 2**20:,.0f} MiB on disk)"
                + (f"; grown at {sc['grow']['resources_per_s']:,.0f} resources/s" if sc["grow"]["bundles"] else ""))
            log(f"  {'query':<52}{'p50':>8}{'p99':>9}{'req/s 1c':>10}{'req/s Nc':>10}{'matches':>9}{'total':>9}")
            for q in sc["queries"].values():
                total = "" if q["mean_total"] is None else f"{q['mean_total']:,.0f}"
                log(f"  {q['label']:<52}{q['p50_ms']:>8.1f}{q['p99_ms']:>9.1f}{q['rps_1_client']:>10.1f}"
                    f"{q['rps_concurrent']:>10.1f}{q['mean_matches']:>9.1f}{total:>9}"
                    + (f"  ({q['errors']} errors)" if q["errors"] else ""))
    log("\n=== targets ===")
    for c in checks:
        log(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['db']:<9}{c['target']:<92}{c['value']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    pg_url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    meta = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "argv": sys.argv[1:], "scales": args.scales, "requests_per_query": args.requests,
            "clients": args.clients, "gunicorn_workers": args.workers, "grow_parallel": args.grow_parallel,
            "seed": args.seed, "machine": describe(pg_url if "postgres" in kinds else None)}
    corpus = corpus_mod.load_corpus()
    log(f"corpus: {len(corpus.infrastructure)} infrastructure + {len(corpus.patients)} patient Bundles, "
        f"{corpus.resources:,} resources; scales {args.scales}; databases {kinds}")
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            t0 = time.perf_counter()
            runs[kind] = run_database(kind, args, corpus)
            runs[kind]["seconds"] = round(time.perf_counter() - t0, 1)
            write(args.out, meta, runs, started)
    finally:
        access.cleanup()
    checks = targets(runs)
    write(args.out, meta, runs, started, checks)
    print_report(runs, checks)
    log(f"\nresults written to {args.out} ({time.perf_counter() - started:,.0f} s in all)")
    return 0


def write(out: Path, meta: dict[str, Any], runs: dict[str, dict[str, Any]], started: float,
          checks: list[dict[str, Any]] | None = None) -> None:
    doc = {**meta, "seconds": round(time.perf_counter() - started, 1),
           "runs": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in runs.items()},
           "targets": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    sys.exit(main())
