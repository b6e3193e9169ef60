"""Processes killed mid-work (kill -9): a gunicorn worker in the middle of a large transaction
Bundle, and the MLLP listener in the middle of an HL7 v2 burst. Nothing half-stored, nothing
lost that was acknowledged, nothing stored twice when the sender retries, and the hub serves on."""
from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from healthhub.storage.models import Base
from tests.system.conftest import (
    FHIR_JSON,
    HL7_SAMPLES,
    TIMEOUT,
    Hub,
    MllpClient,
    ack_code,
    alive,
    facility,
    hl7_fields,
    hl7_sample,
    postgres_only,
    run_id,
    stored_messages,
    with_control_id,
)

pytestmark = postgres_only

PATIENTS = 300
OBSERVATIONS_PER_PATIENT = 5  # POSTed (urn:uuid references): written together, early in the transaction
PUTS = 100  # PUT Observation/<new id>: written one after the other, so the transaction writes for seconds


def big_bundle(system: str) -> dict[str, Any]:
    """A transaction Bundle of 1,900 new resources, each with an identifier in ``system``."""
    entries: list[dict[str, Any]] = []
    for p in range(PATIENTS):
        full_url = f"urn:uuid:00000000-0000-4000-8000-{p:012d}"
        entries.append({"fullUrl": full_url, "request": {"method": "POST", "url": "Patient"}, "resource": {
            # No name nor birth date: patient matching (MPI) has nothing to link them on.
            "resourceType": "Patient", "identifier": [{"system": system, "value": f"patient-{p}"}],
            "gender": "female"}})
        for o in range(OBSERVATIONS_PER_PATIENT):
            entries.append({"request": {"method": "POST", "url": "Observation"}, "resource": _observation(
                system, f"obs-{p}-{o}", full_url)})
    for i in range(PUTS):
        rid = f"crash-{system.rsplit(':', 1)[1]}-{i}"
        subject = f"urn:uuid:00000000-0000-4000-8000-{i % PATIENTS:012d}"
        entries.append({"request": {"method": "PUT", "url": f"Observation/{rid}"},
                        "resource": {**_observation(system, f"put-{i}", subject), "id": rid}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _observation(system: str, value: str, subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "identifier": [{"system": system, "value": value}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
            "subject": {"reference": subject}, "effectiveDateTime": "2024-05-01T09:30:00+02:00",
            "valueQuantity": {"value": 37.2, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}


def stored_with(hub: Hub, system: str) -> dict[str, int]:
    """Rows of the Bundle's resources (identifier ``system``): current, versions, identifier index."""
    contains = orjson.dumps({"identifier": [{"system": system}]}).decode()
    return {
        "resources": hub.sql("SELECT count(*) AS n FROM resources WHERE content @> CAST(:c AS jsonb)", c=contains)[0].n,
        "versions": hub.sql("SELECT count(*) AS n FROM resource_versions v JOIN resources r ON r.resource_type = "
                            "v.resource_type AND r.id = v.id WHERE r.content @> CAST(:c AS jsonb)", c=contains)[0].n,
        "index": hub.sql("SELECT count(*) AS n FROM search_token WHERE system = :s AND param = 'identifier'",
                         s=system)[0].n,
    }


def row_counts(hub: Hub) -> dict[str, int]:
    """Rows in every table of the hub's schema (but the rate limiter's request counters: the
    request is counted before it runs, in a transaction of its own)."""
    tables = [t.name for t in Base.metadata.sorted_tables if t.name != "rate_limit_counters"]
    return {name: hub.sql(f"SELECT count(*) AS n FROM {name}")[0].n for name in tables}


def connection_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the TCP connection from ``client_port``
    (/proc/net/tcp gives the socket's inode, /proc/<pid>/fd the process holding it)."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == local and cols[2] == remote:
            inode = cols[9]
    if inode is None or inode == "0":
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None


def test_worker_killed_mid_transaction_stores_nothing_and_the_hub_serves_on(hub: Hub) -> None:
    system = f"urn:system-test:crash:{run_id()}"
    bundle = big_bundle(system)
    body = orjson.dumps(bundle)
    token = hub.token()
    workers = hub.wait_for_workers()
    assert not [b for b in hub.backends("serve") if b.xid], "a transaction is already writing"
    before = row_counts(hub)

    # The Bundle goes over a connection of our own, so that we know which worker accepted it.
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=120)
    conn.connect()
    client_port = conn.sock.getsockname()[1]
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            conn.request("POST", "/fhir", body=body, headers={
                "Content-Type": FHIR_JSON, "Authorization": f"Bearer {token}", "Prefer": "return=minimal"})
            resp = conn.getresponse()
            outcome["status"] = resp.status
            outcome["body"] = resp.read()[:500]
        except (OSError, http.client.HTTPException) as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # Wait until the worker's transaction has written (PostgreSQL gave it a transaction id)
        # and is still open: the Bundle's creates are in the database, uncommitted, and its PUTs
        # are being written. (A transaction open for a second: not the rate limiter's counter
        # upserts, which take milliseconds.)
        deadline = time.monotonic() + 90
        worker, writing = None, []
        while time.monotonic() < deadline and sender.is_alive():
            worker = worker or connection_owner(workers, hub.port, client_port)
            writing = [b for b in hub.backends("serve") if b.xid and b.xact_age > 1.0]
            if worker and writing:
                break
            time.sleep(0.05)
        assert worker and len(writing) == 1, f"the Bundle was not seen being written (worker {worker}): {outcome}"
        time.sleep(0.3)
        assert sender.is_alive(), f"the Bundle finished before the worker could be killed: {outcome}"
        os.kill(worker, signal.SIGKILL)
        sender.join(30)
        assert not sender.is_alive()
    finally:
        conn.close()
        sender.join(30)
    assert "error" in outcome, f"the client got an answer from a killed worker: {outcome}"

    # The transaction died with its connection: its backend ends, and nothing of it is stored.
    backend = writing[0].pid
    deadline = time.monotonic() + 15
    while backend in {b.pid for b in hub.backends("serve")} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend not in {b.pid for b in hub.backends("serve")}, "the killed worker's transaction is still open"
    assert row_counts(hub) == before, "the killed transaction left rows behind"

    # gunicorn replaced the worker; the hub answers reads and writes.
    replaced = hub.wait_for_workers()
    assert worker not in replaced and not alive(worker)
    web = requests.Session()
    web.headers.update({"Authorization": f"Bearer {token}"})
    assert web.get(f"{hub.fhir}/metadata", timeout=TIMEOUT).status_code == 200
    assert web.get(f"{hub.fhir}/Patient", params={"identifier": f"{system}|"}, timeout=TIMEOUT).json()["total"] == 0

    # The client's retry stores the whole Bundle, once: every entry, no leftover of the first try.
    resp = web.post(hub.fhir, data=body, timeout=180, headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"})
    assert resp.status_code == 200, resp.text[:1000]
    assert [e["response"]["status"] for e in resp.json()["entry"]] == ["201 Created"] * len(bundle["entry"])
    entries = len(bundle["entry"])
    assert stored_with(hub, system) == {"resources": entries, "versions": entries, "index": entries}
    found = web.get(f"{hub.fhir}/Observation", params={"identifier": f"{system}|", "_summary": "count"},
                    timeout=TIMEOUT)
    assert found.json()["total"] == PATIENTS * OBSERVATIONS_PER_PATIENT + PUTS
    web.close()
    verify = hub.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


CONNECTIONS = len(HL7_SAMPLES)  # one sample message (a hospital, a patient) per connection
PER_CONNECTION = 30
KILL_AFTER = 20  # ACKs received before the listener is killed


def test_listener_killed_mid_burst_loses_no_acknowledged_message(hub: Hub) -> None:
    run = run_id()
    samples = [hl7_sample(name) for name in HL7_SAMPLES]
    for sample in samples:
        hub.register_sender(facility(sample))
    bursts = [[with_control_id(sample, f"SYS-{run}-{k}-{i:03d}") for i in range(PER_CONNECTION)]
              for k, sample in enumerate(samples)]
    control_ids = [control_id_of(m) for burst in bursts for m in burst]
    acks: dict[str, str] = {}  # control id → MSA-1, for the messages that got an ACK
    unanswered: list[bytes] = []  # in flight when the listener died, or never sent
    lock = threading.Lock()

    def send(burst: list[bytes]) -> None:
        sent = 0
        try:
            with MllpClient(hub.mllp_port) as client:
                for message in burst:
                    code, control = ack_code(client.exchange(message))
                    assert control == control_id_of(message)
                    with lock:
                        acks[control] = code
                    sent += 1
        except OSError:
            pass  # the listener died: the rest waits for the sender's retry
        with lock:
            unanswered.extend(burst[sent:])

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        futures = [pool.submit(send, burst) for burst in bursts]
        deadline = time.monotonic() + 60
        while len(acks) < KILL_AFTER and time.monotonic() < deadline and not all(f.done() for f in futures):
            time.sleep(0.01)
        hub.kill_listener()
        for future in futures:
            future.result(TIMEOUT + 5)
    assert KILL_AFTER <= len(acks) < len(control_ids), f"the listener was not killed mid-burst: {len(acks)} ACKs"
    assert len(acks) + len(unanswered) == len(control_ids)
    acked = [c for c, code in acks.items() if code == "AA"]
    assert set(acks.values()) <= {"AA", "AE"}, acks  # AE: not stored ("send it again")

    # What was acknowledged is stored once; what was not is stored once (handled, ACK lost) or not at all.
    stored = stored_messages(hub, control_ids)
    assert {c: stored[c] for c in acked} == dict.fromkeys(acked, 1)
    assert set(stored.values()) <= {0, 1}, stored
    assert not [c for c, code in acks.items() if code == "AE" and stored[c]], "a message answered AE was stored"
    in_flight = [control_id_of(m) for m in unanswered if stored[control_id_of(m)]]
    assert len(in_flight) <= CONNECTIONS  # only a message being handled can be stored without its ACK

    # The sender's retry, to the restarted listener: everything not acknowledged AA, once more.
    hub.start_listener()
    retry = unanswered + [m for burst in bursts for m in burst if acks.get(control_id_of(m)) == "AE"]
    with MllpClient(hub.mllp_port) as client:
        answers = [client.exchange(m).decode() for m in retry]
    assert [ack_code(a.encode()) for a in answers] == [("AA", control_id_of(m)) for m in retry]
    # A message stored before the listener died is recognised (sender + MSH-10), not stored again.
    duplicates = sorted(control_id_of(m) for m, a in zip(retry, answers, strict=True) if "Duplicate" in a)
    assert duplicates == sorted(in_flight)
    assert stored_messages(hub, control_ids) == dict.fromkeys(control_ids, 1)
    keys = hub.sql("SELECT k.key, k.message_id, m.control_id FROM inbound_keys k JOIN inbound_messages m "
                   "ON m.id = k.message_id WHERE k.kind = 'hl7' AND k.key = ANY(:ids)", ids=control_ids)
    assert sorted(k.key for k in keys) == sorted(control_ids) and all(k.key == k.control_id for k in keys)
    verify = hub.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def control_id_of(message: bytes) -> str:
    """MSH-10 of a message: the control id its ACK must name."""
    return hl7_fields(message)[0][9]
