"""The master patient index through the API: records of one person kept by several hospitals are
linked (national id, then demographics), reviewed when unsure, kept linked through hospitals'
updates, followed by ``$everything`` and ``patient/`` scopes; ``Patient/$match``; merges; the CLI.

The people are Synthea patients (tests/data/synthea); every expectation is computed here from
their JSON, never taken from the hub's answers.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from healthhub import resources
from healthhub.clock import utcnow
from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM
from healthhub.mpi import linkage
from tests.conftest import authorized, post_json, put_json

SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "synthea"
ABDUL = SYNTHEA / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
ANTONIO = SYNTHEA / "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"
MPI_LINK = "http://healthhub.dev/fhir/StructureDefinition/mpi-link"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
AUTO_LINK, REVIEW = 0.98, 0.40  # healthhub.ingest.matching's thresholds, as documented there


def nid(body: str) -> str:
    """A valid 13-digit national id: 12 digits and (11 − Σ d[i]·(13 − i) mod 11) mod 10."""
    assert len(body) == 12
    return body + str((11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10)


def bundle_of(path: Path) -> list[dict[str, Any]]:
    return [e["resource"] for e in orjson.loads(path.read_bytes())["entry"]]


def synthea_patient(path: Path = ABDUL) -> dict[str, Any]:
    return next(r for r in bundle_of(path) if r["resourceType"] == "Patient")


def record(person: dict[str, Any], hospital: str, mrn: str, national_id: str | None = None,
           **changes: Any) -> dict[str, Any]:
    """``person`` as one hospital keeps it: its own MRN system, the national id if it has it."""
    p = copy.deepcopy(person)
    p.pop("id", None)
    p.pop("text", None)
    p["identifier"] = [{"system": f"urn:healthhub:sender:{hospital}:mrn", "value": mrn}]
    if national_id:
        p["identifier"].append({"system": NATIONAL_ID_SYSTEM, "value": national_id})
    for key, value in changes.items():
        if value is None:
            p.pop(key, None)
        else:
            p[key] = value
    return p


def create(client: Any, resource: dict[str, Any]) -> str:
    r = post_json(client, f"/fhir/{resource['resourceType']}", resource)
    assert r.status_code == 201, r.json
    return str(r.json["id"])


def read(client: Any, rtype: str, rid: str) -> dict[str, Any]:
    r = client.get(f"/fhir/{rtype}/{rid}")
    assert r.status_code == 200, r.json
    resources.validate(r.json)
    return dict(r.json)


def mpi_links_of(patient: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """other id → (link type, the MPI extension's value) of the MPI's links of a Patient."""
    out = {}
    for link in patient.get("link") or []:
        ext = [e for e in link.get("extension") or [] if e["url"] == MPI_LINK]
        if ext:
            out[link["other"]["reference"].removeprefix("Patient/")] = (link["type"], ext[0]["valueString"])
    return out


def rows(app: Any, sql: str) -> list[tuple[Any, ...]]:
    with app.extensions["healthhub.db"].engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def persons(app: Any) -> dict[str, str]:
    return dict(rows(app, "SELECT patient_id, person_id FROM mpi_persons"))


def observations(path: Path, subject: str, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` Observations of a Synthea bundle, filed for ``Patient/subject``."""
    out = []
    for r in bundle_of(path):
        if r["resourceType"] == "Observation" and len(out) < n:
            o = {k: v for k, v in r.items() if k not in ("id", "encounter")}
            o["subject"] = {"reference": f"Patient/{subject}"}
            out.append(o)
    return out


def match(client: Any, patient: dict[str, Any], **params: Any) -> Any:
    parts: list[dict[str, Any]] = [{"name": "resource", "resource": patient}]
    if "only_certain" in params:
        parts.append({"name": "onlyCertainMatches", "valueBoolean": params["only_certain"]})
    if "count" in params:
        parts.append({"name": "count", "valueInteger": params["count"]})
    return post_json(client, "/fhir/Patient/$match", {"resourceType": "Parameters", "parameter": parts})


# -- linking --------------------------------------------------------------------------------

def test_same_national_id_links_two_hospitals_records(client, app):
    person = synthea_patient()
    number = nid("310170012345")
    a = create(client, record(person, "HOSP-A", "A-1001", number))
    # Hospital B spells the street differently and has an old phone number: the id decides.
    b = create(client, record(person, "HOSP-B", "B-77", number, telecom=[{"system": "phone", "value": "555-000-1111"}]))
    pa, pb = read(client, "Patient", a), read(client, "Patient", b)
    assert mpi_links_of(pa) == {b: ("seealso", "national-id 1")}
    assert mpi_links_of(pb) == {a: ("seealso", "national-id 1")}
    assert pa["meta"]["versionId"] == "2" and pb["meta"]["versionId"] == "2"  # one new version each
    assert pa["identifier"][0]["value"] == "A-1001"  # no golden record: each keeps its own data
    found = persons(app)
    assert set(found) == {a, b} and found[a] == found[b]
    assert rows(app, "SELECT a, b, kind, score FROM mpi_links") == [(min(a, b), max(a, b), "national-id", 1.0)]


def test_demographics_with_a_typo_link_without_a_national_id(client, app):
    person = synthea_patient()
    name = person["name"][0]
    typo = name["family"][:-1] + ("x" if name["family"][-1] != "x" else "y")  # Koepp → Koepx
    a = create(client, record(person, "HOSP-A", "A-1"))
    b = create(client, record(person, "HOSP-B", "B-1", name=[{**name, "family": typo}]))
    assert mpi_links_of(read(client, "Patient", a))[b][0] == "seealso"
    kind, score = rows(app, "SELECT kind, score FROM mpi_links")[0]
    assert kind == "score" and AUTO_LINK <= score < 1.0
    assert mpi_links_of(read(client, "Patient", b))[a] == ("seealso", f"score {score:g}")


def test_twins_are_not_linked(client, app):
    person = synthea_patient()
    name = person["name"][0]
    a = create(client, record(person, "HOSP-A", "A-1", nid("310170012345")))
    # Same family name, birth date, address and phone; another given name and national id.
    twin = create(client, record(person, "HOSP-A", "A-2", nid("310170012346"),
                                 name=[{**name, "given": ["Ahmed"]}]))
    assert "link" not in read(client, "Patient", a) and "link" not in read(client, "Patient", twin)
    assert rows(app, "SELECT * FROM mpi_links") == [] and persons(app) == {}
    assert rows(app, "SELECT * FROM mpi_reviews") == []  # different national ids: certainly not one person


def test_a_pair_in_the_review_band_waits_for_a_reviewer(client, app):
    person = synthea_patient()
    a = create(client, record(person, "HOSP-A", "A-1"))
    # Hospital C did not record the birth date: the same name at the same address may be a father
    # and his junior, so a person decides.
    c = create(client, record(person, "HOSP-C", "C-1", birthDate=None))
    assert "link" not in read(client, "Patient", c)
    [(ra, rb, score, grade, status)] = rows(app, "SELECT a, b, score, grade, status FROM mpi_reviews")
    assert (ra, rb) == (min(a, c), max(a, c)) and status == "pending"
    assert REVIEW <= score < AUTO_LINK and grade in ("probable", "possible")
    assert rows(app, "SELECT * FROM mpi_links") == []


def test_a_hospitals_update_without_the_link_keeps_it_in_one_version(client):
    person = synthea_patient()
    number = nid("310170012345")
    sent = record(person, "HOSP-A", "A-1", number)
    a = create(client, sent)
    b = create(client, record(person, "HOSP-B", "B-1", number))
    assert read(client, "Patient", a)["meta"]["versionId"] == "2"
    # The hospital re-sends what it sent (it never saw the link): nothing changes.
    r = put_json(client, f"/fhir/Patient/{a}", {**sent, "id": a})
    assert r.status_code == 200 and r.json["meta"]["versionId"] == "2"
    # It re-sends with a new phone number (an ADT^A08): one new version, the link still there.
    phone = [{"system": "phone", "value": "555-123-0000", "use": "home"}]
    r = put_json(client, f"/fhir/Patient/{a}", {**sent, "id": a, "telecom": phone})
    assert r.status_code == 200
    pa = read(client, "Patient", a)
    assert pa["meta"]["versionId"] == "3" and pa["telecom"] == phone
    assert mpi_links_of(pa) == {b: ("seealso", "national-id 1")}
    assert client.get(f"/fhir/Patient/{a}/_history").json["total"] == 3
    # A conditional update and a JSON Patch that drops the links cannot remove them either.
    r = put_json(client, "/fhir/Patient?identifier=urn:healthhub:sender:HOSP-A:mrn|A-1",
                 {**sent, "gender": person["gender"], "telecom": phone, "maritalStatus": {"text": "S"}})
    assert r.status_code == 200 and mpi_links_of(r.json) == {b: ("seealso", "national-id 1")}
    r = client.patch(f"/fhir/Patient/{a}", data=orjson.dumps([{"op": "remove", "path": "/link"}]),
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200 and mpi_links_of(read(client, "Patient", a)) == {b: ("seealso", "national-id 1")}


# -- following the links --------------------------------------------------------------------

@pytest.fixture
def linked_people(client) -> dict[str, Any]:
    """Abdul at hospitals A and B (linked), his Observations at B, and Antonio (unlinked) at A."""
    abdul = synthea_patient(ABDUL)
    number = nid("310170012345")
    a = create(client, record(abdul, "HOSP-A", "A-1", number))
    b = create(client, record(abdul, "HOSP-B", "B-1", number))
    c = create(client, record(synthea_patient(ANTONIO), "HOSP-A", "A-2"))
    return {"a": a, "b": b, "c": c,
            "obs_a": [create(client, o) for o in observations(ABDUL, a, 1)],
            "obs_b": [create(client, o) for o in observations(ABDUL, b, 3)],
            "obs_c": [create(client, o) for o in observations(ANTONIO, c, 2)]}


def test_everything_returns_the_records_of_every_linked_patient(client, linked_people):
    p = linked_people
    r = client.get(f"/fhir/Patient/{p['a']}/$everything?_count=100")
    assert r.status_code == 200
    resources.validate(r.json)
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json["entry"]}
    assert {("Observation", o) for o in p["obs_a"] + p["obs_b"]} <= got
    assert {("Patient", p["a"]), ("Patient", p["b"])} <= got
    assert not any(i in (p["c"], *p["obs_c"]) for _, i in got)
    assert r.json["total"] == len(got)
    # A compartment search and ?patient= keep meaning the one record.
    only_a = client.get(f"/fhir/Patient/{p['a']}/Observation").json
    assert {e["resource"]["id"] for e in only_a["entry"]} == set(p["obs_a"])
    by_param = client.get(f"/fhir/Observation?patient={p['b']}").json
    assert {e["resource"]["id"] for e in by_param["entry"]} == set(p["obs_b"])


def test_patient_scope_follows_the_links(app, linked_people):
    p = linked_people
    app_client = authorized(app, "patient/*.rs", patient=p["a"])
    found = app_client.get("/fhir/Observation?_count=100").json
    assert {e["resource"]["id"] for e in found["entry"]} == set(p["obs_a"] + p["obs_b"])
    assert app_client.get(f"/fhir/Patient/{p['b']}").status_code == 200
    assert app_client.get(f"/fhir/Observation/{p['obs_b'][0]}").status_code == 200
    assert app_client.get(f"/fhir/Patient/{p['c']}").status_code == 404
    assert app_client.get(f"/fhir/Observation/{p['obs_c'][0]}").status_code == 404
    patients = app_client.get("/fhir/Patient").json
    assert {e["resource"]["id"] for e in patients["entry"]} == {p["a"], p["b"]}
    # $everything of the other record of the person, under the patient's token.
    everything = app_client.get(f"/fhir/Patient/{p['b']}/$everything?_count=100").json
    assert {o for o in p["obs_a"] + p["obs_b"]} <= {e["resource"]["id"] for e in everything["entry"]}


# -- $match ---------------------------------------------------------------------------------

def test_match_returns_scored_graded_candidates(client, app):
    abdul = synthea_patient()
    name = abdul["name"][0]
    number = nid("310170012345")
    a = create(client, record(abdul, "HOSP-A", "A-1", number))
    b = create(client, record(abdul, "HOSP-B", "B-1", number))
    no_birth = create(client, record(abdul, "HOSP-C", "C-1", birthDate=None))
    twin = create(client, record(abdul, "HOSP-A", "A-2", nid("310170012346"), name=[{**name, "given": ["Ahmed"]}]))
    other = create(client, record(synthea_patient(ANTONIO), "HOSP-A", "A-3"))
    query = record(abdul, "HOSP-D", "D-1")  # what a fourth hospital knows, without the national id

    r = match(client, query)
    assert r.status_code == 200
    resources.validate(r.json)
    bundle = r.json
    assert bundle["type"] == "searchset"
    entries = {e["resource"]["id"]: e for e in bundle["entry"]}
    scores = [e["search"]["score"] for e in bundle["entry"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert other not in entries  # shares no name, birth date, address or phone
    grades = {i: next(x["valueCode"] for x in e["search"]["extension"] if x["url"] == MATCH_GRADE)
              for i, e in entries.items()}
    assert grades[a] == grades[b] == "certain"
    assert grades[no_birth] in ("probable", "possible")
    assert twin not in entries or grades[twin] in ("possible", "probable")
    for e in bundle["entry"]:
        assert e["fullUrl"] == f"http://hub.test/fhir/Patient/{e['resource']['id']}" and e["search"]["mode"] == "match"
    # The query itself is not stored.
    assert {r[0] for r in rows(app, "SELECT DISTINCT patient_id FROM mpi_keys")} == {a, b, no_birth, twin, other}

    certain = match(client, query, only_certain=True).json
    assert {e["resource"]["id"] for e in certain["entry"]} == {a, b}
    capped = match(client, query, count=1).json
    assert len(capped["entry"]) == 1 and capped["entry"][0]["search"]["score"] == max(scores)


def test_match_is_confined_to_what_the_token_may_read(app, client):
    abdul = synthea_patient()
    a = create(client, record(abdul, "HOSP-A", "A-1"))
    c = create(client, record(synthea_patient(ANTONIO), "HOSP-A", "A-2"))
    as_c = authorized(app, "patient/Patient.rs", patient=c)
    r = match(as_c, record(abdul, "HOSP-D", "D-1"))
    assert r.status_code == 200 and r.json.get("entry", []) == []
    as_a = authorized(app, "patient/Patient.rs", patient=a)
    assert [e["resource"]["id"] for e in match(as_a, record(abdul, "HOSP-D", "D-1")).json["entry"]] == [a]


@pytest.mark.parametrize("body", [
    {"resourceType": "Patient", "name": [{"family": "Koepp"}]},  # a bare Patient, not Parameters
    {"resourceType": "Parameters"},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Observation"}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "resource",
                                                  "resource": {"resourceType": "Patient", "gender": "robot"}}]},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}},
                                                 {"name": "count", "valueInteger": 0}]},
    {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}},
                                                 {"name": "onlyCertainMatches", "valueString": "yes"}]},
    [1, 2],
])
def test_match_refuses_bad_bodies(client, body):
    r = post_json(client, "/fhir/Patient/$match", body)
    assert r.status_code == 400
    assert r.json["resourceType"] == "OperationOutcome"


def test_match_is_in_the_capability_statement(client):
    patient = next(r for r in client.get("/fhir/metadata").json["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"} in patient["operation"]


# -- merge ----------------------------------------------------------------------------------

def test_merge_retires_a_record_and_keeps_both_histories(app, client):
    abdul = synthea_patient()
    surviving = create(client, record(abdul, "HOSP-A", "A-1"))
    retired = create(client, record(synthea_patient(ANTONIO), "HOSP-A", "A-9"))  # a registration error
    obs = [create(client, o) for o in observations(ANTONIO, retired, 2)]
    db = app.extensions["healthhub.db"]
    with db.transaction() as session:
        written = linkage.merge(session, surviving, retired, now=utcnow())
    assert sorted(written) == sorted([f"Patient/{surviving}", f"Patient/{retired}"])
    old, new = read(client, "Patient", retired), read(client, "Patient", surviving)
    assert old["active"] is False
    assert mpi_links_of(old) == {surviving: ("replaced-by", "merge 1")}
    assert mpi_links_of(new) == {retired: ("replaces", "merge 1")}
    assert rows(app, "SELECT kind, replaced FROM mpi_links") == [("merge", retired)]
    assert client.get(f"/fhir/Patient/{surviving}/_history").json["total"] == 2
    assert client.get(f"/fhir/Patient/{retired}/_history").json["total"] == 2
    everything = client.get(f"/fhir/Patient/{surviving}/$everything").json
    assert set(obs) | {retired} <= {e["resource"]["id"] for e in everything["entry"]}
    with db.transaction() as session, pytest.raises(linkage.MpiError):
        linkage.merge(session, surviving, surviving, now=utcnow())


# -- the reviewer's command line --------------------------------------------------------------

@pytest.fixture
def mpi_cli(cli) -> Any:
    """``healthhub mpi …`` (the group itself until healthhub/cli.py registers it)."""
    from healthhub.cli import main
    from healthhub.mpi.cli import mpi

    if "mpi" in main.commands:
        return lambda *args: cli("mpi", *args)
    runner = CliRunner()
    return lambda *args: runner.invoke(mpi, list(args), catch_exceptions=False)


def test_cli_reviews_link_reject_unlink(client, app, mpi_cli):
    abdul, antonio = synthea_patient(ABDUL), synthea_patient(ANTONIO)
    a = create(client, record(abdul, "HOSP-A", "A-1"))
    c = create(client, record(abdul, "HOSP-C", "C-1", birthDate=None))  # a review
    x = create(client, record(antonio, "HOSP-A", "A-2"))
    y = create(client, record(antonio, "HOSP-C", "C-2", birthDate=None))  # another review

    out = mpi_cli("reviews")
    assert out.exit_code == 0
    lines = out.output.strip().splitlines()
    assert len(lines) == 2
    abdul_line = next(line for line in lines if a in line)
    assert c in abdul_line and abdul["name"][0]["family"] in abdul_line and abdul["birthDate"] in abdul_line
    # a page of the queue, the best first, and how many more wait
    out = mpi_cli("reviews", "--limit", "1")
    assert out.exit_code == 0
    first, more = out.output.strip().splitlines()
    assert first == lines[0] and more.startswith("… 1 more pending")

    out = mpi_cli("link", a, c)
    assert out.exit_code == 0, out.output
    assert mpi_links_of(read(client, "Patient", a))[c][0] == "seealso"
    assert mpi_links_of(read(client, "Patient", c))[a][1].startswith("manual ")
    out = mpi_cli("reject", x, y)
    assert out.exit_code == 0, out.output
    assert mpi_cli("reviews").output.strip() == "no pending reviews"
    assert dict(((r[0], r[1]), r[2]) for r in rows(app, "SELECT a, b, status FROM mpi_reviews")) == {
        (min(a, c), max(a, c)): "linked", (min(x, y), max(x, y)): "rejected"}

    # A rejected pair is never proposed again, whatever its records' hospitals send.
    r = put_json(client, f"/fhir/Patient/{y}", {**read(client, "Patient", y), "gender": antonio["gender"],
                                                 "maritalStatus": {"text": "M"}})
    assert r.status_code == 200
    assert rows(app, "SELECT status FROM mpi_reviews WHERE status = 'pending'") == []

    for args in (("link", a, "no-such-patient"), ("unlink", a, x), ("reject", a, a), ("link", a, a)):
        out = mpi_cli(*args)
        assert out.exit_code != 0 and len(out.output.strip().splitlines()) == 1, (args, out.output)


def test_cli_unlink_is_a_lasting_decision(client, app, mpi_cli):
    abdul = synthea_patient()
    number = nid("310170012345")
    a = create(client, record(abdul, "HOSP-A", "A-1", number))
    b = create(client, record(abdul, "HOSP-B", "B-1", number))
    assert mpi_links_of(read(client, "Patient", a)) == {b: ("seealso", "national-id 1")}
    out = mpi_cli("unlink", b, a)
    assert out.exit_code == 0, out.output
    pa, pb = read(client, "Patient", a), read(client, "Patient", b)
    assert mpi_links_of(pa) == {} and mpi_links_of(pb) == {} and pa["meta"]["versionId"] == "3"
    assert rows(app, "SELECT * FROM mpi_links") == [] and persons(app) == {}
    assert rows(app, "SELECT status FROM mpi_reviews") == [("rejected",)]
    # The hospital sends its record again: the same national id no longer links them.
    r = put_json(client, f"/fhir/Patient/{a}", {**pa, "maritalStatus": {"text": "S"}})
    assert r.status_code == 200 and mpi_links_of(read(client, "Patient", a)) == {}
    assert rows(app, "SELECT * FROM mpi_links") == []
    assert mpi_cli("unlink", a, b).exit_code != 0


# -- units of work, persons, plans ------------------------------------------------------------

def test_two_records_of_one_person_in_one_transaction_are_linked(client, app):
    abdul = synthea_patient()
    number = nid("310170012345")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{n}", "resource": record(abdul, h, f"{h}-1", number),
         "request": {"method": "POST", "url": "Patient"}}
        for n, h in (("0b5a3f0e-0000-4000-8000-000000000001", "HOSP-A"),
                     ("0b5a3f0e-0000-4000-8000-000000000002", "HOSP-B"))]}
    r = post_json(client, "/fhir", bundle)
    assert r.status_code == 200, r.json
    a, b = (e["response"]["location"].split("/")[1] for e in r.json["entry"])
    assert mpi_links_of(read(client, "Patient", a)) == {b: ("seealso", "national-id 1")}
    # A deleted record leaves the index: nothing matches it any more.
    assert client.delete(f"/fhir/Patient/{b}").status_code == 200
    assert {k for (k,) in rows(app, "SELECT DISTINCT patient_id FROM mpi_keys")} == {a}
    assert [e["resource"]["id"] for e in match(client, record(abdul, "HOSP-C", "C-1")).json["entry"]] == [a]


def test_the_answer_to_a_write_names_the_version_the_mpi_left(client):
    """The MPI writes the link as a new version in the request's transaction; the answer (ETag,
    Location, body) names that version, so the client's next If-Match update succeeds."""
    person = synthea_patient()
    number = nid("310170012345")
    a = create(client, record(person, "HOSP-A", "A-1", number))
    r = post_json(client, "/fhir/Patient", record(person, "HOSP-B", "B-1", number))
    assert r.status_code == 201
    b = r.json["id"]
    assert r.headers["ETag"] == 'W/"2"' and r.headers["Location"].endswith(f"/Patient/{b}/_history/2")
    assert r.json["meta"]["versionId"] == "2" and mpi_links_of(r.json) == {a: ("seealso", "national-id 1")}
    assert r.json == read(client, "Patient", b)
    sent = {**r.json, "gender": "other"}
    r = client.put(f"/fhir/Patient/{b}", data=orjson.dumps(sent),
                   headers={"Content-Type": "application/fhir+json", "If-Match": 'W/"2"'})
    assert r.status_code == 200, r.json
    # In a transaction: the entry's location, etag and resource are the relinked version's.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b5a3f0e-0000-4000-8000-000000000003", "resource": record(person, "HOSP-C", "C-1", number),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Basic", "code": {"text": "unrelated"}},
         "request": {"method": "POST", "url": "Basic"}}]}
    r = client.post("/fhir", data=orjson.dumps(bundle), headers={"Content-Type": "application/fhir+json",
                                                                "Prefer": "return=representation"})
    assert r.status_code == 200, r.json
    patient, basic = r.json["entry"]
    c = patient["resource"]["id"]
    stored = read(client, "Patient", c)
    assert patient["response"]["location"] == f"Patient/{c}/_history/{stored['meta']['versionId']}"
    assert patient["response"]["etag"] == f'W/"{stored["meta"]["versionId"]}"' and patient["resource"] == stored
    # one direct link, to either record of the person (the person is their closure)
    assert stored["meta"]["versionId"] == "2" and len(mpi_links_of(stored)) == 1
    assert set(mpi_links_of(stored)) <= {a, b}
    assert basic["response"]["location"].endswith("/_history/1")


def test_cli_ingest_links_the_records_it_loads(app, tmp_path):
    from healthhub.context import RequestContext
    from healthhub.ingest.fhir_files import Summary, ingest_file

    abdul = synthea_patient()
    number = nid("310170012345")
    path = tmp_path / "two-hospitals.json"
    path.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": record(abdul, "HOSP-A", "A-1", number)}, {"resource": record(abdul, "HOSP-B", "B-1", number)}]}))
    summary = Summary()
    ingest_file(app.extensions["healthhub.db"], path, RequestContext(actor="cli-ingest"), summary)
    assert summary.errors == [] and summary.outcomes["created"] == 2
    assert len(set(persons(app).values())) == 1 and len(persons(app)) == 2


def test_persons_join_and_split_with_their_links(client, app):
    from healthhub.mpi.person import records_of

    p = [create(client, {"resourceType": "Patient", "name": [{"family": f"Person{i}", "given": [g]}]})
         for i, g in enumerate(("Ada", "Bo", "Cy", "Di"))]
    db = app.extensions["healthhub.db"]

    def person_groups() -> set[frozenset[str]]:
        by_person: dict[str, set[str]] = {}
        for pid, person in persons(app).items():
            by_person.setdefault(person, set()).add(pid)
        return {frozenset(s) for s in by_person.values()}

    with db.transaction() as session:
        linkage.link(session, p[0], p[1], now=utcnow())
        linkage.link(session, p[2], p[3], now=utcnow())
    assert person_groups() == {frozenset(p[:2]), frozenset(p[2:])}
    with db.transaction() as session:
        linkage.link(session, p[1], p[2], now=utcnow())  # two persons become one
        assert records_of(session, p[3]) == sorted(p)
    assert person_groups() == {frozenset(p)}
    with db.transaction() as session:
        linkage.unlink(session, p[1], p[2], now=utcnow())  # and split again
        assert records_of(session, p[0]) == sorted(p[:2])
    assert person_groups() == {frozenset(p[:2]), frozenset(p[2:])}
    with db.transaction() as session:
        linkage.unlink(session, p[0], p[1], now=utcnow())
        assert records_of(session, p[0]) == [p[0]]  # a record never linked is its own person
    assert person_groups() == {frozenset(p[2:])}
    assert mpi_links_of(read(client, "Patient", p[1])) == {}
    assert mpi_links_of(read(client, "Patient", p[2])) == {p[3]: ("seealso", "manual 1")}


def test_linked_everything_reads_indexes_only(app):
    from healthhub.search.compartment import everything

    engine = app.extensions["healthhub.db"].engine
    if engine.dialect.name != "sqlite":
        pytest.skip("plans without statistics are a SQLite matter")
    sql = str(everything("p1", linked=True).compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    reads = [line for line in plan if line.startswith(("SEARCH", "SCAN")) and ("search_" in line or "mpi_" in line)]
    assert reads and all(line.startswith("SEARCH") for line in reads), plan
    assert any("mpi_persons USING INDEX ix_mpi_persons_person" in line for line in reads), plan
