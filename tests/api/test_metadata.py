"""The CapabilityStatement reflects what the server does; operations $validate and $meta."""
from __future__ import annotations

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from tests.conftest import post_json


def test_capability_statement_is_valid_and_generated(client):
    resp = client.get("/fhir/metadata")
    assert resp.status_code == 200
    body = resp.json
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.3.0"
    assert body["kind"] == "instance"
    rest = body["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    # Every concrete R4B resource type, and no abstract ones.
    assert {"Patient", "Observation", "Bundle", "Binary", "Parameters", "SubscriptionTopic"} <= types
    assert not {"Resource", "DomainResource"} & types
    assert len(types) == 141
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert codes == {"read", "vread", "update", "patch", "delete", "history-instance", "history-type",
                     "create", "search-type"}
    assert patient["versioning"] == "versioned-update"
    assert patient["conditionalCreate"] is True
    assert {o["name"] for o in patient["operation"]} >= {"validate", "meta"}
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    assert body["patchFormat"] == ["application/json-patch+json"]


def test_every_advertised_interaction_answers(client):
    """Each advertised interaction is reachable (not 404/405) on a real resource."""
    rest = client.get("/fhir/metadata").json["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    pid = post_json(client, "/fhir/Patient", {"resourceType": "Patient"}).json["id"]
    checks = {
        "read": lambda: client.get(f"/fhir/Patient/{pid}"),
        "vread": lambda: client.get(f"/fhir/Patient/{pid}/_history/1"),
        "history-instance": lambda: client.get(f"/fhir/Patient/{pid}/_history"),
        "history-type": lambda: client.get("/fhir/Patient/_history"),
        "search-type": lambda: client.get("/fhir/Patient"),
    }
    for i in patient["interaction"]:
        if i["code"] in checks:
            assert checks[i["code"]]().status_code == 200, i["code"]
    assert client.get("/fhir/_history").status_code == 200


def test_validate_operation(client):
    ok = post_json(client, "/fhir/Patient/$validate", {"resourceType": "Patient", "gender": "male"})
    assert ok.status_code == 200
    assert ok.json["issue"][0]["severity"] == "information"
    bad = post_json(client, "/fhir/Patient/$validate", {"resourceType": "Patient", "birthDate": "1-2-3"})
    assert bad.status_code == 200
    assert bad.json["issue"][0]["expression"] == ["Patient.birthDate"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Observation", "status": "final"}}]}
    wrapped = post_json(client, "/fhir/Observation/$validate", params).json
    assert any("Observation.code" in i.get("expression", []) for i in wrapped["issue"])
    # Nothing was stored.
    assert client.get("/fhir/Patient?_count=0").json["total"] == 0
    assert client.get("/fhir/Patient/$validate").status_code == 405
    assert client.get("/fhir/Patient/$nonsense").status_code == 404


def test_meta_operation(client):
    created = post_json(client, "/fhir/Patient", {"resourceType": "Patient", "meta": {
        "tag": [{"system": "urn:hub", "code": "demo"}], "profile": ["http://example.org/p"]}}).json
    resp = client.get(f"/fhir/Patient/{created['id']}/$meta")
    assert resp.status_code == 200
    meta = resp.json["parameter"][0]["valueMeta"]
    assert meta == {"tag": [{"system": "urn:hub", "code": "demo"}], "profile": ["http://example.org/p"]}
    assert client.get("/fhir/Patient/nope/$meta").status_code == 404
