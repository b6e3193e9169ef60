"""SMART scope grammar (App Launch 2.x, v1 spellings) and what granted scopes allow."""
from __future__ import annotations

import pytest

from healthhub.auth.scopes import Grant, ResourceScope, ScopeError, parse_scope


@pytest.mark.parametrize("text,context,rtype,perms", [
    ("patient/Observation.rs", "patient", "Observation", "rs"),
    ("user/*.cruds", "user", "*", "cruds"),
    ("system/Patient.c", "system", "Patient", "c"),
    ("system/*.cud", "system", "*", "cud"),
    ("patient/*.read", "patient", "*", "rs"),        # v1
    ("user/Encounter.write", "user", "Encounter", "cud"),  # v1
    ("system/*.*", "system", "*", "cruds"),          # v1
])
def test_resource_scopes(text, context, rtype, perms):
    scope = parse_scope(text)
    assert isinstance(scope, ResourceScope)
    assert (scope.context, scope.resource_type, scope.permissions) == (context, rtype, frozenset(perms))


def test_granular_scope_keeps_its_query():
    scope = parse_scope("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
                        "observation-category|laboratory")
    assert isinstance(scope, ResourceScope)
    assert scope.query == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)


@pytest.mark.parametrize("text", [
    "patient/Observation.sr",      # out of order
    "patient/Observation.rr",      # repeated
    "patient/Observation.x",
    "patient/Observation.",
    "clinic/Observation.rs",       # unknown context
    "patient/Nonsense.rs",         # unknown type
    "patient/observation.rs",
    "patient/Observation.read?category=x",  # query needs v2 permissions
    "patient/Observation.rs?",     # empty query
    "admin",
    "",
])
def test_bad_scopes_are_refused(text):
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_identity_scopes_pass_through():
    grant = Grant.parse("openid fhirUser launch/patient offline_access stats.read patient/Patient.r")
    assert grant.has("openid") and grant.has("stats.read")
    assert grant.other == {"openid", "fhirUser", "launch/patient", "offline_access", "stats.read"}
    assert [s.text for s in grant.resource_scopes] == ["patient/Patient.r"]


def test_union_of_scopes_and_nothing_more():
    grant = Grant.parse("patient/Observation.rs user/Patient.r")
    assert grant.allows("Observation", "r") and grant.allows("Observation", "s")
    assert not grant.allows("Observation", "c") and not grant.allows("Observation", "u")
    assert grant.allows("Patient", "r") and not grant.allows("Patient", "s")
    assert not grant.allows("Encounter", "r")
    assert not Grant.parse("stats.read").resource_scopes
    wildcard = Grant.parse("system/*.rs")
    assert wildcard.allows("Encounter", "s") and not wildcard.allows("Encounter", "d")


def test_rules_name_the_scopes_that_apply():
    grant = Grant.parse("patient/Observation.rs?category=laboratory patient/Observation.r")
    rules = grant.rules("Observation", "r")
    assert {r.query for r in rules} == {(("category", "laboratory"),), ()}
    assert [r.query for r in grant.rules("Observation", "s")] == [(("category", "laboratory"),)]


def test_narrow_keeps_only_what_the_registration_covers():
    registered = Grant.parse("user/*.rs openid fhirUser launch/patient offline_access")
    asked = Grant.parse("patient/Observation.rs user/Patient.r user/Patient.cu system/*.rs openid profile")
    kept = registered.narrow(asked)
    assert [s.text for s in kept.resource_scopes] == ["patient/Observation.rs", "user/Patient.r"]
    assert kept.other == {"openid"}
    granular = Grant.parse("patient/Observation.rs?category=laboratory")
    assert granular.narrow(Grant.parse("patient/Observation.rs")).resource_scopes == ()
    assert granular.narrow(Grant.parse("patient/Observation.r?category=laboratory")).resource_scopes != ()
