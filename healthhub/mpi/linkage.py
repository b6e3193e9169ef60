"""Linking, unlinking and merging the Patient records of one person.

There is no golden record: every hospital's Patient stays as it sent it, and the records of one
person are linked to each other. A link is three things, written in the caller's transaction:

- a row in ``mpi_links`` (``a`` < ``b``) saying why: ``national-id`` or ``score`` (linked by
  :func:`healthhub.mpi.index.update`), ``manual`` (a reviewer: ``healthhub mpi link``), ``merge``
  (HL7 ADT^A40, ``replaced`` naming the retired record);
- the person: ``mpi_persons`` is a union-find kept materialised — every linked record has a row,
  all records of one person share its ``person_id``; linking two persons rewrites the smaller
  one's rows, so "this person's records" stays two index lookups (:mod:`healthhub.mpi.person`);
- ``Patient.link`` on both records (a new version of each, written with the hub's own
  :data:`~healthhub.context.SYSTEM` context): ``seealso`` for the records of one person, and for a
  merge ``replaced-by`` (on the retired record, which also gets ``active: false``) and
  ``replaces`` (on the surviving one) — https://hl7.org/fhir/R4B/patient.html#links. Each carries
  the MPI extension (:mod:`healthhub.mpi.links`), which keeps it through hospitals' updates.

``Patient.link`` holds the direct links, each with its reason; the person is their transitive
closure. Unlinking (a reviewer's decision) removes the direct link, splits the person where no
other link holds it together, and records the pair as ``rejected`` so that matching never links
or proposes it again.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from ..context import SYSTEM
from ..ingest.matching import grade
from ..storage.models import Resource
from ..storage.repository import Repository, Stored, ordered
from .links import mpi_link, with_links
from .models import MpiLink, MpiPerson, MpiReview
from .person import persons_of, records_of


class MpiError(ValueError):
    """A request the MPI cannot carry out (unknown record, no such link, …): one line."""


def ordered_pair(x: str, y: str) -> tuple[str, str]:
    """The pair as the MPI tables key it (``a`` < ``b``)."""
    return (x, y) if x < y else (y, x)


class Linker:
    """The links of one unit of work: persons kept in memory, ``Patient.link`` changes collected
    per record and written once each by :meth:`flush`."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self._persons: dict[str, str | None] = {}
        self._add: dict[str, list[dict[str, Any]]] = {}
        self._remove: dict[str, set[str]] = {}
        self._set: dict[str, dict[str, Any]] = {}
        #: The version :meth:`flush` wrote of each record, by id: the answer to a request that
        #: wrote the record names this one, not the version the MPI superseded in its transaction.
        self.written: dict[str, Stored] = {}

    # -- persons -------------------------------------------------------------------------

    def load_persons(self, patient_ids: Iterable[str]) -> None:
        """Read the persons of ``patient_ids`` not known yet (one statement per 500)."""
        wanted = [p for p in dict.fromkeys(patient_ids) if p not in self._persons]
        found = persons_of(self.session, wanted)
        self._persons.update((p, found.get(p)) for p in wanted)

    def person(self, patient_id: str) -> str | None:
        """The person id of a record, None when it is linked to nothing."""
        if patient_id not in self._persons:
            self.load_persons([patient_id])
        return self._persons[patient_id]

    def same_person(self, x: str, y: str) -> bool:
        """Whether two records already belong to one person."""
        px = self.person(x)
        return px is not None and px == self.person(y)

    def _join(self, x: str, y: str) -> None:
        """Make one person of the persons of ``x`` and ``y`` (the smaller one's rows rewritten)."""
        px, py = self.person(x), self.person(y)
        if px is not None and px == py:
            return
        if px is None and py is None:
            new = str(uuid.uuid4())
            self.session.execute(insert(MpiPerson), [{"patient_id": x, "person_id": new},
                                                      {"patient_id": y, "person_id": new}])
            self._persons[x] = self._persons[y] = new
            return
        if px is None or py is None:
            alone, joined = (x, py) if px is None else (y, px)
            self.session.execute(insert(MpiPerson).values(patient_id=alone, person_id=joined))
            self._persons[alone] = joined
            return
        sizes = dict(self.session.execute(select(MpiPerson.person_id, func.count()).where(
            MpiPerson.person_id.in_((px, py))).group_by(MpiPerson.person_id)).all())
        small, big = (px, py) if sizes.get(px, 0) < sizes.get(py, 0) else (py, px)
        self.session.execute(update(MpiPerson).where(MpiPerson.person_id == small).values(person_id=big))
        for pid, known in self._persons.items():
            if known == small:
                self._persons[pid] = big

    # -- links ---------------------------------------------------------------------------

    def link(self, x: str, y: str, *, kind: str, score: float, replaced: str | None = None,
             types: tuple[str, str] = ("seealso", "seealso")) -> None:
        """Link records ``x`` and ``y``: the ``mpi_links`` row (made or updated), one person, and
        ``Patient.link`` to each other (``types``: the link type written on ``x``, then on ``y``)."""
        if x == y:
            raise MpiError(f"cannot link Patient/{x} to itself")
        a, b = ordered_pair(x, y)
        existing = self.session.get(MpiLink, (a, b)) if self.same_person(x, y) else None
        if existing is None:
            self.session.add(MpiLink(a=a, b=b, kind=kind, score=score, replaced=replaced, created_at=self.now))
        else:
            existing.kind, existing.score, existing.replaced = kind, score, replaced
        self._join(x, y)
        self._add.setdefault(x, []).append(mpi_link(y, types[0], kind, score))
        self._add.setdefault(y, []).append(mpi_link(x, types[1], kind, score))

    def unlink(self, x: str, y: str) -> float:
        """Remove the direct link of ``x`` and ``y``; split their person where nothing else holds
        it. Returns the score the link had."""
        a, b = ordered_pair(x, y)
        row = self.session.get(MpiLink, (a, b))
        if row is None:
            raise MpiError(f"Patient/{a} and Patient/{b} are not linked to each other")
        score = row.score
        members = records_of(self.session, a)
        self.session.delete(row)
        self.session.flush()
        inside = set(members)
        edges = self.session.execute(select(MpiLink.a, MpiLink.b).where(MpiLink.a.in_(members)))
        components = _components(members, [(p, q) for p, q in edges if q in inside])
        old = self.person(a)
        components.sort(key=len, reverse=True)
        for i, component in enumerate(components):
            if len(component) == 1:
                self.session.execute(delete(MpiPerson).where(MpiPerson.patient_id == component[0]))
                self._persons[component[0]] = None
            elif i > 0 or old is None:
                person = str(uuid.uuid4())
                self.session.execute(update(MpiPerson).where(MpiPerson.patient_id.in_(component))
                                     .values(person_id=person))
                self._persons.update(dict.fromkeys(component, person))
        self._remove.setdefault(x, set()).add(y)
        self._remove.setdefault(y, set()).add(x)
        return score

    def set_fields(self, patient_id: str, **fields: Any) -> None:
        """Set top-level elements of a record in its next version (``active=False`` for a merge)."""
        self._set.setdefault(patient_id, {}).update(fields)

    def decide(self, x: str, y: str, status: str, score: float) -> None:
        """Record a decision on a pair in ``mpi_reviews`` (``linked`` / ``rejected``); a pair
        already reviewed keeps the score it was proposed with."""
        a, b = ordered_pair(x, y)
        row = self.session.get(MpiReview, (a, b))
        if row is None:
            self.session.add(MpiReview(a=a, b=b, score=score, grade=grade(score), status=status, created_at=self.now))
        else:
            row.status = status

    def flush(self) -> list[str]:
        """Write the collected ``Patient.link`` changes: one new version per changed record
        (none for a deleted or unknown one). Returns the ``Patient/id`` references written."""
        ids = sorted(set(self._add) | set(self._remove) | set(self._set))
        if not ids:
            return []
        self.session.flush()
        # Lock the rows first, in id order: what we write is built from what we read.
        rows: dict[str, Any] = dict(self.session.execute(
            select(Resource.id, Resource.content).where(Resource.resource_type == "Patient", Resource.id.in_(ids),
                                                        Resource.deleted.is_(False))
            .order_by(Resource.id).with_for_update()).all())
        repo = Repository(self.session, SYSTEM, clock=lambda: self.now)
        written = []
        for pid in ids:
            content = rows.get(pid)
            if content is None:
                continue
            new = with_links(ordered(content) or {}, self._add.get(pid, ()), self._remove.get(pid, ()))
            new.update(self._set.get(pid, {}))
            result = repo.update("Patient", pid, new, mpi=True)
            if result.outcome != "unchanged":
                written.append(f"Patient/{pid}")
                self.written[pid] = result.stored
        self._add, self._remove, self._set = {}, {}, {}
        return written


def link(session: Session, x: str, y: str, *, now: datetime, kind: str = "manual",
         score: float | None = None) -> list[str]:
    """Link two records of one person (a reviewer's ``manual`` link by default) and close their
    review; the score defaults to the review's (1 without one). Returns the ``Patient/id``
    references written."""
    _require_patients(session, x, y)
    linker = Linker(session, now)
    if linker.same_person(x, y):
        raise MpiError(f"Patient/{x} and Patient/{y} are already records of one person")
    if score is None:
        review = session.get(MpiReview, ordered_pair(x, y))
        score = review.score if review is not None else 1.0
    linker.link(x, y, kind=kind, score=score)
    linker.decide(x, y, "linked", score)
    return linker.flush()


def unlink(session: Session, x: str, y: str, *, now: datetime) -> list[str]:
    """Remove the link of two records (a reviewer's decision, kept: never linked again by
    matching); returns the ``Patient/id`` references written."""
    linker = Linker(session, now)
    score = linker.unlink(x, y)
    linker.decide(x, y, "rejected", score)
    return linker.flush()


def reject(session: Session, x: str, y: str, *, now: datetime) -> None:
    """Decide that two records are not one person: their review is closed and never raised again."""
    if x == y:
        raise MpiError(f"Patient/{x} is one record: there is no pair to reject")
    _require_patients(session, x, y)
    linker = Linker(session, now)
    if linker.same_person(x, y):
        raise MpiError(f"Patient/{x} and Patient/{y} are linked; unlink them instead")
    review = session.get(MpiReview, ordered_pair(x, y))
    linker.decide(x, y, "rejected", review.score if review is not None else 0.0)


def merge(session: Session, surviving_id: str, retired_id: str, *, now: datetime) -> list[str]:
    """Merge a retired record into a surviving one (HL7 ADT^A40, https://hl7.org/fhir/R4B/patient.html#links).

    Links them (``mpi_links`` kind ``merge``, ``replaced`` = the retired id; one person), marks
    the retired record ``active: false`` with ``link {other: surviving, type: replaced-by}`` and
    the surviving one with ``link {other: retired, type: replaces}``. Nothing is deleted: both
    keep their history and their own data, and ``$everything`` of either returns both. Returns
    the ``Patient/id`` references written.
    """
    if surviving_id == retired_id:
        raise MpiError(f"cannot merge Patient/{surviving_id} into itself")
    _require_patients(session, surviving_id, retired_id)
    linker = Linker(session, now)
    linker.link(surviving_id, retired_id, kind="merge", score=1.0, replaced=retired_id,
                types=("replaces", "replaced-by"))
    linker.set_fields(retired_id, active=False)
    if session.get(MpiReview, ordered_pair(surviving_id, retired_id)) is not None:
        linker.decide(surviving_id, retired_id, "linked", 1.0)
    return linker.flush()


def _require_patients(session: Session, *ids: str) -> None:
    found = set(session.scalars(select(Resource.id).where(
        Resource.resource_type == "Patient", Resource.id.in_(ids), Resource.deleted.is_(False))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise MpiError(f"Patient/{missing[0]} is not known (or was deleted)")


def _components(members: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """The connected components of the records of one person after a link went."""
    parent = {m: m for m in members}

    def root(m: str) -> str:
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    for p, q in edges:
        parent[root(p)] = root(q)
    groups: dict[str, list[str]] = {}
    for m in members:
        groups.setdefault(root(m), []).append(m)
    return list(groups.values())
