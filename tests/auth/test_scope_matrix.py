"""Every FHIR interaction under every kind of scope, on a resource of patient A: the answer each
combination must get, written down as a table and checked one by one."""
from __future__ import annotations

import orjson
import pytest

from tests.conftest import authorized, post_json, put_json

OBS = {"resourceType": "Observation", "id": "oa", "status": "final", "code": {"text": "weight"},
       "identifier": [{"system": "urn:obs", "value": "oa"}], "subject": {"reference": "Patient/pa"}}


def _obs(**changes):
    return {k: v for k, v in {**OBS, **changes}.items() if v is not None}


# interaction → (how to call it, what it is)
INTERACTIONS = {
    "read": (lambda c: c.get("/fhir/Observation/oa"), "read"),
    "vread": (lambda c: c.get("/fhir/Observation/oa/_history/1"), "read"),
    "history-instance": (lambda c: c.get("/fhir/Observation/oa/_history"), "read"),
    "search": (lambda c: c.get("/fhir/Observation?identifier=urn:obs|oa"), "search"),
    "search-post": (lambda c: c.post("/fhir/Observation/_search", data={"identifier": "urn:obs|oa"}), "search"),
    "compartment": (lambda c: c.get("/fhir/Patient/pa/Observation"), "read"),
    "everything": (lambda c: c.get("/fhir/Patient/pa/$everything"), "read"),
    "history-type": (lambda c: c.get("/fhir/Observation/_history"), "list"),
    "create": (lambda c: post_json(c, "/fhir/Observation", _obs(id=None, identifier=[])), "write"),
    "update": (lambda c: put_json(c, "/fhir/Observation/oa", _obs(status="amended")), "write"),
    "patch": (lambda c: c.patch("/fhir/Observation/oa", headers={"Content-Type": "application/json-patch+json"},
                                data=orjson.dumps([{"op": "replace", "path": "/status", "value": "amended"}])),
              "write"),
    "delete": (lambda c: c.delete("/fhir/Observation/oa"), "write"),
    "conditional-update": (lambda c: put_json(c, "/fhir/Observation?identifier=urn:obs|oa", _obs(status="amended")),
                           "write"),
    "conditional-delete": (lambda c: c.delete("/fhir/Observation?identifier=urn:obs|oa"), "write"),
    "batch-get": (lambda c: post_json(c, "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/oa"}}]}), "read"),
}

OK, NOT_FOUND, FORBIDDEN = {200, 201}, {404}, {403}
READS = ("read", "vread", "history-instance", "compartment", "everything", "batch-get")
SEARCHES = ("search", "search-post")
WRITES = ("create", "update", "patch", "delete", "conditional-update", "conditional-delete")


def _table(**groups: set[int]) -> dict[str, set[int]]:
    """Expected statuses per interaction from per-group defaults and single overrides."""
    out: dict[str, set[int]] = {}
    for name in INTERACTIONS:
        group = "reads" if name in READS else "searches" if name in SEARCHES else "writes" if name in WRITES \
            else "list"
        out[name] = groups.get(name.replace("-", "_"), groups[group])
    return out


# scope kind → (scope, patient context, expected status per interaction on A's observation)
KINDS = {
    "system-cruds": ("system/*.cruds", None, _table(reads=OK, searches=OK, writes=OK, list=OK)),
    "system-read": ("system/Observation.rs system/Patient.rs", None,
                    _table(reads=OK, searches=OK, writes=FORBIDDEN, list=OK)),
    "user-v1-read": ("user/Observation.read user/Patient.read", None,
                     _table(reads=OK, searches=OK, writes=FORBIDDEN, list=OK)),
    # A patient/ token of A: everything on A's record, but no history of a whole type.
    "patient-own": ("patient/Observation.cruds patient/Patient.rs", "pa",
                    _table(reads=OK, searches=OK, writes=OK, list=FORBIDDEN)),
    "patient-own-v1-read": ("patient/*.read", "pa", _table(reads=OK, searches=OK, writes=FORBIDDEN, list=FORBIDDEN)),
    # A patient/ token of B: A's observation reads as absent, searches find nothing, writes are
    # refused; the conditional update finds nothing and its create (into A's record) is refused;
    # the conditional delete finds nothing to delete; a batch answers, its entry says 404.
    "patient-other": ("patient/Observation.cruds patient/Patient.rs", "pb",
                      _table(reads=NOT_FOUND, searches=OK, writes=FORBIDDEN, list=FORBIDDEN,
                             conditional_delete=OK, batch_get=OK)),
    # A granular scope A's observation does not match: as absent; A's Patient is readable, so
    # the compartment search and $everything answer, without the observation.
    "granular-miss": ("user/Observation.cruds?status=cancelled user/Patient.rs", None,
                      _table(reads=NOT_FOUND, searches=OK, writes=FORBIDDEN, list=FORBIDDEN,
                             conditional_delete=OK, batch_get=OK, compartment=OK, everything=OK)),
    # No scope on Observation: refused, except $everything (a Patient operation) without it.
    "other-type": ("system/Encounter.cruds system/Patient.rs", None,
                   _table(reads=FORBIDDEN, searches=FORBIDDEN, writes=FORBIDDEN, list=FORBIDDEN, everything=OK,
                          batch_get=OK)),
    "stats": ("stats.read", None, _table(reads=FORBIDDEN, searches=FORBIDDEN, writes=FORBIDDEN, list=FORBIDDEN,
                                          batch_get=OK)),
}
HIDDEN = ("patient-other", "granular-miss", "other-type", "stats")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_interaction_under_every_scope_kind(make_app, kind):
    app = make_app()
    admin = authorized(app)
    assert put_json(admin, "/fhir/Patient/pa", {"resourceType": "Patient", "id": "pa"}).status_code == 201
    assert put_json(admin, "/fhir/Patient/pb", {"resourceType": "Patient", "id": "pb"}).status_code == 201
    scope, patient, table = KINDS[kind]
    failures = []
    for name, (call, _) in INTERACTIONS.items():
        assert put_json(admin, "/fhir/Observation/oa", OBS).status_code in (200, 201)  # fresh each time
        before = admin.get("/fhir/Observation/oa").json
        resp = call(authorized(app, scope, patient=patient, client_id="app", subject="u"))
        if resp.status_code not in table[name]:
            failures.append(f"{name}: {resp.status_code}, expected {sorted(table[name])}")
            continue
        body = resp.json or {}
        if name == "batch-get":
            entry_status = body["entry"][0]["response"]["status"][:3]
            want = {"patient-other": "404", "granular-miss": "404", "other-type": "403", "stats": "403"}.get(kind, "200")
            if entry_status != want:
                failures.append(f"batch-get entry: {entry_status}, expected {want}")
        if kind in HIDDEN and resp.status_code == 200:
            # Nothing of A's observation leaks: not as a match, not included, not in an entry.
            assert '"oa"' not in orjson.dumps(body).decode().replace('"Patient/pa"', ""), (name, body)
        if resp.status_code >= 400 or kind in HIDDEN:  # a refusal, or a token outside, changed nothing
            after = admin.get("/fhir/Observation/oa")
            assert after.status_code == 200 and after.json["meta"] == before["meta"], name
    assert not failures, failures
