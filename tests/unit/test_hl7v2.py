"""healthhub.ingest.hl7v2: every shared sample maps to a valid transaction Bundle, and the mapped
values match the raw message read here independently (split on its own separators)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest

from healthhub import resources
from healthhub.ingest import hl7v2
from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM, SenderProfile

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
SAMPLES = sorted(DATA.glob("*.hl7"))
MALFORMED = sorted((DATA / "malformed").glob("*.hl7"))
SENDER = SenderProfile(code="HOSP-A", organization="Organization/hosp-a", timezone="Asia/Bangkok")
LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"


# --------------------------------------------------------------------------- independent reading

@dataclass
class Raw:
    """A message split on its own separators: ``raw.field("PID", 5)`` is PID-5 as sent."""

    segments: list[list[str]]
    fs: str
    comp: str
    rep: str
    esc: str
    sub: str

    @classmethod
    def of(cls, data: bytes) -> Raw:
        text = data.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r")
        start = text.index("MSH")
        fs, comp, rep, esc, sub = (text[start + i] for i in range(3, 8))
        segments = []
        for line in text.split("\r"):
            line = line.strip()
            if not line or line[:3] in ("BHS", "BTS", "FHS", "FTS"):
                continue
            parts = line.split(fs)
            if parts[0] == "MSH":
                parts.insert(1, fs)  # parts[n] is MSH-n
            segments.append(parts)
        return cls(segments, fs, comp, rep, esc, sub)

    def all(self, seg: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == seg]

    def field(self, seg: str, n: int, which: int = 0) -> str:
        found = self.all(seg)
        if len(found) <= which or n >= len(found[which]):
            return ""
        return found[which][n]

    def comp_of(self, value: str, n: int) -> str:
        parts = value.split(self.rep)[0].split(self.comp)
        return parts[n - 1].strip() if n <= len(parts) else ""


def citizen_id(first12: str) -> str:
    """A 13-digit citizen number with its mod-11 check digit (computed here, not by the hub)."""
    total = sum(int(d) * (13 - i) for i, d in enumerate(first12))
    return first12 + str((11 - total % 11) % 10)


@cache
def mapped(path: Path) -> tuple[hl7v2.Mapped, Raw]:
    data = path.read_bytes()
    return hl7v2.to_fhir(hl7v2.parse(data), SENDER), Raw.of(data)


def of_type(m: hl7v2.Mapped, rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in m.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def entry_of(m: hl7v2.Mapped, rtype: str) -> dict[str, Any]:
    return next(e for e in m.bundle["entry"] if e["resource"]["resourceType"] == rtype)


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# --------------------------------------------------------------------------- every sample

def test_all_samples_are_here():
    assert len(SAMPLES) == 34 and len(MALFORMED) == 13


@pytest.mark.parametrize("path", SAMPLES, ids=ids(SAMPLES))
def test_sample_maps_to_a_valid_transaction(path):
    m, raw = mapped(path)
    bundle = m.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    resources.validate(bundle)
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", u) for u in full_urls)
    writes = set()
    for entry in bundle["entry"]:
        res, req = entry["resource"], entry["request"]
        resources.validate(res)
        assert "meta" not in res and res["resourceType"] != "Provenance"
        rtype = res["resourceType"]
        if req["method"] == "PUT":
            head, _, query = req["url"].partition("?")
            assert head == rtype
            params = parse_qsl(query)
            assert params and params[0][0] == "identifier"
            system, bar, value = params[0][1].partition("|")
            assert bar and system and value
            # the business identifier the URL names is on the resource itself
            assert {"system": system, "value": value}.items() <= next(
                i for i in res["identifier"] if i["system"] == system and i["value"] == value).items()
            assert req["url"] not in writes, "two entries write the same resource"
            writes.add(req["url"])
        else:
            assert req["method"] == "POST" and req["url"] == rtype
            if "ifNoneExist" in req:
                assert unquote(req["ifNoneExist"]).startswith("identifier=")
    # every reference to another entry names one of the Bundle's fullUrls
    refs = re.findall(r"'reference': '([^']+)'", repr(bundle))
    assert all(r in full_urls or r.startswith("Organization/") for r in refs)
    patients = of_type(m, "Patient")
    assert len(patients) == 1
    for res in (e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Patient"):
        subject = res.get("subject") or res.get("patient")
        if res["resourceType"] != "Encounter" or subject:
            assert subject == {"reference": full_urls[0]}, res["resourceType"]


@pytest.mark.parametrize("path", SAMPLES, ids=ids(SAMPLES))
def test_only_a_patient_without_identifier_is_an_error(path):
    m, raw = mapped(path)
    has_id = any(raw.comp_of(rep, 1) for n in (2, 3, 4)
                 for rep in raw.field("PID", n).split(raw.rep) if rep != '""')
    errors = [(i.segment, i.field, i.code) for i in m.issues if i.severity == "E"]
    assert errors == ([] if has_id else [("PID", 3, "101")])


@pytest.mark.parametrize("path", SAMPLES, ids=ids(SAMPLES))
def test_patient_name_birth_date_and_sex(path):
    m, raw = mapped(path)
    patient = of_type(m, "Patient")[0]
    first_name = next((r for r in raw.field("PID", 5).split(raw.rep) if r.split(raw.comp)[0].split(raw.sub)[0]), "")
    family = first_name.split(raw.comp)[0].split(raw.sub)[0]
    if family:
        assert patient["name"][0]["family"].casefold() == " ".join(family.split()).casefold()
    else:
        assert all("family" not in n for n in patient.get("name", []))
    born = raw.comp_of(raw.field("PID", 7), 1)
    if born:
        expected = "-".join(x for x in (born[:4], born[4:6], born[6:8]) if x)
        assert patient["birthDate"] == expected
    else:
        assert "birthDate" not in patient
    sex = raw.comp_of(raw.field("PID", 8), 1)
    gender = {"M": "male", "F": "female", "U": "unknown", "O": "other"}.get(sex)
    assert patient.get("gender") == gender


@pytest.mark.parametrize("path", SAMPLES, ids=ids(SAMPLES))
def test_one_observation_per_obx_and_one_report_per_obr(path):
    m, raw = mapped(path)
    coded_obx = [s for s in raw.all("OBX") if len(s) > 3 and s[3].strip(raw.comp)]
    assert len(of_type(m, "Observation")) == len(coded_obx)
    if raw.field("MSH", 9).startswith("ORU"):
        assert len(of_type(m, "DiagnosticReport")) == len(raw.all("OBR"))
        first_obr = next(i for i, s in enumerate(raw.segments) if s[0] == "OBR")
        under_obr = [s for s in raw.segments[first_obr:] if s[0] == "OBX" and len(s) > 3 and s[3].strip(raw.comp)]
        results = sum(len(r.get("result", [])) for r in of_type(m, "DiagnosticReport"))
        assert results == len(under_obr)
    assert len(of_type(m, "Immunization")) == len(raw.all("RXA"))


@pytest.mark.parametrize("path", SAMPLES, ids=ids(SAMPLES))
def test_numeric_and_coded_values_match_the_message(path):
    m, raw = mapped(path)
    coded_obx = [s for s in raw.all("OBX") if len(s) > 3 and s[3].strip(raw.comp)]
    for seg, obs in zip(coded_obx, of_type(m, "Observation"), strict=True):
        assert obs["code"]["coding"][0]["code"] == raw.comp_of(seg[3], 1) or not raw.comp_of(seg[3], 1)
        kind, value = seg[2], seg[5] if len(seg) > 5 else ""
        if kind == "NM" and re.fullmatch(r"[+-]?\d+(\.\d+)?", value.strip()):
            quantity = obs["valueQuantity"]
            assert quantity["value"] == Decimal(value.strip())
            unit = seg[6] if len(seg) > 6 else ""
            if unit:
                written = raw.comp_of(unit, 2) or raw.comp_of(unit, 1)
                assert quantity["unit"] == written
        if kind in ("CE", "CWE") and raw.comp_of(value, 1):
            coding = obs["valueCodeableConcept"]["coding"][0]
            assert coding["code"] == raw.comp_of(value, 1)
            system = {"LN": LOINC, "SCT": SNOMED}.get(raw.comp_of(value, 3))
            if system:
                assert coding["system"] == system


# --------------------------------------------------------------------------- particular values

def test_escape_sequences_are_decoded():
    m, raw = mapped(DATA / "cdcdex_oru_r01_v251_nndss_case_escape_F.hl7")
    text = raw.comp_of(next(s for s in raw.all("OBX") if s[3].startswith("43304-5"))[3], 2)
    assert "\\F\\" in text
    obs = next(o for o in of_type(m, "Observation") if o["code"]["coding"][0]["code"] == "43304-5")
    assert obs["code"]["coding"][0]["display"] == text.replace("\\F\\", "|")

    m, raw = mapped(DATA / "ms_adt_a01_01.hl7")
    source = raw.comp_of(raw.field("PV1", 14), 1)
    assert "\\T\\" in source
    enc = of_type(m, "Encounter")[0]
    assert enc["hospitalization"]["admitSource"]["coding"][0]["code"] == source.replace("\\T\\", "&")


def test_line_break_and_repetition_escapes_in_text():
    m, raw = mapped(DATA / "cdcti_oru_r01_v251_nbs_escapes_br_R.hl7")
    seg = next(s for s in raw.all("OBX") if s[2] == "TX" and "\\.br\\" in s[5])
    expected = seg[5].replace("\\.br\\", "\n").replace("\\R\\", "~")
    obs = next(o for o in of_type(m, "Observation") if o["code"]["coding"][0]["code"] == raw.comp_of(seg[3], 1)
               and "valueString" in o)
    assert obs["valueString"] == expected
    assert "\\" not in obs["valueString"] and "~2823 FRESNO" in obs["valueString"]


def test_report_comment_keeps_its_ampersand():
    m, raw = mapped(DATA / "ms_oru_r01_01.hl7")
    nte = next(s for s in raw.all("NTE") if "\\T\\" in s[3])
    report = of_type(m, "DiagnosticReport")[0]
    assert nte[3].replace("\\T\\", "&") in report["conclusion"]


def test_micro_sign_is_kept_and_unit_is_ucum():
    m, raw = mapped(DATA / "cdcti_oru_r01_v251_utf8_micro_sign.hl7")
    unit = raw.comp_of(raw.field("OBX", 6), 1)
    assert unit == "µmol/L"
    quantity = of_type(m, "Observation")[0]["valueQuantity"]
    assert quantity["unit"] == unit
    assert quantity["system"] == "http://unitsofmeasure.org" and quantity["code"] == "umol/L"


def test_structured_numeric_comparator_and_reference_range():
    m, raw = mapped(DATA / "ms_lri_2.0_ng_cbc_typ_message.hl7")
    first = raw.all("OBX")[0]
    low, high = (Decimal(x) for x in first[7].split(" to "))
    obs = of_type(m, "Observation")[0]
    assert obs["referenceRange"][0]["low"]["value"] == low and obs["referenceRange"][0]["high"]["value"] == high
    assert obs["interpretation"][0]["coding"][0]["code"] == first[8]
    assert obs["status"] == "final" and obs["valueQuantity"]["code"] == raw.comp_of(first[6], 1)


def test_structured_numeric_values():
    def value(sn: str, unit: str = "mg/dL") -> dict[str, Any]:
        data = message("MSH|^~\\&|LAB|HOSP|HH|HH|20240101120000||ORU^R01|C1|P|2.5.1",
                       "PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F",
                       "OBR|1||F1^LAB|1234-5^Test^LN|||20240101",
                       f"OBX|1|SN|1234-5^Test^LN||{sn}|{unit}|||||F")
        obs = of_type(hl7v2.to_fhir(hl7v2.parse(data), SENDER), "Observation")[0]
        return {k: v for k, v in obs.items() if k.startswith("value")}

    assert value(">^11.0") == {"valueQuantity": {"value": Decimal("11.0"), "comparator": ">", "unit": "mg/dL",
                                                 "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    assert value("^182")["valueQuantity"]["value"] == Decimal("182")
    assert value("=^21")["valueQuantity"]["value"] == Decimal("21")
    assert value("^1^-^5")["valueRange"]["high"]["value"] == Decimal("5")
    assert value("^1^:^128", "") == {"valueRatio": {"numerator": {"value": Decimal("1")},
                                                    "denominator": {"value": Decimal("128")}}}
    assert value("^2^+", "") == {"valueString": "2+"}


def test_interpretation_keeps_every_repetition():
    m, raw = mapped(DATA / "ms_adt_a01_01.hl7")
    flags = [r.split("^")[0] for r in raw.field("OBX", 8).split("~")]
    obs = of_type(m, "Observation")[0]
    assert [i["coding"][0]["code"] for i in obs["interpretation"]] == flags


def test_nm_without_a_number_is_a_warning_and_kept_as_text():
    data = message("MSH|^~\\&|LAB|HOSP|HH|HH|20240101120000||ORU^R01|C1|P|2.5.1",
                   "PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F",
                   "OBR|1||F1^LAB|1234-5^Test^LN|||20240101",
                   "OBX|1|NM|1234-5^Test^LN||see note|mg/dL|||||F")
    m = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
    assert [(i.severity, i.segment, i.field, i.code) for i in m.issues] == [("W", "OBX", 5, "102")]
    assert of_type(m, "Observation")[0]["valueString"] == "see note"


def test_explicit_nulls_are_omitted():
    m, raw = mapped(DATA / "pyhl7_adt_a01_v23_explicit_nulls.hl7")
    assert raw.field("PV1", 45) == '""' and raw.field("DG1", 5) == '""'
    assert "end" not in of_type(m, "Encounter")[0]["period"]
    assert "onsetDateTime" not in of_type(m, "Condition")[0]
    data = message("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A08|C1|P|2.5",
                   'PID|1||MRN1^^^HOSP^MR||DOE^JANE^""||""|""|||12 MAIN ST^""^SPRINGFIELD^""^12345')
    patient = of_type(hl7v2.to_fhir(hl7v2.parse(data), SENDER), "Patient")[0]
    assert "birthDate" not in patient and "gender" not in patient
    assert patient["name"] == [{"family": "Doe", "given": ["Jane"]}]
    assert patient["address"] == [{"line": ["12 Main St"], "city": "Springfield", "postalCode": "12345"}]


def test_adt_puts_the_patient_and_results_only_create_it():
    m, raw = mapped(DATA / "hl7apy_adt_a01_v25.hl7")
    value = raw.comp_of(raw.field("PID", 3), 1)
    assert entry_of(m, "Patient")["request"] == {
        "method": "PUT", "url": f"Patient?identifier={SENDER.mrn_system}|{value}"}
    m, raw = mapped(DATA / "ms_oru_r01_rmgead.hl7")
    value = raw.comp_of(raw.field("PID", 3), 1)
    assert entry_of(m, "Patient")["request"] == {
        "method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SENDER.mrn_system}|{value}"}


def test_identifier_systems_from_the_sender_profile():
    sender = SenderProfile(code="HOSP-B", identifier_systems={"MPI": "https://mpi.example.org/id"})
    m = hl7v2.to_fhir(hl7v2.parse((DATA / "node_oru_r01_v251_nist_elr_lead.hl7").read_bytes()), sender)
    patient = of_type(m, "Patient")[0]
    assert patient["identifier"][0]["system"] == "https://mpi.example.org/id"
    assert patient["identifier"][0]["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}


def test_national_id_validated_and_never_the_only_key_when_an_mrn_exists():
    good, bad = citizen_id("110170012345"), "1101700123450"[:-1] + "9"
    assert bad != good
    base = ("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A04|C1|P|2.5", "EVN|A04|20240101120000")
    m = hl7v2.to_fhir(hl7v2.parse(message(*base, f"PID|1||MRN7^^^HOSP^MR~{good}^^^MOI^NI||DOE^JANE")), SENDER)
    patient = entry_of(m, "Patient")
    assert {"system": NATIONAL_ID_SYSTEM, "value": good}.items() <= patient["resource"]["identifier"][1].items()
    # The sender's own record number keys its Patient; the national number is for matching.
    assert patient["request"]["url"] == f"Patient?identifier={SENDER.mrn_system}|MRN7"
    assert not m.issues

    m = hl7v2.to_fhir(hl7v2.parse(message(*base, f"PID|1||{good}^^^MOI^NI||DOE^JANE")), SENDER)
    assert entry_of(m, "Patient")["request"]["url"] == (
        f"Patient?identifier={NATIONAL_ID_SYSTEM}|{good}&organization=Organization/hosp-a")

    m = hl7v2.to_fhir(hl7v2.parse(message(*base, f"PID|1||MRN7^^^HOSP^MR~{bad}^^^MOI^NI||DOE^JANE")), SENDER)
    idents = of_type(m, "Patient")[0]["identifier"]
    assert all(i["system"] != NATIONAL_ID_SYSTEM for i in idents) and idents[1]["value"] == bad
    assert [(i.severity, i.segment, i.field, i.code) for i in m.issues] == [("W", "PID", 3, "102")]


def test_patient_without_identifier_is_an_error():
    data = message("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A08|C1|P|2.5", "PID|1||||DOE^JANE")
    m = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
    assert [(i.severity, i.segment, i.field, i.code) for i in m.issues] == [("E", "PID", 3, "101")]


def test_encounter_class_visit_number_and_discharge():
    m, raw = mapped(DATA / "ms_adt01_23.hl7")
    enc_entry = entry_of(m, "Encounter")
    visit = raw.comp_of(raw.field("PV1", 19), 1)
    assert enc_entry["request"] == {"method": "PUT",
                                    "url": f"Encounter?identifier=urn:healthhub:sender:HOSP-A:visit|{visit}"}
    enc = enc_entry["resource"]
    assert raw.field("PV1", 2) == "I" and enc["class"]["code"] == "IMP"
    assert enc["status"] == "in-progress" and enc["serviceProvider"] == {"reference": "Organization/hosp-a"}
    discharge = message("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A03|C2|P|2.5",
                        "EVN|A03|20240105100000", "PID|1||MRN1^^^HOSP^MR||DOE^JANE",
                        "PV1|1|E|||||||||||||||||V77|||||||||||||||||||||||||20240101080000|20240105093000")
    enc = of_type(hl7v2.to_fhir(hl7v2.parse(discharge), SENDER), "Encounter")[0]
    assert enc["status"] == "finished" and enc["class"]["code"] == "EMER"
    assert enc["period"] == {"start": "2024-01-01T08:00:00+07:00", "end": "2024-01-05T09:30:00+07:00"}


def test_next_of_kin_diagnosis_and_allergy():
    m, raw = mapped(DATA / "ms_adt_a01_01.hl7")
    patient_url = entry_of(m, "Patient")["fullUrl"]
    kin = of_type(m, "RelatedPerson")[0]
    assert kin["patient"] == {"reference": patient_url}
    assert kin["name"][0]["family"].casefold() == raw.field("NK1", 2).split("^")[0].split("&")[0].casefold()
    condition = of_type(m, "Condition")[0]
    assert condition["code"]["coding"][0] == {"system": SNOMED, "code": raw.comp_of(raw.field("DG1", 3), 1),
                                              "display": raw.comp_of(raw.field("DG1", 3), 2)}
    assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert condition["encounter"] == {"reference": entry_of(m, "Encounter")["fullUrl"]}
    allergy = of_type(m, "AllergyIntolerance")[0]
    assert allergy["code"]["coding"][0]["code"] == raw.comp_of(raw.field("AL1", 3), 1)
    assert allergy["criticality"] == "low" and allergy["category"] == ["environment"]  # AL1-4 MI, AL1-2 EA
    assert allergy["reaction"][0]["manifestation"][0]["text"] == raw.field("AL1", 5)


def test_immunizations():
    m, raw = mapped(DATA / "ms_vxu.hl7")
    immunizations = of_type(m, "Immunization")
    rxa = raw.all("RXA")
    for seg, imm, orc in zip(rxa, immunizations, raw.all("ORC"), strict=True):
        assert imm["status"] == "completed"
        assert imm["vaccineCode"]["coding"][0]["code"] == raw.comp_of(seg[5], 1)
        assert imm["occurrenceDateTime"] == f"{seg[3][:4]}-{seg[3][4:6]}-{seg[3][6:8]}"
        assert imm["primarySource"] is (raw.comp_of(seg[9], 1) == "00")
        assert imm["identifier"][0]["value"] == "^".join(orc[3].split("^")[:2])
    first = immunizations[0]
    assert first["lotNumber"] == rxa[0][15] and first["doseQuantity"]["value"] == Decimal(rxa[0][6])
    assert first["route"]["coding"][0]["code"] == raw.comp_of(raw.field("RXR", 1), 1)
    assert first["site"]["coding"][0]["code"] == raw.comp_of(raw.field("RXR", 2), 1)
    vxu_obs = of_type(m, "Observation")
    assert vxu_obs and all(o["partOf"] == [{"reference": entry_of(m, "Immunization")["fullUrl"]}]
                           for o in vxu_obs)

    m, raw = mapped(DATA / "cdciis_vxu_v04_covid_deferral.hl7")
    assert raw.field("RXA", 20) == "NA"
    imm = of_type(m, "Immunization")[0]
    assert imm["status"] == "not-done" and imm["statusReason"]


def test_corrected_result_replaces_the_final_one():
    def obs_url(status: str, control: str) -> tuple[str, dict[str, Any]]:
        data = message(f"MSH|^~\\&|LAB|HOSP|HH|HH|20240101120000||ORU^R01|{control}|P|2.5.1",
                       "PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F",
                       "OBR|1|P1^EHR|F1^LAB|1234-5^Test^LN|||20240101",
                       f"OBX|1|NM|1234-5^Test^LN||5.0|mg/dL|||||{status}")
        m = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
        e = entry_of(m, "Observation")
        return e["request"]["url"], e["resource"]

    final_url, final = obs_url("F", "C1")
    corrected_url, corrected = obs_url("C", "C2")
    assert final_url == corrected_url
    assert (final["status"], corrected["status"]) == ("final", "corrected")


def test_merge():
    data = message("MSH|^~\\&|APP|HOSP|HH|HH|20240101120000||ADT^A40^ADT_A39|M1|P|2.5",
                   "EVN|A40|20240101120000",
                   "PID|1||NEW123^^^HOSP^MR||DOE^JANE||19800101|F",
                   "MRG|OLD456^^^HOSP^MR~OLD789^^^HOSP^MR",
                   "PV1|1|N")
    m = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
    assert not m.issues and m.merge is not None
    assert [(i["system"], i["value"]) for i in m.merge.surviving] == [(SENDER.mrn_system, "NEW123")]
    assert [i["value"] for i in m.merge.retired] == ["OLD456", "OLD789"]
    assert [e["resource"]["resourceType"] for e in m.bundle["entry"]] == ["Patient"]
    assert entry_of(m, "Patient")["request"]["method"] == "PUT"
    without = hl7v2.to_fhir(hl7v2.parse(data.replace(b"MRG|", b"ZZZ|")), SENDER)
    assert without.merge is None and [(i.severity, i.segment, i.code) for i in without.issues] == [
        ("E", "MRG", "101")]


def test_replacement_character_and_bad_segment_id():
    m, _ = mapped(DATA / "malformed" / "cdciis_vxu_unknown_segment_and_mojibake.hl7")
    assert [(i.severity, i.segment, i.code) for i in m.issues] == [("E", "WHOOPS", "100"), ("W", "PID", "102")]


def test_mapping_is_deterministic_for_resends():
    data = (DATA / "ms_lri_2.0_ng_cbc_typ_message.hl7").read_bytes()
    first = hl7v2.to_fhir(hl7v2.parse(data), SENDER).bundle
    second = hl7v2.to_fhir(hl7v2.parse(data), SENDER).bundle
    assert [e["request"] for e in first["entry"]] == [e["request"] for e in second["entry"]]
    assert [e["fullUrl"] for e in first["entry"]] != [e["fullUrl"] for e in second["entry"]]


def test_results_of_several_patients_stay_with_their_patient():
    data = message("MSH|^~\\&|LAB|HOSP|HH|HH|20240101120000||ORU^R01|C9|P|2.5.1",
                   "PID|1||MRN1^^^HOSP^MR||DOE^JANE", "OBR|1||F1^LAB|1234-5^Test^LN", "OBX|1|NM|1234-5^Test^LN||1",
                   "PID|2||MRN2^^^HOSP^MR||ROE^RICHARD", "OBR|1||F2^LAB|1234-5^Test^LN", "OBX|1|NM|1234-5^Test^LN||2",
                   "PID|3||MRN1^^^HOSP^MR||DOE^JANE", "OBR|1||F3^LAB|1234-5^Test^LN", "OBX|1|NM|1234-5^Test^LN||3")
    m = hl7v2.to_fhir(hl7v2.parse(data), SENDER)
    urls = {e["resource"]["identifier"][0]["value"]: e["fullUrl"] for e in m.bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"}
    assert sorted(urls) == ["MRN1", "MRN2"]
    by_value = {str(o["valueQuantity"]["value"]): o["subject"]["reference"] for o in of_type(m, "Observation")}
    assert by_value == {"1": urls["MRN1"], "2": urls["MRN2"], "3": urls["MRN1"]}
    assert not m.issues
