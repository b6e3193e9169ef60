"""HL7 v2 over HTTP, MLLP and the CLI: stored, archived, acknowledged, deduplicated, replayed.

Expected values are read from the raw messages in the tests (split on their own separators).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from healthhub.clock import utcnow
from healthhub.ingest import senders
from tests.conftest import DATA, archived, authorized, mllp_listener

HL7 = "x-application/hl7-v2+er7"
MESSAGES = sorted((DATA / "hl7v2").glob("*.hl7"))
MALFORMED = sorted((DATA / "hl7v2" / "malformed").glob("*.hl7"))


def segments(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    lines = [line.strip() for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line.strip()]
    fs = lines[0][3]
    return [line.split(fs) for line in lines]


def facility(data: bytes) -> str:
    """MSH-4.1 (else MSH-3.1): the sender's hospital code, read from the raw text."""
    msh = next(s for s in segments(data) if s[0] == "MSH")
    component = msh[1][0]
    for value in (msh[3] if len(msh) > 3 else "", msh[2]):
        first = value.split(component)[0].strip()
        if first:
            return first
    return ""


def register(app: Any, code: str, client_id: str | None = None, **kw: Any) -> None:
    db = app.extensions["healthhub.db"]
    with db.transaction() as session:
        if session.get(senders.Sender, code) is None:
            senders.create(session, code, f"Hospital {code}", utcnow(), client_id=client_id, **kw)


def ack_fields(ack: bytes) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for seg in segments(ack):
        out.setdefault(seg[0], []).append(seg)
    return out


def post_hl7(client: Any, data: bytes) -> dict[str, list[list[str]]]:
    resp = client.post("/ingest/hl7v2", data=data, headers={"Content-Type": HL7})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == HL7
    return ack_fields(resp.data)


@pytest.fixture
def sender_client(app: Any):
    """A client registered as the sender of a message's facility."""
    def make(data: bytes, **kw: Any) -> Any:
        code = facility(data) or "NO-FACILITY"  # a message without MSH-3/4: the client says who sends
        client_id = f"hl7-{code}"[:60]
        register(app, code, client_id, **kw)
        return authorized(app, client_id=client_id)
    return make


def test_oru_is_stored_with_provenance_and_archived(app, sender_client, client):
    data = (DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7").read_bytes()
    segs = segments(data)
    msh = segs[0]
    ack = post_hl7(sender_client(data), data)
    assert ack["MSA"][0][1] == "AA" and ack["MSA"][0][2] == msh[9]
    obx = [s for s in segs if s[0] == "OBX"]
    pid = next(s for s in segs if s[0] == "PID")
    family = pid[5].split("^")[0]
    patients = client.get(f"/fhir/Patient?family={family}").json
    assert patients["total"] == 1
    patient = patients["entry"][0]["resource"]
    observations = client.get(f"/fhir/Observation?subject=Patient/{patient['id']}").json
    assert observations["total"] == len(obx)
    glucose = observations["entry"][0]["resource"]
    assert glucose["code"]["coding"][0]["code"] == obx[0][3].split("^")[0]
    rows = archived(app)
    assert [(r.transport, r.outcome, r.control_id) for r in rows] == [("http-hl7v2", "stored", msh[9])]
    assert rows[0].payload == data and rows[0].size == len(data)
    source = f"http://hub.test/ingest/archive/{rows[0].id}"
    assert patient["meta"]["source"] == source and glucose["meta"]["source"] == source
    provenance = client.get(f"/fhir/Provenance?target=Observation/{glucose['id']}").json["entry"][0]["resource"]
    targets = {t["reference"].split("/_history/")[0] for t in provenance["target"]}
    assert f"Patient/{patient['id']}" in targets and f"Observation/{glucose['id']}" in targets
    assert provenance["entity"][0]["what"]["identifier"] == {"system": "urn:healthhub:inbound", "value": str(rows[0].id)}


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name)
def test_every_sample_message_gets_an_ack_and_an_archive_row(app, sender_client, path):
    data = path.read_bytes()
    ack = post_hl7(sender_client(data), data)
    code = ack["MSA"][0][1]
    assert code in ("AA", "AE"), ack
    pid3 = [s[3] for s in segments(data) if s[0] == "PID" and len(s) > 3]
    if code == "AE":  # only a message without any patient identifier (PID-3.1) is refused in this set
        assert all(not rep.split("^")[0].strip() for p in pid3 for rep in p.split("~")) and "ERR" in ack
    rows = archived(app)
    assert rows[-1].outcome == ("stored" if code == "AA" else "rejected")
    assert rows[-1].payload == data


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.name)
def test_malformed_messages_are_refused_precisely_and_kept(app, client, path):
    data = path.read_bytes()
    register(app, "ANY", "hl7-any")
    resp = authorized(app, client_id="hl7-any").post("/ingest/hl7v2", data=data, headers={"Content-Type": HL7})
    assert resp.status_code == 200
    ack = ack_fields(resp.data)
    assert ack["MSA"][0][1] in ("AA", "AE", "AR")
    if ack["MSA"][0][1] != "AA":
        assert "ERR" in ack
    assert archived(app)[-1].payload == data
    assert client.get("/fhir/metadata").status_code == 200  # still serving


def test_resent_message_is_acknowledged_and_not_stored_twice(app, sender_client, client):
    data = (DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7").read_bytes()
    sender = sender_client(data)
    post_hl7(sender, data)
    before = client.get("/fhir/Observation").json["total"]
    versions = client.get("/fhir/Observation/_history").json["total"]
    ack = post_hl7(sender, data)
    assert ack["MSA"][0][1] == "AA" and "Duplicate" in "|".join(ack["MSA"][0])
    assert client.get("/fhir/Observation").json["total"] == before
    assert client.get("/fhir/Observation/_history").json["total"] == versions
    assert [r.outcome for r in archived(app)] == ["stored", "duplicate"]


@pytest.mark.parametrize("sample", ["ms_oru_r01_rmgead.hl7", "ms_adt_a01_01.hl7"])  # v2.4 (MSA-3), v2.8 (ERR)
def test_copies_sent_at_once_are_stored_once(app, sender_client, client, sample):
    """An interface engine that resends before the first ACK arrives: the copies race in
    concurrent transactions (on PostgreSQL; SQLite runs them one after the other). One stores the
    message, the others wait for it on the sender + MSH-10 key and are acknowledged as duplicates
    — with the note in MSA-3 up to v2.6, in an informational ERR from v2.7 on."""
    data = (DATA / "hl7v2" / sample).read_bytes()
    sender = sender_client(data)
    token = sender.environ_base["HTTP_AUTHORIZATION"]
    obx = len([s for s in segments(data) if s[0] == "OBX"])
    start = threading.Barrier(4)

    def send() -> str:
        copy = app.test_client()
        start.wait()
        resp = copy.post("/ingest/hl7v2", data=data, headers={"Content-Type": HL7, "Authorization": token})
        assert resp.status_code == 200
        assert ack_fields(resp.data)["MSA"][0][1] == "AA"
        return "duplicate" if "Duplicate of a message already stored" in resp.get_data(as_text=True) else "stored"

    with ThreadPoolExecutor(4) as pool:
        answers = sorted(pool.map(lambda _: send(), range(4)))
    assert answers == ["duplicate", "duplicate", "duplicate", "stored"]
    assert sorted(r.outcome for r in archived(app)) == answers
    assert client.get("/fhir/Observation").json["total"] == obx
    assert client.get("/fhir/Provenance").json["total"] == 1


def test_adt_updates_the_same_patient(app, sender_client, client):
    a01 = (DATA / "hl7v2" / "ms_adt_a01_01.hl7").read_bytes()
    sender = sender_client(a01)
    assert post_hl7(sender, a01)["MSA"][0][1] == "AA"
    pid = next(s for s in segments(a01) if s[0] == "PID")
    mrn = pid[3].split("~")[0].split("^")[0]
    a08 = a01.replace(b"ADT^A01^ADT_A01", b"ADT^A08^ADT_A01").replace(b"|A01|", b"|A08|")
    msh10 = segments(a01)[0][9]
    a08 = a08.replace(f"|{msh10}|".encode(), f"|{msh10}-8|".encode(), 1)
    a08 = a08.replace(pid[5].split("^")[1].encode(), b"Renamed", 1)
    assert post_hl7(sender, a08)["MSA"][0][1] == "AA"
    found = client.get(f"/fhir/Patient?identifier={mrn}").json
    assert found["total"] == 1
    patient = found["entry"][0]["resource"]
    assert patient["meta"]["versionId"] == "2"
    assert "Renamed" in patient["name"][0]["given"]


def test_unregistered_sender_is_refused_then_replayed(app, client, cli):
    data = (DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7").read_bytes()
    resp = authorized(app, client_id="unbound-client").post("/ingest/hl7v2", data=data, headers={"Content-Type": HL7})
    ack = ack_fields(resp.data)
    assert ack["MSA"][0][1] == "AR"
    rows = archived(app)
    assert rows[-1].outcome == "rejected"
    listed = cli("ingest", "list", "--failed")
    assert listed.exit_code == 0 and str(rows[-1].id) in listed.output
    register(app, facility(data))  # the operator registers the hospital …
    replayed = cli("ingest", "replay", "--id", str(rows[-1].id))  # … and replays its message
    assert replayed.exit_code == 0, replayed.output
    assert "HL7 AA" in replayed.output
    assert client.get("/fhir/Observation").json["total"] == sum(1 for s in segments(data) if s[0] == "OBX")
    outcomes = {r.id: (r.outcome, r.replay_of) for r in archived(app)}
    assert outcomes[rows[-1].id][0] == "replayed"
    assert ("stored", rows[-1].id) in outcomes.values()
    assert cli("ingest", "replay", "--id", str(rows[-1].id)).exit_code == 1  # not twice


def test_client_may_only_send_as_its_own_hospital(app, sender_client):
    data = (DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7").read_bytes()
    register(app, "HOSP-B", "client-b")
    ack = post_hl7(authorized(app, client_id="client-b"), data)
    assert ack["MSA"][0][1] == "AR" and "HOSP-B" in "|".join(ack["ERR"][0])


def test_http_errors(app):
    assert app.test_client().post("/ingest/hl7v2", data=b"MSH|", headers={"Content-Type": HL7}).status_code == 401
    resp = authorized(app).post("/ingest/hl7v2", data=b"MSH|", headers={"Content-Type": "application/json"})
    assert resp.status_code == 415 and resp.json["resourceType"] == "OperationOutcome"


def test_concurrent_copies_of_one_message_store_it_once(app, sender_client, client):
    data = (DATA / "hl7v2" / "ms_oru_r01_rmgead.hl7").read_bytes()
    sender = sender_client(data)
    codes: list[str] = []

    def send() -> None:
        resp = sender.post("/ingest/hl7v2", data=data, headers={"Content-Type": HL7})
        codes.append(ack_fields(resp.data)["MSA"][0][1])

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == ["AA"] * 4
    outcomes = sorted(r.outcome for r in archived(app))
    assert outcomes == ["duplicate"] * 3 + ["stored"]
    assert client.get("/fhir/Observation").json["total"] == sum(1 for s in segments(data) if s[0] == "OBX")


def test_mllp_listener_end_to_end(app, client):
    """A real MLLP listener on a port, the pipeline behind it: several messages on one
    connection, each ACKed, each stored; garbage between frames does no harm."""
    import socket

    from healthhub.ingest.mllp import send

    paths = ["ms_oru_r01_rmgead.hl7", "ms_adt_a01_01.hl7", "ms_vxu.hl7"]
    datas = [(DATA / "hl7v2" / p).read_bytes() for p in paths]
    for data in datas:
        register(app, facility(data))
    with mllp_listener(app) as server:
        acks = send("127.0.0.1", server.port, [d.replace(b"\n", b"\r") for d in datas])
        assert [ack_fields(a)["MSA"][0][1] for a in acks] == ["AA", "AA", "AA"]
        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # garbage, then a re-sent message
            sock.sendall(b"garbage\x1c\r" + b"\x0b" + datas[0] + b"\x1c\r")
            reply = b""
            while not reply.endswith(b"\x1c\r"):
                reply += sock.recv(65536)
        assert "Duplicate" in reply.decode()
    assert [r.transport for r in archived(app)][:3] == ["mllp"] * 3
    assert client.get("/fhir/Immunization").json["total"] >= 1


def adt(event: str, control: str, pid3: str, name: str, extra: str = "") -> bytes:
    """A small ADT message written for the test (not from the shared samples)."""
    lines = [f"MSH|^~\\&|ADT|HOSP-M|HUB|MOPH|20240101120000||ADT^{event}|{control}|P|2.5.1",
             f"EVN|{event}|20240101120000",
             f"PID|1||{pid3}^^^HOSP-M^MR||{name}||19800101|F|||1 Main St^^Springfield^^12345"]
    return ("\r".join(lines + ([extra] if extra else [])) + "\r").encode()


def test_a03_finishes_the_same_encounter_and_a40_merges(app, client):
    register(app, "HOSP-M")
    sender = authorized(app)
    pv1 = "PV1|1|I|W1^101^1||||||||||||||||V-1|||||||||||||||||||||||||20240101110000"
    assert post_hl7(sender, adt("A01", "M1", "MRN1", "Doe^Jane", pv1))["MSA"][0][1] == "AA"
    pv1_out = pv1 + "|20240105090000"
    assert post_hl7(sender, adt("A03", "M2", "MRN1", "Doe^Jane", pv1_out))["MSA"][0][1] == "AA"
    encounters = client.get("/fhir/Encounter?identifier=V-1").json
    assert encounters["total"] == 1
    assert encounters["entry"][0]["resource"]["status"] == "finished"
    assert post_hl7(sender, adt("A01", "M3", "MRN2", "Roe^Richard"))["MSA"][0][1] == "AA"
    merge = adt("A40", "M4", "MRN1", "Doe^Jane", "MRG|MRN2^^^HOSP-M^MR")
    assert post_hl7(sender, merge)["MSA"][0][1] == "AA"
    surviving = client.get("/fhir/Patient?identifier=MRN1").json["entry"][0]["resource"]
    retired = client.get("/fhir/Patient?identifier=MRN2").json["entry"][0]["resource"]
    assert retired["active"] is False
    assert {"other": {"reference": f"Patient/{surviving['id']}"}, "type": "replaced-by"}.items() <= \
        next(link for link in retired["link"] if link["type"] == "replaced-by").items()
    assert any(link["type"] == "replaces" and link["other"]["reference"] == f"Patient/{retired['id']}"
               for link in surviving["link"])
    # the surviving record's $everything now holds the retired record's encounter-less history too
    everything = client.get(f"/fhir/Patient/{surviving['id']}/$everything").json
    assert f"Patient/{retired['id']}" in {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                                         for e in everything["entry"]}


def _message(kind: str, control: str, pid: str, *rest: str) -> bytes:
    lines = [f"MSH|^~\\&|SYS|HOSP-M|HUB|MOPH|20240101120000||{kind}|{control}|P|2.5.1", pid, *rest]
    return ("\r".join(lines) + "\r").encode()


def test_a_national_id_alone_keys_the_senders_own_record(app, client):
    """The hub keeps one Patient per hospital and links them: a PID with only a national id is
    written under this sender's record (tagged with its code, the sender having no
    Organization), not refused because two other hospitals' records hold the same id."""
    register(app, "HOSP-M")
    sender = authorized(app)
    body = "310170012345"
    number = body + str((11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10)
    for hospital in ("HOSP-A", "HOSP-B"):
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": f"urn:healthhub:sender:{hospital}:mrn", "value": "1"},
            {"system": "urn:healthhub:id:national", "value": number}]})
        assert r.status_code == 201, r.json
    pid = f"PID|1||{number}^^^MOPH^NI||Doe^Jane||19800101|F"
    assert post_hl7(sender, _message("ADT^A04", "N1", pid))["MSA"][0][1] == "AA"
    assert post_hl7(sender, _message("ADT^A08", "N2", pid.replace("Doe^Jane", "Doe^Janet")))["MSA"][0][1] == "AA"
    result = _message("ORU^R01^ORU_R01", "N3", pid, "OBR|1|ORD-1|FIL-1|2345-7^Glucose^LN|||20240101110000",
                      "OBX|1|NM|2345-7^Glucose^LN||126|mg/dL|70-99|H|||F|||20240101110000")
    assert post_hl7(sender, result)["MSA"][0][1] == "AA"
    records = client.get(f"/fhir/Patient?identifier=urn:healthhub:id:national|{number}").json["entry"]
    assert len(records) == 3
    [mine] = [e["resource"] for e in records if e["resource"].get("meta", {}).get("tag")]
    assert mine["meta"]["tag"] == [{"system": "urn:healthhub:sender", "code": "HOSP-M"}]
    assert mine["name"][0]["given"] == ["Janet"] and mine["meta"]["versionId"] in ("2", "3")
    [obs] = client.get("/fhir/Observation?code=http://loinc.org|2345-7").json["entry"]
    assert obs["resource"]["subject"]["reference"] == f"Patient/{mine['id']}"


def test_an_identifier_with_a_comma_is_one_identifier(app, client):
    """``MRN,1`` in a conditional write is one value (FHIR-escaped), not "MRN or 1": the second
    patient must not overwrite the first."""
    register(app, "HOSP-M")
    sender = authorized(app)
    assert post_hl7(sender, adt("A04", "C1", "MRN", "Doe^Jane"))["MSA"][0][1] == "AA"
    assert post_hl7(sender, adt("A04", "C2", "MRN\\T\\1", "Roe^Richard"))["MSA"][0][1] == "AA"  # \T\ is "&"
    assert post_hl7(sender, adt("A04", "C3", "MRN,1", "Poe^Edgar"))["MSA"][0][1] == "AA"
    names = sorted(e["resource"]["name"][0]["family"] for e in client.get("/fhir/Patient").json["entry"])
    assert names == ["Doe", "Poe", "Roe"]


def test_a_twenty_megabyte_message_is_stored_and_archived(app, client):
    register(app, "HOSP-M")
    big = "x" * 20_000_000
    data = ("MSH|^~\\&|LAB|HOSP-M|HUB|MOPH|20240101120000||ORU^R01|BIG|P|2.5.1\r"
            "PID|1||MRN9^^^HOSP-M^MR||Big^Bertha||19700101|F\r"
            "OBR|1||F1^LAB|11526-1^Pathology study^LN|||20240101110000\r"
            f"OBX|1|TX|11526-1^Pathology study^LN||{big}||||||F\r").encode()
    ack = post_hl7(authorized(app), data)
    assert ack["MSA"][0][1] == "AA"
    observation = client.get("/fhir/Observation?code=11526-1").json["entry"][0]["resource"]
    assert len(observation["valueString"]) == len(big)
    assert archived(app)[-1].size == len(data)


def test_a_frame_over_the_mllp_limit_is_refused_and_its_start_kept(app):
    from healthhub.ingest.mllp import send

    register(app, "HOSP-M")
    message = adt("A01", "TOO-BIG", "MRN1", "Doe^Jane", "NTE|1||" + "y" * 5000)
    with mllp_listener(app, max_message=2000) as server:
        [ack] = send("127.0.0.1", server.port, [message])
    fields = ack_fields(ack)
    assert fields["MSA"][0][1] == "AR" and fields["MSA"][0][2] == "TOO-BIG"
    row = archived(app)[-1]
    assert row.outcome == "rejected" and row.payload == message[:2000]


def test_database_down_gets_ae_so_the_sender_keeps_the_message():
    """With no database to store (or even archive) a message in, the ACK is AE "unavailable":
    an AR would make the sender drop a message the hub never kept."""
    from healthhub.config import Config
    from healthhub.db import Database
    from healthhub.ingest.pipeline import Caller, Pipeline

    db = Database(Config(database_url="postgresql://nobody@127.0.0.1:1/none"))
    try:
        for data in (adt("A01", "DOWN-1", "MRN1", "Doe^Jane"), b"not hl7 at all"):
            ack = ack_fields(Pipeline(db, "http://hub.test").receive_hl7v2(data, Caller("mllp")))
            assert ack["MSA"][0][1] == "AE" and "unavailable" in "|".join(ack["ERR"][0])
    finally:
        db.dispose()
