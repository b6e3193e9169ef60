"""The records of one person: the Patient ids that share a record's ``mpi_persons.person_id``.

``mpi_persons`` is the materialised union-find of ``mpi_links`` (see :mod:`healthhub.mpi.linkage`):
every linked record has a row and all records of one person share its ``person_id``, so the
person's records are two index lookups (``pk_mpi_persons`` then ``ix_mpi_persons_person``) —
no recursive walk over the links, and usable inside any statement as ``id IN (…)``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, CompoundSelect, String, literal, select, union
from sqlalchemy.orm import Session

from .models import MpiPerson

P = MpiPerson.__table__.c


def person_ids(patient_id: str | ColumnElement[Any]) -> CompoundSelect:
    """SELECT of the ids of the Patient records of ``patient_id``'s person, itself included
    (also when it was never linked and so has no ``mpi_persons`` row); one column, ``patient_id``."""
    person = select(P.person_id).where(P.patient_id == patient_id).scalar_subquery()
    itself = literal(patient_id, String) if isinstance(patient_id, str) else patient_id
    return union(select(P.patient_id).where(P.person_id == person), select(itself.label("patient_id")))


def records_of(session: Session, patient_id: str) -> list[str]:
    """The ids of the records of ``patient_id``'s person, sorted (itself included)."""
    return sorted(session.scalars(person_ids(patient_id)))


def persons_of(session: Session, patient_ids: Iterable[str]) -> dict[str, str]:
    """``patient_id → person_id`` of those of ``patient_ids`` that are linked (one statement per 500)."""
    wanted = list(dict.fromkeys(patient_ids))
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        stmt = select(P.patient_id, P.person_id).where(P.patient_id.in_(wanted[start:start + 500]))
        out.update((pid, person) for pid, person in session.execute(stmt))
    return out
