"""Unit tests of the FHIR search parser (pure: no database, no app).

Grammar under test: https://hl7.org/fhir/R4B/search.html
"""
from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from healthhub.outcome import FhirError
from healthhub.search.parser import MAX_COUNT, parse, split_escaped, unescape
from healthhub.search.registry import Registry, default_registry
from healthhub.search.request import (
    PREFIXES,
    Chain,
    Clause,
    CompositeValue,
    DateValue,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    ReverseChain,
    SearchRequest,
    TokenValue,
)

BASE = "http://hub.test/fhir"


@pytest.fixture(scope="module")
def reg() -> Registry:
    return default_registry()


def p(reg: Registry, rtype: str, query: list[tuple[str, str]], *, strict: bool = False,
      base_url: str | None = None) -> SearchRequest:
    return parse(rtype, query, reg, strict=strict, base_url=base_url)


def one(reg: Registry, rtype: str, name: str, value: str, *, base_url: str | None = None) -> Clause:
    req = p(reg, rtype, [(name, value)], base_url=base_url)
    assert len(req.clauses) == 1, req
    return req.clauses[0]


def err(reg: Registry, rtype: str, query: list[tuple[str, str]], *, strict: bool = False) -> FhirError:
    with pytest.raises(FhirError) as info:
        p(reg, rtype, query, strict=strict)
    e = info.value
    assert e.status == 400
    assert e.issues and all(i.expression for i in e.issues), "every issue names the parameter"
    return e


# -- escaping, OR and AND --------------------------------------------------------------------------


def test_split_escaped_keeps_escapes_and_unescape_removes_them() -> None:
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert split_escaped(r"a\\,b", ",") == [r"a\\", "b"]
    assert unescape(r"a\,b\|c\$d\\e") == r"a,b|c$d\e"
    assert unescape(r"a\xb") == r"a\xb"  # other backslashes stay


def test_or_values_split_on_unescaped_comma(reg: Registry) -> None:
    c = one(reg, "Patient", "family", r"Smith,Jones\,Jr,O\\")
    assert c.values == ("Smith", "Jones,Jr", "O\\")


def test_repeated_parameter_is_and(reg: Registry) -> None:
    req = p(reg, "Patient", [("given", "a"), ("given", "b,c")])
    assert [c.values for c in req.clauses] == [("a",), ("b", "c")]


def test_escaped_pipe_in_token_and_dollar_in_composite(reg: Registry) -> None:
    assert one(reg, "Patient", "identifier", r"urn:x|a\|b").values == (TokenValue("urn:x", "a|b"),)
    c = one(reg, "Observation", "code-value-string", r"http://loinc.org|1$a\$b")
    assert c.values == (CompositeValue((TokenValue("http://loinc.org", "1"), "a$b")),)


def test_empty_value_is_ignored_with_warning(reg: Registry) -> None:
    req = p(reg, "Patient", [("family", ""), ("given", "a,,b")])
    assert [c.values for c in req.clauses] == [("a", "b")]
    assert any("no value" in w for w in req.warnings)
    # strict (and conditional criteria) must not silently widen the match
    err(reg, "Patient", [("identifier", "")], strict=True)
    err(reg, "Patient", [("identifier", ",")], strict=True)


# -- string ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("modifier", [None, "exact", "contains"])
def test_string_modifiers(reg: Registry, modifier: str | None) -> None:
    name = "name" if modifier is None else f"name:{modifier}"
    c = one(reg, "Patient", name, "Zoë")
    assert (c.param.code, c.modifier, c.values) == ("name", modifier, ("Zoë",))


def test_string_text_modifier_is_rejected(reg: Registry) -> None:
    e = err(reg, "Patient", [("name:text", "x")])
    assert e.issues[0].expression == ("name:text",)


def test_missing_modifier(reg: Registry) -> None:
    assert one(reg, "Patient", "birthdate:missing", "true").values == (True,)
    assert one(reg, "Patient", "family:missing", "false").values == (False,)
    assert one(reg, "Observation", "subject:missing", "true").modifier == "missing"
    assert one(reg, "Observation", "value-quantity:missing", "true").values == (True,)
    err(reg, "Patient", [("birthdate:missing", "yes")])


# -- token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("http://loinc.org|1234-5", TokenValue("http://loinc.org", "1234-5")),
    ("|1234-5", TokenValue("", "1234-5")),
    ("1234-5", TokenValue(None, "1234-5")),
    ("http://loinc.org|", TokenValue("http://loinc.org", None)),
])
def test_token_forms(reg: Registry, value: str, expected: TokenValue) -> None:
    assert one(reg, "Observation", "code", value).values == (expected,)


def test_token_text_not_and_of_type(reg: Registry) -> None:
    assert one(reg, "Observation", "code:text", "glucose").values == ("glucose",)
    c = one(reg, "Patient", "gender:not", "male")
    assert (c.modifier, c.values) == ("not", (TokenValue(None, "male"),))
    c = one(reg, "Patient", "identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|123")
    assert c.values == (OfTypeValue("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "123"),)
    assert one(reg, "Patient", "identifier:of-type", "|MR|123").values == (OfTypeValue(None, "MR", "123"),)
    err(reg, "Patient", [("identifier:of-type", "MR|123")])


@pytest.mark.parametrize("modifier", ["in", "not-in", "above", "below"])
def test_token_terminology_modifiers_not_supported(reg: Registry, modifier: str) -> None:
    e = err(reg, "Observation", [(f"code:{modifier}", "http://x/vs")])
    assert e.issues[0].code == "not-supported"


def test_token_too_many_pipes(reg: Registry) -> None:
    err(reg, "Observation", [("code", "a|b|c")])


# -- reference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("Patient/123", ReferenceValue("Patient", "123", None)),
    ("Patient/123/_history/4", ReferenceValue("Patient", "123", None)),
    ("123", ReferenceValue(None, "123", None)),
    (f"{BASE}/Patient/9", ReferenceValue("Patient", "9", None)),
    (f"{BASE}/Patient/9/_history/1", ReferenceValue("Patient", "9", None)),
    ("http://other.org/fhir/Patient/9", ReferenceValue(None, None, "http://other.org/fhir/Patient/9")),
])
def test_reference_forms(reg: Registry, value: str, expected: ReferenceValue) -> None:
    assert one(reg, "Observation", "subject", value, base_url=BASE + "/").values == (expected,)


def test_canonical_reference_drops_version(reg: Registry) -> None:
    c = one(reg, "QuestionnaireResponse", "questionnaire", "http://x.org/Questionnaire/q|2.0")
    assert c.values == (ReferenceValue(None, None, "http://x.org/Questionnaire/q"),)


def test_reference_type_modifier(reg: Registry) -> None:
    c = one(reg, "Observation", "subject:Patient", "123")
    assert (c.modifier, c.values) == ("Patient", (ReferenceValue("Patient", "123", None),))
    err(reg, "Observation", [("subject:Encounter", "1")])  # not a target of subject
    err(reg, "Observation", [("subject:Nonsense", "1")])
    err(reg, "Observation", [("subject:Patient", "Group/1")])  # type clash


def test_reference_bad_type_or_shape(reg: Registry) -> None:
    err(reg, "Observation", [("subject", "Encounter/1")])
    err(reg, "Observation", [("subject", "a/b/c")])
    err(reg, "Observation", [("subject", "Patient/")])


def test_reference_identifier(reg: Registry) -> None:
    c = one(reg, "Observation", "subject:identifier", "urn:mrn|42")
    assert (c.modifier, c.values) == ("identifier", (TokenValue("urn:mrn", "42"),))


def test_reference_above_below_only_on_canonicals(reg: Registry) -> None:
    c = one(reg, "CarePlan", "instantiates-canonical:below", "http://x.org/PlanDefinition/")
    assert c.values == (ReferenceValue(None, None, "http://x.org/PlanDefinition/"),)
    one(reg, "QuestionnaireResponse", "questionnaire:above", "http://x.org/Questionnaire/q/sub")
    err(reg, "Observation", [("subject:below", "Patient/1")])
    err(reg, "Observation", [("subject:not", "Patient/1")])


# -- uri ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modifier", [None, "above", "below"])
def test_uri(reg: Registry, modifier: str | None) -> None:
    name = "url" if modifier is None else f"url:{modifier}"
    c = one(reg, "ValueSet", name, "http://acme.org/fhir/ValueSet/x")
    assert (c.modifier, c.values) == (modifier, ("http://acme.org/fhir/ValueSet/x",))


def test_uri_rejects_other_modifiers(reg: Registry) -> None:
    err(reg, "ValueSet", [("url:contains", "acme")])


def test_meta_parameters_are_ordinary_clauses(reg: Registry) -> None:
    req = p(reg, "Patient", [("_tag", "urn:t|a"), ("_profile", "http://p"), ("_security", "R"),
                             ("_source", "urn:src")])
    assert [c.param.code for c in req.clauses] == ["_tag", "_profile", "_security", "_source"]
    assert req.clauses[0].values == (TokenValue("urn:t", "a"),)


# -- prefixes: date, number, quantity -------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_on_date_number_quantity(reg: Registry, prefix: str) -> None:
    d = one(reg, "Patient", "birthdate", f"{prefix}2020-03")
    assert d.values == (DateValue(prefix, datetime(2020, 3, 1, tzinfo=UTC),
                                  datetime(2020, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)),)
    n = one(reg, "RiskAssessment", "probability", f"{prefix}0.8")
    assert n.values == (NumberValue(prefix, Decimal("0.8")),)
    q = one(reg, "Observation", "value-quantity", f"{prefix}5.4|http://unitsofmeasure.org|mg")
    assert q.values == (QuantityValue(prefix, Decimal("5.4"), "http://unitsofmeasure.org", "mg"),)


def test_default_prefix_is_eq_and_negative_numbers(reg: Registry) -> None:
    assert one(reg, "RiskAssessment", "probability", "100").values == (NumberValue("eq", Decimal(100)),)
    assert one(reg, "RiskAssessment", "probability", "lt-3").values == (NumberValue("lt", Decimal(-3)),)
    assert one(reg, "RiskAssessment", "probability", "1e2").values == (NumberValue("eq", Decimal("1e2")),)


def test_date_precisions_and_zone(reg: Registry) -> None:
    c = one(reg, "Observation", "date", "ge2021-01-02T10:00:00+02:00")
    assert c.values[0] == DateValue("ge", datetime(2021, 1, 2, 8, tzinfo=UTC),
                                    datetime(2021, 1, 2, 8, 0, 0, 999999, tzinfo=UTC))
    # a '+' that was not percent-encoded arrives as a space
    assert one(reg, "Observation", "date", "2021-01-02T10:00:00 02:00").values == (
        DateValue("eq", datetime(2021, 1, 2, 8, tzinfo=UTC), datetime(2021, 1, 2, 8, 0, 0, 999999, tzinfo=UTC)),)


@pytest.mark.parametrize("value,expected", [
    ("5.4", QuantityValue("eq", Decimal("5.4"), None, None)),
    ("5.4||mg", QuantityValue("eq", Decimal("5.4"), None, "mg")),
    ("ap5|http://unitsofmeasure.org|mm[Hg]", QuantityValue("ap", Decimal(5), "http://unitsofmeasure.org", "mm[Hg]")),
])
def test_quantity_forms(reg: Registry, value: str, expected: QuantityValue) -> None:
    assert one(reg, "Observation", "value-quantity", value).values == (expected,)


@pytest.mark.parametrize("name,value", [
    ("birthdate", "2021-13-45"), ("birthdate", "2021-02-30"), ("birthdate", "yesterday"), ("birthdate", "gt"),
    ("value-quantity", "gt"), ("value-quantity", "ab100"), ("value-quantity", "5|mg"),
    ("value-quantity", "NaN"), ("probability", "1e999999999"), ("probability", "gt"),
])
def test_bad_dates_and_numbers(reg: Registry, name: str, value: str) -> None:
    rtype = "RiskAssessment" if name == "probability" else "Observation" if name.startswith("value") else "Patient"
    e = err(reg, rtype, [(name, value)])
    assert e.issues[0].expression == (name,)


def test_bad_date_message_names_parameter_and_value(reg: Registry) -> None:
    e = err(reg, "Patient", [("birthdate", "2021-13-45")])
    assert "birthdate" in e.issues[0].diagnostics and "2021-13-45" in e.issues[0].diagnostics


@pytest.mark.parametrize("name", ["birthdate:exact", "value-quantity:not", "code-value-quantity:exact"])
def test_date_number_quantity_composite_take_only_missing(reg: Registry, name: str) -> None:
    rtype = "Patient" if name.startswith("birthdate") else "Observation"
    err(reg, rtype, [(name, "1")])


def test_unknown_modifier(reg: Registry) -> None:
    err(reg, "Patient", [("family:fuzzy", "x")])
    err(reg, "Patient", [("family:", "x")])


# -- composite ------------------------------------------------------------------------------------


def test_composite(reg: Registry) -> None:
    c = one(reg, "Observation", "code-value-quantity",
            "http://loinc.org|8480-6$gt140|http://unitsofmeasure.org|mm[Hg],|x$lt1")
    assert c.values == (
        CompositeValue((TokenValue("http://loinc.org", "8480-6"),
                        QuantityValue("gt", Decimal(140), "http://unitsofmeasure.org", "mm[Hg]"))),
        CompositeValue((TokenValue("", "x"), QuantityValue("lt", Decimal(1), None, None))),
    )
    date = one(reg, "Observation", "code-value-date", "1234$ge2020")
    assert isinstance(date.values[0], CompositeValue)
    assert date.values[0].parts[1] == DateValue("ge", datetime(2020, 1, 1, tzinfo=UTC),
                                                 datetime(2020, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))


def test_composite_wrong_number_of_parts(reg: Registry) -> None:
    err(reg, "Observation", [("code-value-quantity", "1234")])
    err(reg, "Observation", [("code-value-quantity", "1$2$3")])
    err(reg, "Observation", [("code-value-quantity", "1234$gtx")])


# -- chains -----------------------------------------------------------------------------------------


def test_chain_with_type(reg: Registry) -> None:
    c = one(reg, "Observation", "subject:Patient.name", "Smith")
    assert c.param.code == "name" and c.values == ("Smith",)
    assert len(c.chain) == 1 and isinstance(c.chain[0], Chain)
    assert (c.chain[0].param.code, c.chain[0].target_type) == ("subject", "Patient")


def test_chain_ending_in_modifier(reg: Registry) -> None:
    c = one(reg, "Observation", "subject:Patient.name:exact", "Smith")
    assert (c.param.code, c.modifier) == ("name", "exact")


def test_chain_single_target_is_used(reg: Registry) -> None:
    c = one(reg, "Observation", "encounter.status", "finished")
    assert isinstance(c.chain[0], Chain) and c.chain[0].target_type == "Encounter"


def test_shared_parameter_targets_are_narrowed_per_type(reg: Registry) -> None:
    # clinical-encounter targets Encounter and EpisodeOfCare, but Observation.encounter is an Encounter
    err(reg, "Observation", [("encounter", "EpisodeOfCare/1")])
    err(reg, "EpisodeOfCare", [("_has:Procedure:encounter:status", "completed")])
    # … and R4B narrowed DocumentReference's too (context.encounter.where(resolve() is Encounter))
    err(reg, "EpisodeOfCare", [("_has:DocumentReference:encounter:status", "current")])
    assert one(reg, "Encounter", "_has:DocumentReference:encounter:status", "current").chain
    assert one(reg, "Observation", "patient", "Patient/1").values == (ReferenceValue("Patient", "1", None),)
    err(reg, "Observation", [("patient", "Group/1")])  # Observation.subject.where(resolve() is Patient)


def test_chain_target_found_by_the_chained_parameter(reg: Registry) -> None:
    c = one(reg, "Observation", "subject.birthdate", "2000")  # only Patient has birthdate
    assert isinstance(c.chain[0], Chain) and c.chain[0].target_type == "Patient"


def test_ambiguous_chain_asks_for_type(reg: Registry) -> None:
    e = err(reg, "Observation", [("subject.name", "Smith")])
    assert ":Patient" in e.issues[0].diagnostics or "add the type" in e.issues[0].diagnostics
    assert e.issues[0].expression == ("subject.name",)


def test_multi_level_chain(reg: Registry) -> None:
    c = one(reg, "Observation", "subject:Patient.organization.name", "Acme")
    assert [(link.param.code, link.target_type) for link in c.chain if isinstance(link, Chain)] == [
        ("subject", "Patient"), ("organization", "Organization")]
    assert c.param.code == "name"
    assert "Organization" in c.param.base


def test_chain_errors(reg: Registry) -> None:
    err(reg, "Observation", [("code.name", "x")])  # not a reference
    err(reg, "Observation", [("subject:missing.name", "x")])
    err(reg, "Observation", [("subject:Patient.", "x")])
    err(reg, "Observation", [("subject:Patient.organization.partof.partof.partof.partof.name", "x")])  # too deep


def test_unknown_chained_parameter_is_unknown(reg: Registry) -> None:
    req = p(reg, "Observation", [("subject:Patient.nonsense", "x")])
    assert not req.clauses and req.warnings
    err(reg, "Observation", [("subject:Patient.nonsense", "x")], strict=True)


# -- reverse chains ---------------------------------------------------------------------------------


def test_has(reg: Registry) -> None:
    c = one(reg, "Patient", "_has:Observation:patient:code", "1234-5")
    assert c.param.code == "code" and c.values == (TokenValue(None, "1234-5"),)
    assert len(c.chain) == 1 and isinstance(c.chain[0], ReverseChain)
    assert (c.chain[0].source_type, c.chain[0].param.code) == ("Observation", "patient")


def test_nested_has(reg: Registry) -> None:
    c = one(reg, "Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/1")
    assert [(link.source_type, link.param.code) for link in c.chain if isinstance(link, ReverseChain)] == [
        ("Observation", "patient"), ("AuditEvent", "entity")]
    assert c.values == (ReferenceValue("Practitioner", "1", None),)


def test_has_with_modifier_and_chain(reg: Registry) -> None:
    c = one(reg, "Patient", "_has:Observation:patient:code:not", "x")
    assert c.modifier == "not"


@pytest.mark.parametrize("name", [
    "_has", "_has:Observation", "_has:Observation:patient", "_has:Nope:patient:code",
    "_has:Observation:code:code",  # not a reference
    "_has:Observation:encounter:code",  # encounter cannot refer to Patient
])
def test_has_errors(reg: Registry, name: str) -> None:
    err(reg, "Patient", [(name, "x")])


# -- result parameters ----------------------------------------------------------------------------


def test_id_and_last_updated(reg: Registry) -> None:
    req = p(reg, "Patient", [("_id", "a,b"), ("_id", "c"), ("_lastUpdated", "ge2020,lt2019")])
    assert req.ids == [("a", "b"), ("c",)]
    assert [v.prefix for v in req.last_updated[0]] == ["ge", "lt"]
    assert not req.clauses
    c = one(reg, "Patient", "_id:not", "a")
    assert (c.param.code, c.modifier) == ("_id", "not")
    err(reg, "Patient", [("_id:missing", "true")])
    err(reg, "Patient", [("_lastUpdated", "2020-99")])


@pytest.mark.parametrize("value,expected", [("0", 0), ("10", 10), ("1000", 1000), ("1001", MAX_COUNT),
                                            ("0005", 5), ("99999999999999999999", MAX_COUNT)])
def test_count(reg: Registry, value: str, expected: int) -> None:
    assert p(reg, "Patient", [("_count", value)]).count == expected


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "1_0", "+3"])
def test_bad_count(reg: Registry, value: str) -> None:
    e = err(reg, "Patient", [("_count", value)])
    assert e.issues[0].expression == ("_count",)


def test_default_count(reg: Registry) -> None:
    assert p(reg, "Patient", []).count == 20


def test_sort(reg: Registry) -> None:
    req = p(reg, "Patient", [("_sort", "family,-birthdate,_id,-_lastUpdated")])
    assert [(k.param.code, k.descending) for k in req.sort] == [
        ("family", False), ("birthdate", True), ("_id", False), ("_lastUpdated", True)]
    err(reg, "Patient", [("_sort", "nonsense")])
    err(reg, "Patient", [("_sort", "-")])
    err(reg, "Observation", [("_sort", "code-value-quantity")])


@pytest.mark.parametrize("value", ["true", "text", "data", "count", "false"])
def test_summary(reg: Registry, value: str) -> None:
    assert p(reg, "Patient", [("_summary", value)]).summary == value


@pytest.mark.parametrize("value", ["none", "estimate", "accurate"])
def test_total(reg: Registry, value: str) -> None:
    assert p(reg, "Patient", [("_total", value)]).total == value


def test_bad_summary_total_and_repeats(reg: Registry) -> None:
    err(reg, "Patient", [("_summary", "yes")])
    err(reg, "Patient", [("_total", "exact")])
    err(reg, "Patient", [("_count", "1"), ("_count", "2")])
    err(reg, "Patient", [("_count:exact", "1")])


def test_elements(reg: Registry) -> None:
    req = p(reg, "Patient", [("_elements", "identifier, Patient.name,active,name")])
    assert req.elements == ("identifier", "name", "active")
    err(reg, "Patient", [("_elements", "name;drop")])


def test_format_pretty_ignored_and_cursor_kept(reg: Registry) -> None:
    req = p(reg, "Patient", [("_format", "json"), ("_pretty", "true"), ("_cursor", "abc")], strict=True)
    assert req.cursor == "abc" and not req.clauses and not req.warnings


def test_include_and_revinclude(reg: Registry) -> None:
    req = p(reg, "Observation", [("_include", "Observation:subject"),
                                 ("_include", "Observation:subject:Patient"),
                                 ("_include:iterate", "Patient:organization"),
                                 ("_include:recurse", "Patient:general-practitioner:Practitioner"),
                                 ("_include", "*"),
                                 ("_revinclude", "Provenance:target"),
                                 ("_revinclude:iterate", "Observation:*")])
    got = [(i.source_type, i.param.code if i.param else None, i.target_type, i.iterate, i.reverse)
           for i in req.includes]
    assert got == [
        ("Observation", "subject", None, False, False),
        ("Observation", "subject", "Patient", False, False),
        ("Patient", "organization", None, True, False),
        ("Patient", "general-practitioner", "Practitioner", True, False),
        ("Observation", None, None, False, False),
        ("Provenance", "target", None, False, True),
        ("Observation", None, None, True, True),
    ]


def test_include_that_can_add_nothing_warns(reg: Registry) -> None:
    req = p(reg, "Observation", [("_include", "Patient:organization"), ("_revinclude", "Encounter:patient")])
    assert len(req.includes) == 2 and len(req.warnings) == 2


@pytest.mark.parametrize("name,value", [
    ("_include", "Observation:code"),  # not a reference
    ("_include", "Observation:nonsense"),
    ("_include", "Nope:subject"),
    ("_include", "Observation:subject:Encounter"),  # not a target
    ("_include", "Observation"),
    ("_include:deep", "Observation:subject"),
    ("_revinclude", "*"),
])
def test_include_errors(reg: Registry, name: str, value: str) -> None:
    err(reg, "Observation", [(name, value)])


# -- unknown and unsupported parameters -------------------------------------------------------------


def test_unknown_lenient_warns(reg: Registry) -> None:
    req = p(reg, "Patient", [("nonsense", "1"), ("family", "x")])
    assert [c.param.code for c in req.clauses] == ["family"]
    assert len(req.warnings) == 1 and "nonsense" in req.warnings[0]


def test_unknown_strict_names_them_all(reg: Registry) -> None:
    e = err(reg, "Patient", [("nonsense", "1"), ("family", "x"), ("other:exact", "2")], strict=True)
    assert [i.expression for i in e.issues] == [("nonsense",), ("other:exact",)]


@pytest.mark.parametrize("name", ["_text", "_content", "_list", "_query", "_filter", "_contained",
                                  "_containedType", "_text:exact"])
def test_known_but_unsupported(reg: Registry, name: str) -> None:
    e = err(reg, "Patient", [(name, "x")])
    assert e.issues[0].code == "not-supported"


def test_special_parameter_not_supported(reg: Registry) -> None:
    e = err(reg, "Location", [("near", "42.25|-83.69|10|km")])
    assert e.issues[0].code == "not-supported" and e.issues[0].expression == ("near",)


# -- limits and hostile input -----------------------------------------------------------------------


def test_injection_strings_are_just_values(reg: Registry) -> None:
    evil = "'; DROP TABLE resources;--"
    assert one(reg, "Patient", "family", evil).values == (evil,)
    assert one(reg, "Patient", "identifier", evil).values == (TokenValue(None, evil),)
    assert one(reg, "Observation", "subject", evil).values == (ReferenceValue(None, evil, None),)
    assert p(reg, "Patient", [("_id", evil)]).ids == [(evil,)]


def test_too_many_or_values(reg: Registry) -> None:
    e = err(reg, "Patient", [("family", ",".join(["x"] * 10_001))])
    assert e.issues[0].expression == ("family",) and "1000" in e.issues[0].diagnostics
    assert len(one(reg, "Patient", "family", ",".join(["x"] * 1000)).values) == 1000


def test_too_many_parameters(reg: Registry) -> None:
    e = err(reg, "Patient", [("family", "x")] * 100 + [("given", "y")])
    assert e.issues[0].expression == ("given",) and "100" in e.issues[0].diagnostics
    assert len(p(reg, "Patient", [("family", "x")] * 100).clauses) == 100


@pytest.mark.parametrize("name,value", [
    ("birthdate", "\x00"), ("family", "\\"), ("subject", "\\|\\|"), ("code", "|"),
    ("value-quantity", "1|||"), ("date", "9" * 5000), ("probability", "-"), ("_count", "9" * 5000),
])
def test_garbage_never_escapes_as_another_exception(reg: Registry, name: str, value: str) -> None:
    rtype = {"birthdate": "Patient", "family": "Patient", "probability": "RiskAssessment"}.get(name, "Observation")
    try:
        p(reg, rtype, [(name, value)])
    except FhirError as e:
        assert e.status == 400 and e.issues[0].expression


def test_random_input_only_ever_raises_a_400(reg: Registry) -> None:
    """A small deterministic fuzz over name and value fragments: nothing but a 400 FhirError escapes."""
    rng = random.Random(20240601)
    names = ["subject", "patient", "name", "code", "value-quantity", "code-value-quantity", "date", "_id", ":",
             ".", "_has", "Observation", "Patient", "missing", "not", "of-type", "identifier", "below", "_include",
             "_sort", "_count", "*", "questionnaire", "near", ""]
    values = ["", ",", "|", "$", "\\", "\\,", "gt", "ap", "-", "1", "2020", "-13", "T10:00", "+02:00", " ",
              "http://x/", "Patient/", "_history", "/", "e999", "NaN", ":", "true", "\x00", "é"]
    for _ in range(3000):
        rtype = rng.choice(["Patient", "Observation", "QuestionnaireResponse", "Location"])
        query = [("".join(rng.choices(names, k=rng.randint(1, 5))), "".join(rng.choices(values, k=rng.randint(0, 6))))
                 for _ in range(rng.randint(1, 3))]
        try:
            parse(rtype, query, reg, strict=rng.random() < 0.5, base_url=BASE)
        except FhirError as e:
            assert e.status == 400 and all(i.expression for i in e.issues), (query, e)
