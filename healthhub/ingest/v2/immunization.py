"""RXA/RXR (VXU) → Immunization
(https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-rxa-to-immunization.html,
…/ConceptMap-segment-rxr-to-immunization.html)."""
from __future__ import annotations

from typing import Any

from healthhub.ingest.normalize import coding_system

from .context import Context, where
from .datatypes import codeable, display_reference, ei_value, xcn_display
from .model import Seg
from .results import number, unit

_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
# RXA-20 (table 0322, completion status) → Immunization.status; RXA-21 D (delete) wins.
_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}
_UNKNOWN_AMOUNT = "999"  # CDC IIS IG: RXA-6 999 means "amount unknown"


def immunization(ctx: Context, rxa: Seg, patient_ref: str, encounter_ref: str | None) -> dict[str, Any]:
    """RXA → Immunization (RXR added later by :func:`add_route`)."""
    res: dict[str, Any] = {"resourceType": "Immunization"}
    completion = rxa.get(20).upper()
    status = _STATUS.get(completion, "completed")  # RXA-20 empty: "assumed to be CP" (v2.5.1 §4A.7.1)
    if completion and completion not in _STATUS:
        ctx.warn(rxa, 20, "103", f"RXA-20 {completion!r} is not an HL7 table 0322 completion status")
    if rxa.get(21).upper() == "D":
        status = "entered-in-error"
    res["status"] = status
    if status == "not-done":
        reason = codeable(ctx, rxa.rep(18), where(rxa, 18), "NIP002")
        res["statusReason"] = reason or (
            {"coding": [{"system": _ACT_REASON, "code": "PATOBJ", "display": "patient objection"}]}
            if completion == "RE" else {"text": "not administered"})
    vaccine = codeable(ctx, rxa.rep(5), where(rxa, 5), "CVX")
    if vaccine is None:
        ctx.error(rxa, 5, "101", "RXA-5 (administered code) is required")
        vaccine = {"text": "unknown"}
    res["vaccineCode"] = vaccine
    res["patient"] = {"reference": patient_ref}
    if encounter_ref:
        res["encounter"] = {"reference": encounter_ref}
    when = ctx.datetime(rxa, 3, severity="E")
    if when:
        res["occurrenceDateTime"] = when
    else:
        # occurrence[x] is required: the text as sent (the error already stops the message).
        res["occurrenceString"] = rxa.get(3) or "unknown"
        if not rxa.get(3):
            ctx.error(rxa, 3, "101", "RXA-3 (date/time start of administration) is required")
    source = rxa.get(9).strip()
    if source in ("00", "01"):
        res["primarySource"] = source == "00"  # NIP001: 00 new record, 01 historical
    place = rxa.rep(11)  # LA2: point of care ^ room ^ bed ^ facility (HD) ^ … ^ street address ^ …
    location = display_reference(" ".join(p for p in (place.get(1), place.get(2), place.get(3), place.get(4, 1)) if p))
    if location:
        res["location"] = location
    manufacturer = rxa.rep(17)
    if manufacturer.get(1) or manufacturer.get(2):
        ref: dict[str, Any] = {}
        if manufacturer.get(1):
            ref["identifier"] = {"system": coding_system(manufacturer.get(3) or "MVX", ctx.sender),
                                 "value": manufacturer.get(1)}
        if manufacturer.get(2):
            ref["display"] = manufacturer.get(2)
        res["manufacturer"] = ref
    lot = rxa.get(15)
    if lot:
        res["lotNumber"] = lot
    expiry = ctx.date(rxa, 16)
    if expiry:
        res["expirationDate"] = expiry
    amount = number(rxa.get(6))
    if amount is not None and rxa.get(6) != _UNKNOWN_AMOUNT and amount > 0:
        units = unit(ctx, rxa, 7)
        res["doseQuantity"] = {"value": amount, **units}
    performers = []
    for rep in rxa.reps(10):
        who = display_reference(xcn_display(rep))
        if who:
            performers.append({"function": {"coding": [{"system": _V2_0443, "code": "AP",
                                                         "display": "Administering Provider"}]}, "actor": who})
    if performers:
        res["performer"] = performers
    if completion == "PA":
        res["isSubpotent"] = True
    return res


def add_route(ctx: Context, res: dict[str, Any], rxr: Seg) -> None:
    """RXR-1 → route, RXR-2 → site."""
    route = codeable(ctx, rxr.rep(1), where(rxr, 1), "HL70162")
    if route:
        res["route"] = route
    site = codeable(ctx, rxr.rep(2), where(rxr, 2), "HL70163")
    if site:
        res["site"] = site


def immunization_key(orc: Seg | None, rxa: Seg, patient: str) -> str:
    """ORC-3 (filler order number), else ORC-2, else patient + vaccine + date."""
    if orc is not None:
        for fld in (3, 2):
            value = ei_value(orc.rep(fld))
            if value:
                return value
    return f"{patient}/{rxa.get(5) or rxa.get(5, 4)}/{rxa.get(3)}"
