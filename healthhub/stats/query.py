"""Counts of a search's matches grouped by dimensions, in one ``GROUP BY`` statement.

The cohort is the ordinary search (the same compiler, so every parameter, modifier and chain
works). What a dimension groups by is on the ``search_facts`` rows (``search/facts.py``): the
resource's codings, clinical date and patient on its own rows, the patient's sex, birth day,
province and district on the Patient's row — so a grouping is the cohort's facts rows joined
once to its patients' — or, for the sender, on the Provenance that names the resource; the
database groups and counts. Nothing but the grouped counts comes back to Python, so memory does
not grow with the number of matches.
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
    Integer,
    Select,
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
        """Count the matches of ``req`` per combination of ``dims`` values: the grouped counts,
        and the cohort's total (a statement of its own where the cells do not add up to it)."""
        grouped, total_stmt, widths = self._statements(req, dims, count_by, code_system)
        cells: dict[Key, int] = {}
        for row in self.session.execute(grouped):
            key, at = [], 0
            for width in widths:  # code comes as (system, code): published as system|code
                key.append(row[at] if width == 1 else (None if row[at + 1] is None else f"{row[at] or ''}|{row[at + 1]}"))
                at += width
            cells[tuple(key)] = cells.get(tuple(key), 0) + int(row[-1])
        # Without code every dimension has one value per resource, so each resource is in one
        # cell and the cells add up to the cohort (a second scan of a million rows saved).
        one_cell_each = count_by == "resource" and not any(d.name == "code" for d in dims)
        total = sum(cells.values()) if one_cell_each else int(self.session.scalar(total_stmt) or 0)
        return Counts(req.resource_type, dims, count_by, cells, total)

    def statements(self, req: SearchRequest, dims: list[Dimension], count_by: str = "resource",
                   code_system: str | None = None) -> tuple[Select[Any], Select[Any]]:
        """The grouped-count statement and the total's (what :meth:`count` runs; EXPLAIN them)."""
        grouped, total, _ = self._statements(req, dims, count_by, code_system)
        return grouped, total

    def _statements(self, req: SearchRequest, dims: list[Dimension], count_by: str,
                    code_system: str | None) -> tuple[Select[Any], Select[Any], list[int]]:
        if count_by not in COUNT_BY:
            raise invalid(f"_count-by must be one of {', '.join(COUNT_BY)}", ("_count-by",))
        ids = self._cohort(req)
        # One row per coding when grouping by code (search_facts holds one per coding of the
        # type's code parameter), else one per resource.
        codings = any(d.name == "code" for d in dims) and not code_system
        plan = _Plan(self, req.resource_type, ids, codings)
        columns = [plan.dimension(d, code_system) for d in dims]
        keys = [c for cols in columns for c in cols]
        counted = plan.counted(count_by)
        # Every dimension gives one value per resource, code one per distinct coding (one facts
        # row, or one index row, per parameter, system and code: search/facts.py,
        # search/indexer.py _one_row_per_code), so count(*) counts each resource once per cell.
        # count(DISTINCT) sorted a million rows: 4.18 s against 1.11 s for code x gender at 1M
        # Observations (bench/RESULTS.md).
        persons = count_by == "patient"
        grouped = plan.select(*keys, func.count(distinct(counted)) if persons else func.count()).group_by(*keys)
        # The total: the same cohort without the dimensions' joins (a resource with two codes
        # is one resource, a person seen in two weeks one person).
        whole = _Plan(self, req.resource_type, ids, codings=False)
        total = whole.select(func.count(distinct(whole.counted(count_by))) if persons else func.count())
        return grouped, total, [len(cols) for cols in columns]

    def _cohort(self, req: SearchRequest) -> Select[Any] | None:
        """The ids of the search's matches, from the index tables alone where the search allows;
        None for every resource of a type with ``search_facts`` rows (the rows themselves are
        the cohort then, carrying the patient, the date and the codings: no other table needed)."""
        rtype = req.resource_type
        if not req.clauses and not req.ids and not req.last_updated and facts.has_facts(rtype):
            return None
        sets = (self.compiler.index_sets(rtype, req.clauses)
                if not req.ids and not req.last_updated else None)
        if sets is not None:
            return self.compiler.matching(sets).distinct()
        return self.compiler.ids(rtype, req.clauses, req.ids, req.last_updated)


class _Plan:
    """One statement being built: the cohort and the outer joins its dimensions need."""

    def __init__(self, agg: Aggregation, resource_type: str, ids: Select[Any] | None, codings: bool) -> None:
        self.agg = agg
        self.rtype = resource_type
        self.codings = codings
        self._facts_from: FromClause | None = None
        if ids is None:  # every resource of the type: its search_facts rows are the cohort
            sub = self._facts_from = _facts_of(resource_type, codings).subquery("cohort")
        else:
            sub = ids.subquery("cohort")
        self.id: ColumnElement[Any] = list(sub.c)[0]
        self.joined: FromClause = sub
        self._memo: dict[str, Any] = {}

    def select(self, *columns: Any) -> Select[Any]:
        return select(*columns).select_from(self.joined)

    def join(self, sub: FromClause, on: ColumnElement[Any]) -> FromClause:
        self.joined = self.joined.outerjoin(sub, sub.c.rid == on)
        return sub

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = build()
        return self._memo[name]

    # -- dimensions ----------------------------------------------------------------------

    def dimension(self, dim: Dimension, code_system: str | None) -> list[ColumnElement[Any]]:
        """The dimension's grouping columns: code gives two (system, code), the others one."""
        name = dim.name
        if name == "code":
            return self._code(code_system)
        if name in ("gender", "province", "district"):
            return [self._patient_attribute(name).label(name)]
        if name == "age-group":
            return [self._age_group().label("age_group")]
        if name == "organization":
            return [self._organization().label("organization")]
        assert dim.grain is not None
        return [self._period(dim.grain).label("period")]

    def counted(self, count_by: str) -> ColumnElement[Any]:
        """What one counts: the resource, or the person (all linked records of one person are one:
        ``mpi_persons``; a record never linked is its own person)."""
        if count_by == "resource":
            return self.id
        patient = self._patient()
        person = select(MpiPerson.patient_id.label("rid"), MpiPerson.person_id.label("v")).subquery()
        return func.coalesce(self.join(person, patient).c.v, patient)

    def _code(self, code_system: str | None) -> list[ColumnElement[Any]]:
        if not facts.code_params(self.rtype):
            raise invalid(f"{self.rtype} has no code search parameter to group by", ("_group-by",))
        if not code_system:
            found = self._facts()
            return [found.c.system.label("code_system"), found.c.code.label("code")]
        # Codings of one system: the index's code rows of that system (a resource with none is
        # one row with no code; search_facts would give it one per coding of other systems).
        conds = [param_rows(TOKEN, self.rtype, "code", self.agg.registry), TOKEN.c.code.is_not(None),
                 TOKEN.c.system == code_system]
        sub = select(TOKEN.c.resource_id.label("rid"), TOKEN.c.system, TOKEN.c.code).where(*conds).subquery()
        self.join(sub, self.id)
        return [sub.c.system.label("code_system"), sub.c.code.label("code")]

    def _facts(self) -> FromClause:
        """The cohort's ``search_facts`` columns (one row per resource, or per coding)."""
        if self._facts_from is None:
            if not facts.has_facts(self.rtype):
                raise invalid(f"{self.rtype} has no patient, clinical date or code to group by", ("_group-by",))
            self._facts_from = self.join(_facts_of(self.rtype, self.codings).subquery(), self.id)
        return self._facts_from

    def _patient(self) -> ColumnElement[Any]:
        """The id of the Patient the resource is about (itself for a Patient)."""
        if self.rtype == "Patient":
            return self.id
        if not facts.patient_params(self.rtype):
            raise invalid(f"{self.rtype} does not refer to a patient: gender, age-group, province, district and "
                          "_count-by=patient are not available for it", ("_group-by",))
        return self._facts().c.patient_id

    def _patient_attribute(self, column: str) -> ColumnElement[Any]:
        """``gender``, ``birth_day``, ``province`` or ``district`` of the resource's patient: on
        the Patient's own ``search_facts`` row (one join for all of them)."""
        if self.rtype == "Patient":
            return self._facts().c[column]
        patient = self._patient()

        def build() -> FromClause:
            rows = select(FACTS.c.resource_id.label("rid"), FACTS.c.gender, FACTS.c.birth_day, FACTS.c.province,
                          FACTS.c.district).where(FACTS.c.resource_type == "Patient", FACTS.c.param == facts.PARAM,
                                                  FACTS.c.seq == 0)
            return self.join(rows.subquery("patient"), patient)
        return self._once("patient", build).c[column]

    def _event(self, column: str) -> ColumnElement[Any]:
        """The resource's clinical date, ``event_at`` (UTC instant) or ``event_day`` (yyyymmdd);
        for a Patient, now (age-group is the age today)."""
        if self.rtype == "Patient":
            now = self.agg.now
            return (literal(now, DateTime(timezone=True)) if column == "event_at"
                    else literal(facts.day_number(now), Integer))
        if not facts.date_params(self.rtype):
            raise invalid(f"{self.rtype} has no clinical date: period and age-group are not available for it",
                          ("_group-by",))
        return self._facts().c[column]

    def _period(self, grain: str) -> ColumnElement[Any]:
        return period_start(grain, self._event("event_day"), self._event("event_at"))

    def _age_group(self) -> ColumnElement[Any]:
        """The age band's number (``Dimension.show`` names it): ``sql.AgeBand``."""
        return age_band(self._patient_attribute("birth_day"), self._event("event_day"))

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


def _facts_of(resource_type: str, codings: bool) -> Select[Any]:
    """The ``search_facts`` rows of every live resource of the type (``rid`` first): one per
    resource, or one per coding of its code parameter."""
    stmt = select(FACTS.c.resource_id.label("rid"), *(c for c in FACTS.c if c.name not in _KEYS)).where(
        FACTS.c.resource_type == resource_type, FACTS.c.param == facts.PARAM)
    return stmt if codings else stmt.where(FACTS.c.seq == 0)


_KEYS = ("resource_type", "resource_id", "param")
