"""Normalization of inbound data: identifiers, codes, units, dates, names and addresses.

Shared by the HL7 v2 and CSV adapters (pure functions and small registries: no database, no
Flask). Everything here keeps what it cannot map — a code outside every ConceptMap stays with
its local system and is reported, never dropped (CONTRACT §6).

The functions that can fail on data return ``(value, note)``: ``value`` is None when nothing
usable came out, and ``note`` (a :class:`Note`, else None) says why, for the adapter to report at
its location (``location=`` fills :attr:`Note.location` directly).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import terminology

#: The one system every validated national identifier is stored under.
NATIONAL_ID_SYSTEM = "urn:healthhub:id:national"


#: ``meta.tag`` system naming the hospital whose payload created a Patient (the code is its
#: hospital code). A hospital's record keyed only by a national id is found by it: the national id
#: alone may match the records of several hospitals, linked by the MPI (healthhub/mpi).
SENDER_TAG = "urn:healthhub:sender"


def search_token(system: str, value: str) -> str:
    """``system|value`` for a token search in a URL, FHIR-escaped then percent-encoded
    (https://hl7.org/fhir/R4B/search.html#escaping): an identifier holding ``,`` or ``|`` is
    one value, not two criteria."""
    return f"{_encoded(system, ':/')}|{value if _UNRESERVED.match(value) else _encoded(value, '')}"


_UNRESERVED = re.compile(r"^[A-Za-z0-9._~-]*$")  # nothing to escape or encode (RFC 3986 §2.3)


@lru_cache(maxsize=256)
def _encoded(text: str, safe: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(escaped, safe=safe)


@dataclass(frozen=True)
class SenderProfile:
    """What the hub knows about one sending hospital (registered with its client)."""

    #: Short hospital code, e.g. ``"HOSP-A"`` (CSV ``hospital_code``, HL7 MSH-4 namespace id).
    code: str
    #: ``Organization/<id>`` the sender is bound to, if registered.
    organization: str | None = None
    #: IANA zone applied to timestamps that carry a time but no offset.
    timezone: str = "UTC"
    #: Assigning authority (HL7 CX-4.1 namespace id or CX-4.2 universal id) → canonical system URI.
    identifier_systems: Mapping[str, str] = field(default_factory=dict)
    #: Local coding-system names (HL7 CWE-3 such as ``"L"``, ``"99LAB"``) → system URI.
    code_systems: Mapping[str, str] = field(default_factory=dict)

    def system(self, kind: str) -> str:
        """``urn:healthhub:sender:<code>:<kind>``: a system only this sender's values live in (the
        code percent-encoded: hospital codes such as MSH-4 names may hold spaces, a URI may not)."""
        return f"urn:healthhub:sender:{quote(self.code, safe='-._~')}:{kind}"

    @property
    def tag(self) -> dict[str, str]:
        """The ``meta.tag`` coding of a Patient this sender's payload created (:data:`SENDER_TAG`)."""
        return {"system": SENDER_TAG, "code": self.code}

    @property
    def mrn_system(self) -> str:
        """System of this sender's own record numbers when no assigning authority is known."""
        return self.system("mrn")

    def local_code_system(self, name: str) -> str:
        """System URI for a coding system that only this sender uses."""
        return self.system(f"codesystem:{name}")


@dataclass(frozen=True)
class Note:
    """Something normalization could not do cleanly (reported, the value is kept)."""

    #: ``"unmapped-code"``, ``"unknown-unit"``, ``"invalid-national-id"``, ``"bad-date"``, …
    kind: str
    message: str
    #: Where the value came from: ``"OBX-3"`` / ``"PID-3[2]"`` / a CSV column name.
    location: str = ""


# --------------------------------------------------------------------------- national identifier

def validate_national_id(value: str) -> str | None:
    """The 13-digit citizen identifier without separators when its check digit is right, else None."""
    if not isinstance(value, str):
        return None
    # Spaces and dashes are how the number is printed on the card (1-2345-67890-12-1).
    compact = re.sub(r"[\s\-\u2010-\u2015]", "", value)
    # Any decimal digit counts (Thai digits ๐–๙ included), stored as ASCII.
    if len(compact) != 13 or not all(ch.isdecimal() for ch in compact):
        return None
    digits = [unicodedata.decimal(ch) for ch in compact]
    check = (11 - sum(d * (13 - i) for i, d in enumerate(digits[:12])) % 11) % 10
    return "".join(map(str, digits)) if check == digits[12] else None


# --------------------------------------------------------------------------- coding systems

_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_ICD10 = "http://hl7.org/fhir/sid/icd-10"
_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
_ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
_CVX = "http://hl7.org/fhir/sid/cvx"
_NDC = "http://hl7.org/fhir/sid/ndc"
_MVX = "http://terminology.hl7.org/CodeSystem/MVX"
_UCUM = "http://unitsofmeasure.org"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_CPT = "http://www.ama-assn.org/go/cpt"

# HL7 table 0396 names → FHIR system URIs, as the v2-to-FHIR IG maps CWE-3 to Coding.system
# (https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-datatype-cwe-to-codeableconcept.html) with
# the URIs of the FHIR terminology registry (https://hl7.org/fhir/R4B/terminologies-systems.html)
# and of HL7 Terminology (https://terminology.hl7.org/CodeSystem-v2-0396.html). Keys upper case.
_TABLE_0396: dict[str, str] = {
    "LN": _LOINC, "LOINC": _LOINC,
    "SCT": _SNOMED, "SNM": _SNOMED, "SNM3": _SNOMED, "SNOMED": _SNOMED, "SNOMEDCT": _SNOMED,
    "SNOMED-CT": _SNOMED,
    "I10": _ICD10, "ICD10": _ICD10, "ICD-10": _ICD10,
    "I10C": _ICD10CM, "ICD10CM": _ICD10CM, "ICD-10-CM": _ICD10CM,
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10", "ICD10PCS": "http://www.cms.gov/Medicare/Coding/ICD10",
    # I9 is WHO's ICD-9; FHIR names no system for it, and senders use it for ICD-9-CM codes.
    "I9": _ICD9CM, "I9C": _ICD9CM, "I9CDX": _ICD9CM, "ICD9CM": _ICD9CM,
    "CVX": _CVX, "HL70292": _CVX,
    "NDC": _NDC,
    "MVX": _MVX, "HL70227": _MVX,
    "UCUM": _UCUM,
    "RXNORM": _RXNORM,
    "CPT": _CPT, "C4": _CPT, "CPT4": _CPT, "CPT-4": _CPT,
    "HCPCS": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "NUCC": "http://nucc.org/provider-taxonomy",
    "NULLFL": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
    "ISO3166_1": "urn:iso:std:iso:3166",
    # CDC public-health vocabularies (PHIN VADS) have no URL: their OIDs, as urn:oid: URIs
    # (https://hl7.org/fhir/R4B/terminologies-systems.html: "urn:oid:" when no URI is defined).
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "CDCPHINVS": "urn:oid:2.16.840.1.114222.4.5.274",
    "PHINQUESTION": "urn:oid:2.16.840.1.114222.4.5.232",
}

# OIDs of the same code systems, for senders that name a system by its bare OID (CWE-3 or CWE-14).
_OIDS: dict[str, str] = {
    "2.16.840.1.113883.6.1": _LOINC,
    "2.16.840.1.113883.6.96": _SNOMED,
    "2.16.840.1.113883.6.3": _ICD10,
    "2.16.840.1.113883.6.90": _ICD10CM,
    "2.16.840.1.113883.6.103": _ICD9CM,
    "2.16.840.1.113883.12.292": _CVX,
    "2.16.840.1.113883.6.69": _NDC,
    "2.16.840.1.113883.12.227": _MVX,
    "2.16.840.1.113883.6.8": _UCUM,
    "2.16.840.1.113883.6.88": _RXNORM,
    "2.16.840.1.113883.6.12": _CPT,
}

_HL7_TABLE = re.compile(r"^HL7(\d{1,4})$")
_ABSOLUTE_URI = re.compile(r"^(?:https?://\S+|urn:\S+)$", re.IGNORECASE)
_OID = re.compile(r"^[0-2](?:\.(?:0|[1-9]\d*))+$")
# Kept as they are in a local system's URN; anything else (spaces, "/" …) is %-encoded.
_URN_SAFE = "!$&'()*+,;=:@-._~"


def coding_system(name: str, sender: SenderProfile) -> str:
    """The FHIR system URI for an HL7 v2 coding-system name (table 0396: LN, SCT, I10, CVX, …)
    or a sender's local one."""
    text = (name or "").strip()
    if _ABSOLUTE_URI.match(text):
        return text
    if _OID.match(text):
        return _OIDS.get(text, f"urn:oid:{text}")
    key = text.upper()
    if key in _TABLE_0396:
        return _TABLE_0396[key]
    table = _HL7_TABLE.match(key)
    if table:
        # https://terminology.hl7.org/codesystems-v2.html: v2-0001 … v2-0999 (four digits).
        return f"http://terminology.hl7.org/CodeSystem/v2-{int(table[1]):04d}"
    # Local names: L, 99zzz (table 0396 "local general code") and any other the hub does not know.
    if text in sender.code_systems:
        return sender.code_systems[text]
    for local, uri in sender.code_systems.items():
        if local.upper() == key:
            return uri
    # A code with no CWE-3 at all is, as far as anyone can tell, one of the sender's own (the IG's
    # "Edge Cases": the map still gives a system); HL7 names are upper case, so "l" is "L".
    return sender.local_code_system(quote(key or "L", safe=_URN_SAFE))


# --------------------------------------------------------------------------- codes

#: Code systems owned by a standards body: a code there needs no ConceptMap to be understood.
STANDARD_SYSTEMS = frozenset({_LOINC, _SNOMED, _CVX, _NDC, _RXNORM, _UCUM})
_STANDARD_PREFIXES = ("http://hl7.org/fhir/sid/icd-10", "http://terminology.hl7.org/")


def is_standard_system(system: str) -> bool:
    """True for LOINC, SNOMED CT, ICD-10 (any edition), CVX, NDC, RxNorm, UCUM, HL7 Terminology
    and FHIR's own code systems (``http://hl7.org/fhir/<name>``)."""
    if system in STANDARD_SYSTEMS or system.startswith(_STANDARD_PREFIXES):
        return True
    # FHIR core code systems such as http://hl7.org/fhir/administrative-gender (not /sid/ ones).
    return system.startswith("http://hl7.org/fhir/") and not system.startswith("http://hl7.org/fhir/sid/")


def map_code(system: str, code: str, display: str | None = None, *,
             location: str = "") -> tuple[list[dict[str, Any]], Note | None]:
    """The codings for one inbound code: the original coding first, then each standard coding
    the ConceptMaps under ``fhir/conceptmaps/`` translate it to; a Note when a local code
    (a system no standard terminology owns) has no translation."""
    system = (system or "").strip()
    code = (code or "").strip()
    if not code:
        return [], None
    original: dict[str, Any] = {"system": system} if system else {}
    original["code"] = code
    if display and display.strip():
        original["display"] = display.strip()
    translations = terminology.translate(system, code) if system else []
    codings = [original]
    codings.extend(t.coding() for t in translations if (t.system, t.code) != (system, code))
    if translations or (system and is_standard_system(system)):
        return codings, None
    where = system or "no coding system"
    return codings, Note("unmapped-code", f"Code {code!r} of {where} has no ConceptMap translation to a standard "
                                          "terminology; it is kept as sent", location)


# --------------------------------------------------------------------------- units

# Written forms → UCUM (https://ucum.org/ucum), looked up after _key(): lower case, no spaces,
# µ/μ as u. Only what a reader cannot get wrong; the rest goes through _rewrite().
_UNIT_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("c", "°c", "ºc", "degc", "deg.c", "celsius", "cel"), "Cel"),
    **dict.fromkeys(("f", "°f", "ºf", "degf", "deg.f", "fahrenheit"), "[degF]"),
    **dict.fromkeys(("mmhg", "mm[hg]"), "mm[Hg]"),
    **dict.fromkeys(("cmh2o", "cm[h2o]"), "cm[H2O]"),
    **dict.fromkeys(("bpm", "beats/min", "beat/min", "{beats}/min", "{beat}/min", "breaths/min", "breath/min",
                     "{breaths}/min", "br/min", "resp/min", "/min", "min-1", "permin", "/minute"), "/min"),
    **dict.fromkeys(("%", "percent", "pct"), "%"),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds", "second(s)"), "s"),
    **dict.fromkeys(("min", "mins", "minute", "minutes", "minute(s)"), "min"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours", "hour(s)"), "h"),
    **dict.fromkeys(("d", "day", "days", "day(s)"), "d"),
    **dict.fromkeys(("wk", "wks", "week", "weeks", "week(s)"), "wk"),
    **dict.fromkeys(("mo", "mos", "month", "months", "month(s)"), "mo"),
    **dict.fromkeys(("a", "y", "yr", "yrs", "year", "years", "year(s)"), "a"),
    **dict.fromkeys(("g", "gm", "gms", "gram", "grams"), "g"),
    **dict.fromkeys(("kg", "kgs", "kilogram", "kilograms"), "kg"),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds"), "[lb_av]"),
    **dict.fromkeys(("in", "inch", "inches"), "[in_i]"),
    **dict.fromkeys(("kg/m2", "kg/m^2"), "kg/m2"),
    # eGFR: "per 1.73 m2 body surface" is an annotation in UCUM.
    **dict.fromkeys(("ml/min/1.73m2", "ml/min/1.73m^2", "ml/min/{1.73_m2}", "ml/min/1.73_m2", "ml/min/1.73sqm"),
                    "mL/min/{1.73_m2}"),
    **dict.fromkeys(("giga/l", "giga.l-1"), "10*9/L"),
    **dict.fromkeys(("tera/l", "tera.l-1"), "10*12/L"),
}

# Written forms whose case is their meaning (molar M, not metre m), matched exactly first.
_UNIT_EXACT: dict[str, str] = {
    "M": "mol/L", "mM": "mmol/L", "uM": "umol/L", "\u00b5M": "umol/L", "\u03bcM": "umol/L", "nM": "nmol/L",
    "pM": "pmol/L",
}

# Unit atoms as written (lower case) → UCUM, used by _rewrite() one component at a time.
_UNIT_ATOMS: dict[str, str] = {
    **{a: a for a in ("g", "mg", "ug", "ng", "pg", "kg", "mol", "mmol", "umol", "nmol", "pmol", "eq", "meq",
                      "m", "cm", "mm", "um", "nm", "km", "min", "h", "s", "d", "wk", "mo", "a", "%")},
    "mcg": "ug", "gm": "g", "gram": "g", "grams": "g",
    "l": "L", "dl": "dL", "ml": "mL", "ul": "uL", "nl": "nL", "fl": "fL", "cl": "cL",
    "mcl": "uL", "mcmol": "umol", "mceq": "ueq",
    "u": "U", "mu": "mU", "uu": "uU", "ku": "kU", "unit": "U", "units": "U",
    "iu": "[IU]", "miu": "m[IU]", "uiu": "u[IU]", "kiu": "k[IU]", "[iu]": "[IU]",
    "hr": "h", "hrs": "h", "sec": "s", "secs": "s", "mins": "min", "day": "d", "days": "d",
    "yr": "a", "yrs": "a",
    "mmhg": "mm[Hg]", "hpf": "[HPF]", "lpf": "[LPF]",
    # Counted things are annotations in UCUM: {cells}/uL means "per microlitre".
    "cells": "{cells}", "cell": "{cell}", "copies": "{copies}", "copy": "{copies}",
}

_UCUM_PREFIXES = ("da", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n", "p", "f", "a", "z", "y")
# Metric atoms (take a prefix). "K" (kelvin) is left out on purpose: in a lab unit K means thousands.
_UCUM_METRIC = frozenset({"g", "m", "s", "L", "l", "mol", "eq", "U", "[IU]", "[iU]", "Cel", "Pa", "kat", "Hz",
                          "cal", "bar", "m[Hg]", "m[H2O]", "osm", "B"})
_UCUM_PLAIN = frozenset({"min", "h", "d", "wk", "mo", "a", "%", "[degF]", "[in_i]", "[ft_i]", "[lb_av]", "[oz_av]",
                         "[ppm]", "[ppb]", "[ppth]", "[pH]", "[drp]", "[HPF]", "[LPF]", "[psi]", "[S]"})
_UCUM_COMPONENT = re.compile(r"^(?P<atom>.+?)(?P<exp>[+-]?\d+)?$")
_ANNOTATION = re.compile(r"^\{[!-z|~]*\}$")  # printable ASCII except braces (UCUM §2.3 rule 12)
_TEN_POWER = re.compile(r"^10[*^][+-]?\d+$")
_COUNT_PREFIX = re.compile(r"^(?:x?10(?:\^|\*|e|E)\+?(?P<exp>\d+)|(?P<k>K|k|thou|thous|thousand)|(?P<m>M|mil|mill|million))"
                           r"(?=/)")


def _key(text: str) -> str:
    return re.sub(r"\s+", "", _clean(text)).lower()


def _clean(text: str) -> str:
    # micro as ASCII "u" (UCUM's case-sensitive form); superscripts as digits; × as x.
    table = str.maketrans({"\u00b5": "u", "\u03bc": "u", "\u00b2": "2", "\u00b3": "3", "\u00d7": "x"})
    return text.translate(table)


def _split_term(term: str) -> list[tuple[str, str]] | None:
    """``term`` as (operator, component) pairs, keeping ``{…}`` and ``(…)`` whole; None if unbalanced."""
    parts: list[tuple[str, str]] = []
    buf: list[str] = []
    op, close = "", ""
    for ch in term:
        if close:
            buf.append(ch)
            if ch == close:
                close = ""
            elif ch in "{(" and close == "}":
                return None
        elif ch in "{(":
            close = "}" if ch == "{" else ")"
            buf.append(ch)
        elif ch in "})":
            return None
        elif ch in "./":
            parts.append((op, "".join(buf)))
            op, buf = ch, []
        else:
            buf.append(ch)
    if close:
        return None
    parts.append((op, "".join(buf)))
    return parts


def is_ucum(code: str) -> bool:
    """True when ``code`` follows the UCUM grammar over the atoms clinical data uses (https://ucum.org/ucum §2)."""
    parts = _split_term(code) if code else None
    if not parts:
        return False
    for i, (_op, comp) in enumerate(parts):
        if comp == "" and i == 0 and len(parts) > 1 and parts[1][0] == "/":
            continue  # a leading "/": "/min"
        if not _ucum_component(comp):
            return False
    return True


def _ucum_component(comp: str) -> bool:
    if comp.startswith("(") and comp.endswith(")"):
        return is_ucum(comp[1:-1])
    unit, brace, annotation = comp.partition("{")
    if brace:
        if not _ANNOTATION.match("{" + annotation):
            return False
        if not unit:
            return True  # an annotation alone is the unity: {Ratio}
    if unit.isdigit() or _TEN_POWER.match(unit):
        return True
    m = _UCUM_COMPONENT.match(unit)
    if not m:
        return False
    atom = m["atom"]
    if atom in _UCUM_METRIC or atom in _UCUM_PLAIN:
        return True
    return any(atom.startswith(p) and atom[len(p):] in _UCUM_METRIC for p in _UCUM_PREFIXES)


def _canonical_ucum(code: str) -> str:
    """A valid UCUM code with the liter as ``L`` and powers of ten as ``10*n`` (both legal
    spellings in UCUM, one spelling for search and display)."""
    parts = _split_term(code) or []
    out = []
    for op, comp in parts:
        comp = re.sub(r"^10\^", "10*", comp)
        m = re.match(r"^(da|[YZEPTGMkhdcmunpfazy])?l(?=[+-]?\d*(?:\{|$))", comp)
        if m:
            comp = (m[1] or "") + "L" + comp[m.end():]
        out.append(op + comp)
    return "".join(out)


def _rewrite(text: str) -> str | None:
    """UCUM for a unit written with the wrong case, spelled-out atoms or count prefixes, or None."""
    text = re.sub(r"\s+", "", _clean(text))
    count = _COUNT_PREFIX.match(text)
    if count:
        exp = count["exp"] or ("3" if count["k"] else "6")
        text = f"10*{exp}" + text[count.end():]
    # m^2 → m2 (UCUM writes exponents as bare digits)
    text = re.sub(r"(?<=[A-Za-z\]])\^(?=[+-]?\d)", "", text)
    parts = _split_term(text)
    if parts is None:
        return None
    out = []
    for op, comp in parts:
        unit, brace, annotation = comp.partition("{")
        m = _UCUM_COMPONENT.match(unit) if unit else None
        # One letter is too little to guess its case from (M is molar, m metre): only u and l.
        atom = m["atom"] if m else ""
        if m and atom.lower() in _UNIT_ATOMS and (len(atom) > 1 or atom in "ul") and not _TEN_POWER.match(unit):
            unit = _UNIT_ATOMS[atom.lower()] + (m["exp"] or "")
        out.append(op + unit + brace + annotation)
    result = "".join(out)
    return _canonical_ucum(result) if is_ucum(result) else None


def ucum_unit(unit: str, *, location: str = "") -> tuple[str | None, Note | None]:
    """The UCUM code for a unit as hospitals write it (``mg/dl`` → ``mg/dL``, ``K/uL`` → ``10*3/uL``);
    None and a Note when it is not a unit UCUM can express."""
    text = " ".join((unit or "").split())
    if not text:
        return None, None  # no unit at all is not an unknown one
    code = _ucum(text)
    if code is None:
        return None, Note("unknown-unit", f"Unit {text!r} is not one HealthHub can express in UCUM; "
                                          "it is kept as text", location)
    return code, None


@lru_cache(maxsize=4096)
def _ucum(text: str) -> str | None:
    # Hospitals send a few dozen distinct units over and over: cache the answer.
    if text in _UNIT_EXACT:
        return _UNIT_EXACT[text]
    key = _key(text)
    if key in _UNIT_SYNONYMS:
        return _UNIT_SYNONYMS[key]
    if is_ucum(text) and not _COUNT_PREFIX.match(text):
        return _canonical_ucum(text)  # valid UCUM stays, spelled one way
    return _rewrite(text)


# --------------------------------------------------------------------------- dates and times

# HL7 v2 DTM (v2.5+ §2A.22; TS component 1 before that): YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_HL7_DTM = re.compile(r"^(?P<Y>\d{4})(?:(?P<M>\d{2})(?:(?P<D>\d{2})(?:(?P<h>\d{2})(?:(?P<m>\d{2})"
                      r"(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,6}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$")


def hl7_datetime(value: str, timezone: str, *, location: str = "") -> tuple[str | None, Note | None]:
    """An HL7 v2 DTM/DT (``YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]``) as a FHIR date or dateTime:
    date precision stays a date; a time without an offset gets ``timezone``'s offset at that
    instant; None and a Note when it is not a valid date."""
    text = (value or "").split("^", 1)[0].strip()  # TS: the time is component 1, precision (TS.2) ignored
    m = _HL7_DTM.match(text)
    if not m:
        return None, _bad_date(value, "it is not YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]", location)
    if m["tz"] and _offset_text(m["tz"]) is None:
        return None, _bad_date(value, f"offset {m['tz']} is out of range", location)
    year, month, day = m["Y"], m["M"], m["D"]
    if month is None:
        return (year, None) if int(year) > 0 else (None, _bad_date(value, "there is no year 0", location))
    if not 1 <= int(month) <= 12:
        return None, _bad_date(value, f"month {month} does not exist", location)
    if day is None:
        return (f"{year}-{month}", None) if int(year) > 0 else (None, _bad_date(value, "there is no year 0", location))
    try:
        when = date(int(year), int(month), int(day))
    except ValueError as exc:
        return None, _bad_date(value, str(exc), location)
    if m["h"] is None:
        return when.isoformat(), None
    hour, minute, second = int(m["h"]), int(m["m"] or 0), int(m["s"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None, _bad_date(value, "the time of day is out of range", location)
    # FHIR needs seconds whenever there is a time (https://hl7.org/fhir/R4B/datatypes.html#dateTime).
    clock = f"{hour:02d}:{minute:02d}:{second:02d}" + (f".{m['f']}" if m["f"] else "")
    if m["tz"]:
        offset = _offset_text(m["tz"]) or ""
    else:
        offset = _zone_offset(datetime(when.year, when.month, when.day, hour, minute, second), timezone)
    return f"{when.isoformat()}T{clock}{offset}", None


def hl7_date(value: str, *, location: str = "") -> tuple[str | None, Note | None]:
    """An HL7 v2 DT/DTM as a FHIR ``date`` (for ``Patient.birthDate``): the date part as sent,
    whatever time follows it."""
    # The whole value is checked (a bad time is a bad field); the zone never matters for the date.
    full, note = hl7_datetime(value, "UTC", location=location)
    return (full[:10], None) if full is not None else (None, note)


def _offset_text(hl7: str) -> str | None:
    hours, minutes = int(hl7[1:3]), int(hl7[3:5])
    # FHIR's dateTime pattern allows -14:00 … +14:00.
    if minutes > 59 or hours > 14 or (hours == 14 and minutes):
        return None
    return f"{hl7[0]}{hl7[1:3]}:{hl7[3:5]}"


def _zone_offset(local: datetime, timezone: str) -> str:
    """``timezone``'s UTC offset at wall-clock time ``local`` (DST included) as ``+HH:MM``.

    A wall-clock time that happens twice (DST ends) takes the first, earlier instant; one that
    never happens (DST starts) takes the offset in force before the change (PEP 495, fold=0).
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"Unknown time zone {timezone!r} in the sender profile") from None
    delta = local.replace(tzinfo=zone).utcoffset() or timedelta(0)
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _bad_date(value: str, why: str, location: str) -> Note:
    return Note("bad-date", f"{value!r} is not a valid date: {why}", location)


_ISO_PARTIAL = re.compile(r"^(?P<Y>\d{4})(?:-(?P<M>\d{2})(?:-(?P<D>\d{2}))?)?$")


def iso_date(value: str, formats: Sequence[str] = ("%Y-%m-%d",), *,
             location: str = "") -> tuple[str | None, Note | None]:
    """A CSV date as a FHIR ``date`` (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``).

    ISO 8601 text (full or partial) is taken as it is; anything else is tried against
    ``formats`` (``datetime.strptime`` directives, e.g. ``("%Y-%m-%d", "%d/%m/%Y")``) in order.
    None and a ``bad-date`` Note when no reading gives a real calendar date.
    """
    text = (value or "").strip()
    if not text:
        return None, _bad_date(value, "it is empty", location)
    m = _ISO_PARTIAL.match(text)
    if m:
        try:
            date(int(m["Y"]), int(m["M"] or 1), int(m["D"] or 1))  # a real calendar date?
        except ValueError as exc:
            return None, _bad_date(value, str(exc), location)
        return text, None
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date().isoformat(), None
        except ValueError:
            continue
    return None, _bad_date(value, f"it matches none of {', '.join(formats)}", location)


# --------------------------------------------------------------------------- names, addresses, telecom

_APOSTROPHES = "'\u2019\u02bc"
_WORD_PARTS = re.compile(rf"([\-{_APOSTROPHES}])")
_ROMAN_SUFFIXES = frozenset({"II", "III", "IV"})


def _is_latin(word: str) -> bool:
    letters = [ch for ch in word if ch.isalpha()]
    return bool(letters) and all(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)


def _case_word(word: str, keep_digits: bool) -> str:
    if not _is_latin(word):
        return word  # Thai, Chinese, Cyrillic …: no casing applied
    if keep_digits and any(ch.isdigit() for ch in word):
        return word  # 4B, 99/1: house and unit numbers as written
    if word.upper() in _ROMAN_SUFFIXES:
        return word.upper()
    # Each part between hyphens and apostrophes on its own: SMITH-jones → Smith-Jones.
    return "".join(p if _WORD_PARTS.fullmatch(p) else _case_part(p) for p in _WORD_PARTS.split(word))


def _case_part(part: str) -> str:
    letters = [ch for ch in part if ch.isalpha()]
    if letters and letters[0].isupper() and any(ch.islower() for ch in letters) and \
            any(ch.isupper() for ch in letters[1:]):
        return part  # McDonald, DeVito, MacArthur: cased on purpose
    return part[:1].upper() + part[1:].lower()


def person_name(text: str) -> str:
    """A name part trimmed, inner spaces collapsed and cased consistently (``SMITH`` → ``Smith``,
    ``o'brien`` → ``O'Brien``, ``smith-jones`` → ``Smith-Jones``)."""
    return " ".join(_case_word(w, keep_digits=False) for w in (text or "").split())


def address_part(text: str) -> str:
    """An address line, city, district or province trimmed, spaces collapsed, cased like a name."""
    return " ".join(_case_word(w, keep_digits=True) for w in (text or "").split())


def postal_code(text: str) -> str:
    """A postal code trimmed, upper-cased, inner spaces collapsed (``sw1a  1aa`` → ``SW1A 1AA``)."""
    return " ".join((text or "").split()).upper()


# A trailing extension ("x22", "ext. 22", "#22") is not part of the dialable number.
_EXTENSION = re.compile(r"(?:\s*(?:ext\.?|extn\.?|x|#)\s*\d+)\s*$", re.IGNORECASE)


def telecom(system: str, value: str) -> str:
    """A ContactPoint value in one form per ``system``: phone, fax, sms and pager keep a leading
    ``+`` and the digits (any extension dropped); email is trimmed and lower-cased; others trimmed."""
    text = (value or "").strip()
    if system in ("phone", "fax", "sms", "pager"):
        number = _EXTENSION.sub("", text)
        digits = "".join(str(unicodedata.decimal(ch)) for ch in number if ch.isdecimal())
        return ("+" if number.startswith("+") and digits else "") + digits
    if system == "email":
        return text.lower()
    return text
