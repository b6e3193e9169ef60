"""Load benchmark (issue 7): a realistic mix of requests against ``healthhub serve`` with 1, 2
and 4 gunicorn workers on ~1M stored resources, from a load generator in this (separate) process
over loopback.

    .venv/bin/python bench/load.py [--resources 1000000] [--workers 1,2,4] [--clients 16]
                                   [--seconds 60] [--warm 10] [--out bench/results-load-postgres.json]

Data: the statistics benchmark's generator (bench/stats.py: Patients with addresses, Observations
with LOINC codes, subjects and dates, one Patient per 20 resources), written without request
validation so that 1M resources load in minutes, then VACUUM ANALYZE. A hospital sender is
registered for HL7 v2 over HTTP.

The mix (closed loop: each of ``--clients`` threads sends its next request when the last one is
answered; request kinds drawn with a fixed seed per thread):

- 60 % clinicians' reads and searches: Patient by id (20 %), a patient's Observations (15 %),
  a patient's Observations of one code (10 %) and since a date (10 %), Patients by family (5 %);
- 30 % hospital writes: HL7 v2 ORU^R01 lab reports over HTTP (15 %), new Observations (10 %),
  Patient updates (5 %);
- 10 % public health: a weekly-by-province count of one code since a date (5 %), polling the
  status of a Bulk Data export kicked off at the start of the phase (5 %; the export itself runs
  in the web processes' worker threads meanwhile, as it would).

Every answer is checked (2xx; 202 for a running export); anything else, or a transport error, is
an error. Each worker process's resident memory is sampled every second (``/proc``). Figures:
requests/s, p50/p95/p99 per kind and overall, errors, peak RSS per worker. The machine's core
count bounds the scaling: on 2 cores, 4 workers cannot be twice as fast as 2.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import threading
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import orjson  # noqa: E402
import requests  # noqa: E402

from bench.access import bearer, cleanup  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, BenchDatabase, bench_database  # noqa: E402
from bench.hospital import BENCH_TZ, HL7_SENDER, _family, lab_report  # noqa: E402
from bench.machine import describe  # noqa: E402
from bench.server import HubServer  # noqa: E402
from bench.stats import BATCH, LOINC, SEED, observation, patient, write  # noqa: E402
from bench.workload import percentile  # noqa: E402
from healthhub.clock import utcnow  # noqa: E402
from healthhub.config import Config  # noqa: E402
from healthhub.db import Database  # noqa: E402
from healthhub.ingest import senders  # noqa: E402

HL7 = "x-application/hl7-v2+er7"
#: (kind, weight in %) — see the module doc.
MIX = [("read patient", 20), ("search obs by patient", 15), ("search obs by patient+code", 10),
       ("search obs by patient+date", 10), ("search patients by family", 5),
       ("hl7v2 lab report", 15), ("create observation", 10), ("update patient", 5),
       ("stats week x province", 5), ("export status", 5)]


def log(msg: str) -> None:
    print(msg, flush=True)


def fill(db: BenchDatabase, resources: int) -> tuple[int, int]:
    """Generated Patients and Observations (one Patient per 20 resources); their counts."""
    patients = max(100, resources // 20)
    observations = resources - patients
    rng = random.Random(SEED)
    started = time.perf_counter()
    for start in range(0, patients, BATCH):
        write(db, [patient(i, rng) for i in range(start, min(patients, start + BATCH))])
    for start in range(0, observations, BATCH):
        write(db, [observation(i, patients, rng) for i in range(start, min(observations, start + BATCH))])
        if (start // BATCH) % 40 == 0:
            log(f"  {min(observations, start + BATCH):,} Observations ({time.perf_counter() - started:.0f} s)")
    db.analyze()
    return patients, observations


def register_sender(url: str) -> None:
    database = Database(Config(database_url=url))
    try:
        with database.transaction() as session:
            if session.get(senders.Sender, HL7_SENDER) is None:
                senders.create(session, HL7_SENDER, "Bench Laboratory (synthetic)", utcnow(), timezone=BENCH_TZ,
                               client_id="bench")
    finally:
        database.dispose()


class Mix:
    """Builds the requests of one client thread."""

    def __init__(self, base: str, patients: int, thread: int, phase: int, status_url: str,
                 official: str) -> None:
        self.base, self.patients, self.status_url, self.official = base, patients, status_url, official
        self.rng = random.Random(f"{SEED}:{phase}:{thread}")
        self.kinds = [k for k, w in MIX for _ in range(w)]
        self.thread, self.phase, self.n = thread, phase, 0

    def next(self) -> tuple[str, str, str, bytes | None, dict[str, str]]:
        """(kind, method, url, body, headers)."""
        kind = self.rng.choice(self.kinds)
        p = self.rng.randrange(self.patients)
        code = LOINC[min(19, int(self.rng.expovariate(0.25)))]
        self.n += 1
        fhir = f"{self.base}/fhir"
        json_headers = {"Content-Type": "application/fhir+json"}
        if kind == "read patient":
            return kind, "GET", f"{fhir}/Patient/bp{p}", None, {}
        if kind == "search obs by patient":
            return kind, "GET", f"{fhir}/Observation?subject=Patient/bp{p}&_count=20", None, {}
        if kind == "search obs by patient+code":
            return kind, "GET", f"{fhir}/Observation?patient=bp{p}&code=http://loinc.org|{code}", None, {}
        if kind == "search obs by patient+date":
            return kind, "GET", f"{fhir}/Observation?patient=bp{p}&date=ge2025-01-01&_sort=-date&_count=10", None, {}
        if kind == "search patients by family":
            return kind, "GET", f"{fhir}/Patient?family=Bench{p}", None, {}
        if kind == "hl7v2 lab report":
            index = (self.phase * 100 + self.thread) * 20_000 + self.n % 20_000  # a unique MSH-10 in the run
            return kind, "POST", f"{self.base}/ingest/hl7v2", lab_report(index, seed="load"), {"Content-Type": HL7}
        if kind == "create observation":
            doc = observation(self.rng.randrange(10**9), self.patients, self.rng)
            doc.pop("id")
            return kind, "POST", f"{fhir}/Observation", orjson.dumps(doc), json_headers
        if kind == "update patient":
            doc = patient(p, random.Random(p))
            doc["telecom"] = [{"system": "phone", "value": f"+66 2 {self.rng.randrange(10**7):07d}"}]
            return kind, "PUT", f"{fhir}/Patient/bp{p}", orjson.dumps(doc), json_headers
        if kind == "stats week x province":
            since = (date(2025, 1, 1) + timedelta(days=30 * self.rng.randrange(12))).isoformat()
            return kind, "GET", (f"{self.base}/stats/Observation?code=http://loinc.org|{code}&date=ge{since}"
                                 "&_group-by=period:week,province"), None, {"Authorization": self.official}
        return kind, "GET", self.status_url, None, {}


def kick_off_export(base: str, authorization: str) -> str:
    resp = requests.get(f"{base}/fhir/$export?_type=Patient", timeout=60,
                        headers={"Authorization": authorization, "Prefer": "respond-async"})
    if resp.status_code != 202:
        raise RuntimeError(f"$export: {resp.status_code} {resp.text[:300]}")
    return resp.headers["Content-Location"]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def phase(server: HubServer, patients: int, clients: int, seconds: float, warm: float) -> dict[str, Any]:
    base = server.base.removesuffix("/fhir")
    authorization = bearer(base)
    official = bearer(base, "stats.read", "bench-official")  # a public-health official's app
    status_url = kick_off_export(base, authorization)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    samples: list[str] = []
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()

    def client(thread: int) -> None:
        session = requests.Session()
        session.headers.update({"Authorization": authorization, "Accept": "application/fhir+json"})
        mix = Mix(base, patients, thread, server.workers, status_url, official)
        while not stop.is_set():
            kind, method, url, body, headers = mix.next()
            t0 = time.perf_counter()
            try:
                resp = session.request(method, url, data=body, headers=headers, timeout=120)
                ok = 200 <= resp.status_code < 300
                if ok and kind == "hl7v2 lab report":
                    ok = b"|AA|" in resp.content
                detail = f"{kind}: {resp.status_code} {resp.text[:200]}"
            except requests.RequestException as exc:
                ok, detail = False, f"{kind}: {type(exc).__name__}"
            seconds_taken = time.perf_counter() - t0
            if measuring.is_set():
                with lock:
                    latencies[kind].append(seconds_taken)
                    if not ok:
                        errors[kind] += 1
                        if len(samples) < 10:
                            samples.append(detail)

    assert server._proc is not None
    workers = [pid for pid in _family(server._proc.pid) if pid != server._proc.pid]
    peak: dict[int, int] = dict.fromkeys(workers, 0)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warm)
    measuring.set()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for pid in workers:
            peak[pid] = max(peak[pid], rss_kib(pid))
        time.sleep(1.0)
    measuring.clear()
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join(150)
    total = sum(len(v) for v in latencies.values())
    everything = sorted(x for v in latencies.values() for x in v)
    kinds = {}
    for kind, _ in MIX:
        values = sorted(latencies.get(kind, []))
        if values:
            kinds[kind] = {"n": len(values), "errors": errors.get(kind, 0),
                           "p50_ms": round(percentile(values, 50) * 1000, 1),
                           "p95_ms": round(percentile(values, 95) * 1000, 1),
                           "p99_ms": round(percentile(values, 99) * 1000, 1)}
    return {"workers": server.workers, "clients": clients, "seconds": round(elapsed, 1), "requests": total,
            "requests_per_s": round(total / elapsed, 1), "errors": sum(errors.values()),
            "error_samples": samples,
            "p50_ms": round(percentile(everything, 50) * 1000, 1), "p95_ms": round(percentile(everything, 95) * 1000, 1),
            "p99_ms": round(percentile(everything, 99) * 1000, 1), "kinds": kinds,
            "worker_peak_rss_mib": [round(v / 1024, 1) for v in peak.values()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resources", type=int, default=1_000_000)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warm", type=float, default=10)
    p.add_argument("--out", type=Path, default=Path("bench/results-load-postgres.json"))
    args = p.parse_args()
    pg_url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    doc: dict[str, Any] = {"benchmark": "load", "db": "postgres", "mix": dict(MIX), "seed": SEED,
                           "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                           "machine": describe(pg_url), "phases": []}
    started = time.perf_counter()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"healthhub-load-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with bench_database("postgres", pg_url) as db:
            log(f"database {db.label}: filling with {args.resources:,} resources …")
            t0 = time.perf_counter()
            patients, observations = fill(db, args.resources)
            doc.update(patients=patients, observations=observations, fill_seconds=round(time.perf_counter() - t0))
            register_sender(db.url)
            for workers in (int(w) for w in args.workers.split(",")):
                with HubServer(db.url, workdir / f"serve-{workers}.log", workers=workers) as server:
                    log(f"{workers} worker(s), {args.clients} clients, {args.seconds:.0f} s after {args.warm:.0f} s warm-up …")
                    result = phase(server, patients, args.clients, args.seconds, args.warm)
                doc["phases"].append(result)
                log(f"  {result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, errors {result['errors']}, worker peak RSS "
                    f"{result['worker_peak_rss_mib']} MiB")
                for kind, k in result["kinds"].items():
                    log(f"    {kind:<28} n {k['n']:6d}  p50 {k['p50_ms']:8.1f}  p95 {k['p95_ms']:8.1f}  "
                        f"p99 {k['p99_ms']:8.1f} ms  errors {k['errors']}")
                args.out.write_text(json.dumps(doc, indent=1) + "\n")
    finally:
        cleanup()
    doc["seconds"] = round(time.perf_counter() - started)
    doc["error_free"] = all(ph["errors"] == 0 for ph in doc["phases"])
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {args.out}; errors: {'none' if doc['error_free'] else [ph['errors'] for ph in doc['phases']]}")
    return 0 if doc["error_free"] else 1


if __name__ == "__main__":
    sys.exit(main())
