"""Benchmark of the public-health side (issue 6): grouped statistics over up to 1M Observations,
and a Bulk Data export of the same data.

    .venv/bin/python bench/stats.py [--db postgres|sqlite] [--scales 100000,1000000]
                                    [--patients 50000] [--repeat 5] [--no-export]
                                    [--out bench/results-stats.json]

Data: ``--patients`` Patients (gender, birth date, an address with one of 20 provinces and 100
districts) and Observations (one of 20 LOINC codes, a subject, an effective date in 2024-2025, a
value) generated from a fixed seed, written with the hub's own indexer and bulk writer (the
resource row, its version row and the index rows ``healthhub search reindex`` would write) but
without request validation, so that 1M resources load in minutes; the write path itself is
measured by ``bench/run.py``. After each scale is reached the tables are analysed (VACUUM ANALYZE
on PostgreSQL) and each query is timed ``--repeat`` times through the Flask app in process
(token check, parsing, SQL, suppression, JSON), after one untimed run. Python's peak allocation
during a query (tracemalloc) shows whether memory follows the rows or the groups.

Export: at each scale a system-level ``$export`` of every Patient and Observation is kicked off
through the app and run by ``healthhub worker --once`` in a process of its own (what an operator
runs); throughput is the job's resources over its own started→finished time (recorded by the
worker in ``export_jobs``), wall time includes the process start. The worker's peak resident
memory (``wait4`` rusage of that process) shows whether memory follows the data. The exported
lines are counted and compared with the stored counts.

Targets (issue 6): a two-dimension grouping over 1M Observations in ≤ 1 s on PostgreSQL; export
≥ 10,000 resources/s at 1M resources, with peak memory flat as the data grows.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from sqlalchemy import text  # noqa: E402

from bench.access import KEY_FILE  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, BenchDatabase, bench_database  # noqa: E402
from bench.machine import describe  # noqa: E402
from healthhub import create_app  # noqa: E402
from healthhub.config import Config  # noqa: E402
from healthhub.search.store import default_indexer, table_rows  # noqa: E402
from healthhub.storage import bulk  # noqa: E402
from healthhub.storage.models import Resource, ResourceVersion  # noqa: E402

SEED = 6
LOINC = [f"{1000 + 37 * i}-{i % 10}" for i in range(20)]
START = date(2024, 1, 1)
BATCH = 5000
#: (label, query): the two-dimension groupings the target is about, and two heavier shapes.
QUERIES = [
    ("code × gender, all Observations", "/stats/Observation?_group-by=code,gender"),
    ("month × age-group, all Observations", "/stats/Observation?_group-by=period:month,age-group"),
    ("week × district, one code", f"/stats/Observation?code=http://loinc.org|{LOINC[3]}&_group-by=period:week,district"),
    ("province × gender, persons", "/stats/Observation?_group-by=province,gender&_count-by=patient"),
    ("week × province, 2025, one code", f"/stats/Observation?code=http://loinc.org|{LOINC[5]}&date=ge2025-01-01"
                                        "&_group-by=period:week,province"),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def patient(i: int, rng: random.Random) -> dict[str, Any]:
    province = rng.randrange(20)
    return {"resourceType": "Patient", "id": f"bp{i}", "gender": rng.choice(["female", "male"]),
            "birthDate": (date(1930, 1, 1) + timedelta(days=rng.randrange(33000))).isoformat(),
            "name": [{"family": f"Bench{i}", "given": ["Synthetic"]}],
            "address": [{"state": f"Province {province:02d}", "district": f"District {province:02d}-{rng.randrange(5)}",
                         "city": "Town", "country": "TH"}]}


def observation(i: int, patients: int, rng: random.Random) -> dict[str, Any]:
    code = LOINC[min(19, int(rng.expovariate(0.25)))]
    when = datetime.combine(START + timedelta(days=rng.randrange(730)), datetime.min.time(), UTC)
    return {"resourceType": "Observation", "id": f"bo{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/bp{rng.randrange(patients)}"},
            "effectiveDateTime": (when + timedelta(minutes=rng.randrange(1440))).isoformat(),
            "valueQuantity": {"value": round(rng.uniform(1, 200), 1), "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}}


def write(db: BenchDatabase, docs: list[dict[str, Any]]) -> None:
    """The rows the repository's batched create writes, without validation (see the module doc)."""
    now = datetime.now(UTC)
    resources: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    index: dict[Any, list[dict[str, Any]]] = {}
    extract = default_indexer().extract
    for doc in docs:
        rtype, rid = doc["resourceType"], doc["id"]
        content = {**doc, "meta": {"versionId": "1", "lastUpdated": now.isoformat()}}
        resources.append({"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": now,
                          "deleted": False, "content": content})
        versions.append({"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": now,
                         "deleted": False, "method": "POST"})
        for table, rows in table_rows(rtype, rid, extract(content)).items():
            index.setdefault(table, []).extend(rows)
    engine = db.engine()
    try:
        from sqlalchemy.orm import Session

        with Session(engine) as session, session.begin():
            tables: dict[Any, list[dict[str, Any]]] = {Resource.__table__: resources,
                                                       ResourceVersion.__table__: versions, **index}
            bulk.append(session, tables)
    finally:
        engine.dispose()


def grow(db: BenchDatabase, have: int, want: int, patients: int, rng: random.Random) -> None:
    started = time.perf_counter()
    for start in range(have, want, BATCH):
        write(db, [observation(i, patients, rng) for i in range(start, min(want, start + BATCH))])
        if (start // BATCH) % 20 == 0:
            log(f"  {min(want, start + BATCH):,} Observations ({time.perf_counter() - started:.0f} s)")


def measure(app: Any, token: str, repeat: int) -> list[dict[str, Any]]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    for label, url in QUERIES:
        first = client.get(url, headers=headers)
        if first.status_code != 200:
            raise RuntimeError(f"{url}: {first.status_code} {first.get_data(as_text=True)[:300]}")
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            resp = client.get(url, headers=headers)
            times.append(time.perf_counter() - t0)
            assert resp.status_code == 200
        tracemalloc.start()
        client.get(url, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        body = first.get_json()
        out.append({"label": label, "url": url, "seconds": [round(t, 4) for t in times],
                    "median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4),
                    "groups": len(body["groups"]), "suppressed": body["suppressed"], "total": body["total"],
                    "python_peak_kib": round(peak / 1024)})
        log(f"  {label:<36} median {statistics.median(times) * 1000:8.1f} ms  max {max(times) * 1000:8.1f} ms  "
            f"{len(body['groups']):5d} groups  total {body['total']}  peak {peak / 1024:,.0f} KiB")
    return out


def export(app: Any, db: BenchDatabase, export_dir: Path) -> dict[str, Any]:
    """Kick off a system export of Patient and Observation, run it in ``healthhub worker --once``,
    and report throughput, the worker's peak RSS and the line counts against the stored counts."""
    token = app.extensions["healthhub.auth"].tokens.issue(client_id="bench-export", subject="bench-export",
                                                           scope="system/*.rs", patient=None, extra=None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    kick = client.get("/fhir/$export?_type=Patient,Observation", headers={**headers, "Prefer": "respond-async"})
    if kick.status_code != 202:
        raise RuntimeError(f"$export: {kick.status_code} {kick.get_data(as_text=True)[:300]}")
    status_url = kick.headers["Content-Location"].replace("http://bench", "")
    env = {**os.environ, "HEALTHHUB_DATABASE_URL": db.url, "HEALTHHUB_BASE_URL": "http://bench",
           "HEALTHHUB_SIGNING_KEY": str(KEY_FILE), "HEALTHHUB_EXPORT_DIR": str(export_dir)}
    cli = Path(sys.executable).with_name("healthhub")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(cli), "worker", "--once"], env=env, stdout=subprocess.DEVNULL)
    _, code, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(code)
    if proc.returncode != 0:
        raise RuntimeError(f"healthhub worker --once exited {proc.returncode}")
    manifest = client.get(status_url, headers=headers)
    if manifest.status_code != 200:
        raise RuntimeError(f"status: {manifest.status_code} {manifest.get_data(as_text=True)[:300]}")
    job_id = status_url.rstrip("/").rsplit("/", 1)[-1]
    engine = db.engine()
    try:
        with engine.connect() as conn:
            started, finished = conn.execute(text("SELECT started_at, finished_at FROM export_jobs WHERE id = :id"),
                                             {"id": job_id}).one()
            stored = dict(conn.execute(text(
                "SELECT resource_type, COUNT(*) FROM resources WHERE deleted = false "
                "AND resource_type IN ('Patient', 'Observation') GROUP BY resource_type")).all())
    finally:
        engine.dispose()
    lines: dict[str, int] = {}
    size = 0
    for path in sorted((export_dir / job_id).glob("*.ndjson")):
        rtype = path.name.split("-", 1)[0]
        with path.open("rb") as fh:
            lines[rtype] = lines.get(rtype, 0) + sum(1 for _ in fh)
        size += path.stat().st_size
    client.delete(status_url, headers=headers)  # removes the files
    total = sum(lines.values())
    seconds = (finished - started).total_seconds()
    out = {"resources": total, "files": len(manifest.get_json()["output"]), "bytes": size,
           "job_seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
           "resources_per_s": round(total / seconds), "worker_peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
           "counts_match": lines == {k: int(v) for k, v in stored.items()}}
    log(f"  export: {total:,} resources, {size / 2**20:,.0f} MiB in {out['files']} files, job {seconds:.1f} s "
        f"({out['resources_per_s']:,}/s), wall {wall:.1f} s, worker peak RSS {out['worker_peak_rss_mib']} MiB, "
        f"counts {'match' if out['counts_match'] else 'DIFFER'}")
    return out


def explain(app: Any) -> str:
    """EXPLAIN ANALYZE of the first query's grouped statement, as the hub builds it (PostgreSQL)."""
    from healthhub.clock import utcnow
    from healthhub.search.parser import parse
    from healthhub.search.registry import default_registry
    from healthhub.stats.dimensions import parse_group_by
    from healthhub.stats.query import Aggregation

    registry = default_registry()
    with app.extensions["healthhub.db"].transaction() as session:
        agg = Aggregation(session, registry, utcnow(), "http://bench/fhir")
        grouped, _ = agg.statements(parse("Observation", [], registry), parse_group_by(["code,gender"]))
        sql = grouped.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        rows = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars().all()
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--scales", default="100000,1000000")
    p.add_argument("--patients", type=int, default=50000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-export", dest="export", action="store_false", help="skip the Bulk Data export")
    p.add_argument("--out", type=Path, default=Path("bench/results-stats.json"))
    args = p.parse_args()
    scales = sorted(int(s) for s in args.scales.split(","))
    pg_url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    doc: dict[str, Any] = {"benchmark": "stats", "db": args.db, "patients": args.patients, "seed": SEED,
                           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                           "machine": describe(pg_url if args.db == "postgres" else None), "scales": []}
    rng = random.Random(SEED)
    started = time.perf_counter()
    with bench_database(args.db, pg_url) as db:
        log(f"database: {db.label}; {args.patients:,} patients …")
        for start in range(0, args.patients, BATCH):
            write(db, [patient(i, rng) for i in range(start, min(args.patients, start + BATCH))])
        have = 0
        for scale in scales:
            log(f"growing to {scale:,} Observations …")
            t0 = time.perf_counter()
            grow(db, have, scale, args.patients, rng)
            have = scale
            load_s = time.perf_counter() - t0
            db.analyze()
            app = create_app(Config(database_url=db.url, base_url="http://bench", signing_key=str(KEY_FILE)))
            token = app.extensions["healthhub.auth"].tokens.issue(client_id="bench-stats", subject="bench-stats",
                                                                   scope="stats.read", patient=None, extra=None)
            log(f"at {scale:,} Observations (loaded in {load_s:.0f} s):")
            entry: dict[str, Any] = {"observations": scale, "load_seconds": round(load_s, 1),
                                     "queries": measure(app, token, args.repeat)}
            if args.db == "postgres" and scale == scales[-1]:
                entry["explain_code_gender"] = explain(app)
            if args.export:
                with tempfile.TemporaryDirectory(prefix="healthhub-bench-export-") as folder:
                    entry["export"] = export(app, db, Path(folder))
            app.extensions["healthhub.db"].dispose()
            doc["scales"].append(entry)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
    last = doc["scales"][-1]
    two_dim = [q for q in last["queries"] if "persons" not in q["label"]]
    doc["target"] = {"observations": last["observations"], "worst_two_dimension_median_s":
                     max(q["median_s"] for q in two_dim), "limit_s": 1.0}
    doc["target"]["pass"] = doc["target"]["worst_two_dimension_median_s"] <= 1.0
    if args.export:
        doc["export_target"] = {"resources": last["export"]["resources"], "resources_per_s":
                                last["export"]["resources_per_s"], "limit_per_s": 10000,
                                "peak_rss_mib_by_scale": [s["export"]["worker_peak_rss_mib"] for s in doc["scales"]]}
        doc["export_target"]["pass"] = (last["export"]["resources_per_s"] >= 10000
                                        and all(s["export"]["counts_match"] for s in doc["scales"]))
    doc["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"target: worst two-dimension median {doc['target']['worst_two_dimension_median_s']:.3f} s at "
        f"{last['observations']:,} Observations ({'pass' if doc['target']['pass'] else 'FAIL'}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
