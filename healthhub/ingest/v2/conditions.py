"""DG1 → Condition, AL1 → AllergyIntolerance
(https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-dg1-to-condition.html,
…/ConceptMap-segment-al1-to-allergyintolerance.html)."""
from __future__ import annotations

from typing import Any

from .context import Context, where
from .datatypes import codeable, ei_value
from .model import Seg

_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
# Table 0127 (allergen type) → AllergyIntolerance.category; "DRUG" is a common non-standard spelling.
_ALLERGY_CATEGORY = {"DA": "medication", "DRUG": "medication", "FA": "food", "FOOD": "food", "EA": "environment",
                     "AA": "environment", "PA": "environment", "LA": "environment"}
# Table 0128 (allergy severity) → criticality and reaction.severity.
_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}
_SEVERITY = {"SV": "severe", "MO": "moderate", "MI": "mild"}


def condition(ctx: Context, dg1: Seg, patient_ref: str, encounter_ref: str | None) -> dict[str, Any] | None:
    """DG1 → Condition (category encounter-diagnosis), or None when DG1-3 and DG1-4 are empty."""
    # DG1-2 (coding method, deprecated) names the system when DG1-3.3 does not.
    code = codeable(ctx, dg1.rep(3), where(dg1, 3), dg1.get(2) or None)
    if code is None and dg1.get(4):
        code = {"text": dg1.get(4)}  # DG1-4: free-text description (deprecated, still sent)
    if code is None:
        ctx.warn(dg1, 3, "101", "DG1-3 (diagnosis code) is empty: the diagnosis is not stored")
        return None
    if "text" not in code and dg1.get(4):
        code["text"] = dg1.get(4)
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "category": [{"coding": [{"system": _CATEGORY, "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}]}],
        "code": code,
        "subject": {"reference": patient_ref},
    }
    if encounter_ref:
        res["encounter"] = {"reference": encounter_ref}
    onset = ctx.datetime(dg1, 5)
    if onset:
        res["onsetDateTime"] = onset
    recorded = ctx.datetime(dg1, 19)
    if recorded:
        res["recordedDate"] = recorded
    return res


def condition_key(dg1: Seg, visit: str | None, patient: str) -> str:
    """DG1-20 (diagnosis identifier) when sent, else the visit and DG1-1, else patient and code."""
    ident = ei_value(dg1.rep(20))
    if ident:
        return ident
    if visit:
        return f"{visit}/dg1/{dg1.get(1) or dg1.seq}"
    return f"{patient}/dg1/{dg1.get(3) or dg1.get(4) or dg1.seq}"


def allergy(ctx: Context, al1: Seg, patient_ref: str, encounter_ref: str | None) -> dict[str, Any] | None:
    """AL1 → AllergyIntolerance, or None when AL1-3 is empty."""
    code = codeable(ctx, al1.rep(3), where(al1, 3))
    if code is None:
        ctx.warn(al1, 3, "101", "AL1-3 (allergen) is empty: the allergy is not stored")
        return None
    res: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        # ait-1: clinicalStatus is required unless the record is entered-in-error.
        "clinicalStatus": {"coding": [{"system": _ALLERGY_CLINICAL, "code": "active"}]},
        "code": code,
        "patient": {"reference": patient_ref},
    }
    kind = al1.get(2, 1).upper()
    if kind in _ALLERGY_CATEGORY:
        res["category"] = [_ALLERGY_CATEGORY[kind]]
    if kind in _ALLERGY_CATEGORY or kind == "MA":
        res["type"] = "allergy"  # MC (contraindication) is neither allergy nor intolerance
    severity = al1.get(4, 1).upper()
    if severity in _CRITICALITY:
        res["criticality"] = _CRITICALITY[severity]
    if encounter_ref:
        res["encounter"] = {"reference": encounter_ref}
    onset = ctx.datetime(al1, 6)
    if onset:
        res["onsetDateTime"] = onset
    manifestations = [{"text": r.text(joiner=" ")} for r in al1.reps(5) if r.text(joiner=" ")]
    if manifestations:
        reaction: dict[str, Any] = {"manifestation": manifestations}
        if severity in _SEVERITY:
            reaction["severity"] = _SEVERITY[severity]
        res["reaction"] = [reaction]
    return res


def allergy_key(al1: Seg, patient: str) -> str:
    """One allergy per patient and allergen: re-sent or renumbered AL1 segments update it."""
    rep = al1.rep(3)
    return f"{patient}/al1/{rep.get(1) or rep.get(2) or al1.seq}"
