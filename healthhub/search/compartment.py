"""The Patient compartment (``fhir/CompartmentDefinition-patient.json``): which resources belong
to a patient, through which reference parameters. https://hl7.org/fhir/R4B/compartmentdefinition.html

``linked=True`` widens a compartment to the person: the compartments of every Patient record the
master patient index links to the patient (:func:`healthhub.mpi.person.person_ids`), the records
themselves included. ``$everything`` and ``patient/`` scopes use it; a compartment search
(``Patient/{id}/{type}``) and ``?patient=`` keep meaning the one record.
"""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import ColumnElement, Select, literal, or_, select, tuple_, union

from .. import jsonio
from ..config import PROJECT_ROOT
from ..mpi.person import person_ids
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


def in_compartment(resource_type: str, patient_id: str, *, linked: bool = False) -> ColumnElement[bool] | None:
    """Condition on ``resources`` for "``resource_type`` in Patient/``patient_id``'s compartment"
    (with ``linked``, in the compartment of any record of the patient's person); None when the
    type is never in it."""
    params = patient_compartment().get(resource_type)
    if params is None:
        return None
    target = REF.c.target_id.in_(person_ids(patient_id)) if linked else REF.c.target_id == patient_id
    members = select(REF.c.resource_id).where(
        REF.c.resource_type == resource_type, REF.c.param.in_(stored_params(resource_type, params)),
        REF.c.target_type == "Patient", target)
    cond = R.id.in_(members)
    if resource_type != "Patient":
        return cond
    return or_(R.id.in_(person_ids(patient_id)) if linked else R.id == patient_id, cond)


def everything(patient_id: str, types: tuple[str, ...] | None = None, *,
               linked: bool = False) -> Select[tuple[str, str]]:
    """(resource_type, id) of the patient, every resource in its compartment, and the resources
    those point at that belong to no patient (practitioners, organizations, locations, …) —
    one SELECT. With ``linked``, of every record of the patient's person (the linked Patient
    records included). https://hl7.org/fhir/R4B/patient-operation-everything.html"""
    comp = patient_compartment()
    pairs = [(t, p) for t, params in comp.items() if t != "Patient" for p in stored_params(t, params)]
    target = REF.c.target_id.in_(person_ids(patient_id)) if linked else REF.c.target_id == patient_id
    members = select(REF.c.resource_type, REF.c.resource_id).where(
        REF.c.target_type == "Patient", target, tuple_(REF.c.resource_type, REF.c.param).in_(pairs))
    if linked:
        records = person_ids(patient_id).subquery()
        patient = select(literal("Patient").label("resource_type"), records.c.patient_id.label("resource_id"))
    else:
        patient = select(literal("Patient").label("resource_type"), literal(patient_id).label("resource_id"))
    referenced = select(REF.c.target_type, REF.c.target_id).where(
        tuple_(REF.c.resource_type, REF.c.resource_id).in_(members),
        REF.c.target_id.is_not(None), REF.c.target_type.not_in(list(comp)))
    everything_ = union(patient, members, referenced).subquery()
    stmt = select(everything_.c.resource_type, everything_.c.resource_id)
    if types is not None:
        stmt = stmt.where(everything_.c.resource_type.in_(types))
    return stmt
