"""Measurement (a): ingest of the Synthea corpus through the hub, against a minimal path.

*Hub path*: each corpus file is read and POSTed to ``/fhir`` through the Flask test client of an
in-process app (``create_app``) — the whole request path (body parsing, Bundle processing,
validation, reference rewriting, conditional references, index extraction, one database
transaction per Bundle) without a network hop. ``Prefer: return=minimal``, as bulk loaders send.

*Minimal path*: for the same files, ``orjson`` parse, ``fhir.resources`` R4B ``model_validate``
of every resource, and an INSERT of one row per resource (id, type, JSON) into a plain table in
the same database, one transaction (commit) per Bundle.

Both paths are warmed up first (model classes, search-parameter registry, index plans, database
connections), and the warm-up is not timed. The minimal path runs first, then the hub path.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import JSON, Column, MetaData, String, Table, insert
from sqlalchemy.dialects import postgresql

from healthhub import create_app, jsonio, resources
from healthhub.config import Config
from healthhub.search import store
from healthhub.search.registry import default_registry

from .corpus import BundleFile, Corpus, LoadedBundle, locations
from .database import BenchDatabase

FHIR_JSON = "application/fhir+json"
MINIMAL_TABLE = "bench_minimal"


@dataclass
class PathTiming:
    """Resources and seconds of one path over a group of Bundles."""

    bundles: int = 0
    resources: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    def add(self, resources_: int, seconds: float) -> None:
        self.bundles += 1
        self.resources += resources_
        self.seconds += seconds


@dataclass
class IngestResult:
    """Hub vs minimal path, per group (``batch``: infrastructure, ``transaction``: patients, ``all``)."""

    hub: dict[str, PathTiming] = field(default_factory=dict)
    minimal: dict[str, PathTiming] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    stored: int = 0

    def ratio(self, group: str) -> float:
        m = self.minimal[group].rate
        return self.hub[group].rate / m if m else 0.0

    def as_json(self) -> dict[str, Any]:
        groups = {}
        for g in self.hub:
            groups[g] = {
                "bundles": self.hub[g].bundles,
                "resources": self.hub[g].resources,
                "hub_seconds": round(self.hub[g].seconds, 3),
                "hub_resources_per_s": round(self.hub[g].rate, 1),
                "minimal_seconds": round(self.minimal[g].seconds, 3),
                "minimal_resources_per_s": round(self.minimal[g].rate, 1),
                "ratio_hub_over_minimal": round(self.ratio(g), 3),
            }
        return {"method": "Flask test client POST /fhir (in-process), Prefer: return=minimal; "
                          "minimal path: orjson + fhir.resources model_validate + 1 INSERT row per resource, "
                          "commit per Bundle",
                "groups": groups, "entry_outcomes": self.outcomes, "stored_resources": self.stored}


def _group(file: BundleFile) -> str:
    return "batch" if file.kind == "batch" else "transaction"


def warm_up(corpus: Corpus, client: Any) -> None:
    """Load everything that is loaded once per process, outside the timings: the R4B model of
    every resource type in the corpus (both paths use them), the search-parameter registry and
    the index plans of those types (hub), the Flask app and its database pool (a search)."""
    default_registry()
    seen: set[str] = set()
    for file in corpus.ordered:
        raw = file.path.read_bytes()  # also puts the file in the page cache for both paths
        for entry in jsonio.loads(raw).get("entry") or []:
            resource = entry.get("resource") or {}
            rtype = resource.get("resourceType")
            if rtype in seen:
                continue
            seen.add(rtype)
            resources.validate(resource)
            get_fhir_model_class(rtype).model_validate(orjson.loads(orjson.dumps(resource, default=_decimal)))
            store.index_rows(rtype, "warm-up", resource)
    for url in ("/fhir/metadata", "/fhir/Patient?name=warm-up", "/fhir/Observation?code=warm-up&_count=1"):
        resp = client.get(url)
        if resp.status_code != 200:
            raise RuntimeError(f"warm-up GET {url} answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")


def _decimal(value: Any) -> Any:
    return float(value)


def run_minimal(db: BenchDatabase, corpus: Corpus) -> dict[str, PathTiming]:
    """The minimal path over the whole corpus, into a plain table dropped afterwards."""
    engine = db.engine()
    table = Table(MINIMAL_TABLE, MetaData(),
                  Column("id", String(64), primary_key=True),
                  Column("type", String(64), nullable=False),
                  Column("content", JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False))
    timings = {"batch": PathTiming(), "transaction": PathTiming(), "all": PathTiming()}
    try:
        table.create(engine)
        with engine.begin() as conn:  # warm the pool and the statement path
            conn.execute(insert(table), [{"id": "warm-up", "type": "Basic", "content": {}}])
            conn.execute(table.delete())
        for file in corpus.ordered:
            t0 = time.perf_counter()
            doc = orjson.loads(file.path.read_bytes())
            rows = []
            for entry in doc["entry"]:
                resource = entry["resource"]
                rtype = resource["resourceType"]
                get_fhir_model_class(rtype).model_validate(resource)
                rows.append({"id": str(uuid.uuid4()), "type": rtype, "content": resource})
            with engine.begin() as conn:
                conn.execute(insert(table), rows)
            elapsed = time.perf_counter() - t0
            timings[_group(file)].add(len(rows), elapsed)
            timings["all"].add(len(rows), elapsed)
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
    return timings


def run_hub(db: BenchDatabase, corpus: Corpus) -> tuple[dict[str, PathTiming], list[LoadedBundle], Counter[str]]:
    """The hub path over the whole corpus; returns the timings and what each Bundle created."""
    app = create_app(Config(database_url=db.url, base_url="http://bench.local"))
    client = app.test_client()
    timings = {"batch": PathTiming(), "transaction": PathTiming(), "all": PathTiming()}
    loaded: list[LoadedBundle] = []
    outcomes: Counter[str] = Counter()
    try:
        warm_up(corpus, client)
        for file in corpus.ordered:
            t0 = time.perf_counter()
            body = file.path.read_bytes()
            resp = client.post("/fhir", data=body, headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"})
            elapsed = time.perf_counter() - t0
            if resp.status_code != 200:
                raise RuntimeError(f"{file.path.name}: POST /fhir answered {resp.status_code}: "
                                   f"{resp.get_data(as_text=True)[:500]}")
            response = orjson.loads(resp.get_data())
            statuses = [(e.get("response") or {}).get("status", "?") for e in response.get("entry") or []]
            outcomes.update(s.split(" ")[0] for s in statuses)
            bad = [s for s in statuses if not s.startswith(("200", "201"))]
            if bad:
                raise RuntimeError(f"{file.path.name}: {len(bad)} entries failed, e.g. {bad[:3]}")
            timings[_group(file)].add(file.entries, elapsed)
            timings["all"].add(file.entries, elapsed)
            doc = orjson.loads(body)
            lb = LoadedBundle(file, doc)
            for i, (entry, target) in enumerate(zip(doc["entry"], locations(response), strict=True)):
                if target:
                    lb.ids[entry.get("fullUrl") or f"#{i}"] = target
            loaded.append(lb)
    finally:
        app.extensions["healthhub.db"].dispose()
    return timings, loaded, outcomes


def measure_ingest(db: BenchDatabase, corpus: Corpus, log: Any = print) -> tuple[IngestResult, list[LoadedBundle]]:
    """(a): the minimal path, then the hub path, over the same files in the same database."""
    # The minimal path needs its R4B model classes warm too; the hub warm-up covers the
    # same classes, so run it once up front on a throwaway app without writing anything.
    app = create_app(Config(database_url=db.url, base_url="http://bench.local"))
    try:
        log("  warm-up (models, registry, index plans) …")
        t0 = time.perf_counter()
        warm_up(corpus, app.test_client())
        log(f"  warm-up took {time.perf_counter() - t0:.1f} s (not timed)")
    finally:
        app.extensions["healthhub.db"].dispose()
    log(f"  minimal path over {corpus.resources} resources …")
    minimal = run_minimal(db, corpus)
    log(f"  minimal path: {minimal['all'].rate:,.0f} resources/s")
    log(f"  hub path over {corpus.resources} resources …")
    hub, loaded, outcomes = run_hub(db, corpus)
    log(f"  hub path: {hub['all'].rate:,.0f} resources/s")
    result = IngestResult(hub=hub, minimal=minimal, outcomes=dict(outcomes), stored=db.count())
    return result, loaded

