"""HL7 v2 data types → FHIR data types (https://build.fhir.org/ig/HL7/v2-to-fhir/datatype_maps.html).

CWE/CE → CodeableConcept, CX → Identifier, XPN → HumanName, XAD → Address, XTN → ContactPoint,
and the display text of XCN/XON/PL, used where the IG would create a Practitioner, Organization
or Location that the hub does not keep (a reference with ``display`` only).
"""
from __future__ import annotations

import re
from typing import Any

from healthhub.ingest.normalize import (
    address_part,
    coding_system,
    hl7_date,
    map_code,
    person_name,
    postal_code,
    telecom,
)

from .context import Context
from .model import Rep

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# HL7 table 0203 (identifier type), the codes a CX-5 may carry as they are; others go to type.text.
TABLE_0203 = frozenset(
    "AM AMA AN ANC AND ANON ANT APRN ASID BA BC BCFN BCT BR BRN BSNR CAAI CC CONM CY CZ DC DCFN DDS DEA DFN DI "
    "DL DN DO DP DPM DR DS DSG EI EN ESN FDR FDRFN FGN FI FILL GI GIN GL GN HC IND IRISTEM JHN LACSN LANR LI LN "
    "LR MA MB MC MCD MCN MCR MCT MD MI MR MRT MS NBSNR NCT NE NH NI NII NIIP NP NPI OBI OD PA PC PCN PE PEN PGN "
    "PHC PHE PHO PI PIN PLAC PN PNT PPIN PPN PRC PRN PT QA RI RN RPH RR RRI RRP SAMN SB SID SL SN SNBSN SNO SP "
    "SR SRX SS STN TAX TN TPR TRL U UDI UPIN USID VN VP VS WC WCN WP XV XX".split())
_NATIONAL_PERSON_ID_TYPE = re.compile(r"^NN[A-Z]{3}$")  # a national person identifier: "NN" + the ISO 3166 alpha-3 country code (HL7 table 0203)

# Table 0200 → name-use (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70200-to-name-use.html)
_NAME_USE = {"BAD": "old", "D": "usual", "L": "official", "M": "maiden", "N": "nickname", "S": "anonymous",
             "TEMP": "temp"}
# Table 0190 → address use / type (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-table-hl70190-to-address-use.html)
_ADDRESS_USE = {"H": "home", "P": "home", "RH": "home", "B": "work", "O": "work", "C": "temp", "V": "temp",
                "BA": "old", "BI": "billing"}
_ADDRESS_TYPE = {"M": "postal", "SH": "postal"}
# Tables 0201 (use) and 0202 (equipment) → ContactPoint use / system.
_TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work", "EMR": "temp", "ASN": "temp"}
_TELECOM_SYSTEM = {"PH": "phone", "CP": "phone", "FX": "fax", "BP": "pager", "INTERNET": "email", "X.400": "email",
                   "MD": "other", "TDD": "other", "TTY": "other"}


def codeable(ctx: Context, rep: Rep, location: str, table: str | None = None) -> dict[str, Any] | None:
    """CWE/CE/CNE → CodeableConcept: each coded triplet (1-3, 4-6, 10-12) through ``map_code``,
    CWE-9 (original text) as text. ``table`` names the system when CWE-3 is empty (``HL70001``)."""
    codings: list[dict[str, Any]] = []
    display_text = ""
    for base in (1, 4, 10):
        # A FHIR code has single inner spaces only (https://hl7.org/fhir/R4B/datatypes.html#code).
        code, display, name = " ".join(rep.get(base).split()), rep.get(base + 1), rep.get(base + 2)
        if not code:
            display_text = display_text or display
            continue
        system = coding_system(name or table or "", ctx.sender)
        found, note = map_code(system, code, display or None, location=location)
        ctx.note(note, location)
        codings.extend(c for c in found if c not in codings)
        display_text = display_text or display
    text = rep.get(9) or ("" if codings else display_text)
    if not codings and not text:
        return None
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out


def ei_value(rep: Rep) -> str:
    """EI (entity id ^ namespace id ^ universal id): the id, qualified by its namespace."""
    ident = rep.get(1)
    namespace = rep.get(2) or rep.get(3)
    return f"{ident}^{namespace}" if ident and namespace else ident


def authority(rep: Rep, comp: int) -> tuple[str, str]:
    """An HD held in component ``comp`` (namespace id & universal id as sub-components, or,
    for CX-4 sent without sub-components, just the namespace)."""
    return rep.get(comp, 1), rep.get(comp, 2)


def identifier_type(code: str) -> dict[str, Any] | None:
    """CX-5 → Identifier.type: a v2-0203 coding when the code is one, else its text."""
    code = code.strip()
    if not code:
        return None
    if code in TABLE_0203 or _NATIONAL_PERSON_ID_TYPE.match(code):
        return {"coding": [{"system": V2_0203, "code": code}]}
    return {"text": code}


def identifier(ctx: Context, rep: Rep, default_system: str) -> dict[str, Any] | None:
    """CX → Identifier: system from the assigning authority (CX-4) through the sender's
    profile, else ``default_system``; CX-5 → type; CX-7/8 → period."""
    value = rep.get(1)
    if not value:
        return None
    namespace, universal = authority(rep, 4)
    systems = ctx.sender.identifier_systems
    system = systems.get(namespace) or systems.get(universal) or default_system
    out: dict[str, Any] = {"system": system, "value": value}
    kind = identifier_type(rep.get(5))
    if kind:
        out["type"] = kind
    start, _ = hl7_date(rep.get(7)) if rep.get(7) else (None, None)
    end, _ = hl7_date(rep.get(8)) if rep.get(8) else (None, None)
    if start or end:
        out["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if namespace or universal:
        out["assigner"] = {"display": namespace or universal}
    return out


def human_name(rep: Rep) -> dict[str, Any] | None:
    """XPN → HumanName (family from FN.1, given from XPN-2 and -3, prefix XPN-5, suffix
    XPN-4 and degree XPN-6, use from XPN-7)."""
    family = person_name(rep.get(1, 1))
    given = [person_name(g) for g in (rep.get(2), rep.get(3)) if g]
    prefix = rep.get(5)
    suffixes = [s for s in (rep.get(4), rep.get(6)) if s]
    if not family and not given:
        return None
    out: dict[str, Any] = {}
    use = _NAME_USE.get(rep.get(7).upper())
    if use:
        out["use"] = use
    if family:
        out["family"] = family
    if given:
        out["given"] = given
    if prefix:
        out["prefix"] = [prefix]
    if suffixes:
        out["suffix"] = suffixes
    start, _ = hl7_date(rep.get(12)) if rep.get(12) else (None, None)
    end, _ = hl7_date(rep.get(13)) if rep.get(13) else (None, None)
    if start or end:
        out["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return out


def _region(text: str) -> str:
    # State and province codes (MI, NY, 37) stay as sent; names are cased like the rest.
    return text if len(text) <= 3 and text.upper() == text else address_part(text)


def address(rep: Rep) -> dict[str, Any] | None:
    """XAD → Address (street SAD-1 or else SAD-3 + SAD-2, other designation, city, state,
    postal code, country, XAD-9 county/parish → district; XAD-7 → use/type)."""
    street = rep.get(1, 1) or " ".join(p for p in (rep.get(1, 3), rep.get(1, 2)) if p)
    lines = [address_part(x) for x in (street, rep.get(2)) if x]
    out: dict[str, Any] = {}
    kind = rep.get(7).upper()
    if kind in _ADDRESS_USE:
        out["use"] = _ADDRESS_USE[kind]
    if kind in _ADDRESS_TYPE:
        out["type"] = _ADDRESS_TYPE[kind]
    parts = {
        "line": lines,
        "city": address_part(rep.get(3)),
        "district": address_part(rep.get(9)),
        "state": _region(rep.get(4)),
        "postalCode": postal_code(rep.get(5)),
        "country": rep.get(6).upper(),
    }
    filled = {k: v for k, v in parts.items() if v}
    if not filled:
        return None
    out.update(filled)
    return out


def contact_point(rep: Rep, default_use: str | None) -> dict[str, Any] | None:
    """XTN → ContactPoint: e-mail from XTN-4 when the use is NET or the equipment Internet,
    else the number as sent (XTN-1) or built from XTN-5/6/7/8 (or XTN-12)."""
    use_code = rep.get(2).upper()
    equipment = rep.get(3).upper()
    email = rep.get(4)
    if use_code == "NET" or equipment in ("INTERNET", "X.400") or (not rep.get(1) and "@" in email):
        system, value = "email", email or rep.get(1)
    else:
        system = _TELECOM_SYSTEM.get(equipment, "phone")
        value = rep.get(1) or rep.get(12) or _compose_number(rep)
    value = telecom(system, value)
    if not value:
        return None
    out: dict[str, Any] = {"system": system, "value": value}
    use = "mobile" if equipment == "CP" else _TELECOM_USE.get(use_code, default_use)
    if use:
        out["use"] = use
    return out


def _compose_number(rep: Rep) -> str:
    country, area, local, extension = rep.get(5), rep.get(6), rep.get(7), rep.get(8)
    if not local:
        return ""
    number = (f"+{country.lstrip('+')} " if country else "") + (f"({area}) " if area else "") + local
    return number + (f" x{extension}" if extension else "")


def xcn_display(rep: Rep) -> str:
    """XCN (id ^ family ^ given ^ middle ^ suffix ^ prefix ^ degree) as a display name."""
    name = " ".join(p for p in (rep.get(6), rep.get(3), rep.get(4), rep.get(2, 1), rep.get(5), rep.get(7)) if p)
    return name or rep.get(1)


def xon_display(rep: Rep) -> str:
    """XON: the organization name (XON-1), else its identifier (XON-10 or XON-3)."""
    return rep.get(1) or rep.get(10) or rep.get(3)


def pl_display(rep: Rep) -> str:
    """PL (point of care ^ room ^ bed ^ facility ^ … ^ building ^ floor, and PL-9 description)
    as one display line."""
    if rep.get(9):
        return rep.get(9)
    parts = [rep.get(1), rep.get(2), rep.get(3), rep.get(4, 1), rep.get(7), rep.get(8)]
    return " ".join(p for p in parts if p)


def display_reference(text: str) -> dict[str, Any] | None:
    """A Reference that only names its target (the hub keeps no Practitioner/Location for it)."""
    return {"display": text} if text else None
