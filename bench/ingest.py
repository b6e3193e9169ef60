"""Measurement (a): ingest through the hub, against a minimal path over the same resources.

*Hub path*: each Bundle is POSTed to ``/fhir`` through the Flask test client of an in-process
app (``create_app``) — the whole request path (body parsing, Bundle processing, validation,
reference rewriting, conditional references, index extraction, one database transaction per
Bundle) without a network hop. ``Prefer: return=minimal``, as bulk loaders send.

*Minimal path*: for the same Bundles, ``orjson`` parse, ``fhir.resources`` R4B
``model_validate`` of every resource, and an INSERT of one row per resource (id, type, JSON)
into a plain table in the same database, one transaction (commit) per Bundle.

The two paths alternate Bundle by Bundle (``run_both``), in two passes:

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

from healthhub import create_app, gctune, jsonio, resources
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
                          "commit per Bundle; the two paths alternate Bundle by Bundle; pass 1 the corpus into the empty database, pass 2 one "
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

class MinimalPath:
    """The minimal path: a plain table (dropped by :meth:`close`) on its own engine."""

    def __init__(self, db: BenchDatabase) -> None:
        self.engine = db.engine()
        self.table = Table(MINIMAL_TABLE, MetaData(),
                           Column("id", String(64), primary_key=True),
                           Column("type", String(64), nullable=False),
                           Column("content", JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False))
        self.table.create(self.engine)
        with self.engine.begin() as conn:  # warm the pool and the statement path
            conn.execute(insert(self.table), [{"id": "warm-up", "type": "Basic", "content": {}}])
            conn.execute(self.table.delete())

    def run(self, item: Item) -> tuple[int, float]:
        """(resources, seconds) of one Bundle: parse, validate each resource, insert, commit."""
        t0 = time.perf_counter()
        doc = orjson.loads(item.body())
        rows = []
        for entry in doc["entry"]:
            resource = entry["resource"]
            rtype = resource["resourceType"]
            get_fhir_model_class(rtype).model_validate(resource)
            rows.append({"id": str(uuid.uuid4()), "type": rtype, "content": resource})
        with self.engine.begin() as conn:
            conn.execute(insert(self.table), rows)
        return len(rows), time.perf_counter() - t0

    def close(self) -> None:
        self.table.drop(self.engine, checkfirst=True)
        self.engine.dispose()


class HubPath:
    """The hub path: a new app (new database connections), warmed up, posting Bundles in process."""

    def __init__(self, db: BenchDatabase, corpus: Corpus) -> None:
        self.app = create_app(Config(database_url=db.url, base_url=BASE_URL, signing_key=str(KEY_FILE)))
        self.client = authorized(self.app)
        warm_up(corpus, self.client)
        # What a served process does once its app is loaded (healthhub serve, mllp, ingest). It
        # is this whole process's collector: the minimal path, measured alongside, gains as much.
        gctune.settle()

    def run(self, item: Item) -> tuple[float, dict[str, Any], list[str]]:
        """(seconds, response Bundle, entry statuses) of one Bundle; raises unless every entry succeeded."""
        t0 = time.perf_counter()
        resp = self.client.post("/fhir", data=item.body(),
                                headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"})
        elapsed = time.perf_counter() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"{item.label}: POST /fhir answered {resp.status_code}: "
                               f"{resp.get_data(as_text=True)[:500]}")
        response = orjson.loads(resp.get_data())
        statuses = [(e.get("response") or {}).get("status", "?") for e in response.get("entry") or []]
        bad = [s for s in statuses if not s.startswith(("200", "201"))]
        if bad or len(statuses) != item.entries:
            raise RuntimeError(f"{item.label}: {len(bad)} of {len(statuses)} entries failed, e.g. {bad[:3]}")
        return elapsed, response, statuses

    def close(self) -> None:
        self.app.extensions["healthhub.db"].dispose()


def run_both(db: BenchDatabase, corpus: Corpus, items: list[Item]
             ) -> tuple[dict[str, PathTiming], dict[str, PathTiming], list[dict[str, Any]], Counter[str]]:
    """Both paths over ``items``, alternating Bundle by Bundle (minimal first on even Bundles, the
    hub first on odd ones), so that both see the same machine: on these shared 2-core machines
    the speed drifts by a factor of two within minutes, and two separate passes measured the
    drift as much as the paths. Returns the hub's and the minimal path's timings, the response
    Bundles (in order) and the count of entry statuses."""
    hub_t, minimal_t = _timings(), _timings()
    responses: list[dict[str, Any]] = []
    outcomes: Counter[str] = Counter()
    minimal = MinimalPath(db)
    try:
        hub = HubPath(db, corpus)
        try:
            for i, item in enumerate(items):
                if i % 2:
                    elapsed, response, statuses = hub.run(item)
                    n, m_elapsed = minimal.run(item)
                else:
                    n, m_elapsed = minimal.run(item)
                    elapsed, response, statuses = hub.run(item)
                outcomes.update(s.split(" ")[0] for s in statuses)
                responses.append(response)
                for g in item.groups:
                    hub_t[g].add(item.entries, elapsed)
                    minimal_t[g].add(n, m_elapsed)
        finally:
            hub.close()
    finally:
        minimal.close()
    return hub_t, minimal_t, responses, outcomes


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
    log(f"  pass 1, the corpus into the empty database: both paths over {corpus.resources:,} resources, "
        "alternating Bundle by Bundle …")
    hub, minimal, responses, outcomes = run_both(db, corpus, items)
    log(f"  pass 1: minimal path {minimal['all'].rate:,.0f} resources/s, hub {hub['all'].rate:,.0f} resources/s "
        f"(patient transactions {hub['transaction'].rate:,.0f}/s, {hub['transaction'].rate / minimal['transaction'].rate:.2f} "
        "of the minimal path)")
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
    hub, minimal, _, outcomes = run_both(db, corpus, items)
    result.merge(hub, minimal, outcomes)
    g = "copies/fresh-connections"
    log(f"  pass 2: minimal {minimal[g].rate:,.0f} resources/s, hub {hub[g].rate:,.0f} resources/s")
    result.stored = db.count()
