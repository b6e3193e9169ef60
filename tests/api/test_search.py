"""FHIR search through HTTP, checked against results computed in plain Python from the raw
Synthea bundles loaded here (two patients, ~430 resources)."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from healthhub import create_app
from tests.conftest import DATA, _clean, authorized, load_json, post_json

FILES = ["Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json",
         "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"]


class Corpus:
    """The raw bundles and the ids the server gave their entries."""

    def __init__(self, client: Any) -> None:
        self.resources: list[dict[str, Any]] = []  # raw resources, references rewritten to server ids
        self.server_id: dict[str, str] = {}
        for name in FILES:
            raw = load_json(DATA / "synthea" / name)
            resp = post_json(client, "/fhir", raw)
            assert resp.status_code == 200
            for e, out in zip(raw["entry"], resp.json["entry"], strict=True):
                self.server_id[e["fullUrl"]] = out["response"]["location"].split("/")[1]
            for e in raw["entry"]:
                res = dict(e["resource"], id=self.server_id[e["fullUrl"]])
                self.resources.append(res)

    def of(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == rtype]

    def ref(self, reference: str) -> str:
        """Server id of a bundle reference (``urn:uuid:…``)."""
        return self.server_id[reference]


@pytest.fixture(scope="module")
def env(base_config):
    app = create_app(replace(base_config))
    client = authorized(app)
    corpus = Corpus(client)
    yield client, corpus
    _clean(app)
    app.extensions["healthhub.db"].dispose()


def search(client, url: str, expect: int = 200) -> dict[str, Any]:
    resp = client.get(url)
    assert resp.status_code == expect, (url, resp.json)
    return resp.json


def all_ids(client, url: str) -> set[str]:
    """Every match, following next links."""
    found: set[str] = set()
    body = search(client, url)
    while True:
        found |= {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"}
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            return found
        parts = urlsplit(nxt[0])
        body = search(client, f"{parts.path}?{parts.query}")


def patients(corpus):
    return {p["name"][0]["family"]: p for p in corpus.of("Patient")}


def test_token_code_and_system(env):
    client, corpus = env
    expected = {o["id"] for o in corpus.of("Observation") if o["code"]["coding"][0]["code"] == "8302-2"}
    assert expected
    assert all_ids(client, "/fhir/Observation?code=8302-2&_count=7") == expected
    assert all_ids(client, "/fhir/Observation?code=http://loinc.org|8302-2") == expected
    assert all_ids(client, "/fhir/Observation?code=http://snomed.info/sct|8302-2") == set()
    both = {o["id"] for o in corpus.of("Observation") if o["code"]["coding"][0]["code"] in ("8302-2", "29463-7")}
    assert all_ids(client, "/fhir/Observation?code=8302-2,29463-7") == both
    assert search(client, "/fhir/Observation?code=8302-2&_count=0")["total"] == len(expected)


def test_token_not_text_and_of_type(env):
    client, corpus = env
    obs = corpus.of("Observation")
    not_height = {o["id"] for o in obs if o["code"]["coding"][0]["code"] != "8302-2"}
    assert all_ids(client, "/fhir/Observation?code:not=8302-2") == not_height
    heights = {o["id"] for o in obs if o["code"]["coding"][0]["display"].lower().startswith("body height")}
    assert all_ids(client, "/fhir/Observation?code:text=body%20HEIGHT") == heights
    ssn = {p["id"]: i["value"] for p in corpus.of("Patient") for i in p["identifier"]
           if i.get("type", {}).get("coding", [{}])[0].get("code") == "SS"}
    pid, value = next(iter(ssn.items()))
    url = f"/fhir/Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|{value}"
    assert all_ids(client, url) == {pid}


def test_string_name_and_address(env):
    client, corpus = env
    by_family = patients(corpus)
    for family, patient in by_family.items():
        assert all_ids(client, f"/fhir/Patient?family={family.lower()[:3]}") == {patient["id"]}
        assert all_ids(client, f"/fhir/Patient?name={family.upper()}") == {patient["id"]}
        assert all_ids(client, f"/fhir/Patient?family:exact={family}") == {patient["id"]}
        assert all_ids(client, f"/fhir/Patient?family:exact={family.lower()}") == set()
        city = patient["address"][0]["city"]
        assert patient["id"] in all_ids(client, f"/fhir/Patient?address-city={city}")
        assert patient["id"] in all_ids(client, f"/fhir/Patient?address:contains={city[1:4]}")


def test_reference_patient_subject_and_type_modifier(env):
    client, corpus = env
    for patient in corpus.of("Patient"):
        expected = {o["id"] for o in corpus.of("Observation") if corpus.ref(o["subject"]["reference"]) == patient["id"]}
        assert all_ids(client, f"/fhir/Observation?patient={patient['id']}") == expected
        assert all_ids(client, f"/fhir/Observation?subject=Patient/{patient['id']}") == expected
        assert all_ids(client, f"/fhir/Observation?subject:Patient={patient['id']}") == expected
        assert all_ids(client, f"/fhir/Observation?patient=http://hub.test/fhir/Patient/{patient['id']}") == expected


def test_dates_with_prefixes_and_periods(env):
    client, corpus = env

    def eff(o):
        return datetime.fromisoformat(o["effectiveDateTime"])

    obs = corpus.of("Observation")
    y2015 = {o["id"] for o in obs if eff(o).astimezone(UTC).year == 2015}
    assert all_ids(client, "/fhir/Observation?date=2015") == y2015
    ge = {o["id"] for o in obs if eff(o) >= datetime(2015, 1, 1, tzinfo=UTC)}
    assert all_ids(client, "/fhir/Observation?date=ge2015-01-01") == ge
    lt = {o["id"] for o in obs if eff(o) < datetime(2015, 1, 1, tzinfo=UTC)}
    assert all_ids(client, "/fhir/Observation?date=lt2015-01-01") == lt
    assert ge | lt == {o["id"] for o in obs}
    window = {o["id"] for o in obs if datetime(2012, 1, 1, tzinfo=UTC) <= eff(o)
              < datetime(2016, 1, 1, tzinfo=UTC)}
    assert all_ids(client, "/fhir/Observation?date=ge2012-01-01&date=lt2016-01-01") == window
    # Encounter.period: an encounter "is on" a day when its period lies within it (eq) …
    enc = corpus.of("Encounter")
    first = enc[0]
    day = first["period"]["start"][:10]
    on_day = {e["id"] for e in enc if e["period"]["start"][:10] == day and e["period"]["end"][:10] == day}
    assert all_ids(client, f"/fhir/Encounter?date={day}") == on_day
    # … and sa/eb compare whole periods.
    after = {e["id"] for e in enc if datetime.fromisoformat(e["period"]["start"]) > datetime.fromisoformat(f"{day}T23:59:59.999999+00:00")}
    assert all_ids(client, f"/fhir/Encounter?date=sa{day}") == after


def test_quantity_and_units(env):
    client, corpus = env
    heights = [o for o in corpus.of("Observation") if o["code"]["coding"][0]["code"] == "8302-2"]
    tall = {o["id"] for o in heights if o["valueQuantity"]["value"] > 170}
    assert all_ids(client, "/fhir/Observation?code=8302-2&value-quantity=gt170") == tall
    assert all_ids(client, "/fhir/Observation?code=8302-2&value-quantity=gt170|http://unitsofmeasure.org|cm") == tall
    # 1.7 m is 170 cm: the comparison is done on UCUM-canonical values.
    assert all_ids(client, "/fhir/Observation?code=8302-2&value-quantity=gt1.7|http://unitsofmeasure.org|m") == tall


def test_composite_code_value_quantity(env):
    client, corpus = env
    expected = {o["id"] for o in corpus.of("Observation") for c in o.get("component", [])
                if c["code"]["coding"][0]["code"] == "8480-6" and c["valueQuantity"]["value"] > 120}
    url = "/fhir/Observation?component-code-value-quantity=http://loinc.org|8480-6$gt120"
    assert all_ids(client, url) == expected


def test_missing_modifier(env):
    client, corpus = env
    obs = corpus.of("Observation")
    without_value = {o["id"] for o in obs if not any(k.startswith("value") for k in o)}
    assert all_ids(client, "/fhir/Observation?value-quantity:missing=true") == \
        {o["id"] for o in obs if "valueQuantity" not in o}
    assert without_value <= all_ids(client, "/fhir/Observation?value-quantity:missing=true")
    assert all_ids(client, "/fhir/Observation?value-quantity:missing=false") == \
        {o["id"] for o in obs if "valueQuantity" in o}


def test_chain_and_reverse_chain(env):
    client, corpus = env
    for family, patient in patients(corpus).items():
        expected = {o["id"] for o in corpus.of("Observation") if corpus.ref(o["subject"]["reference"]) == patient["id"]}
        assert all_ids(client, f"/fhir/Observation?subject:Patient.family={family}") == expected
        assert all_ids(client, f"/fhir/Observation?patient.name={family}") == expected
    # Patients with at least one Observation valued above 180 (any unit) …
    high = {corpus.ref(o["subject"]["reference"]) for o in corpus.of("Observation")
            if o.get("valueQuantity", {}).get("value", 0) > 180}
    assert all_ids(client, "/fhir/Patient?_has:Observation:patient:value-quantity=gt180") == high
    # … and with a Body Height above 180 cm (two _has clauses on the same Observation type are
    # independent, as the spec defines; the code goes into one composite-free AND here).
    tall = {corpus.ref(o["subject"]["reference"]) for o in corpus.of("Observation")
            if o["code"]["coding"][0]["code"] == "8302-2" and o["valueQuantity"]["value"] > 180}
    assert tall <= all_ids(client, "/fhir/Patient?_has:Observation:patient:code=8302-2"
                                   "&_has:Observation:patient:value-quantity=gt180")
    # Two levels: Observations whose encounter's service provider is named like the organization.
    org = corpus.of("Organization")[0]
    encounters = {e["id"] for e in corpus.of("Encounter")
                  if corpus.ref(e["serviceProvider"]["reference"]) == org["id"]}
    expected = {o["id"] for o in corpus.of("Observation")
                if "encounter" in o and corpus.ref(o["encounter"]["reference"]) in encounters}
    assert all_ids(client, f"/fhir/Observation?encounter.service-provider.name={org['name'][:6]}") == expected


def test_include_and_revinclude(env):
    client, corpus = env
    body = search(client, "/fhir/Observation?code=8302-2&_include=Observation:patient")
    matches = [e for e in body["entry"] if e["search"]["mode"] == "match"]
    included = {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "include"}
    assert included == {corpus.ref(next(o for o in corpus.of("Observation") if o["id"] == m["resource"]["id"])
                                   ["subject"]["reference"]) for m in matches}
    patient = corpus.of("Patient")[0]
    body = search(client, f"/fhir/Patient?_id={patient['id']}&_revinclude=Encounter:patient")
    revs = {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "include"}
    assert revs == {e["id"] for e in corpus.of("Encounter") if corpus.ref(e["subject"]["reference"]) == patient["id"]}
    # :iterate follows includes of included resources: Encounter → Patient, then Patient → Organization.
    body = search(client, "/fhir/Encounter?_count=1&_include=Encounter:patient"
                          "&_include:iterate=Patient:general-practitioner")
    assert {e["resource"]["resourceType"] for e in body["entry"]} >= {"Encounter", "Patient"}


def test_sort_and_paging(env):
    client, corpus = env
    heights = sorted((o for o in corpus.of("Observation") if o["code"]["coding"][0]["code"] == "8302-2"),
                     key=lambda o: (-o["valueQuantity"]["value"], o["id"]))
    seen: list[str] = []
    body = search(client, "/fhir/Observation?code=8302-2&_sort=-value-quantity&_count=3")
    while True:
        seen += [e["resource"]["id"] for e in body["entry"]]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        body = search(client, f"{parts.path}?{parts.query}")
    assert seen == [o["id"] for o in heights]
    dated = sorted(corpus.of("Encounter"), key=lambda e: (datetime.fromisoformat(e["period"]["start"]), e["id"]))
    body = search(client, "/fhir/Encounter?_sort=date,_id&_count=100")
    assert [e["resource"]["id"] for e in body["entry"]] == [e["id"] for e in dated]


def test_summary_elements_and_total(env):
    client, corpus = env
    body = search(client, "/fhir/Patient?_summary=count")
    assert body["total"] == 2 and "entry" not in body
    body = search(client, "/fhir/Patient?_elements=birthDate")
    for e in body["entry"]:
        assert set(e["resource"]) == {"resourceType", "id", "meta", "birthDate"}
        assert any(t["code"] == "SUBSETTED" for t in e["resource"]["meta"]["tag"])
    body = search(client, "/fhir/Patient?_summary=true")
    for e in body["entry"]:
        assert "text" not in e["resource"] and "name" in e["resource"]
    assert "total" not in search(client, "/fhir/Patient?_total=none")


def test_tag_and_last_updated(env):
    client, corpus = env
    tagged = {r["id"] for r in corpus.of("Patient")
              if any(t.get("code") == "synthea-5-2019" for t in r.get("meta", {}).get("tag", []))}
    assert all_ids(client, "/fhir/Patient?_tag=https://smarthealthit.org/tags|synthea-5-2019") == tagged
    assert all_ids(client, "/fhir/Patient?_lastUpdated=gt2000-01-01") == {p["id"] for p in corpus.of("Patient")}
    assert all_ids(client, "/fhir/Patient?_lastUpdated=lt2000-01-01") == set()


def test_unknown_parameters_lenient_and_strict(env):
    client, _ = env
    body = search(client, "/fhir/Patient?shoe-size=42")
    assert body["total"] == 2
    assert any(e["search"]["mode"] == "outcome" for e in body["entry"])
    resp = client.get("/fhir/Patient?shoe-size=42", headers={"Prefer": "handling=strict"})
    assert resp.status_code == 400 and resp.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("query", [
    "date=2021-13-45", "date=ab2020", "value-quantity=gtx", "code=" + ",".join(["a"] * 10001),
    "_sort=nonsense", "_count=-1", "subject.name=x", "code:in=http://x", "_cursor=%%%",
    "patient='; DROP TABLE resources;--", "code=' OR 1=1 --", "_sort=date;DROP TABLE x",
])
def test_bad_search_input_is_a_400_or_a_correct_empty_result(env, query):
    client, corpus = env
    resp = client.get(f"/fhir/Observation?{query}")
    assert resp.status_code in (200, 400), (query, resp.status_code)
    assert resp.json["resourceType"] in ("OperationOutcome", "Bundle")
    if resp.status_code == 200:
        assert resp.json.get("total", 0) == 0
    # The data are intact.
    assert search(client, "/fhir/Observation?_count=0")["total"] == len(corpus.of("Observation"))


def test_post_search_and_paging_stable_across_writes(env):
    client, corpus = env
    resp = client.post("/fhir/Patient/_search", data={"gender": "male"},
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200
    males = {p["id"] for p in corpus.of("Patient") if p["gender"] == "male"}
    assert {e["resource"]["id"] for e in resp.json["entry"]} == males
    first = search(client, "/fhir/Observation?code=8302-2&_count=4")
    nxt = urlsplit(next(link["url"] for link in first["link"] if link["relation"] == "next"))
    # A new matching resource created between pages sorts after nothing already seen, and no
    # row of the next page is skipped or repeated.
    before = all_ids(client, "/fhir/Observation?code=8302-2")
    second = search(client, f"{nxt.path}?{nxt.query}")
    got = [e["resource"]["id"] for e in first["entry"]] + [e["resource"]["id"] for e in second["entry"]]
    assert len(got) == len(set(got))
    assert set(got) <= before


def test_compartment_search(env):
    client, corpus = env
    for patient in corpus.of("Patient"):
        mine = {o["id"] for o in corpus.of("Observation") if corpus.ref(o["subject"]["reference"]) == patient["id"]}
        assert all_ids(client, f"/fhir/Patient/{patient['id']}/Observation") == mine
        heights = {o["id"] for o in corpus.of("Observation")
                   if o["id"] in mine and o["code"]["coding"][0]["code"] == "8302-2"}
        assert all_ids(client, f"/fhir/Patient/{patient['id']}/Observation?code=8302-2") == heights
    assert client.get(f"/fhir/Patient/{corpus.of('Patient')[0]['id']}/Organization").status_code == 400
    assert client.get("/fhir/Patient/nobody/Observation").status_code == 404


def _everything_expected(corpus, patient_id):
    """Computed from the raw bundle: the patient, what points at it, and non-patient targets."""
    compartment_params = {"subject", "patient", "beneficiary"}  # the fields Synthea uses

    def refs(resource):
        out = []
        stack = [resource]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("reference"), str):
                    out.append(node["reference"])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return out

    members = {("Patient", patient_id)}
    for r in corpus.resources:
        if r["resourceType"] == "Patient":
            continue
        direct = [v for k, v in r.items() if k in compartment_params and isinstance(v, dict)]
        if any(corpus.ref(d["reference"]) == patient_id for d in direct if "reference" in d):
            members.add((r["resourceType"], r["id"]))
    by_id = {r["id"]: r for r in corpus.resources}
    referenced = set()
    for rtype, rid in list(members):
        if rtype == "Patient":
            continue
        for ref in refs(by_id[rid]):
            target = by_id.get(corpus.server_id.get(ref, ""))
            if target and target["resourceType"] in ("Practitioner", "Organization", "Location", "Medication"):
                referenced.add((target["resourceType"], target["id"]))
    return members | referenced


def test_patient_everything(env):
    client, corpus = env
    patient = corpus.of("Patient")[0]
    expected = _everything_expected(corpus, patient["id"])
    got: list[tuple[str, str]] = []
    body = search(client, f"/fhir/Patient/{patient['id']}/$everything?_count=50")
    assert body["total"] == len(expected)
    while True:
        got += [(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        body = search(client, f"{parts.path}?{parts.query}")
    assert len(got) == len(set(got))
    assert set(got) == expected
    only = search(client, f"/fhir/Patient/{patient['id']}/$everything?_type=Encounter,Condition&_count=1000")
    assert {e["resource"]["resourceType"] for e in only["entry"]} <= {"Encounter", "Condition"}
    assert only["total"] == len({x for x in expected if x[0] in ("Encounter", "Condition")})
    assert search(client, f"/fhir/Patient/{patient['id']}/$everything?_since=2999-01-01T00:00:00Z")["total"] == 0
    assert client.get(f"/fhir/Patient/{patient['id']}/$everything?_type=Nope").status_code == 400
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404


def test_condition_subject_is_the_core_parameter_not_the_specifications_example(client):
    """The R4B package's example SearchParameter ``example-reference`` (Condition ``subject``
    targeting Organization only) once replaced the real one: Condition?subject=Patient/x was a 400."""
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json["id"]
    cid = client.post("/fhir/Condition", json={"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}}
                      ).json["id"]
    found = client.get(f"/fhir/Condition?subject=Patient/{pid}").json
    assert [e["resource"]["id"] for e in found["entry"]] == [cid]
    assert client.get("/fhir/Patient?part-agree=x", headers={"Prefer": "handling=strict"}).status_code == 400


def test_long_values_are_stored_and_found(client):
    """Index rows keep the first 200 characters of a string and 250 of a code (PostgreSQL's
    btree refuses longer entries: a long string once made the whole write fail); searches
    clip their values the same way."""
    long_text = "Lorem ipsum " * 5000
    long_code = "C" * 1000
    body = {"resourceType": "Observation", "status": "final", "valueString": long_text,
            "code": {"coding": [{"system": "urn:long", "code": long_code}], "text": long_text},
            "identifier": [{"system": "urn:long", "value": long_code}]}
    resp = client.post("/fhir/Observation", json=body)
    assert resp.status_code == 201, resp.json
    oid = resp.json["id"]
    assert client.get(f"/fhir/Observation/{oid}").json["valueString"] == long_text
    for query in (f"value-string={long_text[:50]}", f"value-string={long_text[:1000]}",
                  f"code=urn:long|{long_code}", f"identifier=urn:long|{long_code}", f"code:text={long_text[:300]}"):
        found = client.get(f"/fhir/Observation?{query}").json
        assert [e["resource"]["id"] for e in found["entry"]] == [oid], query
    assert client.post("/fhir/Observation", json=body, headers={"If-None-Exist": f"identifier=urn:long|{long_code}"}
                       ).status_code == 200  # the conditional create finds it
