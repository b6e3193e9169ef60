"""PID/PD1 → Patient, NK1 → RelatedPerson, MRG → retired identifiers
(https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-pid-to-patient.html,
…/ConceptMap-segment-nk1-to-relatedperson.html)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from healthhub.ingest.normalize import NATIONAL_ID_SYSTEM, SenderProfile, search_token, validate_national_id

from .bundle import BundleBuilder, criteria
from .context import Context, where
from .datatypes import address, codeable, contact_point, human_name, identifier, xcn_display, xon_display
from .model import Rep, Seg

# Table 0001 → administrative-gender (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70001-to-administrative-gender.html)
GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "other"}
_V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
# Table 0002 → v3 MaritalStatus (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70002-to-v3-maritalstatus.html)
_MARITAL = {"A": "L", "B": "U", "C": "C", "D": "D", "E": "L", "G": "T", "I": "I", "M": "M", "N": "A", "P": "T",
            "R": "T", "S": "S", "W": "W"}
# CX-5 types that say "this is the person's national number" (table 0203); PID-19 (SSN) too.
NATIONAL_TYPES = frozenset({"NI", "SS", "NN", "CZ"})


@dataclass
class PatientKey:
    """The identifier a Patient is written under, and whether it may be shared by other senders."""

    system: str
    value: str
    national: bool

    def criteria(self, sender: SenderProfile) -> tuple[str, str]:
        """(identifier criteria, extra criteria): a national id is narrowed to this sender's
        records — by its Organization (``managingOrganization``), or without one by the sender
        tag the Patient carries (:func:`write_patient`). Alone it may match the records of several
        hospitals (linked by the MPI), and a conditional write matching more than one is refused."""
        if not self.national:
            extra = ""
        elif sender.organization:
            extra = f"&organization={sender.organization}"
        else:
            extra = f"&_tag={search_token(sender.tag['system'], sender.tag['code'])}"
        return criteria(self.system, self.value), extra


def _is_national(kind: str) -> bool:
    kind = kind.strip().upper()
    return kind in NATIONAL_TYPES or (kind.startswith("NN") and len(kind) == 5)


def patient_identifiers(ctx: Context, seg: Seg, fld: int) -> list[tuple[dict[str, Any], bool]]:
    """The identifiers of a CX list field (PID-3, MRG-1), each with "is a validated national id".

    A national/citizen number (CX-5 NI, NNxxx, SS, CZ) that passes ``validate_national_id``
    goes under NATIONAL_ID_SYSTEM; one that fails is kept under the sender's system as sent,
    with a warning.
    """
    out: list[tuple[dict[str, Any], bool]] = []
    for i, rep in enumerate(seg.reps(fld), start=1):
        ident = identifier(ctx, rep, ctx.sender.mrn_system)
        if ident is None:
            continue
        if _is_national(rep.get(5)):
            out.append(_national(ctx, ident, seg, fld, i))
        else:
            out.append((ident, False))
    return out


def _national(ctx: Context, ident: dict[str, Any], seg: Seg, fld: int, rep: int) -> tuple[dict[str, Any], bool]:
    valid = validate_national_id(ident["value"])
    if valid:
        national = {"system": NATIONAL_ID_SYSTEM, "value": valid}
        national.update({k: v for k, v in ident.items() if k in ("type", "period")})
        return national, True
    ctx.warn(seg, fld, "102", f"{where(seg, fld, rep)}: national identifier {ident['value']!r} is not a valid "
                              "13-digit citizen number; kept under the sender's own system")
    return ident, False


def _add_unique(idents: list[dict[str, Any]], ident: dict[str, Any]) -> bool:
    if any(i["system"] == ident["system"] and i["value"] == ident["value"] for i in idents):
        return False
    idents.append(ident)
    return True


def patient(ctx: Context, pid: Seg, pd1: Seg | None) -> tuple[dict[str, Any], PatientKey | None]:
    """Patient from PID (and PD1), and the identifier to write it under (None: none at all)."""
    res: dict[str, Any] = {"resourceType": "Patient"}
    idents: list[dict[str, Any]] = []
    key: PatientKey | None = None
    candidates: list[tuple[int, PatientKey]] = []
    for rank_base, fld in ((0, 3), (20, 2), (20, 4)):  # PID-3 first; PID-2/PID-4 (older versions) after
        for ident, national in patient_identifiers(ctx, pid, fld):
            if not _add_unique(idents, ident):
                continue
            mr = ident.get("type", {}).get("coding", [{}])[0].get("code") == "MR"
            # This sender's own record number keys its Patient; a national id is shared with
            # other hospitals, whose records the matcher links rather than overwrites.
            rank = 35 if national else rank_base + (0 if mr else 10)
            candidates.append((rank, PatientKey(ident["system"], ident["value"], national)))
    ssn = pid.get(19)
    if ssn:
        ident, national = _national(ctx, {"system": ctx.sender.mrn_system, "value": ssn,
                                          "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                               "v2-0203", "code": "SS"}]}}, pid, 19, 1)
        if _add_unique(idents, ident):
            candidates.append((35 if national else 40, PatientKey(ident["system"], ident["value"], national)))
    if candidates:
        key = min(candidates, key=lambda c: c[0])[1]
    else:
        ctx.error(pid, 3, "101", "PID-3 (patient identifier list) is required: the patient has no identifier")
    if idents:
        res["identifier"] = idents

    names = [n for n in (human_name(r) for r in pid.reps(5)) if n]
    if names:
        res["name"] = names
    telecoms = [t for t in (contact_point(r, "home") for r in pid.reps(13)) if t]
    telecoms += [t for t in (contact_point(r, "work") for r in pid.reps(14)) if t]
    if telecoms:
        res["telecom"] = telecoms
    sex = pid.get(8).upper()
    if sex:
        if sex in GENDER:
            res["gender"] = GENDER[sex]
        else:
            ctx.warn(pid, 8, "103", f"PID-8 {sex!r} is not an HL7 table 0001 administrative sex")
    birth = ctx.date(pid, 7, severity="E")
    if birth:
        res["birthDate"] = birth
    _deceased(ctx, pid, res)
    addresses = [a for a in (address(r) for r in pid.reps(11)) if a]
    if addresses:
        res["address"] = addresses
    marital = _marital(ctx, pid.rep(16))
    if marital:
        res["maritalStatus"] = marital
    _multiple_birth(pid, res)
    languages = [c for c in (codeable(ctx, r, "PID-15", "HL70296") for r in pid.reps(15)) if c]
    if languages:
        res["communication"] = [{"language": languages[0], "preferred": True}]
    practitioners = []
    if pd1 is not None:
        practitioners += [{"display": xon_display(r)} for r in pd1.reps(3) if xon_display(r)]
        practitioners += [{"display": xcn_display(r)} for r in pd1.reps(4) if xcn_display(r)]
    if practitioners:
        res["generalPractitioner"] = practitioners
    if ctx.sender.organization:
        res["managingOrganization"] = {"reference": ctx.sender.organization}
    return res, key


def _deceased(ctx: Context, pid: Seg, res: dict[str, Any]) -> None:
    when = ctx.datetime(pid, 29)
    if when:
        res["deceasedDateTime"] = when
        return
    flag = pid.get(30).upper()
    if flag in ("Y", "N"):
        res["deceasedBoolean"] = flag == "Y"


def _multiple_birth(pid: Seg, res: dict[str, Any]) -> None:
    order = pid.get(25)
    if order.isdigit() and 0 < int(order) < 100:
        res["multipleBirthInteger"] = int(order)
    elif pid.get(24).upper() in ("Y", "N"):
        res["multipleBirthBoolean"] = pid.get(24).upper() == "Y"


def _marital(ctx: Context, rep: Rep) -> dict[str, Any] | None:
    concept = codeable(ctx, rep, "PID-16", "HL70002")
    v3 = _MARITAL.get(rep.get(1).upper())
    if concept is not None and v3:
        coding = {"system": _V3_MARITAL, "code": v3}
        if coding not in concept.setdefault("coding", []):
            concept["coding"].append(coding)
    return concept


def write_patient(ctx: Context, builder: BundleBuilder, res: dict[str, Any], key: PatientKey | None,
                  demographics: bool) -> str:
    """Add the Patient: ``PUT`` when the message carries demographics (ADT), else a
    conditional create, so results never overwrite what registration sent."""
    if key is None:
        return builder.create(res)
    match, extra = key.criteria(ctx.sender)
    if key.national and not ctx.sender.organization:
        res.setdefault("meta", {}).setdefault("tag", []).append(ctx.sender.tag)
    if demographics:
        return builder.add(res, {"method": "PUT", "url": f"Patient?{match}{extra}"})
    return builder.add(res, {"method": "POST", "url": "Patient", "ifNoneExist": match + extra})


def related_person(ctx: Context, nk1: Seg, patient_ref: str) -> dict[str, Any] | None:
    """NK1 → RelatedPerson, or None when the segment names nobody."""
    names = [n for n in (human_name(r) for r in nk1.reps(2)) if n]
    telecoms = [t for t in (contact_point(r, "home") for r in nk1.reps(5)) if t]
    telecoms += [t for t in (contact_point(r, "work") for r in nk1.reps(6)) if t]
    addresses = [a for a in (address(r) for r in nk1.reps(4)) if a]
    if not (names or telecoms or addresses):
        return None
    res: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": {"reference": patient_ref}}
    relationships = [c for c in (codeable(ctx, r, "NK1-3", "HL70063") for r in nk1.reps(3)) if c]
    relationships += [c for c in (codeable(ctx, r, "NK1-7", "HL70131") for r in nk1.reps(7)) if c]
    if relationships:
        res["relationship"] = relationships
    if names:
        res["name"] = names
    if telecoms:
        res["telecom"] = telecoms
    if addresses:
        res["address"] = addresses
    sex = nk1.get(15).upper()
    if sex in GENDER:
        res["gender"] = GENDER[sex]
    birth = ctx.date(nk1, 16)
    if birth:
        res["birthDate"] = birth
    return res
