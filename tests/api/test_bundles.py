"""transaction and batch Bundles, checked against counts computed from the raw Synthea files."""
from __future__ import annotations

import base64
from collections import Counter

import orjson

from tests.conftest import DATA, load_json, post_json

SYNTHEA = DATA / "synthea"
ABDUL = SYNTHEA / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
KILEY = SYNTHEA / "Kiley170_Glover433_87b83af9-9b56-f6cd-0e0c-dbe665ac61ec.json"
INFRA = [SYNTHEA / "hospitalInformation1633536936158.json", SYNTHEA / "practitionerInformation1633536936158.json"]


def type_total(client, rtype):
    return client.get(f"/fhir/{rtype}?_count=0").json["total"]


def test_synthea_transaction_resolves_urn_uuid_references(client):
    raw = load_json(ABDUL)
    expected = Counter(e["resource"]["resourceType"] for e in raw["entry"])
    resp = post_json(client, "/fhir", raw)
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == len(raw["entry"])
    assert all(e["response"]["status"] == "201 Created" for e in body["entry"])
    for rtype, n in expected.items():
        assert type_total(client, rtype) == n, rtype
    # Every urn:uuid reference now points at the id the server gave that entry.
    assigned = {raw_e["fullUrl"]: out["response"]["location"].rsplit("/_history", 1)[0]
                for raw_e, out in zip(raw["entry"], body["entry"], strict=True)}
    patient_ref = assigned[next(e["fullUrl"] for e in raw["entry"] if e["resource"]["resourceType"] == "Patient")]
    for raw_e, out in zip(raw["entry"], body["entry"], strict=True):
        if raw_e["resource"]["resourceType"] == "Observation":
            stored = client.get(f"/fhir/{out['response']['location'].rsplit('/_history', 1)[0]}").json
            assert stored["subject"]["reference"] == patient_ref
            assert stored["encounter"]["reference"] == assigned[raw_e["resource"]["encounter"]["reference"]]
            assert stored["valueQuantity" if "valueQuantity" in stored else "code"] == \
                raw_e["resource"]["valueQuantity" if "valueQuantity" in stored else "code"]
            break
    else:
        raise AssertionError("the bundle has no Observation")


def _infra_for(bundle_path, extra: int = 150):
    """The infrastructure batches cut to the entries a patient bundle's conditional references
    need, plus ``extra`` others (the whole files go through the acceptance test)."""
    text = bundle_path.read_text()
    for path in INFRA:
        raw = load_json(path)
        needed = [e for e in raw["entry"] if e["request"].get("ifNoneExist", "").split("=", 1)[-1] in text]
        others = [e for e in raw["entry"] if e not in needed][:extra]
        yield {**raw, "entry": needed + others}


def test_batch_with_if_none_exist_then_conditional_references(client):
    infra_counts: Counter[str] = Counter()
    for raw in _infra_for(KILEY):
        # Conditional creates count once per distinct criteria; plain POSTs once each.
        keys = {(e["resource"]["resourceType"], e["request"]["ifNoneExist"])
                for e in raw["entry"] if "ifNoneExist" in e["request"]}
        infra_counts.update(rtype for rtype, _ in keys)
        infra_counts.update(e["resource"]["resourceType"] for e in raw["entry"] if "ifNoneExist" not in e["request"])
        resp = post_json(client, "/fhir", raw)
        assert resp.status_code == 200
        assert resp.json["type"] == "batch-response"
        statuses = Counter(e["response"]["status"] for e in resp.json["entry"])
        assert set(statuses) <= {"201 Created", "200 OK"}
    for rtype, n in infra_counts.items():
        assert type_total(client, rtype) == n, rtype
    # Sending (part of) the batch again creates nothing: ifNoneExist finds every resource.
    resend = next(_infra_for(KILEY))
    again = post_json(client, "/fhir", resend).json
    assert {e["response"]["status"] for e in again["entry"]} == {"200 OK"}
    for rtype, n in infra_counts.items():
        assert type_total(client, rtype) == n, rtype

    raw = load_json(KILEY)
    resp = post_json(client, "/fhir", raw)
    assert resp.status_code == 200, resp.json
    encounter_entry = next(e for e in raw["entry"] if e["resource"]["resourceType"] == "Encounter")
    provider_ref = encounter_entry["resource"]["serviceProvider"]["reference"]  # Organization?identifier=…
    system_value = provider_ref.split("identifier=", 1)[1]
    org = client.get(f"/fhir/Organization?identifier={system_value}").json["entry"][0]["resource"]
    enc_loc = resp.json["entry"][raw["entry"].index(encounter_entry)]["response"]["location"]
    stored = client.get("/fhir/" + enc_loc.rsplit("/_history", 1)[0]).json
    assert stored["serviceProvider"]["reference"] == f"Organization/{org['id']}"


def test_conditional_reference_without_match_fails_the_transaction(client, db_counts):
    before = db_counts()
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "serviceProvider": {"reference": "Organization?identifier=urn:x|none"}},
         "request": {"method": "POST", "url": "Encounter"}}]})
    assert resp.status_code == 412
    assert db_counts() == before


def test_transaction_processing_order_and_all_verbs(client):
    post_json(client, "/fhir/Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "old"}]})
    keep = post_json(client, "/fhir/Patient", {"resourceType": "Patient", "gender": "male"}).json
    patch = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/gender", "value": "female"}])).decode()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{keep['id']}"}},
        {"fullUrl": "urn:uuid:5a3c6e2a-7f7b-4d0b-9a53-0c4c6f0f6a11",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "new"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:s|new"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
         "request": {"method": "PATCH", "url": f"Patient/{keep['id']}"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:s|old"}},
        {"fullUrl": "urn:uuid:0d3f4a8e-2b1c-4e57-8b7d-2f9d3c1e6b22",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:5a3c6e2a-7f7b-4d0b-9a53-0c4c6f0f6a11"}},
         "request": {"method": "PUT", "url": "Observation/obs-1"}},
    ]}
    resp = post_json(client, "/fhir", bundle)
    assert resp.status_code == 200, resp.json
    out = resp.json["entry"]
    # GET runs last, so it sees the PATCH made in the same transaction.
    assert out[0]["resource"]["gender"] == "female"
    assert out[1]["response"]["status"] == "201 Created"
    assert out[2]["response"]["etag"] == 'W/"2"'
    assert out[3]["response"]["status"] == "204 No Content"
    new_id = out[1]["response"]["location"].split("/")[1]
    obs = client.get("/fhir/Observation/obs-1").json
    assert obs["subject"]["reference"] == f"Patient/{new_id}"
    assert type_total(client, "Patient") == 2


def test_batch_entries_fail_alone(client):
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "yesterday"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/nope"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient/b-2"}},
    ]})
    assert resp.status_code == 200
    statuses = [e["response"]["status"] for e in resp.json["entry"]]
    assert statuses == ["201 Created", "400 Bad Request", "404 Not Found", "201 Created"]
    bad = resp.json["entry"][1]["response"]["outcome"]
    assert bad["issue"][0]["expression"] == ["Bundle.entry[1].resource.birthDate"]
    assert type_total(client, "Patient") == 2


def test_bundle_shape_errors(client):
    assert post_json(client, "/fhir", {"resourceType": "Patient"}).status_code == 400
    assert post_json(client, "/fhir", {"resourceType": "Bundle", "type": "collection"}).status_code == 400
    no_request = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}
    body = post_json(client, "/fhir", no_request).json
    assert body["issue"][0]["expression"] == ["Bundle.entry[0].request"]
    dangling = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    assert post_json(client, "/fhir", dangling).status_code == 400


def test_prefer_representation_returns_resources(client):
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}}]},
        Prefer="return=representation")
    entry = resp.json["entry"][0]
    assert entry["resource"]["gender"] == "male"
    assert entry["fullUrl"] == f"http://hub.test/fhir/Patient/{entry['resource']['id']}"


def test_a_transaction_writes_each_resource_once(client, db_counts):
    before = db_counts()
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "twice"}, "request": {"method": "PUT", "url": "Patient/twice"}},
        {"resource": {"resourceType": "Patient", "id": "twice", "gender": "male"},
         "request": {"method": "PUT", "url": "Patient/twice"}}]})
    assert resp.status_code == 400
    assert resp.json["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert db_counts() == before


def test_batch_get_entries_can_search(client):
    post_json(client, "/fhir/Patient", {"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-01"})
    post_json(client, "/fhir/Patient", {"resourceType": "Patient", "gender": "male", "birthDate": "1985-05-05"})
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?gender=female"}},
        {"request": {"method": "GET", "url": "Patient?birthdate=lt1989&_count=0"}},
        {"request": {"method": "GET", "url": "Patient?birthdate=notadate"}}]})
    assert resp.status_code == 200
    first, second, third = resp.json["entry"]
    assert first["resource"]["type"] == "searchset" and first["resource"]["total"] == 1
    assert first["resource"]["entry"][0]["resource"]["gender"] == "female"
    assert second["resource"]["total"] == 1
    assert third["response"]["status"].startswith("400")


def _org(ident: str, name: str | None = None) -> dict:
    return {"resourceType": "Organization", "name": name or ident,
            "identifier": [{"system": "urn:test:org", "value": ident}]}


def _conditional_post(ident: str, criteria: str | None = None, resource: dict | None = None) -> dict:
    return {"resource": resource or _org(ident),
            "request": {"method": "POST", "url": "Organization",
                        "ifNoneExist": criteria or f"identifier=urn:test:org|{ident}"}}


def test_batch_of_conditional_creates_each_entry_answered_alone(client):
    """A run of POSTs is searched and written together; every entry still gets the answer it
    would get alone: existing (200), created (201), ambiguous (412), bad criteria or resource
    (400), and the same criteria twice create one resource, however the URL and criteria are
    spelled."""
    existing = post_json(client, "/fhir/Organization", _org("old")).json["id"]
    for _ in range(2):
        post_json(client, "/fhir/Organization", _org("twin"))
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        _conditional_post("old"),
        _conditional_post("new-1"),
        _conditional_post("twin"),
        _conditional_post("x", criteria="nosuchparam=1"),
        _conditional_post("bad", resource={"resourceType": "Organization", "active": "maybe"}),
        {**_conditional_post("new-1", criteria="Organization?identifier=urn:test:org|new-1"),
         "request": {"method": "POST", "url": "http://hub.test/fhir/Organization",
                     "ifNoneExist": "Organization?identifier=urn:test:org|new-1"}},
        {"request": {"method": "GET", "url": "Organization?identifier=urn:test:org|new-1"}},
        _conditional_post("new-2"),
        {"resource": _org("plain"), "request": {"method": "POST", "url": "Organization"}},
    ]})
    assert resp.status_code == 200
    out = [e["response"] for e in resp.json["entry"]]
    assert [r["status"].split()[0] for r in out] == ["200", "201", "412", "400", "400", "200", "200", "201", "201"]
    assert out[0]["location"].startswith(f"Organization/{existing}/")
    assert out[5]["location"] == out[1]["location"]  # the repeated criteria found the first
    assert out[4]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[4].resource.active"]
    assert resp.json["entry"][6]["resource"]["total"] == 1
    # old + 2 twins before; new-1, new-2, plain now.
    assert type_total(client, "Organization") == 6


def test_batch_run_is_redone_entry_by_entry_when_its_write_fails(client, monkeypatch):
    """A run's multi-row write can fail (a concurrent request wrote the same resource); the run
    is then redone one entry at a time, and each resource is stored once."""
    from sqlalchemy.exc import IntegrityError

    from healthhub.storage import repository

    real = repository._Pending.send
    calls = {"n": 0}

    def fail_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise IntegrityError("simulated concurrent insert", None, Exception("duplicate key"))
        return real(self)

    monkeypatch.setattr(repository._Pending, "send", fail_once)
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch",
                                       "entry": [_conditional_post(f"r-{i}") for i in range(5)]})
    assert resp.status_code == 200
    assert [e["response"]["status"] for e in resp.json["entry"]] == ["201 Created"] * 5
    assert calls["n"] == 1  # the run failed once; the redo writes entry by entry
    assert type_total(client, "Organization") == 5
    for i in range(5):
        found = client.get(f"/fhir/Organization?identifier=urn:test:org|r-{i}").json
        assert found["total"] == 1


class _Aborted(Exception):
    sqlstate = "40P01"  # deadlock_detected


def test_a_batch_entry_the_database_aborts_fails_alone_with_409(client, monkeypatch):
    """A conditional update the database aborts for a concurrent transaction (a deadlock it
    broke) is that entry's 409; the batch rolls back to the entry's savepoint and goes on."""
    from sqlalchemy.exc import OperationalError

    from healthhub.storage.repository import Repository

    real = Repository.conditional_update

    def abort_b(self, resource_type, query, *args, **kwargs):
        if "aborted" in query:
            raise OperationalError("UPDATE …", {}, _Aborted())
        return real(self, resource_type, query, *args, **kwargs)

    monkeypatch.setattr(Repository, "conditional_update", abort_b)
    entries = [{"resource": _org(name), "request": {"method": "PUT", "url": f"Organization?identifier=urn:test:org|{name}"}}
               for name in ("first", "aborted", "last")]
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert resp.status_code == 200, resp.json
    statuses = [e["response"]["status"] for e in resp.json["entry"]]
    assert statuses[0].startswith("201") and statuses[2].startswith("201"), statuses
    assert statuses[1].startswith("409")
    assert "retry" in resp.json["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert type_total(client, "Organization") == 2


def test_transaction_conditional_creates_are_resolved_together(client, db_counts):
    existing = post_json(client, "/fhir/Organization", _org("kept")).json["id"]
    before = db_counts()
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {**_conditional_post("kept"), "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111"},
        {**_conditional_post("fresh"), "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222"},
        {"resource": {"resourceType": "Location", "name": "ward",
                      "managingOrganization": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                      "partOf": {"reference": "Location?name=nowhere-at-all"}},
         "request": {"method": "POST", "url": "Location"}}]})
    assert resp.status_code == 412  # the conditional reference finds nothing: all or nothing
    assert db_counts() == before
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {**_conditional_post("kept"), "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111"},
        {**_conditional_post("fresh"), "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222"},
        {"resource": {"resourceType": "Location", "name": "ward",
                      "managingOrganization": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Location"}}]})
    assert resp.status_code == 200, resp.json
    out = [e["response"] for e in resp.json["entry"]]
    assert [r["status"] for r in out] == ["200 OK", "201 Created", "201 Created"]
    location = client.get("/fhir/" + out[2]["location"].rsplit("/_history", 1)[0]).json
    assert location["managingOrganization"]["reference"] == f"Organization/{existing}"
    after = db_counts()
    assert after["resources"] == before["resources"] + 2


def test_batch_conditional_creates_agree_with_search(client):
    """Whatever path a criteria takes in a batch (identifier lookups together, other searches
    as one statement), its outcome is what a search with the same criteria finds."""
    for system, value in (("urn:sys:1", "v1"), (None, "v1"), ("urn:sys:2", "v1"), ("urn:sys:1", "v2"),
                          ("urn:sys:1", "V2")):
        ident = {"value": value} if system is None else {"system": system, "value": value}
        post_json(client, "/fhir/Organization", {"resourceType": "Organization", "name": f"{system} {value}",
                                                 "identifier": [ident]})
    criteria = ["identifier=urn:sys:1|v1", "identifier=v1", "identifier=|v1", "identifier=urn:sys:3|v1",
                "identifier=urn:sys:1|v2", "identifier=urn:sys:1|V2", "identifier=v3", "identifier=urn:sys:1|",
                "identifier=urn:sys:1|v1,urn:sys:2|v1", "name=urn:sys:2", "identifier:not=v1",
                "identifier=urn:sys:1|v2&name=nothing"]
    expected = []
    for q in criteria:
        total = client.get(f"/fhir/Organization?{q}").json["total"]
        expected.append({0: "201", 1: "200"}.get(total, "412"))
    assert set(expected) == {"200", "201", "412"}  # the criteria cover every outcome
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Organization", "name": f"created {i}"},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": q}}
        for i, q in enumerate(criteria)]})
    assert [e["response"]["status"].split()[0] for e in resp.json["entry"]] == expected


def test_a_large_transaction_failing_late_stores_nothing(client, db_counts):
    """An entry failing after 240 others were validated and indexed leaves nothing behind."""
    before = db_counts()
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
                "resource": {"resourceType": "Patient", "gender": "female", "name": [{"family": f"Late{i}"}]},
                "request": {"method": "POST", "url": "Patient"}} for i in range(250)]
    entries[240]["resource"]["gender"] = "sometimes"
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 400
    assert resp.json["issue"][0]["expression"] == ["Bundle.entry[240].resource.gender"]
    assert db_counts() == before
    del entries[240]
    resp = post_json(client, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200
    assert type_total(client, "Patient") == 249


def test_bundle_past_the_entry_limit_is_refused_before_any_entry(make_app, db_counts):
    """HEALTHHUB_MAX_BUNDLE_ENTRIES: more entries is a 413 that names the limit; nothing is
    written, not even the entries that were fine; the limit itself goes in."""
    from healthhub.config import Config
    from tests.conftest import archived, authorized

    app = make_app(max_bundle_entries=3)
    client = authorized(app)
    before = db_counts()

    def bundle(kind, n):
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}}
            for _ in range(n)]}

    for kind in ("transaction", "batch"):
        resp = post_json(client, "/fhir", bundle(kind, 4))
        assert resp.status_code == 413, resp.json
        (issue,) = resp.json["issue"]
        assert issue["code"] == "too-costly" and issue["expression"] == ["Bundle.entry"]
        assert "4 entries" in issue["diagnostics"] and "at most 3" in issue["diagnostics"]
    assert db_counts() == before
    # The refused bodies are kept, as every refused write is (CONTRACT §6).
    assert [(r.outcome, r.message_type) for r in archived(app)] == [
        ("rejected", "POST transaction"), ("rejected", "POST batch")]
    assert post_json(client, "/fhir", bundle("batch", 3)).status_code == 200
    assert type_total(client, "Patient") == 3
    # The default takes the largest Bundle Synthea writes (its infrastructure batches) with room to spare.
    largest = max(len(load_json(p)["entry"]) for p in INFRA)
    assert Config().max_bundle_entries >= 4 * largest
    assert Config.from_env({"HEALTHHUB_MAX_BUNDLE_ENTRIES": "0"}).max_bundle_entries == 0
    unlimited = authorized(make_app(max_bundle_entries=0))  # 0: no limit
    assert post_json(unlimited, "/fhir", bundle("batch", 4)).status_code == 200
