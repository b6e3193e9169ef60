"""``GET /stats/{type}`` (CONTRACT §7): counts grouped in SQL by every dimension, the cohort chosen by
ordinary search parameters, small cells suppressed so that they cannot be recomputed, and only
``stats.read`` tokens let in.

The data set is generated here (fixed seed) and every expected count is computed from the
generated JSON in plain Python — ages with the birthday rule, ISO weeks with ``date.isocalendar``.
"""
from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from tests.conftest import authorized, issue_token, post_json

ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
PLACES = {"Bangkok": ["Bang Rak", "Chatuchak", "Pathum Wan"], "Chiang Mai": ["San Sai", "Hang Dong"],
          "Khon Kaen": ["Ban Phai"]}
CODES = {"A90": "38362002", "J10": "6142004", "U07.1": None}  # ICD-10 → SNOMED CT (None: ICD-10 only)
BANDS = [("0-4", 5), ("5-14", 15), ("15-24", 25), ("25-44", 45), ("45-64", 65), ("65+", 999)]


def make_data(seed: int = 7, patients: int = 70, conditions: int = 260) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    people = []
    for i in range(patients):
        p: dict[str, Any] = {"resourceType": "Patient", "id": f"st-p{i:03d}",
                             "gender": rng.choice(["female", "male", "male", "other"]),
                             "birthDate": (date(1935, 1, 1) + timedelta(days=rng.randrange(90 * 365))).isoformat(),
                             "name": [{"family": f"Family{i}", "given": ["Given"]}]}
        if i % 9:  # every ninth patient has no address at all: province and district unknown
            province = rng.choice(list(PLACES))
            address: dict[str, Any] = {"state": province}
            if i % 7:  # and some have a province but no district
                address["district"] = rng.choice(PLACES[province])
            p["address"] = [address]
        people.append(p)
    conds = []
    for i in range(conditions):
        icd = rng.choice(list(CODES))
        coding = [{"system": ICD10, "code": icd}]
        if CODES[icd]:
            coding.append({"system": SNOMED, "code": CODES[icd]})
        c: dict[str, Any] = {"resourceType": "Condition", "id": f"st-c{i:03d}", "code": {"coding": coding},
                             "subject": {"reference": f"Patient/{rng.choice(people)['id']}"}}
        day = (date(2026, 1, 1) + timedelta(days=rng.randrange(180))).isoformat()
        if i % 11 == 0:
            c["recordedDate"] = day  # no onset: the clinical date falls back to recordedDate
        else:
            c["onsetDateTime"] = day
        conds.append(c)
    return people, conds


def load(client: Any, resources: list[dict[str, Any]]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in resources]}
    resp = post_json(client, "/fhir", bundle)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]


def age(birth: str, at: str) -> int:
    b, a = date.fromisoformat(birth), date.fromisoformat(at[:10])
    return a.year - b.year - ((a.month, a.day) < (b.month, b.day))


def band(years: int) -> str:
    return next(label for label, upper in BANDS if years < upper)


def expected_key(dim: str, cond: dict[str, Any], people: dict[str, dict[str, Any]]) -> Any:
    patient = people[cond["subject"]["reference"].split("/")[1]]
    when = cond.get("onsetDateTime") or cond["recordedDate"]
    address = (patient.get("address") or [{}])[0]
    if dim == "gender":
        return patient["gender"]
    if dim == "province":
        return address.get("state")
    if dim == "district":
        return address.get("district")
    if dim == "age-group":
        return band(age(patient["birthDate"], when))
    if dim == "period:day":
        return when[:10]
    if dim == "period:week":
        year, week, _ = date.fromisoformat(when[:10]).isocalendar()
        return f"{year}-W{week:02d}"
    if dim == "period:month":
        return when[:7]
    raise AssertionError(dim)


def groups(body: dict[str, Any]) -> dict[tuple[Any, ...], int | None]:
    return {tuple(g["key"][d] for d in body["groupBy"]): g["count"] for g in body["groups"]}


@pytest.fixture
def dataset(make_app: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    app = make_app(min_cell=1)  # nothing suppressed: every count can be compared
    people, conds = make_data()
    load(authorized(app), people + conds)
    return app, people, conds


#: One data set serves many queries (a load per query made the file slow on PostgreSQL).
DIMENSION_SETS = [["gender"], ["province"], ["district"], ["age-group"], ["period:day"], ["period:week"],
                  ["period:month"], ["gender", "age-group"], ["province", "district"], ["period:week", "district"],
                  ["age-group", "gender", "province"]]


def test_counts_per_dimension_match_the_data(dataset: Any) -> None:
    app, people, conds = dataset
    by_id = {p["id"]: p for p in people}
    stats = authorized(app, "stats.read")
    for dims in DIMENSION_SETS:
        want = Counter(tuple(expected_key(d, c, by_id) for d in dims) for c in conds)
        resp = stats.get(f"/stats/Condition?_group-by={','.join(dims)}")
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = resp.get_json()
        assert body["type"] == "Condition" and body["groupBy"] == dims and body["suppressed"] == 0, dims
        assert groups(body) == dict(want), dims
        assert body["total"] == len(conds), dims


def test_code_groups_each_coding_or_one_system(dataset: Any) -> None:
    app, _, conds = dataset
    stats = authorized(app, "stats.read")
    want_all = Counter(f"{c['system']}|{c['code']}" for cond in conds for c in cond["code"]["coding"])
    body = stats.get("/stats/Condition?_group-by=code").get_json()
    assert groups(body) == {(k,): n for k, n in want_all.items()}
    assert body["total"] == len(conds)  # a resource coded twice is one resource in the total
    want_icd = Counter(f"{ICD10}|{cond['code']['coding'][0]['code']}" for cond in conds)
    body = stats.get(f"/stats/Condition?_group-by=code&_code-system={ICD10}").get_json()
    assert groups(body) == {(k,): n for k, n in want_icd.items()}


def test_the_cohort_is_an_ordinary_search(dataset: Any) -> None:
    app, people, conds = dataset
    by_id = {p["id"]: p for p in people}
    stats = authorized(app, "stats.read")
    # a code, a date range, and a chained parameter on the patient: the search compiler's grammar
    chosen = [c for c in conds if c["code"]["coding"][0]["code"] == "A90"
              and "2026-02-01" <= (c.get("onsetDateTime") or "") < "2026-04-01"
              and by_id[c["subject"]["reference"][8:]]["gender"] == "female"]
    resp = stats.get(f"/stats/Condition?code={ICD10}|A90&onset-date=ge2026-02-01&onset-date=lt2026-04-01"
                     "&subject:Patient.gender=female&_group-by=period:month")
    body = resp.get_json()
    assert groups(body) == {(m,): n for m, n in Counter(c["onsetDateTime"][:7] for c in chosen).items()}
    assert body["total"] == len(chosen)


def test_patients_are_grouped_by_their_age_today(dataset: Any) -> None:
    app, people, _ = dataset
    today = date.today().isoformat()
    want = Counter(band(age(p["birthDate"], today)) for p in people)
    body = authorized(app, "stats.read").get("/stats/Patient?_group-by=age-group").get_json()
    assert groups(body) == {(k,): n for k, n in want.items()}


def test_csv_has_one_row_per_group(dataset: Any) -> None:
    app, people, conds = dataset
    by_id = {p["id"]: p for p in people}
    resp = authorized(app, "stats.read").get("/stats/Condition?_group-by=gender,province",
                                              headers={"Accept": "text/csv"})
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["gender", "province", "count"]
    got = {(r[0], r[1] or None): int(r[2]) for r in rows[1:]}
    assert got == dict(Counter((by_id[c["subject"]["reference"][8:]]["gender"],
                                (by_id[c["subject"]["reference"][8:]].get("address") or [{}])[0].get("state"))
                               for c in conds))


# -- suppression -----------------------------------------------------------------------------

def lines(cells: dict[tuple[Any, ...], Any], dim: int) -> dict[tuple[Any, ...], list[tuple[Any, ...]]]:
    out: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for key in cells:
        out.setdefault(key[:dim] + key[dim + 1:], []).append(key)
    return out


def test_no_suppressed_cell_can_be_recomputed(make_app: Any) -> None:
    """The attack: every line total is published by the query with that dimension left out (or
    is the total); a line with exactly one suppressed cell would give it away by subtraction."""
    app = make_app(min_cell=11)
    people, conds = make_data()
    load(authorized(app), people + conds)
    by_id = {p["id"]: p for p in people}
    for dims in (["period:week"], ["age-group", "gender"], ["period:month", "province"], ["gender", "district"],
                 ["gender", "age-group", "province"]):
        attack(authorized(app, "stats.read"), dims, Counter(tuple(expected_key(d, c, by_id) for d in dims)
                                                           for c in conds))


def attack(stats: Any, dims: list[str], true: Counter[tuple[Any, ...]]) -> None:
    body = stats.get(f"/stats/Condition?_group-by={','.join(dims)}").get_json()
    published = groups(body)
    assert set(published) == set(true)
    assert body["suppressed"] == sum(1 for n in published.values() if n is None) > 0
    for key, n in published.items():
        assert n is None or n == true[key]
        if true[key] < 11:
            assert n is None, f"{key}: {true[key]} published"
    for dim in range(len(dims)):
        fewer = [d for i, d in enumerate(dims) if i != dim]
        margins = (groups(stats.get(f"/stats/Condition?_group-by={','.join(fewer)}").get_json()) if fewer
                   else {(): body["total"]})
        for rest, keys in lines(published, dim).items():
            hidden = [k for k in keys if published[k] is None]
            margin = margins.get(rest)
            if len(hidden) == 1 and margin is not None:
                recovered = margin - sum(published[k] for k in keys if published[k] is not None)
                pytest.fail(f"{hidden[0]} = {recovered} recovered from the margin {rest} = {margin}")


def test_a_total_below_the_threshold_is_suppressed(make_app: Any) -> None:
    app = make_app(min_cell=11)
    people, conds = make_data(patients=5, conditions=6)
    load(authorized(app), people + conds)
    body = authorized(app, "stats.read").get("/stats/Condition?_group-by=gender").get_json()
    assert body["total"] is None and all(g["count"] is None for g in body["groups"])


# -- persons and senders -----------------------------------------------------------------------

def nid(body: str) -> str:
    return body + str((11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10)


def test_count_by_patient_counts_a_linked_person_once(make_app: Any) -> None:
    from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM

    app = make_app(min_cell=1)
    client = authorized(app)
    person = {"resourceType": "Patient", "gender": "female", "birthDate": "1990-02-03",
              "name": [{"family": "Linked", "given": ["Ann"]}]}
    records = []
    for hospital in ("a", "b"):  # the same person at two hospitals: the national id links them
        body = {**person, "id": f"st-link-{hospital}",
                "identifier": [{"system": f"urn:test:{hospital}:mrn", "value": "1"},
                               {"system": NATIONAL_ID_SYSTEM, "value": nid("110170000001")}]}
        records.append(body)
    other = {"resourceType": "Patient", "id": "st-other", "gender": "male", "birthDate": "1970-01-01"}
    conds = [{"resourceType": "Condition", "id": f"st-lc{i}", "subject": {"reference": f"Patient/{pid}"},
              "code": {"coding": [{"system": ICD10, "code": "A90"}]}, "onsetDateTime": "2026-03-0" + str(i + 1)}
             for i, pid in enumerate(["st-link-a", "st-link-b", "st-link-b", "st-other"])]
    load(client, [*records, other])
    load(client, conds)
    assert client.get("/fhir/Patient/st-link-a").get_json().get("link"), "the MPI did not link the records"
    stats = authorized(app, "stats.read")
    by_resource = stats.get("/stats/Condition?_group-by=gender").get_json()
    by_person = stats.get("/stats/Condition?_group-by=gender&_count-by=patient").get_json()
    assert groups(by_resource) == {("female",): 3, ("male",): 1} and by_resource["total"] == 4
    assert groups(by_person) == {("female",): 1, ("male",): 1} and by_person["total"] == 2


def test_organization_is_the_sender(make_app: Any) -> None:
    """A hospital's FHIR client bound to its Organization stamps ``meta.source``; what it sent
    counts under that Organization, what nobody sent under null."""
    app = make_app(min_cell=1)
    people, conds = make_data(patients=10, conditions=30)
    load(authorized(app), people)
    for i, org in enumerate(("Organization/h1", "Organization/h2")):
        hospital = app.test_client()
        hospital.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + issue_token(
            app, "system/*.cruds", client_id=f"hospital-{i}", organization=org)
        load(hospital, conds[i * 10:(i + 1) * 10])
    load(authorized(app), conds[20:])
    body = authorized(app, "stats.read").get("/stats/Condition?_group-by=organization").get_json()
    assert groups(body) == {("Organization/h1",): 10, ("Organization/h2",): 10, (None,): 10}


# -- access and bad input ----------------------------------------------------------------------

def test_stats_need_a_token_with_stats_read(dataset: Any) -> None:
    app, _, _ = dataset
    assert app.test_client().get("/stats/Condition?_group-by=gender").status_code == 401
    resp = authorized(app, "system/*.rs").get("/stats/Condition?_group-by=gender")
    assert resp.status_code == 403 and resp.get_json()["resourceType"] == "OperationOutcome"
    assert authorized(app, "stats.read").get("/stats/Condition?_group-by=gender").status_code == 200


MATCH = {"resourceType": "Parameters", "parameter": [
    {"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "Family1"}], "gender": "male"}}]}


def test_a_stats_token_reads_no_resource(dataset: Any) -> None:
    stats = authorized(dataset[0], "stats.read")
    for path in ("/fhir/Patient", "/fhir/Patient/st-p001", "/fhir/Condition?code=A90",
                 "/fhir/Patient/st-p001/$everything", "/fhir/Patient/st-p001/_history", "/fhir/AuditEvent",
                 "/fhir/Patient/$match", "/ingest/archive"):
        resp = stats.get(path) if not path.endswith("$match") else post_json(stats, path, MATCH)
        assert resp.status_code in (403, 404, 405), (path, resp.status_code)
        assert b"st-p001" not in resp.data or resp.status_code != 200


def test_the_answer_holds_no_identifying_data(dataset: Any) -> None:
    app, people, _ = dataset
    stats = authorized(app, "stats.read")
    text = "".join(stats.get(f"/stats/{t}?_group-by={d}").get_data(as_text=True)
                   for t in ("Condition", "Patient") for d in ("gender,age-group", "province,district", "period:day"))
    for p in people:
        assert p["id"] not in text and p["name"][0]["family"] not in text and p["birthDate"] not in text


BAD_QUERIES = [
    ("_group-by=nope", 400), ("", 400), ("_group-by=period", 400), ("_group-by=period:year", 400),
    ("_group-by=gender:week", 400), ("_group-by=gender,gender", 400), ("_group-by=gender,province,district,code", 400),
    ("_group-by=gender&_count-by=everyone", 400), ("_group-by=gender&onset-date=notadate", 400),
    ("_group-by=gender&code=' OR 1=1 --", 200), ("_group-by=gender&_sort=';DROP TABLE resources", 400),
    ("_group-by=code%27%3B--", 400), ("_group-by=gender&_code-system=' OR ''='", 200),
    ("_group-by=gender&subject:Patient.name=%00%27", 400),
]


def test_bad_queries_get_an_operation_outcome(dataset: Any) -> None:
    stats = authorized(dataset[0], "stats.read")
    for query, status in BAD_QUERIES:
        resp = stats.get(f"/stats/Condition?{query}")
        assert resp.status_code == status, (query, resp.get_data(as_text=True))
        if status != 200:
            assert resp.get_json()["resourceType"] == "OperationOutcome", query
    assert stats.get("/stats/Condition?_group-by=gender").get_json()["total"] == len(dataset[2])  # all still there


def test_unknown_parameters_follow_the_handling_preference(dataset: Any) -> None:
    stats = authorized(dataset[0], "stats.read")
    assert stats.get("/stats/Condition?_group-by=gender&bogus=1").status_code == 200
    assert stats.get("/stats/Condition?_group-by=gender&bogus=1",
                     headers={"Prefer": "handling=strict"}).status_code == 400


def test_dimensions_a_type_lacks_are_refused(dataset: Any) -> None:
    stats = authorized(dataset[0], "stats.read")
    for path, status in (("/stats/Nope?_group-by=gender", 404), ("/stats/Organization?_group-by=gender", 400),
                         ("/stats/Organization?_group-by=period:week", 400)):
        resp = stats.get(path)
        assert resp.status_code == status and resp.get_json()["resourceType"] == "OperationOutcome", path


def test_every_query_is_audited(dataset: Any) -> None:
    app, _, _ = dataset
    authorized(app, "stats.read", client_id="officer-app").get("/stats/Condition?_group-by=gender")
    authorized(app, "system/*.rs", client_id="no-stats").get("/stats/Condition?_group-by=gender")
    audit = authorized(app, "user/AuditEvent.rs").get("/fhir/AuditEvent?_count=50").get_json()
    described = [orjson.dumps(e["resource"]).decode() for e in audit.get("entry", [])]
    assert any("officer-app" in d and "/stats/Condition" in d for d in described)
    assert any("no-stats" in d and "/stats/Condition" in d and "HTTP 403" in d for d in described)


def test_address_district_is_a_search_parameter(dataset: Any) -> None:
    """HealthHub's own SearchParameter (fhir/search-parameters-healthhub.json), searchable and
    listed like the official ones."""
    app, people, _ = dataset
    client = authorized(app)
    want = sorted(p["id"] for p in people if (p.get("address") or [{}])[0].get("district") == "Chatuchak")
    found = client.get("/fhir/Patient?address-district=chatu&_count=100&_elements=id").get_json()
    assert sorted(e["resource"]["id"] for e in found.get("entry", [])) == want and want
    rest = client.get("/fhir/metadata").get_json()["rest"][0]["resource"]
    params = {p["name"]: p for r in rest if r["type"] == "Patient" for p in r["searchParam"]}
    assert params["address-district"]["type"] == "string"


def test_updates_and_deletes_move_the_counts(make_app: Any) -> None:
    """The per-resource facts (patient, clinical date) follow every version: an update moves a
    case to its new week and patient, a delete removes it."""
    app = make_app(min_cell=1)
    client = authorized(app)
    people = [{"resourceType": "Patient", "id": f"st-u{i}", "gender": g, "birthDate": "1980-01-01"}
              for i, g in enumerate(["female", "male"])]
    conds = [{"resourceType": "Condition", "id": f"st-uc{i}", "subject": {"reference": "Patient/st-u0"},
              "code": {"coding": [{"system": ICD10, "code": "A90"}]}, "onsetDateTime": "2026-03-02"} for i in range(3)]
    load(client, people + conds)
    stats = authorized(app, "stats.read")
    assert groups(stats.get("/stats/Condition?_group-by=gender,period:week").get_json()) == {("female", "2026-W10"): 3}
    moved = {**conds[0], "subject": {"reference": "Patient/st-u1"}, "onsetDateTime": "2026-03-10"}
    assert client.put("/fhir/Condition/st-uc0", json=moved, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    assert client.delete("/fhir/Condition/st-uc1").status_code in (200, 204)
    body = stats.get("/stats/Condition?_group-by=gender,period:week").get_json()
    assert groups(body) == {("female", "2026-W10"): 1, ("male", "2026-W11"): 1} and body["total"] == 2


def test_a_code_counts_a_resource_once(make_app: Any) -> None:
    """A coding repeated with another display, and a text unlike the codings' displays, are index
    rows of their own; the resource still counts once under its code, and never under null."""
    app = make_app(min_cell=1)
    load(authorized(app), [
        {"resourceType": "Patient", "id": "st-k0", "gender": "female", "birthDate": "1990-01-01"},
        {"resourceType": "Condition", "id": "st-k1", "subject": {"reference": "Patient/st-k0"},
         "onsetDateTime": "2026-02-02", "code": {"text": "break-bone fever", "coding": [
             {"system": ICD10, "code": "A90", "display": "Dengue fever"},
             {"system": ICD10, "code": "A90", "display": "Dengue fever [classical dengue]"}]}},
    ])
    body = authorized(app, "stats.read").get("/stats/Condition?_group-by=code,gender").get_json()
    assert groups(body) == {(f"{ICD10}|A90", "female"): 1} and body["total"] == 1
    # The second display is still searchable as text (it became a text-only index row).
    for text in ("dengue fever %5Bclassical", "break-bone", "dengue fever"):
        found = authorized(app).get(f"/fhir/Condition?code:text={text}").get_json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == ["st-k1"], text


def test_ages_count_birthdays_and_follow_the_patient(make_app: Any) -> None:
    """An age is whole years at the event's day — the birthday has to have come — and an event
    before the birth has no age band; the patient's attributes are read from the Patient as it is
    now, so updating the Patient moves its cases, also in a filtered cohort grouped by code."""
    app = make_app(min_cell=1)
    client = authorized(app)
    patient = {"resourceType": "Patient", "id": "st-b0", "gender": "female", "birthDate": "2000-03-10",
               "address": [{"state": "Khon Kaen", "district": "Ban Phai"}]}
    days = {"st-b1": "2005-03-09", "st-b2": "2005-03-10", "st-b3": "1999-12-31", "st-b4": "2065-03-10"}
    conds = [{"resourceType": "Condition", "id": rid, "subject": {"reference": "Patient/st-b0"},
              "code": {"coding": [{"system": ICD10, "code": "A90"}, {"system": SNOMED, "code": "38362002"}]},
              "onsetDateTime": day} for rid, day in days.items()]
    load(client, [patient, *conds])
    stats = authorized(app, "stats.read")
    body = stats.get("/stats/Condition?_group-by=age-group").get_json()
    assert groups(body) == {("0-4",): 1, ("5-14",): 1, (None,): 1, ("65+",): 1}
    patient.update(gender="male", birthDate="1960-01-01", address=[{"state": "Bangkok", "district": "Bang Rak"}])
    assert client.put("/fhir/Patient/st-b0", json=patient,
                      headers={"Content-Type": "application/fhir+json"}).status_code == 200
    body = stats.get("/stats/Condition?_group-by=age-group,gender,district").get_json()
    assert groups(body) == {("45-64", "male", "Bang Rak"): 2, ("25-44", "male", "Bang Rak"): 1,
                            ("65+", "male", "Bang Rak"): 1}
    body = stats.get(f"/stats/Condition?code={ICD10}|A90&onset-date=ge2005-01-01&_group-by=code,province").get_json()
    assert groups(body) == {(f"{ICD10}|A90", "Bangkok"): 3, (f"{SNOMED}|38362002", "Bangkok"): 3}
    assert body["total"] == 3
