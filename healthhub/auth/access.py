"""What a verified token may see and do, compiled to SQL.

A SMART scope allows an interaction (``c r u d s``) on a type; ``patient/`` scopes confine it to
the patient compartment of the token's patient, and v2 granular scopes to the resources that
match their query (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
:meth:`Access.restriction` turns the scopes that allow an interaction into one SELECT of the
visible ids (or None when they allow every resource of the type), so searches, includes,
``$everything``, conditional operations and Bundle entries are confined by the database, with
the same compiler as searches: nothing is fetched to be filtered in Python.

Answers (README "Authorization"): an interaction no scope allows is a 403; a resource the token
may not see reads as absent (404) — a resource outside the allowed set is indistinguishable from
one that does not exist; a write that would touch or create a resource outside it is a 403.

``patient/`` scopes also let the token see the resources that describe no patient at all
(practitioners, organizations, locations, medications, terminology…: ``SHARED_TYPES``) when the
scope names their type or ``*``: an app showing a patient's record needs its practitioners'
names. Any other type outside the Patient compartment (Bundle, Binary, Group…) stays invisible
under ``patient/`` scopes. ``user/`` scopes are not confined: the hub keeps no per-user record
lists, so a clinician's app sees what its scopes name.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from ..context import PERMISSION_NAMES
from ..outcome import FhirError, error, forbidden
from ..search.compartment import in_compartment
from ..search.compiler import Compiler
from ..search.parser import parse
from ..search.registry import Registry
from ..storage import models
from .scopes import Grant, ResourceScope

R = models.Resource
#: Types that hold no patient's data, visible under ``patient/`` scopes that name them.
SHARED_TYPES = frozenset({
    "Practitioner", "PractitionerRole", "Organization", "OrganizationAffiliation", "Location",
    "HealthcareService", "Endpoint", "Medication", "MedicationKnowledge", "Substance",
    "CodeSystem", "ValueSet", "ConceptMap", "NamingSystem", "StructureDefinition", "SearchParameter",
    "OperationDefinition", "CapabilityStatement", "CompartmentDefinition", "Questionnaire",
    "ActivityDefinition", "PlanDefinition", "Library", "Measure", "ObservationDefinition",
    "SpecimenDefinition",
})


@dataclass(frozen=True)
class Access:
    """The confinement of one request's token."""

    grant: Grant
    registry: Registry
    now: datetime

    def restriction(self, resource_type: str, permission: str) -> Select[Any] | None:
        """SELECT of the ids of ``resource_type`` the token may ``permission``; None when it
        may every one. 403 when no scope allows the interaction on the type at all."""
        rules = self.grant.rules(resource_type, permission)
        if not rules:
            raise forbidden(f"The access token's scopes do not allow {PERMISSION_NAMES[permission]} on "
                            f"{resource_type} (granted: {self.grant.text or 'none'})")
        alternatives: list[ColumnElement[bool]] = []
        for rule in rules:
            conds = self._conditions(rule, resource_type)
            if conds is None:
                continue  # this scope allows nothing of the type
            if not conds:
                return None  # this scope allows every resource of the type
            alternatives.append(and_(*conds))
        stmt = select(R.id).where(R.resource_type == resource_type, R.deleted.is_(False))
        return stmt.where(or_(*alternatives)) if alternatives else stmt.where(R.id.is_(None))

    def unrestricted(self, resource_type: str, permission: str) -> bool:
        """Whether the token may ``permission`` every resource of the type (403 when none)."""
        return self.restriction(resource_type, permission) is None

    def visible(self, session: Session, resource_type: str, ids: Iterable[str], permission: str) -> set[str]:
        """Those of ``ids`` (current resources) the token may ``permission``."""
        wanted = list(dict.fromkeys(ids))
        sel = self.restriction(resource_type, permission)
        if sel is None or not wanted:
            return set(wanted)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            found.update(session.scalars(sel.where(R.id.in_(wanted[start:start + 500]))))
        return found

    def outside(self, session: Session, resource_type: str, ids: Iterable[str], permission: str) -> set[str]:
        """Those of ``ids`` the token may not ``permission`` — deleted ones included, unless it
        may every resource of the type (403 when no scope allows the interaction at all)."""
        wanted = set(ids)
        return wanted - self.visible(session, resource_type, wanted, permission)

    def filter(self, session: Session, items: Sequence[Any], permission: str = "r") -> list[Any]:
        """The items (anything with ``resource_type`` and ``id``) the token may see, in order;
        types no scope allows are dropped, never refused: an ``_include`` is not a request to
        read everything it points at. One statement per restricted type."""
        by_type: dict[str, list[str]] = {}
        for item in items:
            by_type.setdefault(item.resource_type, []).append(item.id)
        keep: dict[str, set[str]] = {}
        for rtype, ids in by_type.items():
            keep[rtype] = self.visible(session, rtype, ids, permission) if self.grant.allows(rtype, permission) \
                else set()
        return [item for item in items if item.id in keep[item.resource_type]]

    def readable_types(self, candidates: Iterable[str]) -> list[str]:
        return [t for t in candidates if self.grant.allows(t, "r")]

    # -- internals ---------------------------------------------------------------------------

    def _conditions(self, rule: ResourceScope, resource_type: str) -> list[ColumnElement[bool]] | None:
        """The conditions one scope puts on ``resources`` rows of the type ([] = none, every
        resource; None = the scope allows no resource of the type)."""
        conds: list[ColumnElement[bool]] = []
        if rule.context == "patient" and resource_type not in SHARED_TYPES:
            if self.grant.patient is None:
                return None  # a patient/ scope without a patient in context allows nothing
            # The patient's person: the records other hospitals keep of them too (healthhub/mpi).
            compartment = in_compartment(resource_type, self.grant.patient, linked=True)
            if compartment is None:
                return None
            conds.append(compartment)
        if rule.query:
            query = _scope_query(rule.query, resource_type, self.registry)
            if query is None:
                return None  # the query names parameters this type lacks
            compiler = Compiler(self.registry, self.now)
            conds.extend(compiler.conditions(resource_type, query.clauses, query.ids, query.last_updated))
        return conds


def _scope_query(query: tuple[tuple[str, str], ...], resource_type: str, registry: Registry) -> Any:
    try:
        return _parsed(query, resource_type, registry)
    except FhirError:
        return None


@lru_cache(maxsize=256)
def _parsed(query: tuple[tuple[str, str], ...], resource_type: str, registry: Registry) -> Any:
    req = parse(resource_type, list(query), registry, strict=True)
    if req.includes or req.sort or req.cursor:
        raise error(400, "invalid", "A scope's query may only hold search criteria")
    return req



