"""Measurement (a): ingest through the hub, against a minimal path over the same resources.

*Hub path*: each Bundle is POSTed to ``/fhir`` through the Flask test client of an in-process
app (``create_app``) — the whole request path (body parsing, Bundle processing, validation,
reference rewriting, conditional references, index extraction, one database transaction per
Bundle) without a network hop. ``Prefer: return=minimal``, as bulk loaders send.

*Minimal path*: for the same Bundles, ``orjson`` parse, ``fhir.resources`` R4B
``model_validate`` of every resource, and an INSERT of one row per resource (id, type, JSON)
into a plain table in the same database, one transaction (commit) per Bundle.

Two passes, each timing the minimal path first and then the hub path:

1. the corpus itself into the empty database (infrastructure batches, then patient
   transactions), read from the files inside the timing;
2. one re-identified copy of every patient Bundle (built before the timing) into the now
   populated database, after VACUUM ANALYZE, by a *new* app, i.e. on new database
   connections. Pass 1 runs on connections opened while the database was empty, and on
   PostgreSQL that matters (see bench/RESULTS.md, "foreign-key checks").

Both paths are warmed up first (model classes, search-parameter registry, index plans, database
connections); the warm-up is not timed.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
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

from .access import KEY_FILE, bearer
from .corpus import Copy, Corpus, LoadedBundle, locations
from .database import BenchDatabase

FHIR_JSON = "application/fhir+json"
MINIMAL_TABLE = "bench_minimal"
BASE_URL = "http://bench.local"
Log = Callable[[str], None]

#: Groups reported, in order. Pass 1: the infrastructure batches; the patient transactions, also
#: split into the fhir-data-pipes ones (they resolve conditional references) and the
#: smart-on-fhir ones; all of the corpus. Pass 2: the copies, on fresh connections.
GROUPS = ("batch", "transaction", "transaction/conditional-refs", "transaction/plain", "all",
          "copies/fresh-connections")


@dataclass(frozen=True)
class Item:
    """One Bundle to ingest: where its bytes come from and which groups it counts in."""

    label: str
    entries: int
    groups: tuple[str, ...]
    body: Callable[[], bytes]


def corpus_items(corpus: Corpus) -> list[Item]:
    """The corpus files in load order (the file is read inside the timing)."""
    items = []
    for f in corpus.ordered:
        if f.kind == "batch":
            groups: tuple[str, ...] = ("batch", "all")
        else:
            groups = ("transaction", "transaction/conditional-refs" if f.conditional else "transaction/plain", "all")
        items.append(Item(f.path.name, f.entries, groups, f.path.read_bytes))
    return items


def copy_items(copies: list[Copy]) -> list[Item]:
    """Re-identified copies, already serialised (held in memory)."""
    return [Item(f"copy of {c.source}", c.entries, ("copies/fresh-connections",), _constant(c.body))
            for c in copies]


def _constant(body: bytes) -> Callable[[], bytes]:
    return lambda: body


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


def _timings() -> dict[str, PathTiming]:
    return {g: PathTiming() for g in GROUPS}


@dataclass
class IngestResult:
    """Hub vs minimal path, per group (see :data:`GROUPS`)."""

    hub: dict[str, PathTiming] = field(default_factory=_timings)
    minimal: dict[str, PathTiming] = field(default_factory=_timings)
    outcomes: dict[str, int] = field(default_factory=dict)
    stored: int = 0

    def ratio(self, group: str) -> float:
        m = self.minimal[group].rate
        return self.hub[group].rate / m if m else 0.0

    def merge(self, hub: dict[str, PathTiming], minimal: dict[str, PathTiming], outcomes: Counter[str]) -> None:
        for g in GROUPS:
            for mine, theirs in ((self.hub[g], hub[g]), (self.minimal[g], minimal[g])):
                mine.bundles += theirs.bundles
                mine.resources += theirs.resources
                mine.seconds += theirs.seconds
        for k, v in outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v

    def as_json(self) -> dict[str, Any]:
        groups = {}
        for g in GROUPS:
            if not self.hub[g].bundles:
                continue
            groups[g] = {
                "bundles": self.hub[g].bundles,
                "resources": self.hub[g].resources,
                "hub_seconds": round(self.hub[g].seconds, 3),
                "hub_resources_per_s": round(self.hub[g].rate, 1),
                "minimal_seconds": round(self.minimal[g].seconds, 3),
                "minimal_resources_per_s": round(self.minimal[g].rate, 1),
                "ratio_hub_over_minimal": round(self.ratio(g), 3),
            }
        return {"method": "hub: Flask test client POST /fhir (in-process), Prefer: return=minimal; "
                          "minimal: orjson + fhir.resources model_validate + 1 INSERT row per resource, "
                          "commit per Bundle; pass 1 the corpus into the empty database, pass 2 one "
                          "re-identified copy per patient Bundle on new connections after VACUUM ANALYZE",
                "groups": groups, "entry_outcomes": self.outcomes, "stored_resources": self.stored}


# -- warm-up ----------------------------------------------------------------------------------

def authorized(app: Any) -> Any:
    """An in-process test client with a bearer token for ``BASE_URL``."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer(BASE_URL)
    return client


def warm_up(corpus: Corpus, client: Any) -> None:
    """Load what is loaded once per process, outside the timings: the R4B model of every resource
    type in the corpus (both paths use them), the search-parameter registry and the index plans of
    those types (hub), the Flask app and its database pool (searches; nothing is written)."""
    default_registry()
    seen: set[str] = set()
    for file in corpus.ordered:
        raw = file.path.read_bytes()  # also puts the file in the page cache for both paths
        for entry in jsonio.loads(raw).get("entry") or []:
            resource = entry.get("resource") or {}
            rtype = str(resource.get("resourceType"))
            if rtype in seen:
                continue
            seen.add(rtype)
            resources.validate(resource)
            get_fhir_model_class(rtype).model_validate(orjson.loads(orjson.dumps(resource, default=float)))
            store.index_rows(rtype, "warm-up", resource)
    for url in ("/fhir/metadata", "/fhir/Patient?name=warm-up", "/fhir/Observation?code=warm-up&_count=1"):
        resp = client.get(url)
        if resp.status_code != 200:
            raise RuntimeError(f"warm-up GET {url} answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")


# -- the two paths ----------------------------------------------------------------------------

def run_minimal(db: BenchDatabase, items: list[Item]) -> dict[str, PathTiming]:
    """The minimal path over ``items``, into a plain table dropped afterwards."""
    engine = db.engine()
    table = Table(MINIMAL_TABLE, MetaData(),
                  Column("id", String(64), primary_key=True),
                  Column("type", String(64), nullable=False),
                  Column("content", JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False))
    timings = _timings()
    try:
        table.create(engine)
        with engine.begin() as conn:  # warm the pool and the statement path
            conn.execute(insert(table), [{"id": "warm-up", "type": "Basic", "content": {}}])
            conn.execute(table.delete())
        for item in items:
            t0 = time.perf_counter()
            doc = orjson.loads(item.body())
            rows = []
            for entry in doc["entry"]:
                resource = entry["resource"]
                rtype = resource["resourceType"]
                get_fhir_model_class(rtype).model_validate(resource)
                rows.append({"id": str(uuid.uuid4()), "type": rtype, "content": resource})
            with engine.begin() as conn:
                conn.execute(insert(table), rows)
            elapsed = time.perf_counter() - t0
            for g in item.groups:
                timings[g].add(len(rows), elapsed)
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
    return timings


def run_hub(db: BenchDatabase, corpus: Corpus, items: list[Item]
            ) -> tuple[dict[str, PathTiming], list[dict[str, Any]], Counter[str]]:
    """The hub path over ``items`` with a new app (new connections); returns the timings, the
    response Bundles (in order) and the count of entry statuses."""
    app = create_app(Config(database_url=db.url, base_url=BASE_URL, signing_key=str(KEY_FILE)))
    client = authorized(app)
    timings = _timings()
    responses: list[dict[str, Any]] = []
    outcomes: Counter[str] = Counter()
    try:
        warm_up(corpus, client)
        for item in items:
            t0 = time.perf_counter()
            resp = client.post("/fhir", data=item.body(),
                               headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"})
            elapsed = time.perf_counter() - t0
            if resp.status_code != 200:
                raise RuntimeError(f"{item.label}: POST /fhir answered {resp.status_code}: "
                                   f"{resp.get_data(as_text=True)[:500]}")
            response = orjson.loads(resp.get_data())
            statuses = [(e.get("response") or {}).get("status", "?") for e in response.get("entry") or []]
            outcomes.update(s.split(" ")[0] for s in statuses)
            bad = [s for s in statuses if not s.startswith(("200", "201"))]
            if bad or len(statuses) != item.entries:
                raise RuntimeError(f"{item.label}: {len(bad)} of {len(statuses)} entries failed, e.g. {bad[:3]}")
            for g in item.groups:
                timings[g].add(item.entries, elapsed)
            responses.append(response)
    finally:
        app.extensions["healthhub.db"].dispose()
    return timings, responses, outcomes


# -- (a) --------------------------------------------------------------------------------------

def ingest_corpus(db: BenchDatabase, corpus: Corpus, log: Log) -> tuple[IngestResult, list[LoadedBundle]]:
    """Pass 1: the corpus into the empty database; also returns what each Bundle created."""
    app = create_app(Config(database_url=db.url, base_url=BASE_URL, signing_key=str(KEY_FILE)))
    try:
        log("  warm-up (models, registry, index plans) …")
        t0 = time.perf_counter()
        warm_up(corpus, authorized(app))
        log(f"  warm-up took {time.perf_counter() - t0:.1f} s (not timed)")
    finally:
        app.extensions["healthhub.db"].dispose()
    items = corpus_items(corpus)
    log(f"  pass 1, the corpus into the empty database: minimal path over {corpus.resources:,} resources …")
    minimal = run_minimal(db, items)
    log(f"  pass 1 minimal path: {minimal['all'].rate:,.0f} resources/s; hub path …")
    hub, responses, outcomes = run_hub(db, corpus, items)
    log(f"  pass 1 hub path: {hub['all'].rate:,.0f} resources/s "
        f"(patient transactions {hub['transaction'].rate:,.0f}/s)")
    result = IngestResult()
    result.merge(hub, minimal, outcomes)
    loaded = []
    for file, response in zip(corpus.ordered, responses, strict=True):
        lb = LoadedBundle(file, orjson.loads(file.path.read_bytes()))
        for i, (entry, target) in enumerate(zip(lb.doc["entry"], locations(response), strict=True)):
            if target:
                lb.ids[entry.get("fullUrl") or f"#{i}"] = target
        loaded.append(lb)
    result.stored = db.count()
    return result, loaded


def ingest_copies(db: BenchDatabase, corpus: Corpus, copies: list[Copy], result: IngestResult, log: Log) -> None:
    """Pass 2: re-identified copies on new connections after VACUUM ANALYZE (added to ``result``)."""
    db.analyze()
    items = copy_items(copies)
    log(f"  pass 2, {len(items)} re-identified copies ({sum(i.entries for i in items):,} resources) "
        "on new connections after VACUUM ANALYZE …")
    minimal = run_minimal(db, items)
    hub, _, outcomes = run_hub(db, corpus, items)
    result.merge(hub, minimal, outcomes)
    g = "copies/fresh-connections"
    log(f"  pass 2: minimal {minimal[g].rate:,.0f} resources/s, hub {hub[g].rate:,.0f} resources/s")
    result.stored = db.count()
