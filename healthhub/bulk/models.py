"""Tables of the Bulk Data export: the jobs and the files they wrote.

A job's whole state is here, not in a process: any web process answers its status, any worker
(``healthhub worker`` or the thread ``healthhub serve`` runs) can take it up, and a job whose
worker died (no heartbeat) is taken up again by another.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base, JsonDocument

#: ``accepted`` (waiting for a worker), ``in-progress``, ``completed``, ``failed``, ``cancelled``.
STATUSES = ("accepted", "in-progress", "completed", "failed", "cancelled")


class ExportJob(Base):
    """One ``$export`` request: what to export, for whom, and how far it got."""

    __tablename__ = "export_jobs"
    __table_args__ = (Index("ix_export_jobs_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    #: The kick-off URL, as the manifest's ``request`` repeats it.
    request: Mapped[str] = mapped_column(Text, nullable=False)
    #: ``system``, ``patient`` or ``group``; ``group_id`` for the last.
    level: Mapped[str] = mapped_column(String(8), nullable=False)
    group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Resource types to export, in order; ``type_filters`` maps a type to its ``_typeFilter`` queries.
    types: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    type_filters: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The kick-off time: nothing changed after it is exported (the manifest's transactionTime).
    transaction_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: Who asked, and with what authority: the job reads with the token's scopes, not more.
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    patient: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: After this the files are removed and the job forgotten (retention).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: ``X-Progress``: what the worker is doing now.
    progress: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ExportFile(Base):
    """One NDJSON file a job wrote (``name`` within the job's folder)."""

    __tablename__ = "export_files"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    resource_type: Mapped[str] = mapped_column(String(64), nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
