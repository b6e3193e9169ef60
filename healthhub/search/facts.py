"""One row per resource for statistics: its patient and its clinical date (``search_facts``).

Grouping a million Observations by the patient's sex or by week joined the cohort to two index
tables of a million rows each (the ``subject`` reference, the ``date``) before it could join the
patients: 2–3 s on PostgreSQL at 1M resources. Written with the other index rows, from the same
extracted values, this table makes both one narrow row per resource, and an unfiltered cohort
needs no other table at all (bench/RESULTS.md, statistics).

A resource gets a row when its type can name a patient or has a clinical date; either may be
NULL. The clinical date is the start (``low``, UTC) of the first of :data:`CLINICAL_DATE`'s
parameters that has a value (the type's ``date`` parameter for types not listed).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

from . import indexer as ix
from .registry import default_registry

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


def has_facts(resource_type: str) -> bool:
    return resource_type == "Patient" or bool(patient_params(resource_type) or date_params(resource_type))


def facts_row(resource_type: str, resource_id: str, rows: Iterable[Any]) -> dict[str, Any] | None:
    """``{"patient_id", "event_at"}`` of one resource from its extracted index rows, or None when
    its type has neither."""
    if not has_facts(resource_type):
        return None
    patients = set(patient_params(resource_type))
    wanted = date_params(resource_type)
    patient: str | None = resource_id if resource_type == "Patient" else None
    lows: dict[str, datetime] = {}
    for row in rows:
        if isinstance(row, ix.ReferenceRow):
            if (row.param in patients and row.target_type == "Patient" and row.target_id
                    and (patient is None or row.target_id < patient)):
                patient = row.target_id
        elif isinstance(row, ix.DateRow) and (row.param not in lows or row.low < lows[row.param]):
            lows[row.param] = row.low
    event = None
    for params in wanted:
        found = [lows[p] for p in params if p in lows]
        if found:
            event = min(found)
            break
    return {"patient_id": patient, "event_at": event}
