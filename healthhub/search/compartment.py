"""The Patient compartment (``fhir/CompartmentDefinition-patient.json``): which resources belong
to a patient, through which reference parameters. https://hl7.org/fhir/R4B/compartmentdefinition.html
"""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import ColumnElement, Select, literal, or_, select, tuple_, union

from .. import jsonio
from ..config import PROJECT_ROOT
from ..storage import models
from .registry import default_registry

DEFINITION = PROJECT_ROOT / "fhir" / "CompartmentDefinition-patient.json"
R = models.Resource
REF = models.SearchReference


@lru_cache(maxsize=1)
def patient_compartment() -> dict[str, tuple[str, ...]]:
    """Resource type → the search parameters that put it in a patient's compartment."""
    definition = jsonio.loads(DEFINITION.read_bytes())
    return {r["code"]: tuple(r["param"]) for r in definition["resource"] if r.get("param")}


def stored_params(resource_type: str, params: tuple[str, ...]) -> tuple[str, ...]:
    """The index parameters holding the Patient references of ``params`` (``Observation.patient``
    is stored as ``subject``: registry.Storage); callers also require ``target_type = 'Patient'``."""
    registry = default_registry()
    out: dict[str, None] = {}
    for code in params:
        storage = registry.storage(resource_type, code)
        if storage.target_type in (None, "Patient"):
            out.update(dict.fromkeys(storage.params))
    return tuple(out)


def in_compartment(resource_type: str, patient_id: str) -> ColumnElement[bool] | None:
    """Condition on ``resources`` for "``resource_type`` in Patient/``patient_id``'s compartment";
    None when the type is never in it."""
    params = patient_compartment().get(resource_type)
    if params is None:
        return None
    members = select(REF.c.resource_id).where(
        REF.c.resource_type == resource_type, REF.c.param.in_(stored_params(resource_type, params)),
        REF.c.target_type == "Patient", REF.c.target_id == patient_id)
    cond = R.id.in_(members)
    return or_(R.id == patient_id, cond) if resource_type == "Patient" else cond


def everything(patient_id: str, types: tuple[str, ...] | None = None) -> Select[tuple[str, str]]:
    """(resource_type, id) of the patient, every resource in its compartment, and the resources
    those point at that belong to no patient (practitioners, organizations, locations, …) —
    one SELECT. https://hl7.org/fhir/R4B/patient-operation-everything.html"""
    comp = patient_compartment()
    pairs = [(t, p) for t, params in comp.items() if t != "Patient" for p in stored_params(t, params)]
    members = select(REF.c.resource_type, REF.c.resource_id).where(
        REF.c.target_type == "Patient", REF.c.target_id == patient_id,
        tuple_(REF.c.resource_type, REF.c.param).in_(pairs))
    patient = select(literal("Patient").label("resource_type"), literal(patient_id).label("resource_id"))
    referenced = select(REF.c.target_type, REF.c.target_id).where(
        tuple_(REF.c.resource_type, REF.c.resource_id).in_(members),
        REF.c.target_id.is_not(None), REF.c.target_type.not_in(list(comp)))
    everything_ = union(patient, members, referenced).subquery()
    stmt = select(everything_.c.resource_type, everything_.c.resource_id)
    if types is not None:
        stmt = stmt.where(everything_.c.resource_type.in_(types))
    return stmt
