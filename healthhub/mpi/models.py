"""Tables of the master patient index (MPI).

``mpi_keys`` holds each Patient's blocking keys (``ingest/matching.py``): candidates for a new
record are the patients sharing a key with it. ``mpi_links`` holds the links between records
of one person and why they were made (each also written as ``Patient.link`` on both records);
``mpi_persons`` names, for every linked record, its person (all records linked directly or
through others share one ``person_id``), so "this person's records" is two index lookups, not a
walk over the links; ``mpi_reviews`` holds the possible matches that wait for a reviewer.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base


class MpiKey(Base):
    """One blocking key of one Patient."""

    __tablename__ = "mpi_keys"
    __table_args__ = (Index("ix_mpi_keys_patient", "patient_id"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class MpiLink(Base):
    """Two records of one person (``a`` < ``b``). ``kind``: ``national-id`` / ``score`` (linked
    automatically), ``manual`` (a reviewer), ``merge`` (HL7 ADT^A40: ``b`` replaced by ``a`` when
    ``replaced`` names it)."""

    __tablename__ = "mpi_links"
    __table_args__ = (Index("ix_mpi_links_b", "b"),)

    a: Mapped[str] = mapped_column(String(64), primary_key=True)
    b: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    #: The id of the record retired by a merge (``a`` or ``b``), else NULL.
    replaced: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class MpiPerson(Base):
    """The person a linked Patient record belongs to (records never linked have no row)."""

    __tablename__ = "mpi_persons"
    __table_args__ = (Index("ix_mpi_persons_person", "person_id"),)

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[str] = mapped_column(String(64), nullable=False)


class MpiReview(Base):
    """A possible match (score between REVIEW and AUTO_LINK) waiting for a reviewer."""

    __tablename__ = "mpi_reviews"
    __table_args__ = (Index("ix_mpi_reviews_status", "status"),)

    a: Mapped[str] = mapped_column(String(64), primary_key=True)
    b: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    grade: Mapped[str] = mapped_column(String(16), nullable=False)
    #: ``pending``, ``linked`` or ``rejected``.
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
