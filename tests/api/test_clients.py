"""Third-party FHIR clients work against a real HTTP server: fhirpy (sync) and plain requests."""
from __future__ import annotations

import requests
from fhirpy import SyncFHIRClient

from tests.conftest import issue_token


def test_fhirpy_create_read_update_delete(app, live_server):
    bearer = f"Bearer {issue_token(app)}"
    client = SyncFHIRClient(live_server, authorization=bearer)
    patient = client.resource("Patient", name=[{"family": "Mukamana", "given": ["Grace"]}], gender="female",
                              identifier=[{"system": "urn:rw:nid", "value": "1198070012345678"}])
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Mukamana"

    fetched["birthDate"] = "1980-07-01"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    found = client.resources("Patient").search(identifier="urn:rw:nid|1198070012345678").fetch_all()
    assert [p.id for p in found] == [patient.id]

    fetched.delete()
    resp = requests.get(f"{live_server}/Patient/{patient.id}", timeout=10, headers={"Authorization": bearer})
    assert resp.status_code == 410


def test_plain_http_headers(app, live_server):
    bearer = {"Authorization": f"Bearer {issue_token(app)}"}
    resp = requests.post(f"{live_server}/Patient", json={"resourceType": "Patient"},
                         headers={"Content-Type": "application/fhir+json", **bearer}, timeout=10)
    assert resp.status_code == 201
    assert resp.headers["Location"].startswith("http://hub.test/fhir/Patient/")
    vread = requests.get(f"{live_server}/Patient/{resp.json()['id']}/_history/1", timeout=10, headers=bearer)
    assert vread.headers["ETag"] == 'W/"1"'
    assert requests.get(f"{live_server}/metadata", timeout=10).json()["resourceType"] == "CapabilityStatement"
