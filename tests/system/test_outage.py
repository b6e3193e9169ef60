"""A database outage under load, three ways:

- ``refuse``: the TCP proxy between the session hub's processes and the shared PostgreSQL cuts
  every connection, and for a while resets new ones (a server restarting);
- ``hang``: the proxy cuts every connection and accepts new ones that never answer (a hung
  server, a dead host behind a load balancer; longer than the clients' timeout, so that only a
  connect timeout in the hub can keep its answers in time);
- ``stop``: a real stop. The shared PostgreSQL is never stopped, so a second hub runs on a
  PostgreSQL cluster of the test's own (``initdb`` in a temporary folder, its own port, reached
  directly), which is stopped with ``pg_ctl stop -m immediate`` (its backends killed, no
  checkpoint) and started again on the same port and data directory (crash recovery). As root
  the cluster runs as the ``postgres`` user (initdb refuses root); where no PostgreSQL server
  is installed this case is skipped, saying so.

Meanwhile every FHIR request is answered within the timeout, with 503 and an OperationOutcome
when it needed the database (never a 500), and every HL7 v2 message over MLLP gets an ACK, AE
when it could not be stored (never silence); once the database is back the hub recovers by
itself, and what it acknowledged is stored. The three share the load and the assertions."""
from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import requests

from healthhub.config import Config
from tests.system.conftest import (
    FHIR_JSON,
    HL7_SAMPLES,
    TIMEOUT,
    WORKERS,
    Hub,
    MllpClient,
    PostgresCluster,
    ack_code,
    facility,
    hl7_sample,
    postgres_cluster,
    postgres_only,
    run_id,
    running_hub,
    stored_messages,
    with_control_id,
)

pytestmark = postgres_only

#: As many HTTP clients as gunicorn workers: a request waits for the database, not for a worker
#: held by another client's wait (sync workers; what the test bounds is the hub's own wait).
HTTP_CLIENTS = WORKERS
MLLP_CLIENTS = 2
BEFORE = 3.0  # seconds of normal load before the outage
OUTAGES = {"refuse": 5.0, "hang": TIMEOUT + 3, "stop": 5.0}  # seconds
RECOVERY = 8.0  # after the database is back, every request must succeed again within this
AFTER = 3.0  # seconds of load after RECOVERY in which everything must succeed


@dataclass(frozen=True)
class Outcome:
    kind: str  # read, search, create, hl7-http (HL7 v2 over HTTP), hl7 (over MLLP)
    started: float
    ended: float
    result: str  # "200", "503", "AA", "AE", or what went wrong
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("200", "201", "AA")


class Outage(Protocol):
    """How the database goes away from ``hub`` and comes back."""

    hub: Hub

    def begin(self) -> None: ...

    def end(self) -> None:
        """Bring the database back; return once it accepts connections again."""

    def check(self) -> None:
        """Assert that the outage really was one for the hub's processes."""


class ProxyOutage:
    """``refuse`` or ``hang``, staged by the proxy between the hub and the shared PostgreSQL."""

    def __init__(self, hub: Hub, mode: str) -> None:
        assert hub.proxy is not None
        self.hub, self.proxy, self.mode = hub, hub.proxy, mode
        self.connections = 0

    def begin(self) -> None:
        self.connections = self.proxy.open_connections
        self.proxy.outage(self.mode)

    def end(self) -> None:
        self.proxy.restore()

    def check(self) -> None:
        assert self.connections > 0 and self.proxy.refused + self.proxy.held > 0, \
            "the hub's processes do not reach the database by the proxy"


class ClusterStop:
    """``stop``: the hub's own PostgreSQL cluster stopped for real, then started again."""

    def __init__(self, hub: Hub, cluster: PostgresCluster) -> None:
        self.hub, self.cluster = hub, cluster
        self.sessions = 0  # the hub's processes' sessions when it stopped
        self.refused = False  # whether a connection was refused while it was down

    def begin(self) -> None:
        self.sessions = len(self.hub.backends("serve")) + len(self.hub.backends("mllp"))
        self.cluster.stop("immediate")
        try:
            socket.create_connection(("127.0.0.1", self.cluster.port), timeout=2).close()
        except ConnectionRefusedError:
            self.refused = True

    def end(self) -> None:
        self.cluster.start()

    def check(self) -> None:
        assert self.sessions > 0, "the hub's processes had no session on the private cluster"
        assert self.refused, f"the private cluster still took connections after pg_ctl stop:\n{self.cluster.log()}"


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this module's own, that ``stop`` really stops; deleted at the end."""
    with postgres_cluster("healthhub") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def private_hub(private_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A second hub (``serve`` with 4 workers, ``mllp``) on the private cluster, reached directly."""
    cfg = Config(database_url=private_cluster.url("healthhub"), base_url="http://hub.test")
    with running_hub(tmp_path_factory.mktemp("private-hub"), cfg) as hub:
        yield hub


@pytest.fixture
def outage(request: pytest.FixtureRequest, mode: str) -> Outage:
    """The ``mode`` of outage, on the hub it is staged for, whole (the database up, 4 workers,
    a listener). Fixtures by name: a ``refuse`` or ``hang`` run alone starts no private cluster."""
    if mode == "stop":
        cluster: PostgresCluster = request.getfixturevalue("private_cluster")
        hub: Hub = request.getfixturevalue("private_hub")
        if not cluster.running:  # an earlier run of the test failed while it was down
            cluster.start()
        hub.ensure()
        return ClusterStop(hub, cluster)
    return ProxyOutage(request.getfixturevalue("hub"), mode)


@pytest.mark.parametrize("mode", list(OUTAGES))
def test_database_outage_answers_503_and_ae_then_recovers(outage: Outage, mode: str) -> None:
    hub = outage.hub
    run = run_id()
    system = f"urn:system-test:outage:{run}"
    web = hub.session()
    seed = web.post(f"{hub.fhir}/Patient", timeout=TIMEOUT,
                    json={"resourceType": "Patient", "identifier": [{"system": system, "value": "seed"}]})
    assert seed.status_code == 201, seed.text
    patient = seed.json()["id"]
    web.close()
    samples = [hl7_sample(name) for name in HL7_SAMPLES[:MLLP_CLIENTS]]
    for sample in samples:
        hub.register_sender(facility(sample))
    outcomes: list[Outcome] = []
    created: dict[str, str] = {}  # identifier value → status of its create
    acked: dict[str, str] = {}  # control id → MSA-1
    stop = threading.Event()

    def http_client(number: int) -> None:
        session = hub.session()
        i = 0
        while not stop.is_set():
            kind = ("read", "search", "create", "hl7-http")[i % 4]
            i += 1
            started = time.monotonic()
            try:
                if kind == "hl7-http":  # HL7 v2 over HTTP: the ACK in a 200, or a 503 before the pipeline
                    control = f"HTTP-{run}-{number}-{i:04d}"
                    resp = session.post(f"{hub.base}/ingest/hl7v2", timeout=TIMEOUT,
                                        data=with_control_id(samples[number % MLLP_CLIENTS], control),
                                        headers={"Content-Type": "x-application/hl7-v2+er7"})
                    if resp.status_code == 200:
                        code, _ = ack_code(resp.content)
                        acked[control] = code
                        outcomes.append(Outcome(kind, started, time.monotonic(), code,
                                                resp.text if code != "AA" else ""))
                        continue
                elif kind == "read":
                    resp = session.get(f"{hub.fhir}/Patient/{patient}", timeout=TIMEOUT)
                elif kind == "search":
                    resp = session.get(f"{hub.fhir}/Patient", params={"identifier": f"{system}|"}, timeout=TIMEOUT)
                else:
                    value = f"c-{number}-{i}"
                    resp = session.post(f"{hub.fhir}/Patient", timeout=TIMEOUT, json={
                        "resourceType": "Patient", "identifier": [{"system": system, "value": value}]})
                    created[value] = str(resp.status_code)
                outcomes.append(Outcome(kind, started, time.monotonic(), str(resp.status_code), _problem(resp)))
            except requests.RequestException as exc:
                outcomes.append(Outcome(kind, started, time.monotonic(), type(exc).__name__, str(exc)[:300]))
            finally:
                time.sleep(0.05)
        session.close()

    def mllp_client(number: int) -> None:
        i = 0
        client: MllpClient | None = None
        while not stop.is_set():
            i += 1
            control = f"OUT-{run}-{number}-{i:04d}"
            started = time.monotonic()
            try:
                client = client or MllpClient(hub.mllp_port)
                ack = client.exchange(with_control_id(samples[number], control)).decode()
                code, _ = ack_code(ack.encode())
                acked[control] = code
                outcomes.append(Outcome("hl7", started, time.monotonic(), code, ack if code != "AA" else ""))
            except OSError as exc:
                outcomes.append(Outcome("hl7", started, time.monotonic(), type(exc).__name__, str(exc)[:300]))
                if client is not None:
                    client.close()
                client = None
            time.sleep(0.05)
        if client is not None:
            client.close()

    threads = [threading.Thread(target=http_client, args=(n,)) for n in range(HTTP_CLIENTS)]
    threads += [threading.Thread(target=mllp_client, args=(n,)) for n in range(MLLP_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(BEFORE)
        down = time.monotonic()
        outage.begin()
        time.sleep(OUTAGES[mode])
        outage.end()
        up = time.monotonic()
        time.sleep(RECOVERY + AFTER)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT + 10)
    assert not any(t.is_alive() for t in threads)
    outage.check()

    def during(first: float, last: float) -> list[Outcome]:
        return [o for o in outcomes if first <= o.started < last]

    summary = Counter((o.kind, o.result) for o in outcomes)
    # Never a 500, a reset or a hang: each request has its answer, each message its ACK.
    wrong = [o for o in outcomes if o.result not in ("200", "201", "503", "AA", "AE")]
    assert not wrong, f"{len(wrong)} bad answers, e.g. {wrong[:3]}; all: {summary}\n{hub.log('serve')}"
    slow = [o for o in outcomes if o.ended - o.started > TIMEOUT]
    assert not slow, slow[:3]
    # 503s are OperationOutcomes saying to retry; AEs say the message was not stored.
    assert not [o for o in outcomes if o.result == "503" and o.detail != "transient"], summary
    assert not [o for o in outcomes if o.result == "AE" and "unavailable" not in o.detail], summary
    # Before the outage everything worked; during it the outage was felt by both kinds of client.
    assert all(o.ok for o in outcomes if o.ended < down), summary
    felt = Counter(o.result for o in during(down, up))
    assert felt["503"] and felt["AE"], felt
    # The hub recovered by itself: from RECOVERY seconds after the database came back, all succeed.
    late = during(up + RECOVERY, float("inf"))
    assert late and all(o.ok for o in late), Counter((o.kind, o.result) for o in late)
    assert {o.kind for o in late} == {"read", "search", "create", "hl7-http", "hl7"}

    # What was acknowledged is stored once. What got AE was not stored — or, should the connection
    # have been cut after PostgreSQL committed it but before the hub heard so, stored once: the
    # sender's retry (sender + MSH-10) then stores it once in every case.
    acknowledged = [c for c, code in acked.items() if code == "AA"]
    refused = [c for c, code in acked.items() if code == "AE"]
    stored = stored_messages(hub, list(acked))
    assert {c: stored[c] for c in acknowledged} == dict.fromkeys(acknowledged, 1)
    assert {stored[c] for c in refused} <= {0, 1}
    by_control = {c: n % MLLP_CLIENTS for n in range(HTTP_CLIENTS) for c in acked
                  if c.startswith((f"OUT-{run}-{n}-", f"HTTP-{run}-{n}-"))}
    with MllpClient(hub.mllp_port) as client:
        retried = [ack_code(client.exchange(with_control_id(samples[by_control[c]], c))) for c in refused]
    assert retried == [("AA", c) for c in refused]
    assert stored_messages(hub, list(acked)) == dict.fromkeys(acked, 1)
    # Every create answered 201 is there once; every create answered 503 may or may not be (its
    # commit may have been the statement cut off), but never twice.
    rows = hub.sql("SELECT content->'identifier'->0->>'value' AS value, count(*) AS n FROM resources "
                   "WHERE resource_type = 'Patient' AND content->'identifier'->0->>'system' = :s GROUP BY value",
                   s=system)
    found = {r.value: r.n for r in rows}
    assert {v: found.get(v) for v, s in created.items() if s == "201"} == {
        v: 1 for v, s in created.items() if s == "201"}
    assert set(found.values()) == {1}
    verify = hub.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _problem(resp: requests.Response) -> str:
    """The issue code of an error's OperationOutcome (``transient`` for the database away)."""
    if resp.status_code < 400:
        return ""
    try:
        body: Any = resp.json()
    except ValueError:
        return f"not JSON: {resp.text[:200]}"
    if resp.headers.get("Content-Type", "").split(";")[0] != FHIR_JSON or body.get("resourceType") != "OperationOutcome":
        return f"not an OperationOutcome: {resp.text[:200]}"
    return str(body["issue"][0].get("code"))

