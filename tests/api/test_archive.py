"""Every FHIR write's body is archived raw: with the change when it is stored, alone (with the
reason) when it is refused — and the refused one can be listed and replayed from the CLI."""
from __future__ import annotations

import orjson

from tests.conftest import DATA, FHIR_JSON, archived, load_json


def test_stored_write_is_archived_with_it(app, client):
    body = orjson.dumps({"resourceType": "Patient", "name": [{"family": "Archived"}]})
    resp = client.post("/fhir/Patient", data=body, headers={"Content-Type": FHIR_JSON})
    assert resp.status_code == 201
    [row] = archived(app)
    assert (row.transport, row.kind, row.outcome, row.payload, row.client_id) == (
        "http-fhir", "fhir", "stored", body, "test-client")
    assert row.detail["method"] == "POST" and row.detail["path"] == "/fhir/Patient"
    assert client.get("/fhir/Patient/" + resp.json["id"]).status_code == 200  # reads are not archived
    assert len(archived(app)) == 1


def test_refused_write_is_archived_alone_with_the_reason(app, client, cli):
    bundle = load_json(DATA / "synthea" / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json")
    bundle["entry"][5]["resource"]["meta"] = {"lastUpdated": "yesterday"}  # one bad entry: the transaction fails
    body = orjson.dumps(bundle)
    resp = client.post("/fhir", data=body, headers={"Content-Type": FHIR_JSON})
    assert resp.status_code == 400
    assert client.get("/fhir/Patient").json["total"] == 0
    [row] = archived(app)
    assert (row.outcome, row.payload, row.message_type) == ("rejected", body, "POST transaction")
    assert row.detail["status"] == 400 and "Bundle.entry[5]" in row.detail["error"]
    listed = cli("ingest", "list", "--failed")
    assert f"{row.id}\t" in listed.output
    shown = cli("ingest", "show", str(row.id))
    assert '"outcome": "rejected"' in shown.output
    # After the fix that a replay needs (here: none possible, the body is wrong), it fails again
    replay = cli("ingest", "replay", "--id", str(row.id))
    assert replay.exit_code == 1 and "refused again" in replay.output


def test_bodies_that_are_not_json_are_kept_too(app, client):
    resp = client.post("/fhir/Patient", data=b"\xff not json", headers={"Content-Type": FHIR_JSON})
    assert resp.status_code == 400
    [row] = archived(app)
    assert row.payload == b"\xff not json" and row.outcome == "rejected"
