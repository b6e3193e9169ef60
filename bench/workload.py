"""Measurement (b): growing the data set with re-identified copies, and the search/read
workload over real HTTP.

Query values come from the base corpus as stored (ids the hub assigned, codes, names and dates
found in the Synthea files), so every search has results; the same URL lists (same seed) are
used at every scale, except read-by-id, which samples ids from everything stored at that scale.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import requests
from sqlalchemy import text

from .corpus import Copy, LoadedBundle
from .database import BenchDatabase

FHIR_JSON = "application/fhir+json"
Log = Callable[[str], None]


# -- value pools ------------------------------------------------------------------------------

@dataclass
class Pools:
    """Values found in the base corpus, as the hub stored them."""

    patients: list[tuple[str, str]] = field(default_factory=list)  # (Patient id, family name)
    identifiers: list[str] = field(default_factory=list)  # "system|value" of Patients
    patient_codes: list[tuple[str, str]] = field(default_factory=list)  # (Patient id, "system|code")
    patient_years: list[tuple[str, int]] = field(default_factory=list)  # (Patient id, year of an Observation)
    encounter_months: list[tuple[str, str]] = field(default_factory=list)  # (ge, lt) of one month
    common_codes: list[str] = field(default_factory=list)  # the most frequent Observation codes


def build_pools(loaded: list[LoadedBundle], common: int = 10) -> Pools:
    """Collect query values from the patient Bundles of the base load."""
    pools = Pools()
    codes: Counter[str] = Counter()
    pairs: set[tuple[str, str]] = set()
    years: set[tuple[str, int]] = set()
    months: set[str] = set()
    for lb in loaded:
        if lb.file.kind != "transaction":
            continue
        for entry in lb.doc["entry"]:
            resource = entry["resource"]
            rtype = resource["resourceType"]
            if rtype == "Patient":
                pid = lb.ids[entry["fullUrl"]].split("/")[1]
                family = next((n["family"] for n in resource.get("name") or [] if n.get("family")), None)
                if family:
                    pools.patients.append((pid, family))
                pools.identifiers.extend(f"{i['system']}|{i['value']}" for i in resource.get("identifier") or []
                                         if i.get("system") and i.get("value"))
            elif rtype == "Observation":
                subject = lb.ids.get((resource.get("subject") or {}).get("reference", ""))
                coding = ((resource.get("code") or {}).get("coding") or [{}])[0]
                if not subject or not coding.get("system") or not coding.get("code"):
                    continue
                token = f"{coding['system']}|{coding['code']}"
                codes[token] += 1
                pid = subject.split("/")[1]
                pairs.add((pid, token))
                when = resource.get("effectiveDateTime") or ""
                if when[:4].isdigit():
                    years.add((pid, int(when[:4])))
            elif rtype == "Encounter":
                start = (resource.get("period") or {}).get("start") or ""
                if len(start) >= 7:
                    months.add(start[:7])
    pools.patient_codes = sorted(pairs)
    pools.patient_years = sorted(years)
    pools.common_codes = [c for c, _ in codes.most_common(common)]
    for month in sorted(months):
        y, m = int(month[:4]), int(month[5:7])
        nxt = date(y + (m == 12), m % 12 + 1, 1)
        pools.encounter_months.append((f"{y:04d}-{m:02d}-01", nxt.isoformat()))
    if not (pools.patients and pools.patient_codes and pools.encounter_months and pools.common_codes):
        raise RuntimeError("the base corpus gave no query values")
    return pools


def sample_read_ids(db: BenchDatabase, n: int, seed: int) -> list[str]:
    """``Type/id`` of ``n`` random stored resources (any type)."""
    engine = db.engine()
    try:
        with engine.connect() as conn:
            if db.kind == "postgres":
                conn.execute(text("SELECT setseed(:s)"), {"s": (seed % 1000) / 1000})
            rows = conn.execute(text("SELECT resource_type, id FROM resources WHERE deleted = false "
                                     "ORDER BY random() LIMIT :n"), {"n": n}).all()
    finally:
        engine.dispose()
    return [f"{t}/{i}" for t, i in rows]


# -- the queries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One benchmarked interaction and the URLs (relative to the FHIR base) it is run with."""

    name: str
    label: str
    urls: tuple[str, ...]


def search_queries(pools: Pools, n: int, seed: int) -> list[Query]:
    """The searches of the issue, ``n`` URLs each, values drawn with a fixed seed."""
    rng = random.Random(seed)

    def pick(items: list[Any]) -> Any:
        return items[rng.randrange(len(items))]

    def urls(make: Callable[[], str]) -> tuple[str, ...]:
        return tuple(make() for _ in range(n))

    def obs_patient_code() -> str:
        pid, code = pick(pools.patient_codes)
        return f"Observation?patient={pid}&code={code}&_sort=-date"

    def encounter_dates() -> str:
        ge, lt = pick(pools.encounter_months)
        return f"Encounter?date=ge{ge}&date=lt{lt}"

    return [
        Query("obs_patient_code_sort", "Observation?patient=…&code=…&_sort=-date", urls(obs_patient_code)),
        Query("patient_name", "Patient?name=…", urls(lambda: f"Patient?name={pick(pools.patients)[1]}")),
        Query("encounter_date_range", "Encounter?date=ge…&date=lt…", urls(encounter_dates)),
        Query("obs_code_include", "Observation?code=…&_include=Observation:patient",
              urls(lambda: f"Observation?code={pick(pools.common_codes)}&_include=Observation:patient")),
        Query("everything", "Patient/…/$everything",
              urls(lambda: f"Patient/{pick(pools.patients)[0]}/$everything")),
    ]


def read_query(ids: list[str], n: int, seed: int) -> Query:
    rng = random.Random(seed)
    return Query("read", "read-by-id (GET Type/id)", tuple(ids[rng.randrange(len(ids))] for _ in range(n)))


# -- running them -----------------------------------------------------------------------------

@dataclass
class QueryStats:
    name: str
    label: str
    n: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    rps_1_client: float  # sequential: requests / summed latency
    rps_concurrent: float  # ``clients`` threads at once: requests / wall time
    clients: int
    mean_matches: float  # search.mode = match entries per response (1 for a read)
    mean_total: float | None  # Bundle.total, when given

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


_local = threading.local()
#: ``Authorization`` header per server base URL (bench/access.py).
_TOKENS: dict[str, str] = {}


def register_token(base: str, authorization: str) -> None:
    _TOKENS[base] = authorization


def _session() -> requests.Session:
    """One keep-alive session per thread (gunicorn's sync workers close after each response)."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.headers["Accept"] = FHIR_JSON
    return s


def _get(base: str, url: str) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    resp = _session().get(f"{base}/{url}", timeout=300, headers={"Authorization": _TOKENS[base]})
    return time.perf_counter() - t0, resp.status_code, resp.content


def run_query(base: str, query: Query, clients: int, warm: int = 10) -> QueryStats:
    """Warm up, then run the URLs one after another (latency), then with ``clients`` threads."""
    with ThreadPoolExecutor(2) as pool:  # two at once, so both gunicorn workers are warm
        list(pool.map(lambda u: _get(base, u), query.urls[:warm]))
    latencies: list[float] = []
    errors = 0
    matches = 0
    totals: list[int] = []
    for url in query.urls:
        seconds, status, body = _get(base, url)
        latencies.append(seconds)
        if status != 200:
            errors += 1
            continue
        doc = orjson.loads(body)
        if doc.get("resourceType") == "Bundle":
            matches += sum(1 for e in doc.get("entry") or [] if (e.get("search") or {}).get("mode") == "match")
            if isinstance(doc.get("total"), int):
                totals.append(doc["total"])
        else:
            matches += 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda u: _get(base, u), query.urls))
    wall = time.perf_counter() - t0
    errors += sum(1 for _, status, _ in results if status != 200)
    ordered = sorted(latencies)
    n = len(ordered)
    return QueryStats(
        name=query.name, label=query.label, n=n, errors=errors,
        p50_ms=percentile(ordered, 50) * 1000, p90_ms=percentile(ordered, 90) * 1000,
        p99_ms=percentile(ordered, 99) * 1000, mean_ms=sum(ordered) / n * 1000, max_ms=ordered[-1] * 1000,
        rps_1_client=n / sum(ordered), rps_concurrent=len(results) / wall, clients=clients,
        mean_matches=matches / n, mean_total=sum(totals) / len(totals) if totals else None)


# -- growing the data set ---------------------------------------------------------------------

@dataclass
class GrowResult:
    bundles: int = 0
    resources: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"bundles": self.bundles, "resources": self.resources, "seconds": round(self.seconds, 1),
                "resources_per_s": round(self.rate, 1)}


def _post_copy(base: str, copy: Copy) -> int:
    resp = _session().post(base, data=copy.body, timeout=600,
                           headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal",
                                    "Authorization": _TOKENS[base]})
    if resp.status_code != 200:
        raise RuntimeError(f"copy of {copy.source}: POST answered {resp.status_code}: {resp.text[:500]}")
    statuses = [(e.get("response") or {}).get("status", "") for e in resp.json().get("entry") or []]
    if len(statuses) != copy.entries or not all(s.startswith("201") for s in statuses):
        raise RuntimeError(f"copy of {copy.source}: unexpected entry statuses {Counter(statuses)}")
    return copy.entries


def grow(base: str, current: int, target: int, copies: Iterator[Copy], parallel: int, log: Log) -> GrowResult:
    """POST re-identified copies (``parallel`` at a time, through the server's transaction path)
    until at least ``target`` resources are stored."""
    result = GrowResult()
    if current >= target:
        return result
    pending: set[Future[int]] = set()
    planned = current
    next_report = current + (target - current) // 10
    t0 = time.perf_counter()

    def collect(done: Iterable[Future[int]]) -> None:
        nonlocal next_report
        for fut in done:
            result.resources += fut.result()
            result.bundles += 1
        stored = current + result.resources
        if stored >= next_report:
            rate = result.resources / (time.perf_counter() - t0)
            log(f"    {stored:,} resources ({rate:,.0f}/s, ~{max(0, target - stored) / rate:,.0f} s to go)")
            next_report = stored + (target - current) // 10

    with ThreadPoolExecutor(parallel) as pool:
        while planned < target:
            copy = next(copies)
            planned += copy.entries
            pending.add(pool.submit(_post_copy, base, copy))
            if len(pending) >= parallel * 2:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        done, pending = wait(pending)
        collect(done)
    result.seconds = time.perf_counter() - t0
    return result
