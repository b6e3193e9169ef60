"""Scopes enforced on every FHIR path: tokens that try to escape them, interaction by interaction.

The world: patients A and B, each with observations and an encounter, sharing a practitioner
and an organization. A ``patient/`` token for A must never see or touch B's records.
"""
from __future__ import annotations

import orjson
import pytest

from healthhub.auth.keys import KeyRing
from healthhub.auth.tokens import TokenService
from tests.conftest import authorized, issue_token, post_json, put_json
from tests.forge import hs256, unsigned

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _obs(oid, patient, category, code, identifier):
    return {"resourceType": "Observation", **({"id": oid} if oid else {}), "status": "final",
            "identifier": [{"system": "urn:obs", "value": identifier}],
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "performer": [{"reference": "Practitioner/pr1"}]}


WORLD = [
    {"resourceType": "Organization", "id": "org1", "name": "Kigali Hospital"},
    {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Uwase"}]},
    {"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha"}], "managingOrganization": {"reference": "Organization/org1"}},
    {"resourceType": "Patient", "id": "pb", "name": [{"family": "Beta"}], "managingOrganization": {"reference": "Organization/org1"}},
    _obs("oa1", "pa", "laboratory", "4548-4", "a1"),
    _obs("oa2", "pa", "vital-signs", "8867-4", "a2"),
    _obs("ob1", "pb", "laboratory", "4548-4", "b1"),
    {"resourceType": "Encounter", "id": "ea", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/pa"}, "serviceProvider": {"reference": "Organization/org1"}},
    {"resourceType": "Encounter", "id": "eb", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/pb"}, "serviceProvider": {"reference": "Organization/org1"}},
    {"resourceType": "Condition", "id": "cb", "subject": {"reference": "Patient/pb"},
     "encounter": {"reference": "Encounter/eb"}, "code": {"text": "malaria"}},
]


@pytest.fixture
def world(app):
    admin = authorized(app)
    for r in WORLD:
        assert put_json(admin, f"/fhir/{r['resourceType']}/{r['id']}", r).status_code == 201
    return app


def as_patient(app, scope="patient/*.rs", patient="pa"):
    return authorized(app, scope, patient=patient, client_id="app", subject="alice")


def ids(bundle):
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", []))


# -- 401: no usable token ------------------------------------------------------------------------

def _bad_tokens(app):
    service = app.extensions["healthhub.auth"].tokens
    good = service.issue(client_id="c", subject="c", scope="system/*.rs")
    head, body, _ = good.split(".")
    other_audience = TokenService(service.keys, service.issuer, "http://elsewhere/fhir")
    pem = service.keys.current().as_pem(private=False)
    return {
        "missing": None,
        "not bearer": "Basic YTpi",
        "empty bearer": "Bearer ",
        "garbage": "Bearer garbage",
        "expired": "Bearer " + service.issue(client_id="c", subject="c", scope="system/*.rs", lifetime=-600),
        "wrong audience": "Bearer " + other_audience.issue(client_id="c", subject="c", scope="system/*.rs"),
        "foreign key": "Bearer " + TokenService(KeyRing(app.config["HEALTHHUB"].signing_key + ".other"),
                                                service.issuer, service.audience).issue(
            client_id="c", subject="c", scope="system/*.rs"),
        "alg none": "Bearer " + unsigned({"typ": "at+jwt"}, body),
        "HS256 with the public key": "Bearer " + hs256(pem, {"typ": "at+jwt", "kid": service.keys.kid}, body),
        # Long, yet under the 8190-byte header limit (a longer header gets 431, tests/system).
        "oversized": "Bearer " + "a" * 8000 + "." + "b.c",
        "tampered": f"Bearer {head}.{body[:-4]}AAAA.{good.split('.')[2]}",
    }


def test_requests_without_a_usable_token_get_401(world, db_counts):
    web = world.test_client()
    before = db_counts()
    for why, header in _bad_tokens(world).items():
        headers = {"Authorization": header} if header is not None else {}
        for method, path in (("GET", "/fhir/Patient/pa"), ("GET", "/fhir/Observation"),
                             ("POST", "/fhir/Patient"), ("POST", "/fhir"), ("GET", "/fhir/Patient/pa/$everything"),
                             ("DELETE", "/fhir/Patient/pa"), ("GET", "/fhir/_history")):
            resp = web.open(path, method=method, headers={**headers, "Content-Type": "application/fhir+json"},
                            data=b'{"resourceType": "Patient"}' if method == "POST" else None)
            assert resp.status_code == 401, (why, method, path, resp.status_code)
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, why
            assert challenge.isascii() and challenge.isprintable(), challenge  # gunicorn refuses others
            assert resp.json["resourceType"] == "OperationOutcome"
    assert db_counts() == before
    assert web.get("/fhir/metadata").status_code == 200


# -- patient/ read scopes ------------------------------------------------------------------------

def test_patient_token_reads_only_its_compartment(world):
    web = as_patient(world)
    assert web.get("/fhir/Patient/pa").status_code == 200
    for path in ("/fhir/Patient/pb", "/fhir/Observation/ob1", "/fhir/Encounter/eb", "/fhir/Condition/cb",
                 "/fhir/Observation/ob1/_history/1", "/fhir/Observation/ob1/_history",
                 "/fhir/Patient/pb/$everything", "/fhir/Patient/pb/Observation"):
        resp = web.get(path)
        assert resp.status_code == 404, (path, resp.status_code)  # as if it did not exist
    assert web.get("/fhir/Practitioner/pr1").status_code == 200  # describes no patient
    assert web.get("/fhir/Observation/oa1/_history/1").status_code == 200

    assert ids(web.get("/fhir/Observation").json) == ["Observation/oa1", "Observation/oa2"]
    assert web.get("/fhir/Observation").json["total"] == 2
    assert ids(web.get("/fhir/Patient").json) == ["Patient/pa"]
    assert ids(web.get("/fhir/Condition").json) == []
    assert ids(web.get("/fhir/Observation?code=4548-4").json) == ["Observation/oa1"]
    assert ids(web.get("/fhir/Observation?identifier=urn:obs|b1").json) == []


def test_patient_token_includes_chains_and_has_stay_in_the_compartment(world):
    web = as_patient(world)
    got = web.get("/fhir/Observation?_include=Observation:subject&_include=Observation:performer").json
    assert ids(got) == ["Observation/oa1", "Observation/oa2", "Patient/pa", "Practitioner/pr1"]
    got = web.get("/fhir/Practitioner?_revinclude=Observation:performer").json
    assert ids(got) == ["Observation/oa1", "Observation/oa2", "Practitioner/pr1"]
    got = web.get("/fhir/Organization?_revinclude=Patient:organization&_revinclude=Encounter:service-provider"
                  "&_revinclude:iterate=Condition:encounter").json
    assert ids(got) == ["Encounter/ea", "Organization/org1", "Patient/pa"]
    got = web.get("/fhir/Encounter?_include=Encounter:patient&_revinclude=Condition:encounter"
                  "&_include:iterate=Patient:organization").json
    assert ids(got) == ["Encounter/ea", "Organization/org1", "Patient/pa"]
    assert ids(web.get("/fhir/Observation?subject.name=Beta").json) == []
    assert ids(web.get("/fhir/Observation?subject:Patient.name=Alpha").json) == ["Observation/oa1", "Observation/oa2"]
    assert ids(web.get(f"/fhir/Patient?_has:Observation:subject:category={LAB}").json) == ["Patient/pa"]
    assert ids(web.get("/fhir/Patient?_has:Condition:subject:code:text=malaria").json) == []
    assert ids(web.get("/fhir/Patient/pa/Observation").json) == ["Observation/oa1", "Observation/oa2"]


def test_patient_everything_under_a_patient_token(world):
    web = as_patient(world)
    got = web.get("/fhir/Patient/pa/$everything").json
    assert ids(got) == ["Encounter/ea", "Observation/oa1", "Observation/oa2", "Organization/org1", "Patient/pa",
                        "Practitioner/pr1"]
    assert got["total"] == 6
    narrow = as_patient(world, "patient/Patient.rs patient/Observation.rs")
    assert ids(narrow.get("/fhir/Patient/pa/$everything").json) == ["Observation/oa1", "Observation/oa2", "Patient/pa"]


def test_patient_token_cannot_list_history_of_a_type_or_the_system(world):
    web = as_patient(world)
    for path in ("/fhir/Observation/_history", "/fhir/_history"):
        resp = web.get(path)
        assert resp.status_code == 403 and resp.json["issue"][0]["code"] == "forbidden", path


def test_bundle_entries_are_confined(world):
    web = as_patient(world)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/ob1"}},
        {"request": {"method": "GET", "url": "Observation/oa1"}},
        {"request": {"method": "GET", "url": "Observation?code=4548-4"}},
        {"request": {"method": "GET", "url": "Patient/pb/_history/1"}},
    ]}
    got = post_json(web, "/fhir", bundle).json
    statuses = [e["response"]["status"] for e in got["entry"]]
    assert statuses[0].startswith("404") and statuses[1].startswith("200") and statuses[2].startswith("200")
    assert ids(got["entry"][2]["resource"]) == ["Observation/oa1"]
    assert statuses[3].startswith("404")


# -- patient/ write scopes -----------------------------------------------------------------------

def test_patient_token_writes_only_into_its_compartment(world, db_counts):
    web = as_patient(world, "patient/Observation.cruds")
    ok = post_json(web, "/fhir/Observation", _obs(None, "pa", "laboratory", "2345-7", "a3"))
    assert ok.status_code == 201
    before = db_counts()
    for resp in (
        post_json(web, "/fhir/Observation", _obs(None, "pb", "laboratory", "2345-7", "x")),  # into B's record
        put_json(web, "/fhir/Observation/ob1", _obs("ob1", "pb", "laboratory", "2345-7", "b1")),  # B's resource
        put_json(web, "/fhir/Observation/oa1", _obs("oa1", "pb", "laboratory", "4548-4", "a1")),  # moving A's to B
        web.delete("/fhir/Observation/ob1"),
        web.patch("/fhir/Observation/ob1", data=orjson.dumps([{"op": "replace", "path": "/status", "value": "amended"}]),
                  headers={"Content-Type": "application/json-patch+json"}),
        post_json(web, "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": _obs(None, "pa", "laboratory", "1", "t1")},
            {"request": {"method": "POST", "url": "Observation"}, "resource": _obs(None, "pb", "laboratory", "1", "t2")},
        ]}),
    ):
        assert resp.status_code == 403, (resp.status_code, resp.json)
        assert resp.json["issue"][0]["code"] == "forbidden"
    assert db_counts() == before
    assert web.delete("/fhir/Patient/pb").status_code == 403  # no scope on Patient at all
    # Conditional operations never see B's resource: the update creates a new one of A's and
    # the conditional delete finds nothing.
    resp = put_json(web, "/fhir/Observation?identifier=urn:obs|b1", _obs(None, "pa", "laboratory", "1", "b1"))
    assert resp.status_code == 201 and resp.json["id"] != "ob1"
    assert web.delete("/fhir/Observation?identifier=urn:obs|b1&subject=Patient/pb").status_code == 200
    admin = authorized(world)
    assert admin.get("/fhir/Observation/ob1").json["meta"]["versionId"] == "1"
    created = post_json(web, "/fhir/Observation", _obs(None, "pa", "laboratory", "1", "a9"),
                        **{"If-None-Exist": "identifier=urn:obs|b1"})
    assert created.status_code == 200 and created.json["subject"]["reference"] == "Patient/pa"


def test_batch_refuses_only_the_escaping_entry(world):
    web = as_patient(world, "patient/Observation.crs")
    got = post_json(web, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": _obs(None, "pa", "laboratory", "1", "k1")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": _obs(None, "pb", "laboratory", "1", "k2")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": _obs(None, "pa", "laboratory", "1", "k3")},
    ]}).json
    assert [e["response"]["status"][:3] for e in got["entry"]] == ["201", "403", "201"]
    assert ids(web.get("/fhir/Observation?identifier=urn:obs|k2").json) == []
    assert authorized(world).get("/fhir/Observation?identifier=urn:obs|k2").json["total"] == 0


# -- granular, user/, v1 and non-FHIR scopes -----------------------------------------------------

def test_granular_scope_query(world):
    web = as_patient(world, f"patient/Observation.rs?category={LAB}")
    assert ids(web.get("/fhir/Observation").json) == ["Observation/oa1"]
    assert web.get("/fhir/Observation/oa2").status_code == 404
    assert web.get("/fhir/Patient/pa").status_code == 403  # no scope on Patient
    user = authorized(world, f"user/Observation.rs?category={LAB}")
    assert ids(user.get("/fhir/Observation").json) == ["Observation/ob1", "Observation/oa1"][::-1]
    assert user.get("/fhir/Patient/pa/$everything").status_code == 403  # an operation on a Patient
    both = authorized(world, f"user/Patient.rs user/Observation.rs?category={LAB}")
    assert ids(both.get("/fhir/Patient/pa/$everything").json) == ["Observation/oa1", "Patient/pa"]


def test_user_scopes_are_not_confined_but_still_typed(world):
    web = authorized(world, "user/Patient.rs user/Observation.read", client_id="app", subject="dr")
    assert web.get("/fhir/Patient/pb").status_code == 200
    assert web.get("/fhir/Observation/ob1").status_code == 200
    assert web.get("/fhir/Encounter/eb").status_code == 403
    assert post_json(web, "/fhir/Patient", {"resourceType": "Patient"}).status_code == 403
    got = web.get("/fhir/Observation?_include=Observation:performer&_include=Observation:subject").json
    assert "Practitioner/pr1" not in ids(got) and "Patient/pa" in ids(got)  # no scope on Practitioner


def test_stats_only_token_reaches_no_patient_data(world):
    web = authorized(world, "stats.read", client_id="ministry", subject="officer")
    for path in ("/fhir/Patient", "/fhir/Patient/pa", "/fhir/Observation?code=4548-4", "/fhir/Patient/pa/$everything",
                 "/fhir/_history", "/fhir/Patient/pa/Observation", "/fhir/Observation/oa1/_history/1"):
        resp = web.get(path)
        assert resp.status_code == 403, (path, resp.status_code)
    assert post_json(web, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/pa"}}]}).json["entry"][0]["response"]["status"][:3] == "403"


def test_patient_scope_without_patient_context_sees_nothing(world):
    web = authorized(world, "patient/*.rs", client_id="app", subject="x")
    assert ids(web.get("/fhir/Observation").json) == []
    assert web.get("/fhir/Patient/pa").status_code == 404


def test_token_for_another_server_or_client_claims_do_not_widen_access(world):
    # Extra claims cannot name another patient: the patient comes from the signed token only.
    web = as_patient(world)
    assert web.get("/fhir/Observation?subject=Patient/pb").json.get("total") == 0
    assert web.get("/fhir/Observation?patient=pb&_include=Observation:patient").json.get("total") == 0
    token = issue_token(world, "patient/*.rs", patient="pa")
    assert world.test_client().get("/fhir/Patient/pb", headers={"Authorization": f"Bearer {token}"}).status_code == 404
