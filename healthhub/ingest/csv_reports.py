"""CSV case-report line lists → one FHIR R4B transaction Bundle per good row, row-located errors for the rest.

The adapter is pure and streaming: the byte stream is decoded incrementally and parsed record by
record, so memory does not grow with the file (apart from ~20 bytes a row for the duplicate
check). Columns come from a mapping profile (:mod:`.csv_profile`); how rows are counted and what
each column becomes is documented in docs/csv-case-reports.md.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from marshmallow import ValidationError

from . import normalize
from .csv_profile import (
    LOINC_SYSTEM,
    Profile,
    ProfileError,
    UnknownProfileError,
    available_profiles,
    load_profile,
)
from .normalize import NATIONAL_ID_SYSTEM, SENDER_TAG, Note, SenderProfile
from .normalize import search_token as _token

__all__ = ["HeaderError", "Profile", "ProfileError", "RowResult", "UnknownProfileError", "available_profiles",
           "load_profile", "read_rows"]

#: Longest physical line read; a longer one is skipped as a row error without being held in memory.
MAX_LINE = 1 << 20
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CONDITION_OUTCOME = "http://hl7.org/fhir/StructureDefinition/condition-outcome"
OUTCOME_SYSTEM = "urn:healthhub:codesystem:case-outcome"
_SCHEMA = "_schema"  # marshmallow's key for errors of the row as a whole


class HeaderError(Exception):
    """The header row does not fit the profile: the whole upload is refused."""

    def __init__(self, message: str, missing: list[str] | None = None, unknown: list[str] | None = None,
                 duplicated: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing or []
        self.unknown = unknown or []
        self.duplicated = duplicated or []


@dataclass
class RowResult:
    """The outcome of one data row."""

    #: 1-based data row number (the header is row 0): spreadsheet row number minus one.
    row: int
    case_id: str | None
    #: The row as read, by header (undecodable bytes shown as ``\\xe9``; extra cells as ``_extra1``…).
    raw: dict[str, str]
    #: Column header (or ``_schema`` for the row as a whole) → messages; empty for a good row.
    errors: dict[str, list[str]] = field(default_factory=dict)
    bundle: dict[str, Any] | None = None
    notes: list[Note] = field(default_factory=list)
    #: The reporting hospital's code (a good row only).
    sender: str | None = None


def read_rows(stream: BinaryIO, profile: Profile,
              senders: Callable[[str], SenderProfile]) -> Iterator[RowResult]:
    """Parse a CSV line list row by row; raise HeaderError for a wrong header, never for a bad row.

    The header is checked when iteration starts. Rows are numbered as a spreadsheet shows them,
    minus one: records, not physical lines (quoted line breaks stay in their row), blank records
    counted but not yielded. ``senders(hospital_code)`` gives the row's sender and raises
    LookupError (or ValueError) for a code the hub does not know, which becomes an error on the
    hospital-code column; it is asked once per code. The caller's stream is left open.
    """
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad cell is reported
    # and the rows after it still decode; utf-8-sig drops a leading BOM.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        records = _Records(text)
        headers = _check_header(records, profile)
        yield from _rows(records, headers, profile, senders)
    finally:
        text.detach()  # leave the caller's stream open


# --- reading records ------------------------------------------------------------------------------

class _LineTooLong(Exception):
    pass


class _Lines:
    """Physical lines of a text stream, none longer than MAX_LINE (a longer one is skipped)."""

    def __init__(self, text: io.TextIOBase) -> None:
        self.text = text

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_LINE)
        if not line:
            raise StopIteration
        if len(line) >= MAX_LINE and not line.endswith(("\n", "\r")):
            while (more := self.text.readline(MAX_LINE)) and not more.endswith(("\n", "\r")):
                pass
            raise _LineTooLong
        return line


class _Records:
    """CSV records, each a list of cells or the message of why it could not be read."""

    def __init__(self, text: io.TextIOBase) -> None:
        self.reader = csv.reader(_Lines(text))

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> list[str] | str:
        try:
            return next(self.reader)
        except _LineTooLong:
            return f"The row is longer than {MAX_LINE} characters; it was not read."
        except csv.Error as exc:  # e.g. "field larger than field limit (131072)"
            return f"The row could not be read as CSV: {exc}."


def _check_header(records: _Records, profile: Profile) -> list[str]:
    """The header cells (trimmed) matched to the profile's columns; HeaderError when they do not fit."""
    expected = ", ".join(c.header for c in profile.columns)
    for rec in records:
        if isinstance(rec, str):
            raise HeaderError(f"The header row could not be read: {rec}")
        if any(cell.strip() for cell in rec):
            break
    else:
        raise HeaderError(f"The file is empty: expected a header row with the columns {expected}.",
                          missing=[c.header for c in profile.columns if c.required])
    cells = [_shown(cell.strip()) for cell in rec]
    if cells and (cells[0].startswith(("\\xff\\xfe", "\\xfe\\xff")) or "\x00" in cells[0]):
        raise HeaderError("The file is UTF-16 encoded: save it as 'CSV UTF-8' and upload it again.")
    by_key = {c.header.casefold(): c for c in profile.columns}
    seen: dict[str, int] = {}
    for cell in cells:
        seen[cell.casefold()] = seen.get(cell.casefold(), 0) + 1
    unknown = [cell for cell in cells if cell.casefold() not in by_key]
    duplicated = sorted({cell for cell in cells if seen[cell.casefold()] > 1 and cell})
    missing = [c.header for c in profile.columns if c.required and c.header.casefold() not in seen]
    one_of: list[list[str]] = []
    for group in profile.require_one_of:
        heads = [profile.header_of(n) for n in group if profile.fed(n)]
        if heads and not any(h.casefold() in seen for h in heads):
            one_of.append(heads)
    if missing or one_of or unknown or duplicated:
        parts = []
        if missing:
            parts.append("missing column(s): " + ", ".join(missing))
        parts += ["missing one of the columns " + ", ".join(heads) for heads in one_of]
        missing += [h for heads in one_of for h in heads if h not in missing]
        if unknown:
            parts.append("unexpected column(s): " + ", ".join(
                u or f"(blank, column {i})" for i, u in enumerate(cells, 1) if u in unknown))
        if duplicated:
            parts.append("repeated column(s): " + ", ".join(duplicated))
        raise HeaderError(f"The header does not match the CSV profile {profile.name!r}: " + "; ".join(parts)
                          + f". Expected columns: {expected}.", missing, unknown, duplicated)
    return [by_key[cell.casefold()].header for cell in cells]


def _shown(cell: str) -> str:
    """A decoded cell with undecodable bytes written as ``\\xe9`` (safe to store and print)."""
    if not _has_surrogates(cell):
        return cell
    return cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_SURROGATE = re.compile("[\udc80-\udcff]")
#: Control characters a cell cannot hold (tab and line breaks can be in a quoted cell); NUL
#: cannot even be stored by PostgreSQL.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _has_surrogates(cell: str) -> bool:
    return not cell.isascii() and _SURROGATE.search(cell) is not None


# --- rows -----------------------------------------------------------------------------------------

def _rows(records: _Records, headers: list[str], profile: Profile,
          senders: Callable[[str], SenderProfile]) -> Iterator[RowResult]:
    schema = profile.schema()
    columns = {c.header: c for c in profile.columns}
    seen = _SeenKeys()
    case_header, hospital_header = profile.header_of("case_id"), profile.header_of("hospital_code")
    lookup = _SenderCache(senders)
    row = 0
    for rec in records:
        row += 1  # a record is a row, however many physical lines its quoted cells span
        if isinstance(rec, str):
            yield RowResult(row, None, {}, {_SCHEMA: [rec]})
            continue
        if not "".join(rec).strip():
            continue  # a blank line is a row in a spreadsheet, so it is counted, but it holds nothing
        raw = {h: v if v.isascii() else _shown(v) for h, v in zip(headers, rec, strict=False)}
        if len(rec) > len(headers):
            raw.update({f"_extra{i}": _shown(v) for i, v in enumerate(rec[len(headers):], 1)})
        case_id = raw.get(case_header, "").strip() or None
        if len(rec) != len(headers):
            yield RowResult(row, case_id, raw, {_SCHEMA: [
                f"The row has {len(rec)} cells; the header has {len(headers)}."]})
            continue
        errors: dict[str, list[str]] = {}
        cells: dict[str, str] = {}
        for header, value in zip(headers, rec, strict=True):
            col = columns[header]
            value = value.strip()
            if not value or col.field is None:
                continue
            if _has_surrogates(value):
                errors[header] = ["Not valid UTF-8 text (" + _bad_bytes(value) + "): save the file as 'CSV UTF-8'."]
            elif len(value) > profile.max_field_length:
                errors[header] = [f"Longer than {profile.max_field_length} characters."]
            elif _CONTROL.search(value):
                errors[header] = ["Holds a control character (such as NUL, 0x00); only printable text, tabs "
                                  "and line breaks are accepted."]
            else:
                cells[header] = value
        try:
            loaded = schema.load(cells)
        except ValidationError as exc:
            loaded = exc.valid_data if isinstance(exc.valid_data, dict) else {}
            for key, messages in _messages(exc).items():
                if key not in errors:  # a cell that could not be decoded gets one error, not two
                    errors[key] = messages
        data: dict[str, Any] = {**profile.constants, **loaded}
        hospital, case = data.get("hospital_code"), data.get("case_id")
        if isinstance(hospital, str) and isinstance(case, str) and not {hospital_header, case_header} & errors.keys():
            first = seen.add(f"{hospital}\x1f{case}".encode(), row)
            if first is not None:
                errors.setdefault(case_header, []).append(f"Duplicate: the same case is already in row {first}.")
        sender = None
        if isinstance(hospital, str) and hospital_header not in errors:
            sender = lookup(hospital)
            if isinstance(sender, str):
                errors[hospital_header] = [sender]
        if errors or not isinstance(sender, SenderProfile):
            yield RowResult(row, case_id, raw, errors)
            continue
        notes: list[Note] = []
        bundle = _bundle(data, profile, sender, notes)
        yield RowResult(row, case_id, raw, {}, bundle, notes, sender.code)


def _messages(exc: ValidationError) -> dict[str, list[str]]:
    """marshmallow's messages flattened to column → list of strings."""
    out: dict[str, list[str]] = {}
    messages = exc.messages if isinstance(exc.messages, dict) else {_SCHEMA: exc.messages}
    for key, value in messages.items():
        items = value if isinstance(value, list) else [value]
        out.setdefault(str(key), []).extend(str(m) for m in items)
    return out


def _bad_bytes(value: str) -> str:
    found = sorted({f"0x{ord(ch) - 0xDC00:02X}" for ch in _SURROGATE.findall(value)})
    return "byte" + ("s " if len(found) > 1 else " ") + ", ".join(found[:5])


class _SenderCache:
    """``senders`` asked once per hospital code of a file; an unknown code becomes a message."""

    def __init__(self, senders: Callable[[str], SenderProfile]) -> None:
        self.senders = senders
        self.known: dict[str, SenderProfile | str] = {}

    def __call__(self, code: str) -> SenderProfile | str:
        found = self.known.get(code)
        if found is None:
            try:
                found = self.senders(code)
            except (LookupError, ValueError) as exc:
                detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) and exc.args[0] != code else ""
                found = f"Unknown hospital code {code!r}" + (f": {detail}" if detail else ".")
            if len(self.known) < 1024:  # a file names a few hospitals; do not let a bad one grow this
                self.known[code] = found
        return found


class _SeenKeys:
    """Which (hospital, case id) pairs appeared, and in which row: an open-addressing table of
    64-bit BLAKE2b digests in two flat arrays (~20 bytes a row instead of ~150 for a dict of
    strings), so a million-row file costs tens of megabytes, not hundreds."""

    def __init__(self) -> None:
        self.digests = array("Q", bytes(8 * 1024))
        self.rows = array("Q", bytes(8 * 1024))
        self.count = 0

    def add(self, key: bytes, row: int) -> int | None:
        """Record ``key`` at ``row``; return the row where it was first seen, if it was."""
        digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1  # 0 marks empty
        mask = len(self.digests) - 1
        i = digest & mask
        while self.digests[i]:
            if self.digests[i] == digest:
                return int(self.rows[i])
            i = (i + 1) & mask
        self.digests[i], self.rows[i] = digest, row
        self.count += 1
        if self.count * 4 > len(self.digests) * 3:
            self._grow()
        return None

    def _grow(self) -> None:
        old = zip(self.digests, self.rows, strict=True)
        size = len(self.digests) * 2
        self.digests, self.rows = array("Q", bytes(8 * size)), array("Q", bytes(8 * size))
        mask = size - 1
        for digest, row in old:
            if digest:
                i = digest & mask
                while self.digests[i]:
                    i = (i + 1) & mask
                self.digests[i], self.rows[i] = digest, row


# --- FHIR -----------------------------------------------------------------------------------------

def _bundle(data: Mapping[str, Any], profile: Profile, sender: SenderProfile, notes: list[Note]) -> dict[str, Any]:
    """The transaction Bundle of one valid row: Patient (create if absent), Condition and Observation (upsert)."""
    patient_url, condition_url = _urn(), _urn()
    observation_url = _urn() if data.get("test_code") else None
    case_system = sender.system("case")
    patient, criteria = _patient(data, sender)
    entries = [{"fullUrl": patient_url, "resource": patient,
                # Conditional create: a case report never overwrites what a hospital feed sent.
                # https://hl7.org/fhir/R4B/http.html#ccreate
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}}]
    condition = _condition(data, profile, case_system, patient_url, observation_url, notes)
    entries.append({"fullUrl": condition_url, "resource": condition,
                    # Conditional update on the case identifier: a re-sent file updates, never duplicates.
                    # https://hl7.org/fhir/R4B/http.html#cond-update
                    "request": {"method": "PUT",
                                "url": f"Condition?identifier={_token(case_system, data['case_id'])}"}})
    if observation_url:
        obs_id = f"{data['case_id']}-test"
        entries.append({"fullUrl": observation_url,
                        "resource": _observation(data, profile, case_system, obs_id, patient_url, notes),
                        "request": {"method": "PUT", "url": f"Observation?identifier={_token(case_system, obs_id)}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _identifier_type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": V2_0203, "code": code, "display": display}]}


def _patient(data: Mapping[str, Any], sender: SenderProfile) -> tuple[dict[str, Any], str]:
    """The Patient and the criteria of its conditional create: this hospital's record of the
    patient, never another hospital's.

    The hub keeps one Patient per hospital and links those of one person (healthhub/mpi), so a
    national id alone may match several records — and a conditional create that matches more
    than one is refused (https://hl7.org/fhir/R4B/http.html#ccreate: 412), which rejected every
    case report of a person two hospitals had sent. The key is therefore the hospital's record
    number (the key its HL7 v2 feed writes under too); without one, the national id among this
    hospital's records, as the HL7 v2 adapter finds them: those its Organization manages, or for
    a sender registered without one, those its payloads made (``meta.tag``
    ``SENDER_TAG|<hospital_code>``)."""
    identifiers: list[dict[str, Any]] = []
    criteria = ""
    patient: dict[str, Any] = {"resourceType": "Patient"}
    if data.get("national_id"):
        identifiers.append({"use": "official", "type": _identifier_type("NI", "National unique individual identifier"),
                            "system": NATIONAL_ID_SYSTEM, "value": data["national_id"]})
    if data.get("mrn"):
        mrn: dict[str, Any] = {"use": "usual", "type": _identifier_type("MR", "Medical record number"),
                               "system": sender.mrn_system, "value": data["mrn"]}
        if sender.organization:
            mrn["assigner"] = {"reference": sender.organization}
        identifiers.append(mrn)
        criteria = f"identifier={_token(sender.mrn_system, data['mrn'])}"
    elif sender.organization:  # the schema requires one of the two
        criteria = f"identifier={_token(NATIONAL_ID_SYSTEM, data['national_id'])}&organization={sender.organization}"
    else:
        patient["meta"] = {"tag": [sender.tag]}
        criteria = f"identifier={_token(NATIONAL_ID_SYSTEM, data['national_id'])}&_tag={_token(SENDER_TAG, sender.code)}"
    if sender.organization:
        patient["managingOrganization"] = {"reference": sender.organization}
    patient["identifier"] = identifiers
    name: dict[str, Any] = {}
    if data.get("family_name"):
        name["family"] = normalize.person_name(data["family_name"])
    if data.get("given_name"):
        name["given"] = normalize.person_name(data["given_name"]).split()
    if name:
        patient["name"] = [{"use": "official", **name}]
    if data.get("sex"):
        patient["gender"] = data["sex"]
    if data.get("birth_date"):
        patient["birthDate"] = data["birth_date"].isoformat()
    if data.get("outcome") == "died":
        # No date of death in the form: deceasedBoolean (https://hl7.org/fhir/R4B/patient.html).
        patient["deceasedBoolean"] = True
    address = {k: normalize.address_part(data[f]) for k, f in (("district", "district"), ("state", "province"))
               if data.get(f)}
    if address:
        patient["address"] = [{"use": "home", **address}]
    return patient, criteria


# clinicalStatus per outcome (https://hl7.org/fhir/R4B/valueset-condition-clinical.html); None = omitted.
_CLINICAL_STATUS: dict[str | None, str | None] = {
    None: "active", "under-treatment": "active", "recovered": "resolved", "died": "inactive", "unknown": None}
# Condition outcome extension codes (SNOMED CT where one fits; https://hl7.org/fhir/R4B/extension-condition-outcome.html)
_OUTCOME_CODINGS: dict[str, tuple[str, str, str | None]] = {
    "recovered": ("Recovered", "370996005", "Patient's condition resolved"),
    "died": ("Died", "419099009", "Dead"),
    "under-treatment": ("Under treatment", "", None),
    "unknown": ("Unknown", "261665006", "Unknown"),
}


def _condition(data: Mapping[str, Any], profile: Profile, case_system: str, patient_url: str,
               observation_url: str | None, notes: list[Note]) -> dict[str, Any]:
    outcome = data.get("outcome")
    codings, note = normalize.map_code(profile.condition_system, data["condition_code"],
                                       location=profile.header_of("condition_code"))
    _note(notes, note, profile.header_of("condition_code"))
    condition: dict[str, Any] = {"resourceType": "Condition"}
    if outcome:
        text, sct, sct_display = _OUTCOME_CODINGS[outcome]
        coding = [{"system": OUTCOME_SYSTEM, "code": outcome, "display": text}]
        if sct:
            coding.append({"system": SNOMED, "code": sct, "display": sct_display or text})
        condition["extension"] = [{"url": CONDITION_OUTCOME, "valueCodeableConcept": {"coding": coding, "text": text}}]
    condition["identifier"] = [{"system": case_system, "value": data["case_id"]}]
    status = _CLINICAL_STATUS[outcome]
    if status:
        condition["clinicalStatus"] = _concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status,
                                               status.capitalize())
    condition["verificationStatus"] = _concept("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "confirmed", "Confirmed")
    # A case report is the reporting hospital's diagnosis at a visit, not a curated problem list.
    condition["category"] = [_concept("http://terminology.hl7.org/CodeSystem/condition-category",
                                      "encounter-diagnosis", "Encounter Diagnosis")]
    condition["code"] = {"coding": codings}
    condition["subject"] = {"reference": patient_url}
    if data.get("onset_date"):
        condition["onsetDateTime"] = data["onset_date"].isoformat()
    if data.get("diagnosis_date"):
        condition["recordedDate"] = data["diagnosis_date"].isoformat()
    if observation_url:
        # The confirmatory test is the evidence of the diagnosis.
        condition["evidence"] = [{"detail": [{"reference": observation_url}]}]
    return condition


def _observation(data: Mapping[str, Any], profile: Profile, case_system: str, obs_id: str, patient_url: str,
                 notes: list[Note]) -> dict[str, Any]:
    codings, note = normalize.map_code(LOINC_SYSTEM, data["test_code"], location=profile.header_of("test_code"))
    _note(notes, note, profile.header_of("test_code"))
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": case_system, "value": obs_id}],
        "status": "final",
        "category": [_concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory",
                              "Laboratory")],
        "code": {"coding": codings},
        "subject": {"reference": patient_url},
    }
    if data.get("test_date"):
        obs["effectiveDateTime"] = data["test_date"].isoformat()
    obs.update(result_value(data["test_result"], notes, profile.header_of("test_result")))
    return obs


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _note(notes: list[Note], note: Note | None, location: str) -> None:
    if note is not None:
        notes.append(note if note.location else replace(note, location=location))


# Qualitative results → SNOMED CT qualifier values (https://hl7.org/fhir/R4B/observation.html#value).
_POSITIVE = ("10828004", "Positive")
_NEGATIVE = ("260385009", "Negative")
_DETECTED = ("260373001", "Detected")
_NOT_DETECTED = ("260415000", "Not detected")
_INCONCLUSIVE = ("419984006", "Inconclusive")
_REACTIVE = ("11214006", "Reactive")
_NON_REACTIVE = ("131194007", "Non-Reactive")
QUALITATIVE: Mapping[str, tuple[str, str]] = {
    "positive": _POSITIVE, "pos": _POSITIVE, "+": _POSITIVE,
    "negative": _NEGATIVE, "neg": _NEGATIVE, "-": _NEGATIVE,
    "detected": _DETECTED,
    "not detected": _NOT_DETECTED, "not-detected": _NOT_DETECTED, "undetected": _NOT_DETECTED,
    "none detected": _NOT_DETECTED,
    "inconclusive": _INCONCLUSIVE, "indeterminate": _INCONCLUSIVE, "equivocal": _INCONCLUSIVE,
    "reactive": _REACTIVE, "non-reactive": _NON_REACTIVE, "nonreactive": _NON_REACTIVE,
    "non reactive": _NON_REACTIVE,
}
# A number, an optional comparator before it and an optional unit after it (which must not start
# with a digit or ':' so that titres such as 1:64 stay text).
_QUANTITY = re.compile(r"^(?P<cmp><=|>=|<|>)?\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
                       r"\s*(?P<unit>(?:[^\d\s:,;]|10[*^]).*)?$")


def result_value(text: str, notes: list[Note], location: str = "test_result") -> dict[str, Any]:
    """``value[x]`` for a result cell: a quantity, a SNOMED CT qualitative value or a string."""
    word = " ".join(text.casefold().split())
    if word in QUALITATIVE:
        code, display = QUALITATIVE[word]
        return {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": code, "display": display}],
                                         "text": text}}
    match = _QUANTITY.match(text)
    if match:
        num = match["num"]
        quantity: dict[str, Any] = {"value": float(num) if "." in num else int(num)}
        if match["cmp"]:
            quantity["comparator"] = match["cmp"]
        unit = (match["unit"] or "").strip()
        if unit:
            quantity["unit"] = unit
            ucum, note = normalize.ucum_unit(unit, location=location)
            _note(notes, note, location)
            if ucum:
                quantity.update(system=UCUM, code=ucum)
        return {"valueQuantity": quantity}
    return {"valueString": text}
