"""Create, read, vread, update, patch, delete and their HTTP headers, through /fhir."""
from __future__ import annotations

import base64
from email.utils import parsedate_to_datetime

import orjson

from healthhub import jsonio
from tests.conftest import DATA, FHIR_JSON, post_json, put_json

PATIENT = {"resourceType": "Patient", "name": [{"family": "Okafor", "given": ["Ada"]}], "gender": "female",
           "birthDate": "1980-04-02",
           "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": "111-22-3333"}]}


def create(client, resource=PATIENT, **headers):
    resp = post_json(client, f"/fhir/{resource['resourceType']}", resource, **headers)
    assert resp.status_code == 201, resp.json
    return resp


def test_create_assigns_id_meta_and_headers(client):
    resp = create(client, {**PATIENT, "id": "client-chosen"})
    body = resp.json
    assert body["id"] != "client-chosen"  # POST ignores the body's id (http.html#create)
    assert body["meta"]["versionId"] == "1"
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.headers["Location"] == f"http://hub.test/fhir/Patient/{body['id']}/_history/1"
    assert resp.headers["Content-Type"].startswith(FHIR_JSON)
    last_modified = parsedate_to_datetime(resp.headers["Last-Modified"])
    assert body["meta"]["lastUpdated"].startswith(last_modified.strftime("%Y-%m-%dT%H:%M:%S"))
    assert body["name"] == PATIENT["name"]


def test_read_and_vread(client):
    pid = create(client).json["id"]
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200
    assert read.json["birthDate"] == "1980-04-02"
    assert read.headers["ETag"] == 'W/"1"'
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json == read.json
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 404
    assert client.get(f"/fhir/Patient/{pid}/_history/abc").status_code == 404
    missing = client.get("/fhir/Patient/does-not-exist")
    assert missing.status_code == 404
    assert missing.json["resourceType"] == "OperationOutcome"


def test_update_versions_and_if_match(client):
    pid = create(client).json["id"]
    changed = {**PATIENT, "id": pid, "gender": "other"}
    up = put_json(client, f"/fhir/Patient/{pid}", changed, **{"If-Match": 'W/"1"'})
    assert up.status_code == 200
    assert up.json["meta"]["versionId"] == "2" and up.headers["ETag"] == 'W/"2"'
    assert up.headers["Location"].endswith(f"/Patient/{pid}/_history/2")
    stale = put_json(client, f"/fhir/Patient/{pid}", {**changed, "gender": "male"}, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}").json["gender"] == "other"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json["gender"] == "female"


def test_unchanged_update_writes_no_version(client):
    created = create(client).json
    again = put_json(client, f"/fhir/Patient/{created['id']}", created)
    assert again.status_code == 200
    assert again.json["meta"]["versionId"] == "1"
    history = client.get(f"/fhir/Patient/{created['id']}/_history").json
    assert history["total"] == 1


def test_update_as_create_with_client_id(client):
    resp = put_json(client, "/fhir/Patient/hosp-a-42", {**PATIENT, "id": "hosp-a-42"})
    assert resp.status_code == 201
    assert resp.json["id"] == "hosp-a-42"
    assert resp.headers["Location"] == "http://hub.test/fhir/Patient/hosp-a-42/_history/1"
    # If-None-Match: * means "create only".
    again = put_json(client, "/fhir/Patient/hosp-a-42", {**PATIENT, "id": "hosp-a-42", "gender": "male"},
                     **{"If-None-Match": "*"})
    assert again.status_code == 412


def test_delete_is_a_versioned_tombstone(client):
    pid = create(client).json["id"]
    resp = client.delete(f"/fhir/Patient/{pid}")
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"2"'
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json["issue"][0]["code"] == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    history = client.get(f"/fhir/Patient/{pid}/_history").json
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    # Deleting again changes nothing; a new PUT brings it back as version 3.
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    back = put_json(client, f"/fhir/Patient/{pid}", {**PATIENT, "id": pid})
    assert back.status_code == 201 and back.json["meta"]["versionId"] == "3"


def test_delete_if_match(client):
    pid = create(client).json["id"]
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"7"'}).status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    assert client.delete(f"/fhir/Patient/{pid}", headers={"If-Match": 'W/"1"'}).status_code == 200


def test_json_patch(client):
    pid = create(client).json["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "male"},
           {"op": "add", "path": "/name/0/given/-", "value": "Chioma"}]
    resp = client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(ops),
                        headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
    assert resp.status_code == 200, resp.json
    assert resp.json["gender"] == "male"
    assert resp.json["name"][0]["given"] == ["Ada", "Chioma"]
    assert resp.json["meta"]["versionId"] == "2"
    failing = [{"op": "test", "path": "/gender", "value": "female"}]
    assert client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(failing),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 422
    robot = [{"op": "replace", "path": "/gender", "value": "robot"}]
    assert client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(robot),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 400
    invalid = [{"op": "replace", "path": "/birthDate", "value": "not-a-date"}]
    bad = client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(invalid),
                       headers={"Content-Type": "application/json-patch+json"})
    assert bad.status_code == 400
    assert bad.json["issue"][0]["expression"] == ["Patient.birthDate"]
    stale = client.patch(f"/fhir/Patient/{pid}", data=orjson.dumps(ops),
                         headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").json["meta"]["versionId"] == "2"


def test_prefer_return(client):
    minimal = create(client, Prefer="return=minimal")
    assert minimal.data == b"" and minimal.headers["Location"]
    outcome = create(client, Prefer="return=OperationOutcome")
    assert outcome.json["resourceType"] == "OperationOutcome"
    full = create(client, Prefer="return=representation")
    assert full.json["resourceType"] == "Patient"


def test_conditional_create_on_identifier_and_id(client):
    cond = {"If-None-Exist": "identifier=urn:oid:2.16.840.1.113883.4.1|111-22-3333"}
    first = create(client, **cond)
    again = post_json(client, "/fhir/Patient", PATIENT, **cond)
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]
    # Value alone (any system) matches too; a different value creates.
    assert post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": "identifier=111-22-3333"}).status_code == 200
    other = post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": "identifier=urn:x|999"})
    assert other.status_code == 201
    by_id = post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": f"_id={first.json['id']}"})
    assert by_id.status_code == 200 and by_id.json["id"] == first.json["id"]
    # Now two Patients carry the identifier: the criteria are ambiguous.
    ambiguous = post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": "identifier=111-22-3333"})
    assert ambiguous.status_code == 412
    # Any search works as criteria; an unknown parameter is an error (ignoring it would create).
    by_name = post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": "name=okafor&birthdate=1980-04-02"})
    assert by_name.status_code == 412  # two Patients match
    unknown = post_json(client, "/fhir/Patient", PATIENT, **{"If-None-Exist": "shoe-size=42"})
    assert unknown.status_code == 400


def test_conditional_update_and_delete(client):
    query = "identifier=urn:oid:2.16.840.1.113883.4.1|111-22-3333"
    created = put_json(client, f"/fhir/Patient?{query}", PATIENT)
    assert created.status_code == 201
    pid = created.json["id"]
    updated = put_json(client, f"/fhir/Patient?{query}", {**PATIENT, "gender": "unknown"})
    assert updated.status_code == 200 and updated.json["id"] == pid
    assert updated.json["meta"]["versionId"] == "2"
    assert client.delete(f"/fhir/Patient?{query}").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410


def test_if_none_match_and_if_modified_since_on_read(client):
    created = create(client)
    pid = created.json["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    lm = created.headers["Last-Modified"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}",
                      headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_any_resource_type_round_trips(client):
    for path in sorted((DATA / "fhir-examples").glob("*.json")):
        resource = jsonio.loads(path.read_bytes())  # decimals compared as decimals, not floats
        if resource["resourceType"] == "Bundle":
            continue
        resp = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=path.read_bytes(),
                          headers={"Content-Type": FHIR_JSON})
        assert resp.status_code == 201, (path.name, resp.json)
        got = jsonio.loads(client.get(f"/fhir/{resource['resourceType']}/{resource['id']}").data)
        assert {k: v for k, v in got.items() if k != "meta"} == {k: v for k, v in resource.items() if k != "meta"}


def test_binary_resource(client):
    data = base64.b64encode(b"%PDF-1.4 hello").decode()
    resp = post_json(client, "/fhir/Binary", {"resourceType": "Binary", "contentType": "application/pdf", "data": data})
    assert resp.status_code == 201
    assert client.get(f"/fhir/Binary/{resp.json['id']}").json["data"] == data


def test_decimal_precision_survives_storage(client):
    body = (b'{"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},'
            b' "valueQuantity": {"value": 12.50, "unit": "g/dL"},'
            b' "referenceRange": [{"low": {"value": 1.0E1}, "high": {"value": 17.000}}]}')
    created = client.post("/fhir/Observation", data=body, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201
    raw = client.get(f"/fhir/Observation/{created.json['id']}").data
    assert b'"value":12.50' in raw and b'"value":17.000' in raw
    assert b'"low":{"value":10}' in raw  # 1.0E1: two significant digits, written plainly
    history = client.get(f"/fhir/Observation/{created.json['id']}/_history/1").data
    assert b'"value":12.50' in history


def test_resource_type_id_and_meta_come_first(client):
    created = post_json(client, "/fhir/Patient", {"gender": "male", "resourceType": "Patient", "active": True})
    raw = client.get(f"/fhir/Patient/{created.json['id']}").data
    assert raw.startswith(b'{"resourceType":"Patient","id":"' + created.json["id"].encode() + b'","meta":{')
