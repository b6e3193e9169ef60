"""Property: under a ``patient/`` token, no search — whatever its includes, revincludes, chains,
``_has`` and iterations — returns a resource outside that patient's compartment.

Two Synthea patients are loaded; the token is for one of them. The oracle is independent of the
hub's compartment code: a resource may come back only if it is that Patient, or its JSON
mentions ``Patient/<id>``, or it describes no patient at all (practitioner, organization, …);
and nothing may mention the other patient.
"""
from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthhub.auth.access import SHARED_TYPES
from healthhub.search.registry import default_registry
from tests.conftest import DATA, authorized, load_json, post_json

SYNTHEA = DATA / "synthea"
BUNDLES = [SYNTHEA / "Abdul_Koepp_e925b0f3-8006-43f6-aa31-94bd215e55e7.json",
           SYNTHEA / "Antonio_Runolfsson_a1795152-808d-4cb9-b259-ce6e3716dedf.json"]
TYPES = ["Patient", "Observation", "Encounter", "Condition", "Procedure", "Immunization", "MedicationRequest",
         "Claim", "ExplanationOfBenefit", "DiagnosticReport", "CarePlan", "Practitioner", "Organization"]
REVINCLUDES = ["Observation:subject", "Observation:encounter", "Encounter:patient", "Encounter:participant",
               "Encounter:service-provider", "Condition:subject", "Claim:patient", "Claim:provider",
               "ExplanationOfBenefit:claim", "Procedure:encounter", "Patient:general-practitioner",
               "MedicationRequest:requester", "CarePlan:subject"]


def _reference_params(rtype):
    return sorted(p.code for p in default_registry().params_for(rtype).values() if p.type == "reference")


@st.composite
def searches(draw, other_family):
    rtype = draw(st.sampled_from(TYPES))
    pairs = []
    refs = _reference_params(rtype)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["include", "revinclude", "chain", "has", "iterate"]))
        if kind == "include" and refs:
            pairs.append(("_include", f"{rtype}:{draw(st.sampled_from(refs))}"))
        elif kind == "iterate":
            src = draw(st.sampled_from(TYPES))
            src_refs = _reference_params(src)
            if src_refs:
                pairs.append(("_include:iterate", f"{src}:{draw(st.sampled_from(src_refs))}"))
        elif kind == "revinclude":
            pairs.append(("_revinclude" + draw(st.sampled_from(["", ":iterate"])), draw(st.sampled_from(REVINCLUDES))))
        elif kind == "chain" and {"subject", "patient"} & set(refs):
            param = "patient" if "patient" in refs else "subject"
            pairs.append((f"{param}:Patient.{draw(st.sampled_from(['name', 'gender', 'family']))}",
                          draw(st.sampled_from([other_family, "male", "female", "a"]))))
        elif kind == "has" and rtype == "Patient":
            pairs.append((draw(st.sampled_from(["_has:Observation:subject:status", "_has:Encounter:patient:status",
                                                "_has:Condition:subject:clinical-status"])),
                          draw(st.sampled_from(["final", "finished", "active", "resolved"]))))
    pairs.append(("_count", str(draw(st.sampled_from([5, 50, 200])))))
    return rtype, pairs


def test_no_search_escapes_the_patient_compartment(app):
    admin = authorized(app)
    patients = []
    for path in BUNDLES:
        resp = post_json(admin, "/fhir", load_json(path))
        assert resp.status_code == 200
        pid = next(e["response"]["location"].split("/")[1] for e in resp.json["entry"]
                   if e["response"]["location"].startswith("Patient/"))
        family = admin.get(f"/fhir/Patient/{pid}").json["name"][0]["family"]
        patients.append((pid, family))
    (mine, _), (theirs, their_family) = patients
    web = authorized(app, "patient/*.rs", patient=mine, client_id="app", subject="u")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
              database=None)
    @given(searches(their_family))
    def check(search):
        rtype, pairs = search
        resp = web.get(f"/fhir/{rtype}", query_string=pairs)
        assert resp.status_code in (200, 400), (rtype, pairs, resp.status_code)
        if resp.status_code != 200:
            return
        for entry in resp.json.get("entry", []):
            if entry.get("search", {}).get("mode") == "outcome":
                continue  # the OperationOutcome of warnings
            resource = entry["resource"]
            text = orjson.dumps(resource).decode()
            where = (rtype, pairs, resource["resourceType"], resource["id"])
            assert f"Patient/{theirs}" not in text and resource["id"] != theirs, where
            if resource["resourceType"] in SHARED_TYPES:
                continue
            assert (resource["resourceType"] == "Patient" and resource["id"] == mine) or f"Patient/{mine}" in text, \
                where

    check()
    # The oracle is not vacuous: the same searches with a system token do return the other patient.
    assert authorized(app).get(f"/fhir/Observation?subject=Patient/{theirs}&_count=1").json["total"] > 0
