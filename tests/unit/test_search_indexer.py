"""healthhub.search.indexer: index rows computed by hand from the JSON, the fast path against
fhirpathpy on every test resource, odd data, and a printed micro-benchmark."""
from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from healthhub import jsonio
from healthhub.search import indexer as ix
from healthhub.search.indexer import (
    CompositeRow,
    DateRow,
    Indexer,
    NumberRow,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
)
from healthhub.search.registry import default_registry
from healthhub.search.values import MAX_INSTANT, MIN_INSTANT

DATA = Path(__file__).resolve().parents[1] / "data"
UCUM = "http://unitsofmeasure.org"
ABDUL = "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
ABDUL_ID = "018f428e-34f6-4707-8009-5ad742f901e7"


@cache
def fast() -> Indexer:
    return Indexer(default_registry())


@cache
def slow() -> Indexer:
    return Indexer(default_registry(), force_fhirpathpy=True)


@cache
def bundle(name: str) -> dict[str, Any]:
    return jsonio.loads((DATA / "synthea" / name).read_bytes())


def entry(name: str, pred) -> dict[str, Any]:
    return copy.deepcopy(next(e["resource"] for e in bundle(name)["entry"] if pred(e["resource"])))


def example(name: str) -> dict[str, Any]:
    return jsonio.loads((DATA / "fhir-examples" / name).read_bytes())


def rows_of(resource: dict[str, Any]) -> dict[str, set[Any]]:
    """The rows a search on each parameter reads: the extracted ones, plus those of parameters
    stored as other parameters' rows (registry.Storage), relabelled with their own code."""
    out: dict[str, set[Any]] = defaultdict(set)
    for row in fast().extract(resource):
        out[row.param].add(row)
    rtype = resource["resourceType"]
    registry = default_registry()
    for code in registry.params_for(rtype):
        storage = registry.storage(rtype, code)
        if storage.own(code):
            continue
        for base in storage.params:
            for row in out.get(base, ()):
                if storage.target_type is None or row.target_type == storage.target_type:
                    out[code].add(dataclasses.replace(row, param=code))
    return {k: v for k, v in out.items() if v}


def day(y: int, m: int, d: int) -> tuple[datetime, datetime]:
    return datetime(y, m, d, tzinfo=UTC), datetime(y, m, d, 23, 59, 59, 999999, tzinfo=UTC)


def second(y: int, mo: int, d: int, h: int, mi: int, s: int) -> tuple[datetime, datetime]:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC), datetime(y, mo, d, h, mi, s, 999999, tzinfo=UTC)


def all_test_resources() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DATA / "synthea").glob("*.json")) + sorted((DATA / "fhir-examples").glob("*.json")):
        doc = jsonio.loads(path.read_bytes())
        out.append((path.name, doc))
        if doc.get("resourceType") == "Bundle":
            out.extend((f"{path.name}#{i}", e["resource"]) for i, e in enumerate(doc.get("entry", []))
                       if isinstance(e.get("resource"), dict))
    return out


# ---------------------------------------------------------------------------------------------
# hand-picked resources


def test_synthea_patient():
    patient = entry(ABDUL, lambda r: r["resourceType"] == "Patient")
    rows = rows_of(patient)

    names = {StringRow("name", "koepp", "Koepp"), StringRow("name", "abdul", "Abdul"), StringRow("name", "mr.", "Mr.")}
    assert rows["name"] == names
    assert rows["family"] == {StringRow("family", "koepp", "Koepp")}
    assert rows["given"] == {StringRow("given", "abdul", "Abdul")}
    assert rows["address"] == {
        StringRow("address", "313 lockman row suite 4", "313 Lockman Row Suite 4"),
        StringRow("address", "peabody", "Peabody"), StringRow("address", "massachusetts", "Massachusetts"),
        StringRow("address", "01940", "01940"), StringRow("address", "us", "US")}
    assert rows["address-city"] == {StringRow("address-city", "peabody", "Peabody")}
    assert rows["address-postalcode"] == {StringRow("address-postalcode", "01940", "01940")}
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    mrn = "e925b0f3-8006-43f6-aa31-94bd215e55e7"
    assert rows["identifier"] == {
        TokenRow("identifier", "https://github.com/synthetichealth/synthea", mrn, None),
        TokenRow("identifier", "http://hospital.smarthealthit.org", mrn, "medical record number", v2, "MR"),
        TokenRow("identifier", "http://hl7.org/fhir/sid/us-ssn", "999-22-1962", "social security number", v2, "SS"),
        TokenRow("identifier", "urn:oid:2.16.840.1.113883.4.3.25", "S99942380", "driver's license", v2, "DL"),
        TokenRow("identifier", "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber",
                 "X45815551X", "passport number", v2, "PPN")}
    assert rows["birthdate"] == {DateRow("birthdate", *day(1956, 8, 3))}
    assert rows["gender"] == {TokenRow("gender", "", "male", None)}
    assert rows["phone"] == {TokenRow("phone", "", "555-978-4581", None)}
    assert rows["telecom"] == rows_as("telecom", rows["phone"])
    # CodeableConcept.text equals the coding's display: no text-only row of its own
    assert rows["language"] == {TokenRow("language", "urn:ietf:bcp:47", "en-US", "english")}
    assert rows["deceased"] == {TokenRow("deceased", "", "false", None)}  # via fhirpathpy: exists() and …
    assert rows["_tag"] == {TokenRow("_tag", "https://smarthealthit.org/tags", "synthea-5-2019", None)}
    # R4B core extension parameter: the Extension stands for its value (as HAPI FHIR indexes it).
    assert rows["mothersMaidenName"] == {StringRow("mothersMaidenName", "aiko jacobs", "Aiko Jacobs")}
    assert set(rows) == {"name", "family", "given", "phonetic", "address", "address-city", "address-state",
                         "address-postalcode", "address-country", "identifier", "birthdate", "gender", "phone",
                         "telecom", "language", "deceased", "_tag", "mothersMaidenName"}
    assert "_id" not in rows and "_lastUpdated" not in rows


def rows_as(param: str, rows: set[Any]) -> set[Any]:
    return {type(r)(param, *[getattr(r, f) for f in r.__slots__[1:]]) for r in rows}


def test_synthea_observation_with_value_quantity():
    obs = entry(ABDUL, lambda r: r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "39156-5")
    obs["subject"] = {"reference": f"Patient/{ABDUL_ID}"}  # as stored once the transaction resolved urn:uuid
    rows = rows_of(obs)
    value = obs["valueQuantity"]["value"]
    assert isinstance(value, Decimal)

    assert rows["code"] == {TokenRow("code", "http://loinc.org", "39156-5", "body mass index")}
    assert rows["value-quantity"] == {QuantityRow("value-quantity", value, UCUM, "kg/m2", "kg/m2",
                                                  value.scaleb(3), "g.m-2")}
    low = datetime.fromisoformat(obs["effectiveDateTime"])
    high = low.replace(microsecond=999999)
    assert rows["date"] == {DateRow("date", low, high)}
    assert rows["subject"] == {ReferenceRow("subject", "Patient", ABDUL_ID, None)}
    assert rows["patient"] == {ReferenceRow("patient", "Patient", ABDUL_ID, None)}
    enc = obs["encounter"]["reference"]
    assert rows["encounter"] == {ReferenceRow("encounter", None, None, enc)}
    assert rows["category"] == {TokenRow("category", "http://terminology.hl7.org/CodeSystem/observation-category",
                                         "vital-signs", "vital-signs")}
    assert rows["status"] == {TokenRow("status", "", "final", None)}
    assert rows["code-value-quantity"] == {
        CompositeRow("code-value-quantity", (code, QuantityRow("value-quantity", value, UCUM, "kg/m2", "kg/m2",
                                                                   value.scaleb(3), "g.m-2")))
        for code in rows["code"]}


def test_patient_param_keeps_only_patient_references():
    obs = entry(ABDUL, lambda r: r["resourceType"] == "Observation")
    rows = rows_of(obs)  # as in the bundle: subject is urn:uuid:, its type is unknown
    assert rows["subject"] == {ReferenceRow("subject", None, None, obs["subject"]["reference"])}
    assert "patient" not in rows
    obs["subject"] = {"reference": "Group/g1"}
    rows = rows_of(obs)
    assert rows["subject"] == {ReferenceRow("subject", "Group", "g1", None)}
    assert "patient" not in rows
    obs["subject"] = {"reference": "urn:uuid:x", "type": "Patient"}
    assert rows_of(obs)["patient"] == {ReferenceRow("patient", "Patient", None, "urn:uuid:x")}


def test_synthea_blood_pressure_composites():
    bp = entry(ABDUL, lambda r: r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "55284-4")
    rows = rows_of(bp)
    loinc = "http://loinc.org"
    dia_v, sys_v = (c["valueQuantity"]["value"] for c in bp["component"])
    assert dia_v == Decimal("75.4364412796852") and sys_v == Decimal("129.73979437732424")

    def q(param: str, v: Decimal) -> QuantityRow:
        return QuantityRow(param, v, UCUM, "mm[Hg]", "mm[Hg]", v, "mm[Hg]")

    def codes(param: str, code: str, text: str) -> list[TokenRow]:
        return [TokenRow(param, loinc, code, text)]  # the text equals the display: no text-only row

    expected = set()
    for name in ("component", "combo"):  # combo-… is stored as the component-… (and code-…) rows
        for code, text, v in (("8462-4", "diastolic blood pressure", dia_v), ("8480-6", "systolic blood pressure", sys_v)):
            for token in codes("component-code", code, text):
                expected.add(CompositeRow(f"{name}-code-value-quantity", (token, q("component-value-quantity", v))))
    got = rows["component-code-value-quantity"] | rows["combo-code-value-quantity"]
    assert got == expected
    assert len(got) == 4
    assert rows["component-value-quantity"] == {q("component-value-quantity", dia_v), q("component-value-quantity", sys_v)}
    assert "value-quantity" not in rows and "code-value-quantity" not in rows  # no Observation.value
    assert rows["combo-code"] == {*codes("combo-code", "55284-4", "blood pressure"),
                                  *codes("combo-code", "8462-4", "diastolic blood pressure"),
                                  *codes("combo-code", "8480-6", "systolic blood pressure")}


def test_codeable_concept_text_row_only_when_no_display_says_it():
    cc = {"coding": [{"system": "http://loinc.org", "code": "1-8", "display": "Acyclovir"}], "text": "ACYCLOVIR "}
    obs = {"resourceType": "Observation", "code": cc}
    assert rows_of(obs)["code"] == {TokenRow("code", "http://loinc.org", "1-8", "acyclovir")}
    obs["code"] = {**cc, "text": "Zovirax level"}
    assert rows_of(obs)["code"] == {TokenRow("code", "http://loinc.org", "1-8", "acyclovir"),
                                    TokenRow("code", "", None, "zovirax level")}


def test_derived_parameters_have_no_rows_of_their_own():
    """combo-code (code | component-code) and patient (subject pointing at a Patient) are read
    from their bases' rows (registry.Storage): the indexer writes none for them."""
    registry = default_registry()
    assert registry.storage("Observation", "combo-code").params == ("code", "component-code")
    assert registry.storage("Observation", "combo-value-quantity").params == ("component-value-quantity",
                                                                             "value-quantity")
    assert registry.storage("Observation", "combo-code-value-quantity").params == (
        "code-value-quantity", "component-code-value-quantity")
    patient = registry.storage("Observation", "patient")
    assert (patient.params, patient.target_type) == (("subject",), "Patient")
    assert registry.storage("Immunization", "patient").own("patient")  # Immunization.patient: its own element
    assert registry.storage("Observation", "code").own("code")
    bp = entry(ABDUL, lambda r: r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "55284-4")
    bp["subject"] = {"reference": "Patient/p1"}
    params = {row.param for row in fast().extract(bp)}
    assert {"code", "component-code", "subject", "component-code-value-quantity"} <= params
    assert not params & {"combo-code", "combo-value-quantity", "combo-code-value-quantity", "patient"}


def test_synthea_encounter_period():
    enc = entry(ABDUL, lambda r: r["resourceType"] == "Encounter")
    assert enc["period"] == {"start": "1991-06-07T23:37:54+00:00", "end": "1991-06-07T23:52:54+00:00"}
    rows = rows_of(enc)
    assert rows["date"] == {DateRow("date", second(1991, 6, 7, 23, 37, 54)[0], second(1991, 6, 7, 23, 52, 54)[1])}
    assert rows["class"] == {TokenRow("class", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", None)}
    assert rows["type"] == {TokenRow("type", "http://snomed.info/sct", "185349003", "encounter for check up (procedure)")}
    assert rows["status"] == {TokenRow("status", "", "finished", None)}
    assert rows["participant"] == {ReferenceRow("participant", None, None, enc["participant"][0]["individual"]["reference"])}
    assert "practitioner" not in rows  # resolve() is Practitioner: the urn:uuid: target's type is unknown


def test_open_ended_period():
    rows = rows_of({"resourceType": "Encounter", "period": {"start": "2020-01"}})
    assert rows["date"] == {DateRow("date", datetime(2020, 1, 1, tzinfo=UTC), MAX_INSTANT)}
    rows = rows_of({"resourceType": "Encounter", "period": {"end": "2020-01-31T10:00:00+01:00"}})
    assert rows["date"] == {DateRow("date", MIN_INSTANT, datetime(2020, 1, 31, 9, 0, 0, 999999, tzinfo=UTC))}
    assert "date" not in rows_of({"resourceType": "Encounter", "period": {"start": "soon"}})


def test_synthea_condition_onset():
    cond = entry(ABDUL, lambda r: r["resourceType"] == "Condition")
    rows = rows_of(cond)
    assert cond["onsetDateTime"] == "1991-06-07T23:37:54+00:00"
    assert rows["onset-date"] == {DateRow("onset-date", *second(1991, 6, 7, 23, 37, 54))}
    assert rows["recorded-date"] == {DateRow("recorded-date", *second(1991, 6, 7, 23, 37, 54))}
    assert rows["clinical-status"] == {TokenRow("clinical-status",
                                                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", None)}
    assert rows["code"] == {TokenRow("code", "http://snomed.info/sct", "162864005", "body mass index 30+ - obesity (finding)")}
    age = {"resourceType": "Condition", "onsetAge": {"value": 30, "system": UCUM, "code": "wk"},
           "abatementString": "In remission"}
    rows = rows_of(age)
    assert rows["onset-age"] == {QuantityRow("onset-age", Decimal(30), UCUM, "wk", None, Decimal("18144000"), "s")}
    assert rows["abatement-string"] == {StringRow("abatement-string", "in remission", "In remission")}
    assert "onset-date" not in rows


def test_fhir_example_observation_patient_and_based_on():
    rows = rows_of(example("Observation-blood-pressure.json"))
    assert rows["patient"] == {ReferenceRow("patient", "Patient", "example", None)}
    assert rows["based-on"] == {ReferenceRow("based-on", None, None, None, "https://acme.org/identifiers", "1234")}
    assert rows["_profile"] == {UriRow("_profile", "http://hl7.org/fhir/StructureDefinition/vitalsigns")}


# ---------------------------------------------------------------------------------------------
# shapes the test data lacks (these also go through the fast-vs-fhirpathpy comparison)

D = Decimal
SYNTHETIC: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1", "deceasedDateTime": "2015-02-14T13:42:00+10:00",
     "birthDate": "1970", "_birthDate": {"extension": [{"url": "http://x", "valueString": "y"}]},
     "name": [{"family": "Zoë", "given": ["Ann", "Bé"], "_given": [None, {"id": "g2"}], "prefix": ["Dr."],
               "suffix": ["III"], "text": "Dr. Ann Bé Zoë III"}],
     "telecom": [{"system": "email", "value": "a@b.c"}, {"system": "phone", "value": "555", "use": "home"},
                 {"system": "phone", "_system": {"extension": [{"url": "u", "valueString": "v"}]}, "value": "556"}],
     "address": [{"line": ["1 Main St", "Apt 2"], "city": "Springfield", "district": "Greene", "state": "MO",
                  "postalCode": "65801", "country": "US", "use": "home"}],
     "identifier": [{"system": "urn:sys", "value": "123",
                     "type": {"coding": [{"code": "MR"}, {"system": "s2", "code": "X"}], "text": "Medical Record"}},
                    {"value": "nosys"}, {"system": "onlysys"}],
     "generalPractitioner": [{"reference": "http://other.org/fhir/Practitioner/abc/_history/2"},
                             {"reference": "#contained-org"}, {"reference": "urn:uuid:1234"},
                             {"identifier": {"system": "npi", "value": "999"}, "type": "Practitioner"}],
     "managingOrganization": {"reference": "Organization/o1/_history/3", "display": "Org"},
     "link": [{"other": {"reference": "RelatedPerson/rp1"}, "type": "seealso"}],
     "contained": [{"resourceType": "Organization", "id": "contained-org", "name": "Inner"}],
     "active": False, "gender": "female",
     "meta": {"profile": ["http://example.org/p|1.0"], "tag": [{"system": "t", "code": "c", "display": "Tag Ç"}],
              "security": [{"code": "R"}], "source": "http://src#1", "lastUpdated": "2020-01-01T00:00:00Z"}},
    {"resourceType": "Patient", "id": "p2", "deceasedBoolean": True},
    {"resourceType": "Observation", "id": "o1", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "Some text"},
     "valueString": "Positive Résult", "effectivePeriod": {"start": "2020-01-01"},
     "subject": {"reference": "Group/g1"}, "performer": [{"reference": "https://h/fhir/Practitioner/pr1"}],
     "hasMember": [{"reference": "Observation/o2/_history/1"}], "derivedFrom": [{"reference": "#c"}],
     "focus": [{"reference": "urn:uuid:abc"}],
     "specimen": {"identifier": {"system": "spec", "value": "s1"}, "type": "Specimen"},
     "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "c1"}]},
                    "valueCodeableConcept": {"coding": [{"system": "sct", "code": "pos", "display": "Positive"}]}},
                   {"code": {"coding": [{"system": "http://loinc.org", "code": "c2"}]},
                    "valueQuantity": {"value": D("5.50"), "system": UCUM, "code": "mmol/L", "unit": "mmol/L"}},
                   {"code": {"text": "c3 only text"}, "valueQuantity": {"value": 3, "unit": "widgets"}},
                   {"code": {"coding": [{"code": "c4"}]},
                    "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 1}},
                   {"code": {"coding": [{"code": "c5"}]}, "dataAbsentReason": {"coding": [{"code": "unknown"}]}}]},
    {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"coding": [{"system": "l", "code": "x"}]},
     "valueCodeableConcept": {"coding": [{"system": "sct", "code": "a"}, {"system": "sct", "code": "b"}], "text": "A or B"},
     "effectiveTiming": {"event": ["2020-01-01T10:00:00Z", "not-a-date", "2020-01-02"]},
     "subject": {"reference": "Patient/p1"}},
    {"resourceType": "Observation", "id": "o3", "status": "final", "code": {"coding": [{"code": "x"}]},
     "valuePeriod": {"start": "2020-01", "end": "2020-02-15"}, "effectiveInstant": "2020-03-04T05:06:07.123Z",
     "subject": {"reference": "Patient/p1", "type": "Patient"}},
    {"resourceType": "Observation", "id": "o4", "status": "final", "code": {"coding": [{"code": "x"}]},
     "valueDateTime": "2021-05", "effectiveDateTime": "2021-13-45", "subject": {"identifier": {"value": "mrn"}}},
    {"resourceType": "Condition", "id": "c2", "onsetPeriod": {"end": "2019"},
     "abatementAge": {"value": D("1.5"), "system": UCUM, "code": "wk"}, "subject": {"reference": "Group/g1"}},
    {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"system": "v3", "code": "AMB"},
     "period": {"start": "2020-01-01T10:00:00+02:00", "end": "2020-01-01T11:00:00+02:00"},
     "length": {"value": 60, "system": UCUM, "code": "min", "unit": "minutes"},
     "subject": {"reference": "Patient/p1"},
     "participant": [{"individual": {"reference": "Practitioner/pr1"}, "type": [{"coding": [{"code": "ATND"}]}]}],
     "location": [{"location": {"reference": "Location/l1"}, "period": {"start": "2020"}}]},
    {"resourceType": "ValueSet", "id": "vs1", "url": "http://ex.org/vs", "version": "1", "name": "VS", "title": "Value Sét",
     "status": "active", "date": "2020", "description": "desc",
     "useContext": [{"code": {"system": "uc", "code": "age"}, "valueQuantity": {"value": 18, "code": "a", "system": UCUM}},
                    {"code": {"system": "uc", "code": "focus"}, "valueCodeableConcept": {"coding": [{"system": "sct", "code": "f"}]}},
                    {"code": {"system": "uc", "code": "range"}, "valueRange": {"low": {"value": 1}}}],
     "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "US"}]}],
     "compose": {"include": [{"system": "sct", "concept": [{"code": "a"}, {"code": "b"}]}]},
     "expansion": {"contains": [{"code": "e1", "contains": [{"code": "e2"}]}, {"code": "e3"}]}},
    {"resourceType": "ConceptMap", "id": "cm1", "url": "http://ex.org/cm", "sourceUri": "http://ex.org/src",
     "targetCanonical": "http://ex.org/tgt|3",
     "group": [{"source": "s", "target": "t", "element": [{"code": "a", "target": [{"code": "b"}]}]}]},
    {"resourceType": "MolecularSequence", "id": "ms1", "type": "dna", "coordinateSystem": 0,
     "referenceSeq": {"chromosome": {"coding": [{"system": "chr", "code": "1"}]}, "windowStart": 10, "windowEnd": 20},
     "variant": [{"start": 12, "end": 13}, {"start": 15, "end": 16}]},
    {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
     "characteristic": [{"code": {"coding": [{"code": "gender"}]}, "valueCodeableConcept": {"coding": [{"code": "f"}]},
                         "exclude": False},
                        {"code": {"coding": [{"code": "smoker"}]}, "valueBoolean": True, "exclude": True}],
     "member": [{"entity": {"reference": "Patient/p1"}}]},
    {"resourceType": "ChargeItem", "id": "ci1", "status": "billed", "code": {"coding": [{"code": "x"}]},
     "subject": {"reference": "Patient/p1"}, "priceOverride": {"value": D("12.50"), "currency": "EUR"},
     "factorOverride": D("0.8"), "occurrenceTiming": {"event": ["2020-01-01"]}},
    {"resourceType": "RiskAssessment", "id": "ra1", "status": "final", "subject": {"reference": "Patient/p1"},
     "prediction": [{"probabilityDecimal": D("0.25")}, {"probabilityRange": {"low": {"value": 1}}}]},
    {"resourceType": "Library", "id": "lib1", "url": "http://ex.org/Library/lib1", "status": "active",
     "relatedArtifact": [{"type": "depends-on", "resource": "http://ex.org/Library/dep|1.0"},
                         {"type": "composed-of", "resource": "http://ex.org/Library/part"}]},
    {"resourceType": "Bundle", "id": "b1", "type": "document", "timestamp": "2020-01-01T00:00:00Z",
     "entry": [{"fullUrl": "urn:uuid:c1", "resource": {"resourceType": "Composition", "id": "comp1", "status": "final"}}]},
    {"resourceType": "Invoice", "id": "inv1", "status": "issued", "totalGross": {"value": 100, "currency": "USD"}},
]

ODD: list[Any] = [
    {"resourceType": "Observation", "id": "odd", "status": 5, "code": "not-a-concept", "subject": "Patient/1",
     "valueQuantity": {"value": "12", "code": 7}, "effectivePeriod": {"start": 20200101},
     "identifier": [None, 3, {"value": None}], "category": [{"coding": "x"}, {"coding": [None, {"code": 5}]}],
     "component": [None, {"code": None}, "x"], "performer": [{"reference": 7}, {"reference": ""}, None],
     "meta": {"tag": "x", "profile": [None]}},
    {"resourceType": "Patient", "name": "Bob", "address": [{"line": "1 St"}], "birthDate": "yesterday",
     "telecom": {"system": "phone", "value": "1"}, "deceasedBoolean": "yes", "link": [{"other": "x"}]},
    {"resourceType": "Encounter", "period": "2020", "subject": {"reference": "Patient/" + "x" * 80}},
    {"resourceType": "NotAType", "id": "x"},
    {"resourceType": 7},
    {},
]


def by_param(resource: dict[str, Any]) -> dict[str, set[Any]]:
    return rows_of(resource)


def test_reference_forms():
    rows = by_param(SYNTHETIC[0])
    assert rows["general-practitioner"] == {
        ReferenceRow("general-practitioner", "Practitioner", "abc", "http://other.org/fhir/Practitioner/abc"),
        ReferenceRow("general-practitioner", None, None, "urn:uuid:1234"),
        ReferenceRow("general-practitioner", "Practitioner", None, None, "npi", "999")}  # #contained-org: skipped
    assert rows["organization"] == {ReferenceRow("organization", "Organization", "o1", None)}  # version dropped
    obs = by_param(SYNTHETIC[2])
    assert obs["has-member"] == {ReferenceRow("has-member", "Observation", "o2", None)}
    assert obs["specimen"] == {ReferenceRow("specimen", "Specimen", None, None, "spec", "s1")}
    assert "derived-from" not in obs and "patient" not in obs
    lib = by_param(SYNTHETIC[14])
    assert lib["depends-on"] == {ReferenceRow("depends-on", None, None, "http://ex.org/Library/dep")}  # |version
    assert lib["composed-of"] == {ReferenceRow("composed-of", None, None, "http://ex.org/Library/part")}
    cm = by_param(SYNTHETIC[9])
    assert cm["source-uri"] == {ReferenceRow("source-uri", None, None, "http://ex.org/src")}
    assert cm["target"] == {ReferenceRow("target", None, None, "http://ex.org/tgt")}
    assert by_param(SYNTHETIC[15])["composition"] == {ReferenceRow("composition", "Composition", "comp1", None)}


def test_strings_tokens_and_where():
    rows = by_param(SYNTHETIC[0])
    assert rows["given"] == {StringRow("given", "ann", "Ann"), StringRow("given", "be", "Bé")}
    assert StringRow("name", "dr. ann be zoe iii", "Dr. Ann Bé Zoë III") in rows["name"]
    assert StringRow("address", "greene", "Greene") in rows["address"]
    assert rows["email"] == {TokenRow("email", "", "a@b.c", None)}
    assert rows["phone"] == {TokenRow("phone", "", "555", None)}  # 556's system is not a plain 'phone'
    assert rows["identifier"] == {
        TokenRow("identifier", "urn:sys", "123", "medical record", "", "MR"),
        TokenRow("identifier", "urn:sys", "123", "medical record", "s2", "X"),
        TokenRow("identifier", "", "nosys", None)}
    assert rows["active"] == {TokenRow("active", "", "false", None)}
    assert rows["deceased"] == {TokenRow("deceased", "", "true", None)}
    assert rows["death-date"] == {DateRow("death-date", *second(2015, 2, 14, 3, 42, 0)[:1],
                                          datetime(2015, 2, 14, 3, 42, 0, 999999, tzinfo=UTC))}
    assert rows["_tag"] == {TokenRow("_tag", "t", "c", "tag c")}
    assert rows["_security"] == {TokenRow("_security", "", "R", None)}
    assert rows["_profile"] == {UriRow("_profile", "http://example.org/p|1.0")}
    assert rows["_source"] == {UriRow("_source", "http://src#1")}
    assert rows["birthdate"] == {DateRow("birthdate", datetime(1970, 1, 1, tzinfo=UTC),
                                         datetime(1970, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))}


def test_choice_types_timing_money_number():
    o1 = by_param(SYNTHETIC[2])
    assert o1["value-string"] == {StringRow("value-string", "positive result", "Positive Résult")}
    assert o1["date"] == {DateRow("date", datetime(2020, 1, 1, tzinfo=UTC), MAX_INSTANT)}
    assert o1["component-value-quantity"] == {
        QuantityRow("component-value-quantity", D("5.50"), UCUM, "mmol/L", "mmol/L", D("5.50"), "mol.m-3"),
        QuantityRow("component-value-quantity", D(3), None, None, "widgets", None, None)}  # SampledData: skipped
    assert o1["component-data-absent-reason"] == {TokenRow("component-data-absent-reason", "", "unknown", None)}
    o2 = by_param(SYNTHETIC[3])
    # A Timing is one range, its outer limits (search.html#date); the unreadable event is skipped.
    assert o2["date"] == {DateRow("date", second(2020, 1, 1, 10, 0, 0)[0], day(2020, 1, 2)[1])}
    assert o2["value-concept"] == {TokenRow("value-concept", "sct", "a", None), TokenRow("value-concept", "sct", "b", None),
                                   TokenRow("value-concept", "", None, "a or b")}
    o3 = by_param(SYNTHETIC[4])
    assert o3["value-date"] == {DateRow("value-date", datetime(2020, 1, 1, tzinfo=UTC),
                                        datetime(2020, 2, 15, 23, 59, 59, 999999, tzinfo=UTC))}
    o4 = by_param(SYNTHETIC[5])
    assert o4["value-date"] == {DateRow("value-date", datetime(2021, 5, 1, tzinfo=UTC),
                                        datetime(2021, 5, 31, 23, 59, 59, 999999, tzinfo=UTC))}
    assert "date" not in o4  # 2021-13-45
    assert o4["subject"] == {ReferenceRow("subject", None, None, None, "", "mrn")}
    ci = by_param(SYNTHETIC[12])
    assert ci["price-override"] == {QuantityRow("price-override", D("12.50"), ix.CURRENCY, "EUR", None, None, None)}
    assert ci["factor-override"] == {NumberRow("factor-override", D("0.8"))}
    assert ci["occurrence"] == {DateRow("occurrence", *day(2020, 1, 1))}
    assert by_param(SYNTHETIC[13])["probability"] == {NumberRow("probability", D("0.25"))}
    enc = by_param(SYNTHETIC[7])
    assert enc["length"] == {QuantityRow("length", D(60), UCUM, "min", "minutes", D(3600), "s")}
    assert enc["date"] == {DateRow("date", datetime(2020, 1, 1, 8, tzinfo=UTC), datetime(2020, 1, 1, 9, 0, 0, 999999, tzinfo=UTC))}


def test_other_composites():
    ms = by_param(SYNTHETIC[10])  # components relative to the variant, and one on %resource
    chrom = TokenRow("chromosome", "chr", "1", None)
    assert ms["chromosome-variant-coordinate"] == {
        CompositeRow("chromosome-variant-coordinate", (chrom, NumberRow("variant-start", D(12)), NumberRow("variant-end", D(13)))),
        CompositeRow("chromosome-variant-coordinate", (chrom, NumberRow("variant-start", D(15)), NumberRow("variant-end", D(16))))}
    vs = by_param(SYNTHETIC[8])
    assert vs["context-type-quantity"] == {CompositeRow("context-type-quantity", (
        TokenRow("context-type", "uc", "age", None), QuantityRow("context-quantity", D(18), UCUM, "a", None, None, None)))}
    assert vs["context-type-value"] == {CompositeRow("context-type-value", (
        TokenRow("context-type", "uc", "focus", None), TokenRow("context", "sct", "f", None)))}
    assert vs["code"] == {TokenRow("code", "", c, None) for c in ("e1", "e3", "a", "b")}  # contains.code: one level
    group = by_param(SYNTHETIC[11])
    assert group["characteristic-value"] == {
        CompositeRow("characteristic-value", (TokenRow("characteristic", "", "gender", None), TokenRow("value", "", "f", None))),
        CompositeRow("characteristic-value", (TokenRow("characteristic", "", "smoker", None), TokenRow("value", "", "true", None)))}


@pytest.mark.parametrize("resource", ODD, ids=range(len(ODD)))
def test_odd_data_never_raises(resource):
    for indexer in (fast(), slow()):
        rows = indexer.extract(copy.deepcopy(resource))
        assert isinstance(rows, list)
    assert set(fast().extract(copy.deepcopy(resource))) == set(slow().extract(copy.deepcopy(resource)))


def test_rows_are_deduplicated_and_hashable():
    rows = fast().extract(example("Patient-example.json"))
    assert len(rows) == len(set(rows))
    with pytest.raises(AttributeError):
        rows[0].param = "x"


def test_expressions_are_compiled_once(monkeypatch):
    calls: Counter[str] = Counter()
    real = ix.fhirpathpy.compile

    def counting(expr, *args, **kwargs):
        calls[expr] += 1
        return real(expr, *args, **kwargs)

    monkeypatch.setattr(ix.fhirpathpy, "compile", counting)
    indexer = Indexer(default_registry())
    patients = [example("Patient-example.json"), example("Patient-f001.json"), SYNTHETIC[0], SYNTHETIC[1]]
    for p in patients * 3:
        indexer.extract(p)
    assert calls == Counter({"Patient.deceased.exists() and Patient.deceased != false": 1})
    assert indexer._plans_for("Patient") is indexer._plans_for("Patient")


def test_fallback_expressions_are_few():
    indexer = Indexer(default_registry())
    assert indexer.fallback_expressions("Observation") == []
    assert indexer.fallback_expressions("Patient") == [
        ("deceased", "Patient.deceased.exists() and Patient.deceased != false")]


def test_rewrite():
    assert ix.rewrite("(Observation.value as Quantity)") == "(Observation.value).ofType(Quantity)"
    assert ix.rewrite("Observation.value as Quantity") == "(Observation.value).ofType(Quantity)"
    assert ix.rewrite("value.as(DateTime)") == "value.ofType(dateTime)"
    assert ix.rewrite("Condition.onset.as(Age)") == "Condition.onset.ofType(Age)"
    assert ix.rewrite("Patient.telecom.where(system='phone')") == "Patient.telecom.where(system='phone')"
    assert ix.rewrite("Patient.extension('http://x/y')") == "Patient.extension.where(url='http://x/y')"


# ---------------------------------------------------------------------------------------------
# the fast path against fhirpathpy, on every test resource


@pytest.mark.parametrize("name", [p.name for p in sorted((DATA / "synthea").glob("*.json"))
                                  + sorted((DATA / "fhir-examples").glob("*.json"))])
def test_fast_path_matches_fhirpathpy(name):
    resources = [r for n, r in all_test_resources() if n == name or n.startswith(name + "#")]
    assert resources
    for resource in resources:
        before = copy.deepcopy(resource)
        a, b = fast().extract(resource), slow().extract(resource)
        assert set(a) == set(b), (resource.get("resourceType"), resource.get("id"),
                                  set(a) - set(b), set(b) - set(a))
        assert len(a) == len(b)
        assert resource == before  # neither path changes the resource


@pytest.mark.parametrize("index", range(len(SYNTHETIC)))
def test_fast_path_matches_fhirpathpy_on_synthetic(index):
    resource = SYNTHETIC[index]
    a, b = fast().extract(resource), slow().extract(resource)
    assert a, "every synthetic resource has rows"
    assert set(a) == set(b), (set(a) - set(b), set(b) - set(a))
    assert len(a) == len(b)


def test_benchmark_extract(capsys):
    """Printed, not asserted: extract() per resource over the Synthea bundles."""
    resources = [r for n, r in all_test_resources() if "#" in n and n.split("#")[0].endswith(".json")
                 and (DATA / "synthea" / n.split("#")[0]).exists()]
    indexer = fast()
    for r in resources:
        indexer.extract(r)
    per_type: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    for r in resources:
        t0 = time.perf_counter()
        indexer.extract(r)
        per_type[r["resourceType"]].append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nextract(): {total / len(resources) * 1e6:.0f} µs per resource over {len(resources)} Synthea resources")
        for rtype, times in sorted(per_type.items(), key=lambda kv: -len(kv[1]))[:8]:
            print(f"  {rtype:20} {len(times):5}  {sum(times) / len(times) * 1e6:7.0f} µs")


def test_canonical_values_keep_each_values_precision():
    def obs(value: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "valueQuantity": {"value": Decimal(value), "system": UCUM, "code": "mg/dL"}}

    (a,) = by_param(obs("100"))["value-quantity"]
    (b,) = by_param(obs("100.0"))["value-quantity"]
    assert a.canonical_value == b.canonical_value == Decimal(1000)
    assert str(a.canonical_value) == "1.00E+3" and str(b.canonical_value) == "1000"  # 3 and 4 significant digits


def test_broken_expression_is_skipped():
    from healthhub.search.registry import Registry, SearchParam

    base = default_registry()
    broken = SearchParam(code="broken", type="token", url="urn:test:broken", base=("Patient",),
                         expression="Patient.name.where(")
    good = base.get("Patient", "gender")
    assert good is not None
    indexer = Indexer(Registry([broken, good]))
    patient = {"resourceType": "Patient", "gender": "other", "name": [{"family": "X"}]}
    assert indexer.extract(patient) == [TokenRow("gender", "", "other", None)]
    assert indexer.fallback_expressions("Patient") == [("broken", "Patient.name.where(")]
