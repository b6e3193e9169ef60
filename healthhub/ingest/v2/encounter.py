"""PV1/PV2 → Encounter (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-pv1-to-encounter.html)."""
from __future__ import annotations

from typing import Any

from .bundle import sender_system
from .context import Context
from .datatypes import codeable, display_reference, identifier, pl_display, xcn_display
from .model import Seg

_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# Table 0004 → v3 ActCode (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70004-to-v3-actcode.html);
# the classes the map leaves unmapped (R, B, C, N, U) keep their v2-0004 code.
_CLASS = {"E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"), "O": ("AMB", "ambulatory"),
          "P": ("PRENC", "pre-admission")}
# Trigger event → Encounter.status (HL7 v2.5 §3.3: A01 admit, A04 register, A03 discharge, A05
# pre-admit, A11 cancel admit, A13 cancel discharge).
_STATUS = {"A01": "in-progress", "A04": "in-progress", "A03": "finished", "A05": "planned", "A11": "cancelled",
           "A13": "in-progress"}
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))


def encounter_class(code: str) -> dict[str, Any]:
    """PV1-2 → Encounter.class (required in R4B: an absent class is v3 NullFlavor UNK)."""
    code = " ".join(code.split()).upper()
    if code in _CLASS:
        act, display = _CLASS[code]
        return {"system": _ACT_CODE, "code": act, "display": display}
    if code:
        return {"system": _V2_0004, "code": code}
    return {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}


def visit_identifier(ctx: Context, pv1: Seg) -> dict[str, Any] | None:
    """PV1-19 (visit number, CX) → Encounter.identifier, in the sender's visit system unless its
    assigning authority is a known one."""
    rep = pv1.rep(19)
    ident = identifier(ctx, rep, sender_system(ctx.sender, "visit"))
    if ident is not None and "type" not in ident:
        ident["type"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]}
    return ident


def encounter(ctx: Context, pv1: Seg, pv2: Seg | None, evn: Seg | None, trigger: str,
              patient_ref: str) -> dict[str, Any]:
    """Encounter from PV1 (and PV2); status from the trigger event and the admit/discharge times."""
    res: dict[str, Any] = {"resourceType": "Encounter"}
    start = ctx.datetime(pv1, 44)
    end = ctx.datetime(pv1, 45)
    status = _STATUS.get(trigger)
    if trigger == "A03" and not end and evn is not None:
        # A03 says the visit ended: when PV1-45 is empty, the event time is the end.
        end = ctx.datetime(evn, 6) or ctx.datetime(evn, 2)
    if status is None:
        status = "finished" if end else "in-progress" if start else "unknown"
    res["status"] = status
    res["class"] = encounter_class(pv1.get(2))
    ident = visit_identifier(ctx, pv1)
    if ident:
        res["identifier"] = [ident]
    res["subject"] = {"reference": patient_ref}
    participants = []
    for fld, code, display in _PARTICIPANTS:
        for rep in pv1.reps(fld):
            who = display_reference(xcn_display(rep))
            if who:
                participants.append({"type": [{"coding": [{"system": _PARTICIPATION, "code": code,
                                                           "display": display}]}], "individual": who})
    if participants:
        res["participant"] = participants
    if start or end:
        res["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if pv2 is not None:
        reason = codeable(ctx, pv2.rep(3), "PV2-3")
        if reason:
            res["reasonCode"] = [reason]
    hospitalization: dict[str, Any] = {}
    admit_source = codeable(ctx, pv1.rep(14), "PV1-14", "HL70023")
    if admit_source:
        hospitalization["admitSource"] = admit_source
    disposition = codeable(ctx, pv1.rep(36), "PV1-36", "HL70112")
    if disposition:
        hospitalization["dischargeDisposition"] = disposition
    if hospitalization:
        res["hospitalization"] = hospitalization
    location = display_reference(pl_display(pv1.rep(3)))
    if location:
        res["location"] = [{"location": location}]
    if ctx.sender.organization:
        res["serviceProvider"] = {"reference": ctx.sender.organization}
    return res
