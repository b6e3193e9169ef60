"""32 clients against ``healthhub serve --workers 4`` on PostgreSQL for 20 s: conditional creates
that collide, ``If-Match`` updates of the same few resources, transaction Bundles that do both,
and searches, all at once. Afterwards, from what each client recorded (never from what the hub
says of itself): no lost update, no duplicate, gap-free version chains, no 5xx, every request
audited once and an intact audit chain."""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.system.conftest import FHIR_JSON, TIMEOUT, Hub, postgres_only, run_id

pytestmark = postgres_only

DURATION = 20.0
THREADS = 32
KEYS = 6  # identifiers that conditional creates (plain and in Bundles) race for
HOT = 4  # resources every client updates with If-Match


@dataclass
class Record:
    """What the clients saw, appended to from every thread (list.append is atomic)."""

    responses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    failures: list[str] = field(default_factory=list)  # 5xx, unexpected statuses, exceptions
    #: identifier key → (status, id) of every conditional create that succeeded (POST or Bundle entry)
    creates: dict[int, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    #: hot id → (version, marker) of every update the hub confirmed (PUT or Bundle entry)
    updates: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    #: markers of the Observations of committed and of refused transaction Bundles
    committed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: totals seen by searches for one identifier (more than 1 = a duplicate, even briefly)
    search_totals: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def confirmed(self, rid: str, read: int, written: int, marker: str) -> None:
        """An update the hub confirmed: it must be the version after the one the client read
        and named in If-Match (else an update made in between was overwritten unseen)."""
        if written != read + 1:
            self.failures.append(f"Patient/{rid}: an update of version {read} (If-Match) was stored as {written}")
        with self.lock:
            self.updates[rid].append((written, marker))

    def created(self, key: int, status: int, rid: str) -> None:
        with self.lock:
            self.creates[key].append((status, rid))

    def answered(self, operation: str, resp: requests.Response, allowed: set[int]) -> bool:
        with self.lock:
            self.responses[(operation, resp.status_code)] += 1
        if resp.status_code not in allowed:
            self.failures.append(f"{operation}: {resp.status_code} {resp.text[:300]}")
            return False
        return True


def version_of(etag: str) -> int:
    assert etag.startswith('W/"') and etag.endswith('"'), etag
    return int(etag[3:-1])


def marker_of(resource: dict[str, Any]) -> str | None:
    names = resource.get("name") or [{}]
    return names[0].get("text")


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(hub: Hub) -> None:
    run = run_id()
    system = f"urn:system-test:concurrency:{run}"
    # A client id per thread: 32 hospital systems, each well within the hub's per-client rate limit.
    client_id = f"system-concurrency-{run}"
    headers = {"Authorization": f"Bearer {hub.token(client_id=client_id)}", "Accept": FHIR_JSON}
    setup = requests.Session()
    setup.headers.update(headers)
    hot_ids = []
    for i in range(HOT):
        resp = setup.post(f"{hub.fhir}/Patient", timeout=TIMEOUT, json={
            "resourceType": "Patient", "identifier": [{"system": system, "value": f"hot-{i}"}],
            "name": [{"text": "initial"}]})
        assert resp.status_code == 201, resp.text
        hot_ids.append(resp.json()["id"])
    setup.close()
    rec = Record()
    requests_sent = [HOT]  # every request that got an answer (each must be audited once)
    deadline = time.monotonic() + DURATION

    def create(web: requests.Session, rng: random.Random, marker: str) -> None:
        key = rng.randrange(KEYS)
        resp = web.post(f"{hub.fhir}/Patient", timeout=TIMEOUT,
                        headers={"If-None-Exist": f"identifier={system}|key-{key}"},
                        json={"resourceType": "Patient", "identifier": [{"system": system, "value": f"key-{key}"}],
                              "name": [{"text": marker}]})
        if rec.answered("create", resp, {200, 201}):
            rec.created(key, resp.status_code, resp.json()["id"])

    def renamed(web: requests.Session, rid: str, marker: str) -> tuple[requests.Response, dict[str, Any]] | None:
        """The read of Patient ``rid`` and its body renamed to ``marker``; None when the read failed."""
        got = web.get(f"{hub.fhir}/Patient/{rid}", timeout=TIMEOUT)
        if not rec.answered("read", got, {200}):
            return None
        body = got.json()
        body["name"] = [{"text": marker}]
        return got, body

    def update(web: requests.Session, rng: random.Random, marker: str) -> None:
        rid = rng.choice(hot_ids)
        read = renamed(web, rid, marker)
        if read is None:
            return
        got, body = read
        resp = web.put(f"{hub.fhir}/Patient/{rid}", json=body, timeout=TIMEOUT,
                       headers={"If-Match": got.headers["ETag"]})
        # 412: another client updated it since our read; 409: the database aborted us for one
        if rec.answered("update", resp, {200, 409, 412}) and resp.status_code == 200:
            rec.confirmed(rid, version_of(got.headers["ETag"]), version_of(resp.headers["ETag"]), marker)
            if marker_of(resp.json()) != marker:
                rec.failures.append(f"update of Patient/{rid} answered {resp.text[:300]}")

    def transaction(web: requests.Session, rng: random.Random, marker: str) -> None:
        key = rng.randrange(KEYS)
        patient = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        entries: list[dict[str, Any]] = [{
            "fullUrl": patient,
            "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": f"key-{key}"}],
                         "name": [{"text": marker}]},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={system}|key-{key}"},
        }]
        entries += [{
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "system test"},
                         "identifier": [{"system": system, "value": f"obs-{marker}-{j}"}],
                         "subject": {"reference": patient}},
            "request": {"method": "POST", "url": "Observation"},
        } for j in range(2)]
        hot = None
        if rng.random() < 0.5:  # and an If-Match update of a hot resource: the whole Bundle or nothing
            hot = rng.choice(hot_ids)
            read = renamed(web, hot, marker)
            if read is None:
                return
            got, body = read
            entries.append({"resource": body, "request": {"method": "PUT", "url": f"Patient/{hot}",
                                                          "ifMatch": got.headers["ETag"]}})
        resp = web.post(hub.fhir, timeout=TIMEOUT,
                        json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        if not rec.answered("transaction", resp, {200, 409, 412}):
            return
        if resp.status_code != 200:
            rec.refused.append(marker)
            return
        out = resp.json()["entry"]
        status = int(out[0]["response"]["status"].split()[0])
        rec.created(key, status, out[0]["response"]["location"].split("/")[1])
        rec.committed.append(marker)
        if hot is not None:
            assert out[3]["response"]["location"].split("/")[1] == hot
            rec.confirmed(hot, version_of(entries[3]["request"]["ifMatch"]), version_of(out[3]["response"]["etag"]),
                          marker)

    def search(web: requests.Session, rng: random.Random, marker: str) -> None:
        key = rng.randrange(KEYS)
        resp = web.get(f"{hub.fhir}/Patient", params={"identifier": f"{system}|key-{key}"}, timeout=TIMEOUT)
        if rec.answered("search", resp, {200}):
            rec.search_totals.append(resp.json()["total"])
        resp = web.get(f"{hub.fhir}/Observation", timeout=TIMEOUT,
                       params={"identifier": f"{system}|", "_count": "20", "_sort": "-_lastUpdated"})
        rec.answered("search", resp, {200})

    operations = (create, update, transaction, search)

    def client(number: int) -> int:
        web = requests.Session()
        web.headers.update({**headers, "Authorization": f"Bearer {hub.token(client_id=f'{client_id}-{number}')}"})
        rng = random.Random(f"{run}:{number}")
        done = 0
        while time.monotonic() < deadline:
            operation = rng.choices(operations, weights=(3, 4, 2, 2))[0]
            try:
                operation(web, rng, f"{run}-{number}-{done}")
            except requests.RequestException as exc:  # a timeout, a reset: the hub failed this client
                rec.failures.append(f"{operation.__name__}: {exc!r}")
            done += 1
        web.close()
        return done

    with ThreadPoolExecutor(THREADS) as pool:
        rounds = sum(pool.map(client, range(THREADS)))
    requests_sent.append(sum(rec.responses.values()))
    # -- what the clients saw
    assert not rec.failures, f"{len(rec.failures)} failed requests, e.g. {rec.failures[:5]}\n{hub.log('serve')}"
    assert rounds > THREADS, rounds
    ok = Counter(op for (op, status), n in rec.responses.items() for _ in range(n) if status < 300)
    assert ok["create"] and ok["update"] and ok["transaction"] and ok["search"], rec.responses
    assert set(rec.search_totals) <= {0, 1}, Counter(rec.search_totals)

    # -- no duplicate from a conditional create: one resource per identifier, one 201 for it
    for key, results in rec.creates.items():
        ids = {rid for _, rid in results}
        assert len(ids) == 1, (key, Counter(results))
        assert sum(status == 201 for status, _ in results) == 1, (key, Counter(s for s, _ in results))
        rows = hub.sql("SELECT id FROM resources WHERE resource_type = 'Patient' AND content @> "
                       "CAST(:ident AS jsonb)", ident=f'{{"identifier": [{{"system": "{system}", '
                                                          f'"value": "key-{key}"}}]}}')
        assert [r.id for r in rows] == list(ids), key

    # -- no lost update: every confirmed version is in the history once, with that client's content
    web = requests.Session()
    web.headers.update(headers)
    for rid in hot_ids:
        history = []
        url: str | None = f"{hub.fhir}/Patient/{rid}/_history?_count=500"
        while url:
            page = web.get(url, timeout=TIMEOUT)
            assert page.status_code == 200, page.text
            requests_sent.append(1)
            history += [(version_of(e["response"]["etag"]), marker_of(e["resource"])) for e in page.json()["entry"]]
            url = next((link["url"] for link in page.json().get("link", []) if link["relation"] == "next"), None)
        versions = sorted(v for v, _ in history)
        assert versions == list(range(1, len(history) + 1)), f"Patient/{rid}: versions {versions}"
        confirmed = sorted(rec.updates[rid])
        assert len({v for v, _ in confirmed}) == len(confirmed), f"two clients were given one version: {confirmed}"
        # Every version after the first was confirmed to exactly one client, with what it wrote.
        assert sorted(h for h in history if h[0] > 1) == confirmed, f"Patient/{rid}"
        current = web.get(f"{hub.fhir}/Patient/{rid}", timeout=TIMEOUT)
        requests_sent.append(1)
        assert version_of(current.headers["ETag"]) == len(history)
    web.close()

    # -- transactions: all or nothing
    observations = Counter(r.value.rsplit("-", 1)[0].removeprefix("obs-") for r in hub.sql(
        "SELECT content->'identifier'->0->>'value' AS value FROM resources WHERE resource_type = 'Observation' "
        "AND content->'identifier'->0->>'system' = :system", system=system))
    assert observations == Counter({m: 2 for m in rec.committed}), "Observations of refused or lost Bundles"
    assert not set(rec.refused) & {mk for ups in rec.updates.values() for _, mk in ups}

    # -- every version chain in the database is gap-free: versions 1..n, n = the current version
    gaps = hub.sql("""
        SELECT r.resource_type, r.id, r.version_id, count(v.version_id) AS n, min(v.version_id) AS first,
               max(v.version_id) AS last
        FROM resources r JOIN resource_versions v ON v.resource_type = r.resource_type AND v.id = r.id
        GROUP BY r.resource_type, r.id, r.version_id
        HAVING count(v.version_id) <> r.version_id OR min(v.version_id) <> 1 OR max(v.version_id) <> r.version_id""")
    assert gaps == []

    # -- audited: one record per request this test made, and the chain verifies
    audited = hub.sql("SELECT count(*) AS n FROM audit_events WHERE client_id = :c OR client_id LIKE :p",
                      c=client_id, p=f"{client_id}-%")[0].n
    assert audited == sum(requests_sent)
    verify = hub.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "audit chain intact" in verify.stdout
