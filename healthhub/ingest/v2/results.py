"""OBR → DiagnosticReport, OBX → Observation, SPM → Specimen
(https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-obr-to-diagnosticreport.html,
…/ConceptMap-segment-obx-to-observation.html, …/ConceptMap-segment-spm-to-specimen.html)."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from healthhub.ingest.normalize import ucum_unit

from .context import Context, where
from .datatypes import codeable, display_reference, ei_value, xcn_display, xon_display
from .model import Rep, Seg

_UCUM = "http://unitsofmeasure.org"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# Table 0085 → Observation.status (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70085-to-observation-status.html)
OBSERVATION_STATUS = {"C": "corrected", "D": "entered-in-error", "F": "final", "I": "registered", "N": "cancelled",
                      "O": "registered", "P": "preliminary", "R": "preliminary", "S": "preliminary", "U": "final",
                      "W": "entered-in-error", "X": "cancelled", "A": "amended"}
# Table 0123 → DiagnosticReport.status (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70123-to-diagnostic-report-status.html)
REPORT_STATUS = {"O": "registered", "I": "registered", "S": "registered", "A": "partial", "P": "preliminary",
                 "C": "corrected", "R": "partial", "F": "final", "X": "cancelled", "Y": "final", "Z": "final"}
# Table 0078 codes that are also v3 ObservationInterpretation codes (the IG's map is the identity on these).
_INTERPRETATIONS = frozenset({"<", ">", "A", "AA", "AC", "B", "CAR", "D", "DET", "E", "EX", "EXP", "H", "HH", "HM",
                              "HU", "HX", "I", "IE", "IND", "L", "LL", "LU", "LX", "MS", "N", "NCL", "ND", "NEG", "NR",
                              "NS", "OBX", "POS", "QCF", "R", "RR", "S", "SDD", "SYN-R", "SYN-S", "TOX", "U", "UNE",
                              "VS", "W", "WR"})
# HL7 table 0125 (value type): every type an OBX-2 may name.
VALUE_TYPES = frozenset({"AD", "CE", "CF", "CK", "CN", "CNE", "CP", "CWE", "CX", "DR", "DT", "DTM", "ED", "EI", "FT",
                         "HD", "ID", "IS", "MA", "MO", "NA", "NM", "PN", "RP", "SN", "ST", "TM", "TN", "TS", "TX",
                         "XAD", "XCN", "XON", "XPN", "XTN", "CM", "SAD"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_RANGE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:-|_|to|–)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$",
                    re.IGNORECASE)
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?(?:[+-]\d{4})?$")


def number(text: str) -> Decimal | None:
    """An NM value as a Decimal (precision kept: ``1.50`` stays ``1.50``), else None."""
    text = text.strip()
    if not _NUMBER.match(text) or len(text) > 32:
        return None
    return Decimal(text.lstrip("+"))


def unit(ctx: Context, obx: Seg, fld: int = 6) -> dict[str, Any]:
    """OBX-6 (CWE) → the unit part of a Quantity: ``unit`` is the text as sent (CWE-2, else
    CWE-1), ``system``/``code`` only when it is UCUM."""
    rep = obx.rep(fld)
    written = rep.get(1) or rep.get(2)
    if not written:
        return {}
    out: dict[str, Any] = {"unit": rep.get(2) or rep.get(1)}
    code, note = ucum_unit(rep.get(1) or rep.get(2), location=where(obx, fld))
    ctx.note(note, where(obx, fld))
    if code:
        out.update(system=_UCUM, code=code)
    return out


def _quantity(value: Decimal, units: dict[str, Any], comparator: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if comparator:
        out["comparator"] = comparator
    out.update(units)
    return out


def _structured_numeric(rep: Rep, units: dict[str, Any]) -> tuple[str, Any] | None:
    """SN (comparator ^ num1 ^ separator/suffix ^ num2) → valueQuantity, valueRange or valueRatio
    (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-datatype-sn-to-observation.html)."""
    comparator, first, separator, second = rep.get(1), number(rep.get(2)), rep.get(3), number(rep.get(4))
    if first is None:
        return None
    if not separator and second is None:
        if comparator in ("", "="):
            return "valueQuantity", _quantity(first, units)
        if comparator in _COMPARATORS:
            return "valueQuantity", _quantity(first, units, _COMPARATORS[comparator])
        return None
    if comparator not in ("", "=") or second is None:
        return None
    if separator == "-":
        return "valueRange", {"low": _quantity(first, units), "high": _quantity(second, units)}
    if separator in (":", "/"):
        return "valueRatio", {"numerator": {"value": first}, "denominator": {"value": second}}
    return None


def observation_value(ctx: Context, obx: Seg, kind: str, units: dict[str, Any]) -> tuple[str, Any] | None:
    """OBX-5 as Observation.value[x], by OBX-2. A value that does not fit its type is kept as
    valueString, with a warning; a repeated non-text value keeps its first repetition."""
    reps = obx.reps(5)
    if not reps:
        return None
    if kind in _TEXT_TYPES:
        return "valueString", "\n".join(r.text() for r in reps).strip("\n")
    if len(reps) > 1:
        ctx.warn(obx, 5, "102", f"OBX-5 repeats {len(reps)} times for value type {kind}; the first value is kept")
    rep = reps[0]
    if kind == "NM":
        value = number(rep.get(1))
        if value is None:
            ctx.warn(obx, 5, "102", f"OBX-5 {rep.text()!r} is not a number (OBX-2 is NM); kept as text")
            return "valueString", rep.text()
        return "valueQuantity", _quantity(value, units)
    if kind == "SN":
        found = _structured_numeric(rep, units)
        if found is None:
            text = "".join(rep.get(i) for i in range(1, 5))
            ctx.warn(obx, 5, "102", f"OBX-5 {rep.text()!r} is not a structured numeric value; kept as text")
            return "valueString", text
        return found
    if kind in _CODED_TYPES:
        concept = codeable(ctx, rep, where(obx, 5))
        return ("valueCodeableConcept", concept) if concept else None
    if kind in _DATE_TYPES:
        when = ctx.datetime(obx, 5)
        return ("valueDateTime", when) if when else ("valueString", rep.get(1))
    if kind == "TM":
        m = _TIME.match(rep.get(1))
        if m and int(m[1]) < 24 and int(m[2] or 0) < 60 and int(m[3] or 0) < 60:
            return "valueTime", f"{m[1]}:{m[2] or '00'}:{m[3] or '00'}"
        ctx.warn(obx, 5, "102", f"OBX-5 {rep.get(1)!r} is not a time (OBX-2 is TM); kept as text")
        return "valueString", rep.get(1)
    if kind == "ED":
        ctx.warn(obx, 5, "102", "OBX-5 encapsulated data (ED) has no R4B Observation.value[x]; not stored")
        return None
    if kind == "RP":
        return "valueString", rep.get(1)  # the reference pointer (a URL or an id)
    if kind in ("XCN", "XPN", "PN", "CN"):
        return "valueString", xcn_display(rep) if kind in ("XCN", "CN") else rep.text(joiner=" ")
    if kind == "XON":
        return "valueString", xon_display(rep)
    return "valueString", rep.text(joiner=" ")


def reference_range(obx: Seg, units: dict[str, Any]) -> dict[str, Any] | None:
    """OBX-7 → referenceRange: low/high when it reads as ``a-b``, ``a to b``, ``<b`` or ``>a``,
    else its text."""
    text = obx.rep(7).text()
    if not text.strip():
        return None
    simple = {k: v for k, v in units.items() if k in ("unit", "system", "code")}
    m = _RANGE.match(text)
    if m:
        return {"low": _quantity(Decimal(m[1].lstrip("+")), simple), "high": _quantity(Decimal(m[2].lstrip("+")),
                                                                                       simple)}
    m = _BOUND.match(text)
    if m:
        side = "high" if m[1].startswith("<") else "low"
        return {side: _quantity(Decimal(m[2].lstrip("+")), simple), "text": text.strip()}
    return {"text": text.strip()}


def interpretations(obx: Seg) -> list[dict[str, Any]]:
    """OBX-8 (every repetition) → interpretation, as v3 ObservationInterpretation codes."""
    out = []
    for rep in obx.reps(8):
        code = rep.get(1)
        if code.upper() in _INTERPRETATIONS:
            coding: dict[str, Any] = {"system": _INTERPRETATION, "code": code.upper()}
            out.append({"coding": [coding], **({"text": rep.get(2)} if rep.get(2) else {})})
        elif code:
            out.append({"text": rep.get(2) or code})
    return out


def observation(ctx: Context, obx: Seg, patient_ref: str, encounter_ref: str | None,
                default_time: str | None, category: str | None) -> dict[str, Any] | None:
    """OBX → Observation (without its business identifier, which the caller gives); None when
    OBX-3 is empty."""
    code = codeable(ctx, obx.rep(3), where(obx, 3))
    if code is None:
        # Without OBX-3 nobody can tell what the value means: the segment is reported, not stored.
        ctx.warn(obx, 3, "101", "OBX-3 (observation identifier) is empty: the observation is not stored")
        return None
    kind = obx.get(2).upper()
    res: dict[str, Any] = {"resourceType": "Observation"}
    status_code = obx.get(11).upper()
    res["status"] = OBSERVATION_STATUS.get(status_code, "unknown")
    if status_code and status_code not in OBSERVATION_STATUS:
        ctx.warn(obx, 11, "103", f"OBX-11 {status_code!r} is not an HL7 table 0085 result status")
    if category:
        res["category"] = [{"coding": [{"system": _OBS_CATEGORY, "code": category}]}]
    res["code"] = code
    res["subject"] = {"reference": patient_ref}
    if encounter_ref:
        res["encounter"] = {"reference": encounter_ref}
    effective = ctx.datetime(obx, 14) or default_time
    if effective:
        res["effectiveDateTime"] = effective
    performers = [display_reference(xcn_display(r)) for r in obx.reps(16)]
    performers += [display_reference(xon_display(r)) for r in obx.reps(23)]
    performers = [p for p in performers if p]
    if performers:
        res["performer"] = performers
    units = unit(ctx, obx)
    if obx.reps(5):
        if not kind:
            ctx.warn(obx, 2, "101", "OBX-2 (value type) is empty but OBX-5 has a value; kept as text")
            kind = "ST"
        if kind not in VALUE_TYPES:
            ctx.error(obx, 2, "102", f"OBX-2 {kind!r} is not an HL7 value type (table 0125)")
        else:
            value = observation_value(ctx, obx, kind, units)
            if value is not None and (not isinstance(value[1], str) or value[1].strip()):
                res[value[0]] = value[1]
    ranges = reference_range(obx, units)
    if ranges:
        res["referenceRange"] = [ranges]
    flags = interpretations(obx)
    if flags:
        res["interpretation"] = flags
    method = codeable(ctx, obx.rep(17), where(obx, 17))
    if method:
        res["method"] = method
    return res


def order_key(orc: Seg | None, obr: Seg) -> tuple[str, str] | None:
    """(FILL|PLAC, value): the filler order number (OBR-3, else ORC-3), else the placer's."""
    for kind, fields in (("FILL", ((obr, 3), (orc, 3))), ("PLAC", ((obr, 2), (orc, 2)))):
        for seg, fld in fields:
            if seg is not None:
                value = ei_value(seg.rep(fld))
                if value:
                    return kind, value
    return None


def diagnostic_report(ctx: Context, obr: Seg, patient_ref: str, encounter_ref: str | None) -> dict[str, Any]:
    """OBR → DiagnosticReport (its results are added as the OBX segments are read)."""
    res: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    status_code = obr.get(25).upper()
    res["status"] = REPORT_STATUS.get(status_code, "unknown")
    section = " ".join(obr.get(24).split())
    if section:
        res["category"] = [{"coding": [{"system": _V2_0074, "code": section}]}]
    code = codeable(ctx, obr.rep(4), where(obr, 4))
    if code is None:
        ctx.error(obr, 4, "101", "OBR-4 (universal service identifier) is required")
        code = {"text": "unknown"}
    res["code"] = code
    res["subject"] = {"reference": patient_ref}
    if encounter_ref:
        res["encounter"] = {"reference": encounter_ref}
    start, end = ctx.datetime(obr, 7), ctx.datetime(obr, 8)
    if start and end:
        res["effectivePeriod"] = {"start": start, "end": end}
    elif start:
        res["effectiveDateTime"] = start
    issued = ctx.instant(obr, 22)
    if issued:
        res["issued"] = issued
    interpreters = [p for p in (display_reference(ndl_display(r)) for r in obr.reps(32)) if p]
    if interpreters:
        res["resultsInterpreter"] = interpreters
    return res


def ndl_display(rep: Rep) -> str:
    """NDL (OBR-32): its first component is a CNN, id & family & given & middle & suffix & prefix & degree."""
    name = " ".join(p for p in (rep.get(1, k) for k in (6, 3, 4, 2, 5, 7)) if p)
    return name or rep.get(1, 1)


def specimen(ctx: Context, spm: Seg, patient_ref: str) -> dict[str, Any]:
    """SPM → Specimen (type SPM-4, collection SPM-17, received SPM-18)."""
    res: dict[str, Any] = {"resourceType": "Specimen", "subject": {"reference": patient_ref}}
    kind = codeable(ctx, spm.rep(4), where(spm, 4), "HL70487")
    if kind:
        res["type"] = kind
    collected = spm.rep(17)
    start = ctx.datetime(spm, 17, collected.get(1)) if collected.get(1) else None
    end = ctx.datetime(spm, 17, collected.get(2)) if collected.get(2) else None
    collection: dict[str, Any] = {}
    if start and end:
        collection["collectedPeriod"] = {"start": start, "end": end}
    elif start:
        collection["collectedDateTime"] = start
    site = codeable(ctx, spm.rep(8), where(spm, 8))
    if site:
        collection["bodySite"] = site
    method = codeable(ctx, spm.rep(7), where(spm, 7))
    if method:
        collection["method"] = method
    if collection:
        res["collection"] = collection
    received = ctx.datetime(spm, 18)
    if received:
        res["receivedTime"] = received
    return res


def specimen_key(spm: Seg) -> str:
    """SPM-2 (filler's specimen id, else the placer's): the specimen's own number, if any."""
    rep = spm.rep(2)
    return rep.get(2, 1) or rep.get(1, 1)
