"""The audit table: one row per recorded event, hash-chained in ``seq`` order."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base, BigIntKey, JsonDocument


class AuditRecord(Base):
    """An ``AuditEvent`` (``content``) and its links in the chain.

    ``hash`` = SHA-256 of ``prev_hash`` followed by the canonical JSON of ``content`` (sorted
    keys, no spaces), and ``content`` holds ``seq`` as the AuditEvent id, so an edited, removed or
    reordered record breaks the chain at that point. The other columns repeat what searches
    filter on; :class:`AuditEntity` lists the resources each record names.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_recorded", "recorded"),
        Index("ix_audit_events_client_id", "client_id"),
        Index("ix_audit_events_username", "username"),
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
    content: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditEntity(Base):
    """A resource named by an audit record (``entity=`` searches); outside the hash, which
    covers the same references inside the record's ``content``."""

    __tablename__ = "audit_entities"

    reference: Mapped[str] = mapped_column(String(160), primary_key=True)
    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
