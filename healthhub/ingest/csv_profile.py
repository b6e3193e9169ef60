"""CSV line-list mapping profiles: JSON column layouts and the marshmallow row schema built from one.

A profile (``healthhub/ingest/profiles/<name>.json``, documented in that folder's README.md)
names the columns of one surveillance form and the canonical field each feeds; the field's
kind (identifier, date, ICD-10 code, …) is fixed here, everything form-specific (headers,
date formats, value maps, required columns, fixed values) is data. A new form is a new file.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from . import normalize

PROFILE_DIR = Path(__file__).with_name("profiles")
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
LOINC_SYSTEM = "http://loinc.org"
# WHO ICD-10: a letter, two digits, optionally a dot and the subdivision digits
# (https://icd.who.int/browse10/2019/en; national editions may add a digit, hence up to 3).
ICD10_PATTERN = r"^[A-Z][0-9]{2}(\.[0-9]{1,3})?$"
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Business identifiers end up in `urn:healthhub:sender:<hospital_code>:case|<case_id>`.
_HOSPITAL_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
_LOINC = re.compile(r"^[0-9]{1,7}-[0-9]$")
_EARLIEST = date(1900, 1, 1)

SEX_CODES = ("male", "female", "other", "unknown")  # https://hl7.org/fhir/R4B/valueset-administrative-gender.html
OUTCOME_CODES = ("recovered", "died", "under-treatment", "unknown")

#: Canonical field → kind. The kind decides validation and the FHIR element the value feeds.
FIELD_KINDS: Mapping[str, str] = {
    "case_id": "case-id", "hospital_code": "hospital-code", "national_id": "national-id", "mrn": "text",
    "family_name": "text", "given_name": "text", "sex": "sex", "birth_date": "date",
    "province": "text", "district": "text", "condition_code": "condition", "onset_date": "date",
    "diagnosis_date": "date", "test_code": "loinc", "test_result": "text", "test_date": "date",
    "outcome": "outcome",
}
#: Fields a Bundle cannot be built without: each needs a required column or a constant.
ESSENTIAL = ("case_id", "hospital_code", "condition_code")
_CLOSED = {"sex": SEX_CODES, "outcome": OUTCOME_CODES}


class ProfileError(ValueError):
    """A profile file that cannot be used (named in the message)."""


class UnknownProfileError(LookupError):
    """No profile of that name."""


@dataclass(frozen=True)
class Column:
    """One CSV column of a profile."""

    header: str
    #: Canonical field it feeds; None for a column that is accepted and ignored.
    field: str | None
    required: bool = False
    date_formats: tuple[str, ...] = ()
    #: Case-folded cell value → canonical value (``"1"`` → ``"male"``).
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The value-map keys as the profile writes them (for messages).
    accepted: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Profile:
    """A loaded profile: its columns and the row schema built from them."""

    name: str
    title: str
    columns: tuple[Column, ...]
    condition_system: str
    #: Canonical field → already validated value, for fields no column feeds.
    constants: Mapping[str, Any]
    #: Groups of canonical fields of which each row needs at least one.
    require_one_of: tuple[tuple[str, ...], ...]
    max_field_length: int
    schema: type[Schema]

    def header_of(self, name: str) -> str:
        """The column header that feeds canonical field ``name`` (the name itself when none does)."""
        return self._headers.get(name, name)

    @functools.cached_property
    def _headers(self) -> dict[str, str]:
        return {c.field: c.header for c in self.columns if c.field}

    @functools.cached_property
    def mapped_columns(self) -> tuple[Column, ...]:
        """Columns whose cells go through a value map or code tidying before validation."""
        return tuple(c for c in self.columns if c.values or c.field in ("condition_code", "test_code"))

    def fed(self, name: str) -> bool:
        """True when a column or a constant provides canonical field ``name``."""
        return name in self.constants or any(c.field == name for c in self.columns)


# --- the profile file ---------------------------------------------------------------------------

class _ColumnSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    field = fields.String(required=True, allow_none=True, validate=validate.OneOf(list(FIELD_KINDS)))
    required = fields.Boolean(load_default=False)
    date_formats = fields.List(fields.String(validate=validate.Length(min=2)), load_default=list)
    values = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    description = fields.String()


class _ProfileSchema(Schema):
    name = fields.String(required=True, validate=validate.Regexp(_PROFILE_NAME))
    title = fields.String(required=True)
    description = fields.String()
    date_formats = fields.List(fields.String(validate=validate.Length(min=2)), load_default=lambda: ["%Y-%m-%d"])
    condition_system = fields.String(load_default=ICD10_SYSTEM)
    condition_pattern = fields.String(load_default=ICD10_PATTERN)
    max_field_length = fields.Integer(load_default=1024, validate=validate.Range(min=16, max=100_000))
    require_one_of = fields.List(fields.List(fields.String(validate=validate.OneOf(list(FIELD_KINDS))),
                                             validate=validate.Length(min=1)), load_default=list)
    constants = fields.Dict(keys=fields.String(validate=validate.OneOf(list(FIELD_KINDS))),
                            values=fields.String(), load_default=dict)
    columns = fields.List(fields.Nested(_ColumnSchema), required=True, validate=validate.Length(min=1))


def available_profiles(directory: Path | None = None) -> list[str]:
    """Names of the profiles in ``directory`` (if given) and the package folder, sorted."""
    folders = [d for d in (directory, PROFILE_DIR) if d is not None]
    return sorted({p.stem for d in folders if d.is_dir() for p in d.glob("*.json")})


def load_profile(name: str, directory: Path | None = None) -> Profile:
    """Load profile ``name`` from ``directory`` (checked first) or the package folder."""
    if not _PROFILE_NAME.match(name or ""):
        raise UnknownProfileError(f"Unknown CSV profile {name!r}: names are lower-case letters, digits, - and _")
    for folder in (directory, PROFILE_DIR):
        if folder is None:
            continue
        path = Path(folder) / f"{name}.json"
        if path.is_file():
            return _load_file(path.resolve(), path.stat().st_mtime_ns)
    known = ", ".join(available_profiles(directory)) or "none"
    raise UnknownProfileError(f"Unknown CSV profile {name!r}; available profiles: {known}")


@functools.lru_cache(maxsize=32)
def _load_file(path: Path, mtime_ns: int) -> Profile:
    """Parse and check one profile file (cached per file version)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"CSV profile {path.name}: cannot read it: {exc}") from None
    try:
        spec = _ProfileSchema().load(doc if isinstance(doc, dict) else {})
    except ValidationError as exc:
        raise ProfileError(f"CSV profile {path.name}: {exc.messages}") from None
    if spec["name"] != path.stem:
        raise ProfileError(f"CSV profile {path.name}: its name {spec['name']!r} must match the file name")
    return _build(spec, path.name)


def _build(spec: dict[str, Any], where: str) -> Profile:
    default_formats = tuple(spec["date_formats"])
    columns: list[Column] = []
    seen_headers: set[str] = set()
    for col in spec["columns"]:
        key = col["name"].strip().casefold()
        if key in seen_headers:
            raise ProfileError(f"CSV profile {where}: column {col['name']!r} is listed twice")
        seen_headers.add(key)
        fed = col["field"]
        if fed is not None and any(c.field == fed for c in columns):
            raise ProfileError(f"CSV profile {where}: two columns feed {fed!r}")
        values = {str(k).strip().casefold(): v for k, v in col["values"].items()}
        if fed in _CLOSED and not values:
            raise ProfileError(f"CSV profile {where}: column {col['name']!r} needs a values map to "
                               f"{', '.join(_CLOSED[fed])}")
        bad = sorted({v for v in values.values() if fed in _CLOSED and v not in _CLOSED[fed]})
        if bad:
            raise ProfileError(f"CSV profile {where}: column {col['name']!r} maps to {bad}, not one of "
                               f"{', '.join(_CLOSED[str(fed)])}")
        formats = tuple(col["date_formats"]) or (default_formats if fed and FIELD_KINDS[fed] == "date" else ())
        columns.append(Column(col["name"].strip(), fed, bool(col["required"]), formats, values,
                              tuple(str(k).strip() for k in col["values"])))
    try:
        pattern = re.compile(spec["condition_pattern"])
    except re.error as exc:
        raise ProfileError(f"CSV profile {where}: condition_pattern: {exc}") from None
    fields_ = {c.field: _field_for(c, pattern, spec["condition_system"]) for c in columns if c.field}
    constants: dict[str, Any] = {}
    for name, raw in spec["constants"].items():
        if name in fields_:
            raise ProfileError(f"CSV profile {where}: constant {name!r} is also fed by a column")
        probe = _field_for(Column(name, name, True, default_formats, {}), pattern, spec["condition_system"])
        try:
            constants[name] = probe.deserialize(raw)
        except ValidationError as exc:
            raise ProfileError(f"CSV profile {where}: constant {name}: {exc.messages}") from None
    groups = tuple(tuple(g) for g in spec["require_one_of"])
    for name in ESSENTIAL:
        if name not in constants and not any(c.field == name and c.required for c in columns):
            raise ProfileError(f"CSV profile {where}: {name} needs a required column or a constant")
    for group in groups:
        if not any(n in fields_ for n in group):
            raise ProfileError(f"CSV profile {where}: require_one_of {list(group)}: no column feeds any of them")
    if not (groups and any({"national_id", "mrn"} >= set(g) for g in groups)) \
            and not any(c.required and c.field in ("national_id", "mrn") for c in columns):
        raise ProfileError(f"CSV profile {where}: rows need national_id or mrn (a required column or require_one_of)")
    schema = _RowSchema.from_dict(fields_, name=f"RowSchema_{spec['name'].replace('-', '_')}")
    profile = Profile(spec["name"], spec["title"], tuple(columns), spec["condition_system"], constants, groups,
                      spec["max_field_length"], schema)
    schema.profile = profile  # type: ignore[attr-defined]
    return profile


# --- the row schema -------------------------------------------------------------------------------

def latest_today() -> date:
    """The latest calendar date anywhere on Earth now (UTC+14), so no local 'today' is in the future."""
    now = time.time()
    if now >= _today[0]:  # recomputed once a minute: it is asked for every date of every row
        _today[:] = [now + 60, (datetime.now(UTC) + timedelta(hours=14)).date()]
    return cast(date, _today[1])


_today: list[Any] = [0.0, date.min]


def _in_range(value: date) -> None:
    if value > latest_today():
        raise ValidationError("Date is in the future.")
    if value < _EARLIEST:
        raise ValidationError(f"Date is before {_EARLIEST.isoformat()}.")


def _shown(fmt: str) -> str:
    """``%d/%m/%Y`` → ``DD/MM/YYYY`` for messages people read."""
    for code, text in (("%Y", "YYYY"), ("%m", "MM"), ("%d", "DD"), ("%y", "YY"), ("%b", "Mon")):
        fmt = fmt.replace(code, text)
    return fmt


class DateCell(fields.Field):
    """A full calendar date written as ISO 8601 or in one of a profile's ``strptime`` formats."""

    def __init__(self, formats: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.formats = formats
        self.expected = " or ".join(dict.fromkeys(["YYYY-MM-DD", *(_shown(f) for f in formats)]))

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> date:
        iso, _ = normalize.iso_date(str(value), self.formats)
        # A partial date (2024, 2024-03) is valid FHIR but cannot be put on an epidemic curve
        # or compared with the other dates of the row, so a case report needs the day.
        if iso is None or len(iso) != 10:
            raise ValidationError(f"Not a valid date: expected {self.expected}.")
        return date.fromisoformat(iso)


class NationalIdCell(fields.String):
    """A national identifier: returned without separators when its check digit is right."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        checked = normalize.validate_national_id(str(value))
        if checked is None:
            raise ValidationError("Not a valid national id: 13 digits with a correct check digit expected.")
        return checked


def loinc_check_digit_ok(code: str) -> bool:
    """True when a LOINC code's last digit is the mod-10 check digit of the rest
    (https://loinc.org/kb/users-guide/calculating-mod-10-check-digits/, the Luhn algorithm)."""
    if not _LOINC.match(code):
        return False
    body, check = code.split("-")
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)  # double every other digit from the right
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10 == int(check)


def _loinc(value: str) -> None:
    if not _LOINC.match(value):
        raise ValidationError("Not a valid LOINC code: digits, a hyphen and a check digit expected (94500-6).")
    if not loinc_check_digit_ok(value):
        raise ValidationError("Not a valid LOINC code: the check digit is wrong.")


def _field_for(col: Column, condition_pattern: re.Pattern[str], condition_system: str) -> fields.Field:
    """The marshmallow field for one column, keyed in errors by the column's header."""
    assert col.field is not None
    kind = FIELD_KINDS[col.field]
    common: dict[str, Any] = {"required": col.required, "data_key": col.header}
    if kind == "date":
        return DateCell(col.date_formats or ("%Y-%m-%d",), validate=_in_range, **common)
    if kind == "national-id":
        return NationalIdCell(**common)
    if kind in ("sex", "outcome"):
        accepted = ", ".join(col.accepted or _CLOSED[col.field])
        return fields.String(validate=validate.OneOf(_CLOSED[col.field], error=f"Must be one of: {accepted}."),
                             **common)
    if kind == "case-id":
        return fields.String(validate=validate.Regexp(_CASE_ID, error="Not a valid case id: 1-64 letters, digits "
                                                      "and . _ : / - (starting with a letter or digit)."), **common)
    if kind == "hospital-code":
        return fields.String(validate=validate.Regexp(_HOSPITAL_CODE, error="Not a valid hospital code: 1-32 "
                                                      "letters, digits and . _ - (starting with a letter or digit)."),
                             **common)
    if kind == "condition":
        what = "ICD-10 code: a letter, 2 digits and optional .digits (A90, A91.0)" \
            if condition_system == ICD10_SYSTEM else f"code of {condition_system}"
        return fields.String(validate=validate.Regexp(condition_pattern, error=f"Not a valid {what}."), **common)
    if kind == "loinc":
        return fields.String(validate=_loinc, **common)
    return fields.String(**common)


_ICD10_NO_DOT = re.compile(r"^([A-Z][0-9]{2})([0-9]{1,3})$")


class _RowSchema(Schema):
    """Base of every generated row schema: value maps before fields, cross-field rules after."""

    profile: Profile

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def map_values(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Translate cells through the profile's value maps; tidy codes (``a900`` → ``A90.0``)."""
        out = dict(data)
        for col in self.profile.mapped_columns:
            value = out.get(col.header)
            if not isinstance(value, str):
                continue
            if col.values:
                value = col.values.get(value.casefold(), value)
            if col.field in ("condition_code", "test_code"):
                value = value.upper().replace(" ", "")
                if col.field == "condition_code" and self.profile.condition_system == ICD10_SYSTEM:
                    value = _ICD10_NO_DOT.sub(r"\1.\2", value)
            out[col.header] = value
        return out

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def cross_field(self, data: dict[str, Any], original_data: Mapping[str, Any], **kwargs: Any) -> None:
        """Rules that join several cells; a cell with its own error counts as given but is not compared."""
        p = self.profile
        row = {**p.constants, **data}
        errors: dict[str, list[str]] = {}

        def given(name: str) -> bool:
            return name in p.constants or original_data.get(p.header_of(name)) not in (None, "")

        def add(name: str, message: str) -> None:
            errors.setdefault(p.header_of(name), []).append(message)

        for group in p.require_one_of:
            if not any(given(n) for n in group):
                errors.setdefault("_schema", []).append(
                    "At least one of " + ", ".join(p.header_of(n) for n in group if p.fed(n)) + " is required.")
        onset, diagnosis, birth = row.get("onset_date"), row.get("diagnosis_date"), row.get("birth_date")
        if onset and diagnosis and onset > diagnosis:
            add("onset_date", f"Onset is after {p.header_of('diagnosis_date')} ({diagnosis.isoformat()}).")
        if birth:
            for name in ("onset_date", "diagnosis_date", "test_date"):
                when = row.get(name)
                if when and when < birth:
                    add(name, f"Date is before {p.header_of('birth_date')} ({birth.isoformat()}).")
        if p.fed("test_code"):
            if not given("test_code"):
                cause = next((n for n in ("test_result", "test_date") if given(n)), None)
                if cause:
                    add("test_code", f"Required when {p.header_of(cause)} is given.")
            elif not given("test_result"):
                add("test_result", f"Required when {p.header_of('test_code')} is given.")
        if errors:
            raise ValidationError(errors)
