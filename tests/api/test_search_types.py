"""Parameter types and modifiers the Synthea data do not exercise: number, uri (:above/:below),
reference :identifier, _profile/_source/_security, string :missing, ne and ap prefixes."""
from __future__ import annotations

import pytest

from tests.conftest import post_json


def ids(client, url):
    resp = client.get(url)
    assert resp.status_code == 200, resp.json
    return {e["resource"]["id"] for e in resp.json.get("entry", []) if e["search"]["mode"] == "match"}


def make(client, resource):
    resp = post_json(client, f"/fhir/{resource['resourceType']}", resource)
    assert resp.status_code == 201, resp.json
    return resp.json["id"]


def risk(p: float) -> dict:
    return {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/x"},
            "prediction": [{"probabilityDecimal": p}]}


def test_number_prefixes_and_precision(client):
    a = make(client, risk(0.25))
    b = make(client, risk(0.5))
    c = make(client, risk(0.75))
    assert ids(client, "/fhir/RiskAssessment?probability=0.5") == {b}
    assert ids(client, "/fhir/RiskAssessment?probability=gt0.3") == {b, c}
    assert ids(client, "/fhir/RiskAssessment?probability=le0.5") == {a, b}
    assert ids(client, "/fhir/RiskAssessment?probability=ne0.5") == {a, c}
    # 0.8 means [0.75, 0.85): 0.75 is inside its precision; 0.80 is not.
    assert ids(client, "/fhir/RiskAssessment?probability=0.8") == {c}
    assert ids(client, "/fhir/RiskAssessment?probability=0.80") == set()
    assert ids(client, "/fhir/RiskAssessment?probability=ap0.7") == {c}


def test_uri_above_below_and_exact(client):
    vs = {"resourceType": "ValueSet", "status": "active", "url": "http://example.org/fhir/ValueSet/lab/hb"}
    vid = make(client, vs)
    assert ids(client, "/fhir/ValueSet?url=http://example.org/fhir/ValueSet/lab/hb") == {vid}
    assert ids(client, "/fhir/ValueSet?url=http://example.org/fhir/ValueSet/lab") == set()
    assert ids(client, "/fhir/ValueSet?url:below=http://example.org/fhir/ValueSet") == {vid}
    assert ids(client, "/fhir/ValueSet?url:above=http://example.org/fhir/ValueSet/lab/hb/v2") == {vid}
    assert ids(client, "/fhir/ValueSet?url:below=http://other.org") == set()


def test_reference_identifier_and_meta_parameters(client):
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"identifier": {"system": "urn:rw:nid", "value": "1199"}},
           "meta": {"profile": ["http://example.org/StructureDefinition/lab"], "source": "urn:hospital:kigali",
                    "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                  "code": "R"}]}}
    oid = make(client, obs)
    other = make(client, {"resourceType": "Observation", "status": "final", "code": {"text": "y"}})
    assert ids(client, "/fhir/Observation?subject:identifier=urn:rw:nid|1199") == {oid}
    assert ids(client, "/fhir/Observation?_profile=http://example.org/StructureDefinition/lab") == {oid}
    assert ids(client, "/fhir/Observation?_source=urn:hospital:kigali") == {oid}
    assert ids(client, "/fhir/Observation?_security=R") == {oid}
    assert ids(client, "/fhir/Observation?_security:not=R") == {other}
    assert ids(client, "/fhir/Observation?subject:missing=true") == {other}


def test_string_missing_and_accents(client):
    zoe = make(client, {"resourceType": "Patient", "name": [{"family": "Umutoni", "given": ["Zoë"]}]})
    anon = make(client, {"resourceType": "Patient", "gender": "unknown"})
    assert ids(client, "/fhir/Patient?given=zoe") == {zoe}
    assert ids(client, "/fhir/Patient?given:exact=Zoë") == {zoe}
    assert ids(client, "/fhir/Patient?name:missing=true") == {anon}
    assert ids(client, "/fhir/Patient?name:missing=false") == {zoe}


def test_index_follows_updates_and_deletes(client):
    pid = make(client, {"resourceType": "Patient", "name": [{"family": "Before"}]})
    assert ids(client, "/fhir/Patient?family=before") == {pid}
    resp = client.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"family": "After"}]},
                      headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 200
    assert ids(client, "/fhir/Patient?family=before") == set()
    assert ids(client, "/fhir/Patient?family=after") == {pid}
    client.delete(f"/fhir/Patient/{pid}")
    assert ids(client, "/fhir/Patient?family=after") == set()


@pytest.mark.parametrize("count", ["0", "1", "1000", "5000"])
def test_count_bounds(client, count):
    make(client, {"resourceType": "Patient"})
    resp = client.get(f"/fhir/Patient?_count={count}")
    assert resp.status_code == 200
    assert len(resp.json.get("entry", [])) == min(int(count), 1)


def test_revinclude_respects_the_target_type(client):
    """Client-assigned ids repeat across types: Patient/1 and Group/1 are different targets."""
    for rtype in ("Patient", "Group"):
        body = {"resourceType": rtype, "id": "1"}
        if rtype == "Group":
            body.update({"type": "person", "actual": True})
        assert client.put(f"/fhir/{rtype}/1", json=body, headers={"Content-Type": "application/fhir+json"}).status_code == 201
    on_patient = make(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                               "subject": {"reference": "Patient/1"}})
    make(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                  "subject": {"reference": "Group/1"}})
    resp = client.get("/fhir/Patient?_id=1&_revinclude=Encounter:subject")
    included = {e["resource"]["id"] for e in resp.json["entry"] if e["search"]["mode"] == "include"}
    assert included == {on_patient}
