"""Rows for statistics (``search_facts``): per resource its patient, clinical date and codings;
per Patient the attributes statistics group by.

Grouping a million Observations by the patient's sex or by week joined the cohort to two index
tables of a million rows each (the ``subject`` reference, the ``date``) before it could join the
patients: 2–3 s on PostgreSQL at 1M resources. Written with the other index rows, from the same
extracted values, this table holds what a grouping needs in narrow rows (bench/RESULTS.md,
statistics):

- one row per coding of the type's ``code`` parameter (``seq`` 0, 1, …; one row with no code
  when it has none), each with the resource's patient and clinical date, so grouping by code
  needs no join to ``search_token`` (a million-row hash join: most of a ``code × gender``
  grouping's time at 1M, eighth session); ``seq = 0`` is the resource's one row otherwise;
- on a Patient's row its own sex, birth day, province and district — the Patient's own values,
  so no write ever has to copy one resource's values into another's rows, and grouping by them is
  one join of the cohort's rows to the Patients' rows;
- days as ``yyyymmdd`` integers (UTC): a whole-years age is ``(day - birth_day) / 10000`` in
  integer arithmetic on both databases — the birthday has to have come, as a person's age is
  counted — where ``age()`` over a million rows was a third of a grouping's time.

A resource gets rows when its type can name a patient, has a clinical date or a code; any value
may be NULL. The clinical date is the start (``low``, UTC) of the first of :data:`CLINICAL_DATE`'s
parameters that has a value (the type's ``date`` parameter for types not listed).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from . import indexer as ix
from .registry import default_registry
from .values import MAX_CODE, MAX_STRING, clip

PARAM = "_facts"
#: The clinical date of a resource, by type: the first of these parameters that has a value.
CLINICAL_DATE: dict[str, tuple[str, ...]] = {
    "Condition": ("onset-date", "recorded-date"),
    "AllergyIntolerance": ("onset", "date"),
    "MedicationRequest": ("authoredon",),
    "MedicationAdministration": ("effective-time",),
    "MedicationDispense": ("whenhandedover",),
    "ServiceRequest": ("authored",),
    "ImagingStudy": ("started",),
    "Claim": ("created",),
    "ExplanationOfBenefit": ("created",),
}


@lru_cache(maxsize=512)
def patient_params(resource_type: str) -> tuple[str, ...]:
    """The stored reference parameters that name the resource's patient (their rows with a
    ``Patient`` target): ``patient`` (``Observation.patient`` is stored as ``subject``), else a
    ``subject`` that may point at a Patient; () when the type names none."""
    registry = default_registry()
    if registry.get(resource_type, "patient") is not None:
        storage = registry.storage(resource_type, "patient")
        if storage.target_type in (None, "Patient"):
            return storage.params
    subject = registry.get(resource_type, "subject")
    if subject is not None and "Patient" in subject.targets:
        return registry.storage(resource_type, "subject").params
    return ()


@lru_cache(maxsize=512)
def date_params(resource_type: str) -> tuple[tuple[str, ...], ...]:
    """The stored parameters of each clinical-date parameter, in order of preference."""
    registry = default_registry()
    codes = CLINICAL_DATE.get(resource_type, ("date",))
    return tuple(registry.storage(resource_type, c).params for c in codes if registry.get(resource_type, c) is not None)


def code_params(resource_type: str) -> tuple[str, ...]:
    """The stored parameters of the type's ``code`` search parameter; () when it has none."""
    registry = default_registry()
    return registry.storage(resource_type, "code").params if registry.get(resource_type, "code") is not None else ()


def has_facts(resource_type: str) -> bool:
    return resource_type == "Patient" or bool(patient_params(resource_type) or date_params(resource_type)
                                              or code_params(resource_type))


#: A Patient's attributes on its own row: (column, search parameter it is taken from).
PATIENT_ATTRIBUTES = (("gender", "gender"), ("province", "address-state"), ("district", "address-district"))


def day_number(at: datetime | None) -> int | None:
    """``yyyymmdd`` of an instant's UTC day."""
    if at is None:
        return None
    day = at.astimezone(UTC) if at.tzinfo is not None else at
    return day.year * 10000 + day.month * 100 + day.day


def facts_rows(resource_type: str, resource_id: str, rows: Iterable[Any]) -> list[dict[str, Any]]:
    """The ``search_facts`` columns of one resource from its extracted index rows (none when its
    type has no facts): one dict per coding of its ``code`` parameter, at least one."""
    if not has_facts(resource_type):
        return []
    patients = set(patient_params(resource_type))
    wanted = date_params(resource_type)
    codes = set(code_params(resource_type))
    attributes = {param: column for column, param in PATIENT_ATTRIBUTES} if resource_type == "Patient" else {}
    patient: str | None = resource_id if resource_type == "Patient" else None
    lows: dict[str, datetime] = {}
    codings: dict[tuple[str, str], None] = {}  # in document order, once each
    values: dict[str, Any] = {}
    for row in rows:
        if isinstance(row, ix.ReferenceRow):
            if (row.param in patients and row.target_type == "Patient" and row.target_id
                    and (patient is None or row.target_id < patient)):
                patient = row.target_id
        elif isinstance(row, ix.DateRow):
            if row.param not in lows or row.low < lows[row.param]:
                lows[row.param] = row.low
        elif isinstance(row, ix.TokenRow):
            if row.param in codes and row.code is not None:
                codings[(clip(row.system, MAX_CODE) or "", clip(row.code, MAX_CODE) or "")] = None
            elif row.param in attributes and row.code is not None:
                _least(values, attributes[row.param], clip(row.code, MAX_CODE))
        elif isinstance(row, ix.StringRow) and row.param in attributes:
            _least(values, attributes[row.param], clip(row.exact, MAX_STRING))
    event = None
    for params in wanted:
        found = [lows[p] for p in params if p in lows]
        if found:
            event = min(found)
            break
    common = {"patient_id": patient, "event_at": event, "event_day": day_number(event),
              "gender": values.get("gender"), "province": values.get("province"),
              "district": values.get("district"),
              "birth_day": day_number(lows.get("birthdate")) if resource_type == "Patient" else None}
    pairs: list[tuple[str | None, str | None]] = list(codings) or [(None, None)]
    return [{**common, "seq": seq, "system": system, "code": code} for seq, (system, code) in enumerate(pairs)]


def _least(values: dict[str, Any], column: str, value: str | None) -> None:
    """Keep the least value of a column (a Patient with two addresses: the least province, as the
    index's ``min()`` chose before)."""
    if value is not None and (column not in values or value < values[column]):
        values[column] = value
