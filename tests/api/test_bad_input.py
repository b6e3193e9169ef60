"""Bad input gets the right 4xx with an OperationOutcome and leaves the database unchanged."""
from __future__ import annotations

import io

import orjson
import pytest

from tests.conftest import FHIR_JSON, authorized, post_json, put_json


def assert_outcome(resp, status, code=None):
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    body = resp.json
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["severity"] in ("error", "fatal") for i in body["issue"])
    assert b"Traceback" not in resp.data
    if code:
        assert body["issue"][0]["code"] == code
    return body


@pytest.mark.parametrize("payload", [
    b"{", b"not json", b'{"resourceType": "Patient",}', b"[1, 2", b"\x00\x01", b"",
    b'{"resourceType": "Patient", "name": [{"family": "\xff\xfe"}]}',  # not UTF-8
    b'{"resourceType": "Patient", "name": [{"family": "\xed\xa0\x80"}]}',  # UTF-8 surrogate
    b'{"resourceType": "Patient", "name": [{"family": "a\\ud800b"}]}',  # escaped lone surrogate
    b'{"resourceType": "Patient", "name": [{"family": "a\\uDC00"}]}',
    b'{"resourceType": "Patient", "extension": [{"url": "http://x.org/e", "valueDecimal": NaN}]}',
    b'{"resourceType": "Patient", "extension": [{"url": "http://x.org/e", "valueDecimal": -Infinity}]}',
])
def test_malformed_body(client, db_counts, payload):
    before = db_counts()
    resp = client.post("/fhir/Patient", data=payload, headers={"Content-Type": FHIR_JSON})
    body = assert_outcome(resp, 400)
    assert db_counts() == before
    if payload:  # refused by the parser, not later
        assert "not valid JSON" in body["issue"][0]["diagnostics"]


def test_escaped_surrogate_pair_is_text(client):
    resp = client.post("/fhir/Patient", data=b'{"resourceType": "Patient", "name": [{"family": "\\ud83d\\ude00"}]}',
                       headers={"Content-Type": FHIR_JSON})
    assert resp.status_code == 201
    assert resp.json["name"][0]["family"] == "\U0001f600"


def test_deeply_nested_json(client, db_counts):
    before = db_counts()
    deep = b'{"resourceType": "Patient", "extension": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_outcome(client.post("/fhir/Patient", data=deep, headers={"Content-Type": FHIR_JSON}), 400)
    objects = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert_outcome(client.post("/fhir", data=objects, headers={"Content-Type": FHIR_JSON}), 400)
    assert db_counts() == before


@pytest.mark.parametrize(("method", "url", "payload", "name"), [
    ("post", "/fhir/Patient", b'{"resourceType": "Patient", "id": "a", "id": "b"}', "id"),
    # inside a nested element; the second spelling is the same name once unescaped
    ("post", "/fhir/Patient", b'{"resourceType": "Patient", "name": [{"family": "Ok", "given": ["A"]}, '
                              b'{"family": "X", "fam\\u0069ly": "Y"}]}', "family"),
    ("put", "/fhir/Patient/dup", b'{"resourceType": "Patient", "id": "dup", "gender": "male", "gender": "female"}',
     "gender"),
    ("post", "/fhir", b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
                      b'{"resourceType": "Patient", "active": true, "active": false}, '
                      b'"request": {"method": "POST", "url": "Patient"}}]}', "active"),
    ("post", "/fhir", b'{"resourceType": "Bundle", "type": "batch", "type": "transaction", "entry": []}', "type"),
])
def test_repeated_property_name_is_refused(client, db_counts, method, url, payload, name):
    """A name twice in one object means what each parser decides (the last, the first, an error):
    refused rather than stored as this parser read it (https://hl7.org/fhir/R4B/json.html)."""
    before = db_counts()
    resp = getattr(client, method)(url, data=payload, headers={"Content-Type": FHIR_JSON})
    body = assert_outcome(resp, 400, "structure")
    assert f'property name "{name}"' in body["issue"][0]["diagnostics"]
    assert db_counts() == before


def test_same_name_in_different_objects_is_fine(client):
    resp = post_json(client, "/fhir/Patient", {"resourceType": "Patient", "id": "x", "meta": {"id": "m"},
                                               "name": [{"family": "A"}, {"family": "B"}]})
    assert resp.status_code == 201, resp.json


def test_json_that_is_not_a_resource(client, db_counts):
    before = db_counts()
    for body in ([1, 2], "text", 42, None, {"no": "type"}):
        assert_outcome(post_json(client, "/fhir/Patient", body), 400)
    assert db_counts() == before


def test_wrong_resource_type_for_url(client, db_counts):
    before = db_counts()
    body = assert_outcome(post_json(client, "/fhir/Patient", {"resourceType": "Observation"}), 400)
    assert body["issue"][0]["expression"] == ["resourceType"]
    assert_outcome(put_json(client, "/fhir/Patient/x", {"resourceType": "Observation", "id": "x"}), 400)
    assert db_counts() == before


def test_id_mismatch_and_missing_id_on_update(client, db_counts):
    before = db_counts()
    body = assert_outcome(put_json(client, "/fhir/Patient/abc", {"resourceType": "Patient", "id": "xyz"}), 400)
    assert body["issue"][0]["expression"] == ["Patient.id"]
    assert_outcome(put_json(client, "/fhir/Patient/abc", {"resourceType": "Patient"}), 400)
    assert_outcome(put_json(client, "/fhir/Patient/bad_id!", {"resourceType": "Patient", "id": "bad_id!"}), 400)
    assert_outcome(put_json(client, "/fhir/Patient/" + "a" * 65, {"resourceType": "Patient", "id": "a" * 65}), 400)
    assert db_counts() == before


def test_unknown_types(client, db_counts):
    before = db_counts()
    assert_outcome(post_json(client, "/fhir/Foo", {"resourceType": "Foo"}), 404)
    assert_outcome(client.get("/fhir/Foo/1"), 404)
    assert_outcome(client.get("/fhir/DomainResource/1"), 404)  # abstract, not a concrete type
    assert_outcome(client.get("/fhir/patient/1"), 404)  # types are case-sensitive
    assert_outcome(client.get("/not-fhir"), 404)
    body = assert_outcome(post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Foo"}, "request": {"method": "POST", "url": "Foo"}}]}), 404)
    assert body["issue"][0]["expression"] == ["Bundle.entry[0]"]
    assert db_counts() == before


def test_invalid_resource_names_the_element(client, db_counts):
    before = db_counts()
    body = assert_outcome(post_json(client, "/fhir/Patient", {
        "resourceType": "Patient", "birthDate": "02/04/1980", "name": [{"given": "Ada"}], "colour": "blue"}), 400)
    expressions = {e for issue in body["issue"] for e in issue.get("expression", [])}
    assert {"Patient.birthDate", "Patient.name[0].given", "Patient.colour"} <= expressions
    obs = assert_outcome(post_json(client, "/fhir/Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueQuantity": {"value": "lots"}}), 400)
    assert obs["issue"][0]["expression"][0].startswith("Observation.valueQuantity")
    codes = assert_outcome(post_json(client, "/fhir/Patient", {
        "resourceType": "Patient", "gender": "robot", "address": [{"use": "holiday"}],
        "contact": [{"gender": "male"}, {"gender": "x", "address": {"use": "y"}}]}), 400)
    assert {i["expression"][0] for i in codes["issue"]} == {
        "Patient.gender", "Patient.address[0].use", "Patient.contact[1].gender", "Patient.contact[1].address.use"}
    assert all(i["code"] == "code-invalid" for i in codes["issue"])
    missing = assert_outcome(post_json(client, "/fhir/Observation", {"resourceType": "Observation",
                                                                      "status": "final"}), 400)
    assert "Observation.code" in {e for i in missing["issue"] for e in i.get("expression", [])}
    assert db_counts() == before


def test_body_too_large(make_app, db_counts):
    app = make_app(max_body=1024)
    client = authorized(app)
    before = db_counts()
    big = {"resourceType": "Patient", "name": [{"text": "x" * 4000}]}
    assert_outcome(post_json(client, "/fhir/Patient", big), 413)
    # A chunked body with no Content-Length is held to the same limit.
    resp = client.post("/fhir/Patient", input_stream=io.BytesIO(orjson.dumps(big)),
                       headers={"Content-Type": FHIR_JSON, "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})
    assert_outcome(resp, 413)
    assert db_counts() == before


@pytest.mark.parametrize("ctype", ["application/xml", "application/fhir+xml", "text/plain",
                                   "application/x-www-form-urlencoded", "application/fhir+json; charset=latin-1"])
def test_wrong_content_type(client, db_counts, ctype):
    before = db_counts()
    resp = client.post("/fhir/Patient", data=b'{"resourceType": "Patient"}', headers={"Content-Type": ctype})
    assert_outcome(resp, 415)
    assert db_counts() == before


def test_missing_content_type(client):
    assert_outcome(client.post("/fhir/Patient", data=b'{"resourceType": "Patient"}'), 415)


def test_patch_needs_json_patch_media_type(client):
    created = post_json(client, "/fhir/Patient", {"resourceType": "Patient"}).json
    resp = client.patch(f"/fhir/Patient/{created['id']}", data=b"[]", headers={"Content-Type": FHIR_JSON})
    assert_outcome(resp, 415)
    not_a_patch = client.patch(f"/fhir/Patient/{created['id']}", data=b'{"op": "add"}',
                               headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(not_a_patch, 400)
    renames = [{"op": "replace", "path": "/id", "value": "other"}]
    assert_outcome(client.patch(f"/fhir/Patient/{created['id']}", data=orjson.dumps(renames),
                                headers={"Content-Type": "application/json-patch+json"}), 422)


def test_head_is_a_read_never_a_write(client):
    created = post_json(client, "/fhir/Patient", {"resourceType": "Patient",
                                                  "identifier": [{"system": "urn:h", "value": "1"}]}).json
    head = client.head(f"/fhir/Patient/{created['id']}")
    assert head.status_code == 200 and head.data == b"" and head.headers["ETag"] == 'W/"1"'
    assert client.head("/fhir/Patient?identifier=urn:h|1").status_code == 200
    assert client.get(f"/fhir/Patient/{created['id']}").json["meta"]["versionId"] == "1"


def test_history_cursor_out_of_range(client):
    assert_outcome(client.get("/fhir/_history?_before_pk=99999999999999999999"), 400)


def test_system_search_not_yet_supported(client):
    assert_outcome(client.get("/fhir?_type=Patient"), 400)


def test_methods_not_allowed(client):
    assert_outcome(client.delete("/fhir/metadata"), 405)
    assert_outcome(client.post("/fhir/Patient/123", data=b"{}", headers={"Content-Type": FHIR_JSON}), 405)
    assert_outcome(client.delete("/fhir/Patient"), 405)  # conditional delete needs criteria


def test_xml_only_client_gets_406(client):
    created = post_json(client, "/fhir/Patient", {"resourceType": "Patient"}).json
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}", headers={"Accept": "application/fhir+xml"}), 406)
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}?_format=xml"), 406)
    ok = client.get(f"/fhir/Patient/{created['id']}", headers={"Accept": "application/json"})
    assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("application/json")


def test_a_failing_transaction_leaves_nothing(client, db_counts):
    before = db_counts()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                      "valueQuantity": {"value": "high"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    body = assert_outcome(post_json(client, "/fhir", bundle), 400)
    assert body["issue"][0]["expression"][0].startswith("Bundle.entry[1].resource.valueQuantity")
    assert db_counts() == before


def test_unexpected_errors_are_500_without_trace(make_app, monkeypatch):
    app = make_app()
    from healthhub.storage import repository

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(repository.Repository, "read", boom)
    resp = authorized(app).get("/fhir/Patient/x")
    body = assert_outcome(resp, 500)
    assert "secret" not in resp.data.decode()
    assert body["issue"][0]["code"] == "exception"


class _DbError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate, status, code", [
    ("40P01", 409, "conflict"),   # deadlock detected: the database aborted this request for another
    ("40001", 409, "conflict"),   # serialization failure
    ("08006", 503, "transient"),  # connection failure: the database is unavailable
    (None, 503, "transient"),
])
def test_database_errors_get_a_precise_outcome(client, monkeypatch, sqlstate, status, code):
    from sqlalchemy.exc import OperationalError

    from healthhub.storage.repository import Repository

    def fail(*args, **kwargs):
        raise OperationalError("SELECT …", {}, _DbError(sqlstate))

    monkeypatch.setattr(Repository, "read", fail)
    body = assert_outcome(client.get("/fhir/Patient/x"), status, code)
    assert "retry" in body["issue"][0]["diagnostics"]
