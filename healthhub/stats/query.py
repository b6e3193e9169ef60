"""Counts of a search's matches grouped by dimensions, in one ``GROUP BY`` statement.

The cohort is the ordinary search (the same compiler, so every parameter, modifier and chain
works); each dimension is an outer join from the cohort to an index table — the resource's own
(``code``, its clinical date), its patient's (``gender``, ``birthdate``, ``address-state``,
``address-district``), or the Provenance that names its sender — and the database groups and
counts. Nothing but the grouped counts comes back to Python, so memory does not grow with the
number of matches.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    FromClause,
    Select,
    Table,
    and_,
    distinct,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Session

from ..mpi.models import MpiPerson
from ..outcome import invalid
from ..search import facts
from ..search.cardinality import single_valued
from ..search.compiler import Compiler, like_escape, param_rows
from ..search.registry import Registry
from ..search.request import SearchRequest
from ..storage import models
from .dimensions import Dimension
from .sql import age_band, period_start

Key = tuple[Any, ...]
TOKEN, STRING, DATE, REF, URI, FACTS = (models.SearchToken, models.SearchString, models.SearchDate,
                                        models.SearchReference, models.SearchUri, models.SearchFacts)
COUNT_BY = ("resource", "patient")


@dataclass
class Counts:
    """Grouped counts before suppression: ``cells`` maps the dimension values (as SQL gives them)
    to a count; ``total`` counts the whole cohort the same way."""

    resource_type: str
    dimensions: list[Dimension]
    count_by: str
    cells: dict[Key, int] = field(default_factory=dict)
    total: int = 0


class Aggregation:
    """Statistics over one database. ``fhir_base`` recognises ``meta.source`` values naming one
    of the hub's Organizations (what a hospital's FHIR client writes carries: repository)."""

    def __init__(self, session: Session, registry: Registry, now: datetime, fhir_base: str) -> None:
        self.session = session
        self.registry = registry
        self.now = now
        self.fhir_base = fhir_base.rstrip("/")
        self.compiler = Compiler(registry, now, session.get_bind().dialect.name)

    def count(self, req: SearchRequest, dims: list[Dimension], count_by: str = "resource",
              code_system: str | None = None) -> Counts:
        """Count the matches of ``req`` per combination of ``dims`` values (two statements: the
        grouped counts and the cohort's total)."""
        grouped, total_stmt = self.statements(req, dims, count_by, code_system)
        cells = {tuple(row[:-1]): int(row[-1]) for row in self.session.execute(grouped)}
        total = int(self.session.scalar(total_stmt) or 0)
        return Counts(req.resource_type, dims, count_by, cells, total)

    def statements(self, req: SearchRequest, dims: list[Dimension], count_by: str = "resource",
                   code_system: str | None = None) -> tuple[Select[Any], Select[Any]]:
        """The grouped-count statement and the total's (what :meth:`count` runs; EXPLAIN them)."""
        if count_by not in COUNT_BY:
            raise invalid(f"_count-by must be one of {', '.join(COUNT_BY)}", ("_count-by",))
        plan = _Plan(self, req.resource_type, self._cohort(req))
        keys = [plan.dimension(d, code_system) for d in dims]
        counted = plan.counted(count_by)
        # Every dimension gives one value per resource, code one per distinct coding: the index
        # holds one row per (parameter, system, code) (search/indexer.py _one_row_per_code), so
        # count(*) counts each resource once per cell. count(DISTINCT) sorted a million rows:
        # 4.18 s against 1.11 s for code x gender at 1M Observations (bench/RESULTS.md).
        persons = count_by == "patient"
        grouped = plan.select(*keys, func.count(distinct(counted)) if persons else func.count()).group_by(*keys)
        # The total: the same cohort without the dimensions' joins (a resource with two codes
        # is one resource, a person seen in two weeks one person).
        whole = _Plan(self, req.resource_type, plan.cohort_select)
        total = whole.select(func.count(distinct(whole.counted(count_by))) if persons else func.count())
        return grouped, total

    def _cohort(self, req: SearchRequest) -> Select[Any]:
        """The ids of the search's matches, from the index tables alone where the search allows;
        with no criteria, the type's ``search_facts`` rows (one per live resource, carrying the
        patient and the clinical date, so no other table is needed for them)."""
        rtype = req.resource_type
        if not req.clauses and not req.ids and not req.last_updated and facts.has_facts(rtype):
            return _facts_of(rtype)
        sets = (self.compiler.index_sets(rtype, req.clauses)
                if not req.ids and not req.last_updated else None)
        if sets is not None:
            return self.compiler.matching(sets).distinct()
        return self.compiler.ids(rtype, req.clauses, req.ids, req.last_updated)

    # -- per-resource values, as (rid, v) sub-selects ----------------------------------------

    def values(self, table: Table, resource_type: str, code: str, column: str) -> FromClause | None:
        """``(rid, v)``: one value of parameter ``code`` per ``resource_type`` resource (the
        least one where the parameter can have several); None when the type has no such
        parameter."""
        param = self.registry.get(resource_type, code)
        if param is None:
            return None
        rows = param_rows(table, resource_type, code, self.registry)
        # A date or reference element that can occur once gives one index row (a Period or a
        # Timing is one [low, high] row); codings and strings may give several per element.
        if table in (DATE, REF) and single_valued(resource_type, param):
            return select(table.c.resource_id.label("rid"), table.c[column].label("v")).where(rows).subquery()
        return (select(table.c.resource_id.label("rid"), func.min(table.c[column]).label("v"))
                .where(rows).group_by(table.c.resource_id).subquery())


class _Plan:
    """One statement being built: the cohort and the outer joins its dimensions need."""

    def __init__(self, agg: Aggregation, resource_type: str, cohort: Select[Any]) -> None:
        self.agg = agg
        self.rtype = resource_type
        self.cohort_select = cohort
        sub = cohort.subquery("cohort")
        self.cohort = sub
        self.id: ColumnElement[Any] = list(sub.c)[0]
        self.joined: FromClause = sub
        self._memo: dict[str, ColumnElement[Any]] = {}
        # The cohort may be the type's search_facts rows themselves (Aggregation._cohort).
        self._facts_from: FromClause | None = sub if "event_at" in sub.c else None

    def select(self, *columns: Any) -> Select[Any]:
        return select(*columns).select_from(self.joined)

    def join(self, sub: FromClause, on: ColumnElement[Any]) -> FromClause:
        self.joined = self.joined.outerjoin(sub, sub.c.rid == on)
        return sub

    def _once(self, name: str, build: Callable[[], ColumnElement[Any]]) -> ColumnElement[Any]:
        if name not in self._memo:
            self._memo[name] = build()
        return self._memo[name]

    # -- dimensions ----------------------------------------------------------------------

    def dimension(self, dim: Dimension, code_system: str | None) -> ColumnElement[Any]:
        name = dim.name
        if name == "code":
            return self._code(code_system).label("code")
        if name == "gender":
            return self._patient_value(TOKEN, "gender", "code").label("gender")
        if name == "province":
            return self._patient_value(STRING, "address-state", "exact").label("province")
        if name == "district":
            return self._patient_value(STRING, "address-district", "exact").label("district")
        if name == "age-group":
            return self._age_group().label("age_group")
        if name == "organization":
            return self._organization().label("organization")
        assert dim.grain is not None
        return period_start(dim.grain, self._event_date()).label("period")

    def counted(self, count_by: str) -> ColumnElement[Any]:
        """What one counts: the resource, or the person (all linked records of one person are one:
        ``mpi_persons``; a record never linked is its own person)."""
        if count_by == "resource":
            return self.id
        patient = self._patient()
        person = select(MpiPerson.patient_id.label("rid"), MpiPerson.person_id.label("v")).subquery()
        return func.coalesce(self.join(person, patient).c.v, patient)

    def _code(self, code_system: str | None) -> ColumnElement[Any]:
        if self.agg.registry.get(self.rtype, "code") is None:
            raise invalid(f"{self.rtype} has no code search parameter to group by", ("_group-by",))
        # Rows with a code only: a CodeableConcept's text gets a row of its own without one.
        conds = [param_rows(TOKEN, self.rtype, "code", self.agg.registry), TOKEN.c.code.is_not(None)]
        if code_system:
            conds.append(TOKEN.c.system == code_system)
        sub = select(TOKEN.c.resource_id.label("rid"), TOKEN.c.system, TOKEN.c.code).where(*conds).subquery()
        self.join(sub, self.id)
        return func.coalesce(sub.c.system, "") + literal("|") + sub.c.code

    def _facts(self) -> FromClause:
        """The cohort's ``search_facts`` columns (``rid``, ``patient_id``, ``event_at``)."""
        if self._facts_from is None:
            self._facts_from = self.join(_facts_of(self.rtype).subquery(), self.id)
        return self._facts_from

    def _patient(self) -> ColumnElement[Any]:
        """The id of the Patient the resource is about (itself for a Patient)."""
        if self.rtype == "Patient":
            return self.id
        if not facts.patient_params(self.rtype):
            raise invalid(f"{self.rtype} does not refer to a patient: gender, age-group, province, district and "
                          "_count-by=patient are not available for it", ("_group-by",))
        return self._facts().c.patient_id

    def _patient_value(self, table: Table, code: str, column: str) -> ColumnElement[Any]:
        def build() -> ColumnElement[Any]:
            sub = self.agg.values(table, "Patient", code, column)
            assert sub is not None, code
            return self.join(sub, self._patient()).c.v
        return self._once(f"patient.{code}", build)

    def _event_date(self) -> ColumnElement[Any]:
        """The resource's clinical date (its start, UTC: ``search/facts.py``); for a Patient, now
        (age-group is the age today)."""
        if self.rtype == "Patient":
            return literal(self.agg.now, DateTime(timezone=True))
        if not facts.date_params(self.rtype):
            raise invalid(f"{self.rtype} has no clinical date: period and age-group are not available for it",
                          ("_group-by",))
        return self._facts().c.event_at

    def _age_group(self) -> ColumnElement[Any]:
        """The age band's number (``Dimension.show`` names it): ``sql.AgeBand``."""
        return age_band(self._patient_value(DATE, "birthdate", "low"), self._event_date())

    def _organization(self) -> ColumnElement[Any]:
        """The sender: the Organization agent of a Provenance naming the resource (HL7 v2 and CSV
        ingest write one per payload), else the Organization ``meta.source`` names (a hospital's
        FHIR client writes it). ``Organization/{id}``."""
        target, agent = REF.alias("prov_target"), REF.alias("prov_agent")
        prov = (select(target.c.target_id.label("rid"),
                       func.min(agent.c.target_type + literal("/") + agent.c.target_id).label("v"))
                .select_from(target.join(agent, and_(agent.c.resource_type == "Provenance",
                                                     agent.c.resource_id == target.c.resource_id,
                                                     agent.c.param == "agent",
                                                     agent.c.target_type == "Organization")))
                .where(target.c.resource_type == "Provenance", target.c.param == "target",
                       target.c.target_type == self.rtype)
                .group_by(target.c.target_id).subquery())
        prefix = f"{self.agg.fhir_base}/"
        source = (select(URI.c.resource_id.label("rid"), func.min(func.substr(URI.c.uri, len(prefix) + 1)).label("v"))
                  .where(param_rows(URI, self.rtype, "_source", self.agg.registry),
                         URI.c.uri.like(like_escape(prefix + "Organization/") + "%", escape="\\"))
                  .group_by(URI.c.resource_id).subquery())
        return func.coalesce(self.join(prov, self.id).c.v, self.join(source, self.id).c.v)


def _facts_of(resource_type: str) -> Select[Any]:
    """``(rid, patient_id, event_at)`` of every live resource of the type (``search_facts``)."""
    return select(FACTS.c.resource_id.label("rid"), FACTS.c.patient_id, FACTS.c.event_at).where(
        FACTS.c.resource_type == resource_type, FACTS.c.param == facts.PARAM)
