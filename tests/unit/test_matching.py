"""Patient matching (MPI): features, national-id rules, perturbations, twins, blocking, targets."""
from __future__ import annotations

import copy
import itertools
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from healthhub import resources
from healthhub.ingest import matching_eval
from healthhub.ingest.matching import (
    AUTO_LINK,
    MATCH_GRADE_URL,
    PROBABLE,
    REVIEW,
    Features,
    blocking_keys,
    features,
    score,
)
from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM

SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "synthea"
ABDUL = SYNTHEA / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json"
#: Seed of the labelled set checked here; the weights and thresholds were tuned on seed 1.
SEED = 7


def nid(body: str) -> str:
    """A valid national id: 12 digits and (11 − Σ d[i]·(13 − i) mod 11) mod 10."""
    return body + str((11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10)


def patient(given: list[str] | None = None, family: str = "Whitfield", birth: str | None = "1975-03-08",
            gender: str | None = "male", line: str | None = "12 Harbor Street Apt 4", city: str = "Salem",
            postal: str | None = "01970", phone: str | None = "555-212-4477", email: str | None = None,
            national_id: str | None = None, names: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A hospital's Patient resource (the unperturbed person is Jonathan Edward Whitfield)."""
    p: dict[str, Any] = {"resourceType": "Patient",
                         "name": names or [{"use": "official", "family": family,
                                            "given": given if given is not None else ["Jonathan", "Edward"]}]}
    if national_id:
        p["identifier"] = [{"system": NATIONAL_ID_SYSTEM, "value": national_id}]
    if birth:
        p["birthDate"] = birth
    if gender:
        p["gender"] = gender
    if line:
        address = {"use": "home", "line": [line], "city": city}
        if postal:
            address["postalCode"] = postal
        p["address"] = [address]
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone})
    if email:
        telecom.append({"system": "email", "value": email})
    if telecom:
        p["telecom"] = telecom
    return p


# -- features --------------------------------------------------------------------------------

def test_features_of_a_synthea_patient() -> None:
    bundle = orjson.loads(ABDUL.read_bytes())
    raw = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    f = features(raw)
    name = raw["name"][0]
    assert f.family == name["family"].lower()
    assert f.given == tuple(g.lower() for g in name["given"])
    assert f.birth_date == raw["birthDate"]
    assert f.gender == raw["gender"]
    address = raw["address"][0]
    assert f.postal_code == address["postalCode"]
    assert f.city == address["city"].lower()
    assert set(re.findall(r"[a-z]+|\d+", address["line"][0].lower())) - {"suite"} <= f.address_tokens
    assert f.phones == {re.sub(r"\D", "", raw["telecom"][0]["value"])[-9:]}
    assert f.national_id is None  # Synthea carries an SSN, not the hub's national id


def test_features_of_an_empty_or_malformed_patient() -> None:
    f = features({"resourceType": "Patient", "name": "Smith", "birthDate": 19750308, "gender": "unknown",
                  "telecom": "555", "address": "Main St", "identifier": {"system": NATIONAL_ID_SYSTEM}})
    assert f == Features(None, "", (), None, None, None, None, None, frozenset(), frozenset(), frozenset())
    assert blocking_keys(f) == set()
    assert score(f, f).score < REVIEW  # nothing known is no evidence


def test_features_pick_the_official_name_and_keep_previous_family_names() -> None:
    f = features(patient(names=[
        {"use": "nickname", "given": ["Jon"]},
        {"use": "maiden", "family": "Ramírez", "given": ["Ana"]},
        {"use": "official", "family": "O'Brien-Smith", "given": ["Ana María"], "prefix": ["Mrs."]},
    ]))
    assert f.family == "obrien smith"
    assert f.given == ("ana", "maria")
    assert f.other_families == ("ramirez",)


@pytest.mark.parametrize(("text", "family", "given"), [
    ("WHITFIELD, Jonathan Edward", "whitfield", ("jonathan", "edward")),
    ("Mr. Jonathan Edward Whitfield", "whitfield", ("jonathan", "edward")),
    ("  jonathan   WHITFIELD ", "whitfield", ("jonathan",)),
    ("Whitfield", "whitfield", ()),
])
def test_features_parse_text_only_names(text: str, family: str, given: tuple[str, ...]) -> None:
    f = features(patient(names=[{"text": text}]))
    assert (f.family, f.given) == (family, given)


def test_features_ignore_extensions_and_odd_values() -> None:
    f = features({
        "resourceType": "Patient",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                       "valueString": "Jacobs"}],
        "name": [{"family": "Whitfield", "_family": {"extension": [{"url": "http://example.org/x",
                                                                    "valueString": "y"}]},
                  "given": "Jonathan"}, None, {"text": 42}],
        "birthDate": "1975-03-08T10:00:00+07:00",
        "gender": "MALE",
        "address": {"line": ["12 HARBOR ST.", None], "postalCode": "01970-1234", "district": "Essex"},
        "telecom": [{"system": "phone", "value": "+1 (555) 212-4477"}, {"system": "email", "value": "J@X.ORG"},
                    {"system": "fax", "value": "555 999 0000"}, {"system": "phone", "value": "12"}],
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": "1-2345-67890-12-0"},
                       {"system": "urn:other", "value": nid("110170023070")}],
    })
    assert (f.family, f.given, f.birth_date, f.gender) == ("whitfield", ("jonathan",), "1975-03-08", "male")
    assert (f.postal_code, f.district, f.address_tokens) == ("01970", "essex", {"12", "harbor", "st"})
    assert f.phones == {"552124477"} and f.emails == {"j@x.org"}
    assert f.national_id is None  # wrong check digit; the valid number is under another system


def test_features_read_a_valid_national_id_printed_with_dashes() -> None:
    number = nid("110170023070")
    printed = f"{number[0]}-{number[1:5]}-{number[5:10]}-{number[10:12]}-{number[12]}"
    assert features(patient(national_id=printed)).national_id == number


# -- national id -----------------------------------------------------------------------------

def test_same_national_id_is_certain_whatever_else_differs() -> None:
    a = features(patient(national_id=nid("310170023070")))
    b = features(patient(given=["Maria"], family="Lopez", birth="1990-01-01", gender="female", line=None,
                         phone=None, national_id=nid("310170023070")))
    m = score(a, b)
    assert (m.score, m.grade) == (1.0, "certain")


def test_different_national_ids_are_certainly_not_even_with_identical_names() -> None:
    a = features(patient(national_id=nid("310170023070")))
    b = features(patient(national_id=nid("310170023071")))
    assert a.national_id != b.national_id
    m = score(a, b)
    assert (m.score, m.grade) == (0.0, "certainly-not")


def test_an_invalid_national_id_is_ignored_not_held_against() -> None:
    valid = nid("310170023070")
    typo = valid[:5] + str((int(valid[5]) + 1) % 10) + valid[6:]
    assert features(patient(national_id=typo)).national_id is None
    m = score(features(patient(national_id=valid)), features(patient(national_id=typo)))
    assert m.score >= AUTO_LINK and m.grade == "certain" and m.score < 1.0


# -- perturbations ---------------------------------------------------------------------------

BASE = patient()
LINKED = {
    "identical": patient(),
    "given typo": patient(given=["Jonahtan", "Edward"]),
    "family typo": patient(family="Whitfeild"),
    "family letter dropped": patient(family="Witfield"),
    "nickname": patient(given=["Johnny"]),
    "middle name dropped": patient(given=["Jonathan"]),
    "middle initial": patient(given=["Jonathan", "E."]),
    "called by middle name": patient(given=["Edward"]),
    "initial only": patient(given=["J"]),
    "names swapped": patient(given=["Whitfield"], family="Jonathan"),
    "casing and spaces": patient(given=["  JONATHAN ", "edward"], family="WHITFIELD  "),
    "accents": patient(given=["Jónathan", "Edward"], family="Whitfíeld"),
    "day and month transposed": patient(birth="1975-08-03"),
    "one digit of the birth date": patient(birth="1975-03-09"),
    "birth year only": patient(birth="1975"),
    "gender missing": patient(gender=None),
    "moved and new phone": patient(line="88 Elm Road", city="Lynn", postal="01901", phone="555-300-1000"),
    "address and phone missing": patient(line=None, phone=None),
    "phone formatted differently": patient(phone="+1 (555) 212 4477", line=None),
    "street abbreviated": patient(line="12 HARBOR ST APT 4"),
}


@pytest.mark.parametrize("case", sorted(LINKED))
def test_perturbed_records_of_one_person_are_linked(case: str) -> None:
    m = score(features(BASE), features(LINKED[case]))
    assert m.score >= AUTO_LINK and m.grade == "certain", m
    assert score(features(LINKED[case]), features(BASE)) == m  # symmetric


def test_reasons_name_the_comparison_levels() -> None:
    def reasons(other: dict[str, Any]) -> tuple[str, ...]:
        return score(features(BASE), features(other)).reasons

    assert "given:nickname" in reasons(LINKED["nickname"])
    assert "names:swapped" in reasons(LINKED["names swapped"])
    assert "birth-date:transposed" in reasons(LINKED["day and month transposed"])
    assert "birth-date:one-digit" in reasons(LINKED["one digit of the birth date"])
    assert "given:close" in reasons(LINKED["given typo"])
    assert not any(r.startswith("middle:") for r in reasons(LINKED["middle name dropped"]))
    assert "address:street" in reasons(LINKED["street abbreviated"])


def test_marriage_links_when_the_maiden_name_is_recorded_or_contacts_agree() -> None:
    married = patient(names=[{"use": "official", "family": "Hartley", "given": ["Jonathan"]},
                             {"use": "maiden", "family": "Whitfield", "given": ["Jonathan"]}],
                      line="88 Elm Road", postal="01901", phone=None)
    m = score(features(BASE), features(married))
    assert m.grade == "certain" and "family:previous" in m.reasons
    same_phone = patient(family="Hartley", line=None)
    assert score(features(BASE), features(same_phone)).grade == "certain"
    # A new surname, a new address and no shared phone: left to a person, not linked.
    moved = patient(family="Hartley", line="88 Elm Road", city="Lynn", postal="01901", phone=None)
    assert REVIEW <= score(features(BASE), features(moved)).score < AUTO_LINK


def test_a_missing_birth_date_is_left_for_review() -> None:
    m = score(features(BASE), features(patient(birth=None)))
    assert PROBABLE <= m.score < AUTO_LINK and m.grade == "probable"


def test_gender_disagreement_prevents_an_automatic_link() -> None:
    m = score(features(BASE), features(patient(gender="female")))
    assert REVIEW <= m.score < PROBABLE and "gender:disagree" in m.reasons


def test_missing_fields_are_never_evidence_for_a_match() -> None:
    bare = features(patient(given=[], family="", birth=None, gender=None, line=None, phone=None))
    assert score(features(BASE), bare).score < REVIEW
    names_only = features(patient(birth=None, gender=None, line=None, phone=None))
    assert score(features(BASE), names_only).score < AUTO_LINK


# -- hard negatives --------------------------------------------------------------------------

TWIN = patient(given=["Nathaniel"], national_id=nid("310170023071"))


def test_twins_are_not_linked() -> None:
    a = features(patient())  # no national id on one side: the score decides
    m = score(a, features(TWIN))
    assert m.score < AUTO_LINK and m.grade != "certain"
    sister = patient(given=["Joanna"], gender="female")
    assert score(a, features(sister)).score < REVIEW


def test_namesakes_and_juniors_are_not_linked() -> None:
    namesake = patient(birth="1983-11-21", line="4 Oak Avenue", city="Lowell", postal="01850", phone=None)
    assert score(features(BASE), features(namesake)).score < REVIEW
    junior = patient(birth="2001-06-30")  # same name, same address and phone, born 26 years later
    m = score(features(BASE), features(junior))
    assert m.score < AUTO_LINK and "birth-date:disagree" in m.reasons


# -- blocking --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(LINKED))
def test_perturbed_pairs_share_a_blocking_key_without_phone_or_national_id(case: str) -> None:
    a = dict(BASE, telecom=[])
    b = dict(LINKED[case], telecom=[])
    assert blocking_keys(features(a)) & blocking_keys(features(b))


def test_blocking_keys_are_never_one_coarse_field() -> None:
    f = features(patient(national_id=nid("310170023070"), email="jw@example.org"))
    keys = blocking_keys(f)
    assert {k.split(":")[0] for k in keys} >= {"nid", "tel", "em", "df", "dg", "nm", "np", "dp"}
    for key in keys:
        if key.split(":")[0] not in ("nid", "tel", "em"):
            assert len(key.split(":")) >= 3, key  # two fields at least
    # Two people who share only gender, birth year and town share no key.
    other = features(patient(given=["Maria"], family="Lopez", birth="1975-11-30", line="4 Oak Avenue",
                             postal="01970", phone="555-999-1234"))
    assert not blocking_keys(f) & blocking_keys(other)


# -- FHIR grade ------------------------------------------------------------------------------

def test_grades_fit_a_match_searchset_entry() -> None:
    m = score(features(BASE), features(LINKED["nickname"]))
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{
        "resource": dict(LINKED["nickname"], id="p1"),
        "search": {"mode": "match", "score": m.score,
                   "extension": [{"url": MATCH_GRADE_URL, "valueCode": m.grade}]}}]}
    resources.validate(bundle)
    assert m.grade in ("certain", "probable", "possible", "certainly-not")


# -- the labelled set and the targets --------------------------------------------------------

@pytest.fixture(scope="module")
def labelled() -> tuple[list[matching_eval.Person], list[matching_eval.LabelledRecord]]:
    return matching_eval.labelled_set(SYNTHEA, 300, SEED)


def test_labelled_set_persons_are_distinct_and_records_valid(
        labelled: tuple[list[matching_eval.Person], list[matching_eval.LabelledRecord]]) -> None:
    people, records = labelled
    assert len(people) == 300
    assert len({p.national_id for p in people}) == 300
    assert all(nid(p.national_id[:12]) == p.national_id for p in people)
    assert len({(p.given[0], p.family, p.birth_date) for p in people}) == 300
    kinds = {p.kind for p in people}
    assert {"synthea", "synthetic", "twin", "namesake"} <= kinds
    # Every real Synthea Patient in the folder is a person, under its own name.
    synthea_names = {n["family"] for path in SYNTHEA.glob("*.json")
                     for e in orjson.loads(path.read_bytes()).get("entry", [])
                     if e["resource"]["resourceType"] == "Patient" for n in e["resource"]["name"]}
    assert {re.sub(r"\d", "", n) for n in synthea_names} <= {p.family for p in people if p.kind == "synthea"}
    per_person: defaultdict[str, int] = defaultdict(int)
    for r in records:
        per_person[r.person] += 1
    assert set(per_person.values()) <= {1, 2, 3, 4} and len(per_person) == 300
    for r in records[:150]:
        resources.validate(r.patient, "Patient")
    tags = {t for r in records for t in r.tags}
    assert {"given-typo", "family-typo", "national-id-missing", "moved", "names-swapped"} <= tags


def test_labelled_set_is_deterministic_per_seed(
        labelled: tuple[list[matching_eval.Person], list[matching_eval.LabelledRecord]]) -> None:
    people, records = labelled
    again = matching_eval.labelled_set(SYNTHEA, 300, SEED)
    assert again[0] == people and [r.patient for r in again[1]] == [r.patient for r in records]
    other = matching_eval.labelled_set(SYNTHEA, 300, SEED + 1)
    assert [p.national_id for p in other[0]] != [p.national_id for p in people]


def test_precision_and_recall_meet_the_targets(
        labelled: tuple[list[matching_eval.Person], list[matching_eval.LabelledRecord]]) -> None:
    people, records = labelled
    report = matching_eval.evaluate(records, people=people)
    # Count the pairs again here, independently of evaluate().
    feats = [features(copy.deepcopy(r.patient)) for r in records]
    keys = [blocking_keys(f) for f in feats]
    true_pairs = {(i, j) for i, j in itertools.combinations(range(len(records)), 2)
                  if records[i].person == records[j].person}
    linked = {(i, j) for i, j in itertools.combinations(range(len(records)), 2)
              if keys[i] & keys[j] and score(feats[i], feats[j]).score >= AUTO_LINK}
    precision = len(linked & true_pairs) / len(linked)
    recall = len(linked & true_pairs) / len(true_pairs)
    assert (report.true_pos, report.false_pos, report.true_pairs) == (
        len(linked & true_pairs), len(linked - true_pairs), len(true_pairs))
    assert report.precision == pytest.approx(precision) and report.recall == pytest.approx(recall)
    assert precision >= 0.99, report
    assert recall >= 0.95, report
    assert report.pair_completeness >= 0.98
    assert report.max_candidates <= 20  # candidate sets stay small


def test_a_double_barrelled_name_agrees_with_its_own_part_only() -> None:
    """"Garcia" in one record and "Garcia-Lopez" in the other is one surname, written in full or
    not; "Garcia-Lopez" and "Garcia-Perez" are two surnames that share a part (relatives, or
    nothing): with the same given name, birth date and sex, the first pair links, the second
    is at most a case for review."""
    full = patient(family="Garcia-Lopez", phone=None, line=None)
    assert "family:close" in score(features(patient(family="Garcia", phone=None, line=None)), features(full)).reasons
    other = score(features(patient(family="Garcia-Perez", phone=None, line=None)), features(full))
    assert "family:close" not in other.reasons and other.grade != "certain", other


@pytest.mark.parametrize("family_a, family_b", [("Tasa-Synth", "Saewong-Synth"), ("Marsh", "Walsh"),
                                                ("Nguyen", "Whitfield")])
def test_the_same_given_name_and_birth_date_do_not_link_without_the_family_name(family_a, family_b) -> None:
    """Given name, birth date and sex are shared by about a dozen people per combination in a
    national population: without the family name (or a phone, e-mail, street address) agreeing,
    a pair is for a reviewer at most. The CSV benchmark's synthetic people linked this way."""
    a = features(patient(family=family_a, given=["Orathai"], gender="female", phone=None, line=None))
    b = features(patient(family=family_b, given=["Orathai"], gender="female", phone=None, line=None))
    m = score(a, b)
    assert m.grade != "certain" and m.score < AUTO_LINK, m
    # with a phone number in common the cap does not apply: the phone is evidence of its own
    with_phone = score(features(patient(family=family_a, given=["Orathai"], gender="female", line=None)),
                       features(patient(family=family_b, given=["Orathai"], gender="female", line=None)))
    assert "capped:no-family-agreement" not in with_phone.reasons
