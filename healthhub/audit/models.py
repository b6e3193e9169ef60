"""The audit table: one row per recorded event, hash-chained in ``seq`` order."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base, BigIntKey, JsonDocument


class AuditRecord(Base):
    """An ``AuditEvent`` (``content``, whose id is ``seq``) and its links in the chain.

    ``hash`` = hex SHA-256 of ``"{prev_hash}:{seq}:{canonical JSON of content}"`` (sorted keys,
    compact), so an edited, removed or reordered record breaks the chain at that point. The other
    columns repeat what searches filter on; :class:`AuditEntity` lists further resources a
    record names.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_recorded", "recorded"),
        Index("ix_audit_events_client_id", "client_id"),
        Index("ix_audit_events_username", "username"),
        Index("ix_audit_events_entity", "entity"),
        Index("ix_audit_events_patient", "patient"),
    )

    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=False)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: restful-interaction code (``read``, ``search-type``, ``create``…) or ``token``/``login``.
    subtype: Mapped[str] = mapped_column(String(32), nullable=False)
    #: AuditEvent.action: C R U D E.
    action: Mapped[str] = mapped_column(String(1), nullable=False)
    #: AuditEvent.outcome: 0 success, 4 minor failure (refused, bad request), 8 serious failure.
    outcome: Mapped[str] = mapped_column(String(2), nullable=False)
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    username: Mapped[str | None] = mapped_column(String(128), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The first resource touched (``Type/id``) and the token's patient (``Patient/id``): the
    #: ``entity=`` search of almost every record, without a row in ``audit_entities``.
    entity: Mapped[str | None] = mapped_column(String(160), nullable=True)
    patient: Mapped[str | None] = mapped_column(String(160), nullable=True)
    content: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditEntity(Base):
    """The second and later resources a record names (a Bundle's), for ``entity=`` searches;
    outside the hash, which covers the same references inside the record's ``content``."""

    __tablename__ = "audit_entities"

    reference: Mapped[str] = mapped_column(String(160), primary_key=True)
    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
