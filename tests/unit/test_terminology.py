"""healthhub.ingest.terminology: the ConceptMap registry and the maps under fhir/conceptmaps/."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from healthhub import resources
from healthhub.config import PROJECT_ROOT
from healthhub.ingest import terminology
from healthhub.ingest.terminology import ConceptMapError, Registry

MAP_DIR = PROJECT_ROOT / "fhir" / "conceptmaps"
MAP_FILES = sorted(MAP_DIR.glob("*.json"))
HOSP_A_L = "urn:healthhub:sender:HOSP-A:codesystem:L"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
MAPPING = {"equivalent", "equal", "wider", "subsumes", "relatedto"}
ALL_EQUIVALENCES = MAPPING | {"narrower", "specializes", "inexact", "unmatched", "disjoint"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def concept_map(*groups: dict[str, Any], url: str = "urn:test:cm", status: str = "active") -> dict[str, Any]:
    return {"resourceType": "ConceptMap", "url": url, "status": status, "group": list(groups)}


def group(source: str, target: str | None, *elements: dict[str, Any], **extra: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"source": source, "element": list(elements), **extra}
    if target:
        g["target"] = target
    return g


def element(code: str, *targets: tuple[str | None, str]) -> dict[str, Any]:
    return {"code": code, "target": [({"code": c} if c else {}) | {"equivalence": eq} for c, eq in targets]}


def codes(translations: list[terminology.Translation]) -> list[tuple[str, str]]:
    return [(t.system, t.code) for t in translations]


# --------------------------------------------------------------------------- the shipped maps

def test_there_are_maps_to_check():
    names = {p.name for p in MAP_FILES}
    assert {"hosp-a-lab-to-loinc.json", "icd10-surveillance-to-snomed.json", "hosp-a-vaccine-to-cvx.json"} <= names


@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.name)
def test_each_map_is_a_valid_r4b_conceptmap(path: Path):
    cm = load(path)
    assert resources.validate(cm, "ConceptMap") is cm
    assert cm["id"] == path.stem  # one file per map, named by its id
    assert cm["url"] == f"urn:healthhub:conceptmap:{cm['id']}"
    assert cm["status"] in {"draft", "active", "retired"}
    for g in cm["group"]:
        assert g["source"] and g["target"]
        for el in g["element"]:
            for t in el["target"]:
                assert t["equivalence"] in ALL_EQUIVALENCES
                if t["equivalence"] in MAPPING:
                    assert t["code"] and t["display"]


def test_map_urls_are_unique():
    urls = [load(p)["url"] for p in MAP_FILES]
    assert len(urls) == len(set(urls))


@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.name)
def test_every_mapping_in_the_files_is_translated(path: Path):
    registry = terminology.default_registry()
    for g in load(path)["group"]:
        for el in g["element"]:
            got = registry.translate(g["source"], el["code"])
            expected = {(g["target"], t["code"]) for t in el["target"] if t["equivalence"] in MAPPING}
            assert expected <= set(codes(got)), (g["source"], el["code"])
            if not expected:
                assert not [t for t in got if t.conceptmap == load(path)["url"]]


def luhn_check_digit(number: str) -> int:
    """LOINC's "mod 10" check digit (LOINC Users' Guide, Appendix: calculating mod 10 check digits)."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 0:  # rightmost digit and every second one from it are doubled
            d *= 2
            d = d // 10 + d % 10
        total += d
    return (10 - total % 10) % 10


_VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
               [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
               [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
               [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VERHOEFF_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
               [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
               [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff_ok(number: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit (SNOMED CT TIG, "Check-digit")."""
    c = 0
    for i, ch in enumerate(reversed(number)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def targets(system: str) -> list[str]:
    return [t["code"] for p in MAP_FILES for g in load(p)["group"] if g["target"] == system
            for el in g["element"] for t in el["target"] if t.get("code")]


def test_loinc_targets_have_right_check_digits():
    loincs = targets(LOINC)
    assert "2345-7" in loincs
    for code in loincs:
        number, _, check = code.partition("-")
        assert number.isdigit() and check.isdigit(), code
        assert luhn_check_digit(number) == int(check), code


def test_snomed_targets_are_concept_ids_with_right_check_digits():
    sct = targets(SNOMED)
    assert "840539006" in sct
    for code in sct:
        assert code.isdigit() and 6 <= len(code) <= 18, code
        assert code[-3:-1] == "00", code  # partition identifier 00: a concept (not a description)
        assert verhoeff_ok(code), code


def test_cvx_targets_are_cvx_codes():
    for code in targets(CVX):
        assert code.isdigit() and 1 <= len(code) <= 3, code


@pytest.mark.parametrize(("local", "loinc"), [
    ("GLU", "2345-7"), ("HGB", "718-7"), ("WBC", "6690-2"), ("HBA1C", "4548-4"), ("CREAT", "2160-0"),
    ("K", "2823-3"), ("NA", "2951-2"), ("COVPCR", "94500-6"), ("DENGNS1", "75377-2"),
])
def test_demo_hospital_lab_codes_map_to_loinc(local: str, loinc: str):
    got = terminology.translate(HOSP_A_L, local)
    assert [(t.system, t.code, t.equivalence) for t in got] == [(LOINC, loinc, "equivalent")]
    assert got[0].conceptmap == "urn:healthhub:conceptmap:hosp-a-lab-to-loinc"


def test_unmatched_code_in_a_map_translates_to_nothing():
    hold = [el for el in load(MAP_DIR / "hosp-a-lab-to-loinc.json")["group"][0]["element"] if el["code"] == "HOLD"]
    assert hold and hold[0]["target"][0]["equivalence"] == "unmatched"
    assert terminology.translate(HOSP_A_L, "HOLD") == []


@pytest.mark.parametrize(("icd", "sct", "equivalence"), [
    ("A90", "38362002", "wider"), ("A91", "20927009", "equivalent"), ("U07.1", "840539006", "wider"),
    ("B05", "14189004", "equivalent"), ("A00", "63650001", "equivalent"), ("A01.0", "4834000", "equivalent"),
    ("B54", "61462000", "equivalent"), ("B50", "61462000", "wider"), ("A15", "56717001", "wider"),
    ("J10", "6142004", "wider"), ("J11", "6142004", "wider"), ("A09", "25374005", "relatedto"),
])
def test_surveillance_icd10_codes_map_to_snomed(icd: str, sct: str, equivalence: str):
    got = terminology.translate(ICD10, icd)
    assert [(t.system, t.code, t.equivalence) for t in got] == [(SNOMED, sct, equivalence)]


def test_vaccine_codes_map_to_cvx_and_codes_are_case_sensitive():
    assert codes(terminology.translate(HOSP_A_L, "MMR")) == [(CVX, "03")]
    assert codes(terminology.translate(HOSP_A_L, "COVPFZ")) == [(CVX, "208")]
    assert terminology.translate(HOSP_A_L, "mmr") == []
    assert terminology.translate("urn:healthhub:sender:HOSP-B:codesystem:L", "MMR") == []
    assert terminology.translate(LOINC, "2345-7") == []


def test_default_registry_is_loaded_once():
    assert terminology.default_registry() is terminology.default_registry()
    assert {HOSP_A_L, ICD10} <= terminology.default_registry().sources()


def test_translation_coding_is_a_valid_fhir_coding():
    t = terminology.translate(ICD10, "A91")[0]
    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [t.coding()]}}
    resources.validate(obs)
    assert t.coding() == {"system": SNOMED, "code": "20927009", "display": "Dengue hemorrhagic fever"}


# --------------------------------------------------------------------------- registry semantics

@pytest.mark.parametrize("equivalence", sorted(ALL_EQUIVALENCES))
def test_only_same_or_broader_equivalences_give_a_coding(equivalence: str):
    target = None if equivalence in {"unmatched", "disjoint"} else "T1"
    reg = Registry([concept_map(group("urn:src", "urn:tgt", element("A", (target, equivalence))))])
    got = reg.translate("urn:src", "A")
    if equivalence in MAPPING:
        assert [(t.system, t.code, t.equivalence) for t in got] == [("urn:tgt", "T1", equivalence)]
    else:
        assert got == []


def test_several_targets_groups_and_maps_are_all_used_without_duplicates():
    reg = Registry([
        concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "equivalent"), ("T2", "narrower"), ("T3", "wider"))),
                    group("urn:src", "urn:other", element("A", ("O1", "equal"))), url="urn:cm:1"),
        concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "equivalent"), ("T4", "subsumes"))), url="urn:cm:2"),
    ])
    assert codes(reg.translate("urn:src", "A")) == [("urn:tgt", "T1"), ("urn:tgt", "T3"), ("urn:other", "O1"),
                                                    ("urn:tgt", "T4")]
    assert reg.translate("urn:src", "B") == []
    assert reg.translate("urn:tgt", "T1") == []  # maps are one-way


def test_target_with_depends_on_is_skipped():
    el = element("A", ("T1", "equivalent"), ("T2", "equivalent"))
    el["target"][1]["dependsOn"] = [{"property": "http://example.org/specimen", "value": "urine"}]
    reg = Registry([concept_map(group("urn:src", "urn:tgt", el))])
    assert codes(reg.translate("urn:src", "A")) == [("urn:tgt", "T1")]


def test_unmapped_provided_reuses_the_code():
    reg = Registry([concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "equivalent")),
                                      unmapped={"mode": "provided"}))])
    assert [(t.code, t.equivalence) for t in reg.translate("urn:src", "B")] == [("B", "equivalent")]
    assert codes(reg.translate("urn:src", "A")) == [("urn:tgt", "T1")]


def test_unmapped_fixed_gives_the_fixed_code():
    reg = Registry([concept_map(group("urn:src", "urn:tgt", element("A", (None, "unmatched")),
                                      unmapped={"mode": "fixed", "code": "OTH", "display": "Other"}))])
    got = reg.translate("urn:src", "ZZ")
    assert [(t.system, t.code, t.display, t.equivalence) for t in got] == [("urn:tgt", "OTH", "Other", "relatedto")]
    # A code the group lists (here: explicitly unmatched) never falls through to unmapped.
    assert reg.translate("urn:src", "A") == []


def test_unmapped_other_map_follows_the_url_and_stops_on_loops():
    first = concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "equivalent")),
                              unmapped={"mode": "other-map", "url": "urn:cm:second"}), url="urn:cm:first")
    second = concept_map(group("urn:src", "urn:tgt", element("B", ("T2", "equivalent")),
                               unmapped={"mode": "other-map", "url": "urn:cm:first"}), url="urn:cm:second")
    reg = Registry([first, second])
    # "B" is listed by the second map (directly and through the first map's other-map): one result.
    assert codes(reg.translate("urn:src", "B")) == [("urn:tgt", "T2")]
    assert reg.translate("urn:src", "C") == []  # first → second → first: stops


def test_retired_maps_are_not_used():
    reg = Registry([concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "equivalent"))), status="retired")])
    assert reg.translate("urn:src", "A") == []
    assert reg.conceptmaps == ()


@pytest.mark.parametrize(("cm", "message"), [
    (concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "same")))), "equivalence"),
    (concept_map({"target": "urn:tgt", "element": [element("A", ("T1", "equivalent"))]}), "no source"),
    (concept_map(group("urn:src", None, element("A", ("T1", "equivalent")))), "no code of a target system"),
    (concept_map(group("urn:src", "urn:tgt", element("A", (None, "wider")))), "no code of a target system"),
    (concept_map(group("urn:src", "urn:tgt", unmapped={"mode": "fixed"})), "cmd-2"),
    (concept_map(group("urn:src", "urn:tgt", unmapped={"mode": "other-map"})), "cmd-3"),
    (concept_map(group("urn:src", None, unmapped={"mode": "provided"})), "target system"),
    ({"resourceType": "ValueSet", "status": "active"}, "ConceptMap"),
    (["not", "an", "object"], "JSON object"),
])
def test_unusable_maps_are_refused_with_the_reason(cm: Any, message: str):
    with pytest.raises(ConceptMapError, match=message):
        Registry([cm])


def test_from_directory_reads_json_files_and_names_a_bad_one(tmp_path: Path):
    (tmp_path / "a.json").write_text(json.dumps(concept_map(group("urn:src", "urn:tgt", element("A", ("T1", "wider"))))))
    (tmp_path / "notes.md").write_text("not a map")
    reg = Registry.from_directory(tmp_path)
    assert codes(reg.translate("urn:src", "A")) == [("urn:tgt", "T1")]
    (tmp_path / "b.json").write_text("{ not json")
    with pytest.raises(ConceptMapError, match=r"b\.json: not valid JSON"):
        Registry.from_directory(tmp_path)
    (tmp_path / "b.json").write_text(json.dumps(concept_map(group("urn:src", "urn:tgt", element("A", ("T", "x"))))))
    with pytest.raises(ConceptMapError, match=r"b\.json: .*equivalence"):
        Registry.from_directory(tmp_path)
