"""Tables of the ingest layer: the raw-payload archive, duplicate keys, rejected CSV rows, senders.

Every inbound payload is kept as it arrived (CONTRACT §6): FHIR bodies, HL7 v2 messages (HTTP
and MLLP) and CSV uploads, with who sent it, how, when, its SHA-256 and what became of it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from ..storage.models import Base, BigIntKey, JsonDocument


class InboundMessage(Base):
    """One inbound payload and its outcome.

    ``outcome``: ``stored`` (everything accepted), ``partial`` (a CSV upload with rejected rows),
    ``rejected`` (bad content: HL7 AE/AR, invalid FHIR, a CSV with a wrong header), ``failed``
    (the hub could not process it: a database error, a bug), ``duplicate`` (an HL7 message whose
    sender and MSH-10 were stored before), ``received`` (still being processed, or interrupted:
    a streamed CSV upload whose process died). Rejected, failed and interrupted payloads can be
    replayed (``healthhub ingest replay``).
    """

    __tablename__ = "inbound_messages"
    __table_args__ = (
        Index("ix_inbound_messages_outcome", "outcome", "id"),
        Index("ix_inbound_messages_sender_control", "sender", "control_id"),
        Index("ix_inbound_messages_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: ``http-fhir``, ``http-hl7v2``, ``mllp``, ``http-csv`` or ``cli``.
    transport: Mapped[str] = mapped_column(String(16), nullable=False)
    #: ``hl7v2``, ``csv`` or ``fhir``: how the payload is read (and replayed).
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    #: Hospital code of the sender (``senders.code``), when known.
    sender: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Network peer (``ip`` or ``ip:port``) or, for the CLI, the file path.
    peer: Mapped[str | None] = mapped_column(String(512), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: ``ADT^A01``, ``transaction``, ``case-report`` (a CSV profile), ``Patient`` …
    message_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: HL7 MSH-10, or another id the sender gave the payload.
    control_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: The payload itself; NULL when it is stored in ``inbound_chunks`` (streamed uploads).
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    #: What happened: ACK code and issues, HTTP status, row counts, resources written.
    detail: Mapped[Any | None] = mapped_column(JsonDocument, nullable=True)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The archive row this one replays (a replay is archived like any payload).
    replay_of: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class InboundChunk(Base):
    """A piece of a streamed payload (a CSV upload), in order: never the whole file in memory."""

    __tablename__ = "inbound_chunks"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class InboundKey(Base):
    """A sender's message id that was stored: the same MSH-10 from the same sender is a duplicate.
    Written in the transaction that stores the message, so two copies racing store one."""

    __tablename__ = "inbound_keys"

    sender: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    message_id: Mapped[int] = mapped_column(BigInteger, nullable=False)


class InboundRow(Base):
    """A rejected CSV row (row number, the row as read, its errors), kept for replay."""

    __tablename__ = "inbound_rows"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    raw: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    errors: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    #: ``rejected``, or ``stored`` once a replay stored it.
    status: Mapped[str] = mapped_column(String(16), nullable=False)


class Sender(Base):
    """A registered sending hospital (``healthhub sender create``): how its data is read.

    ``code`` is the hospital code: HL7 MSH-4 (sending facility, namespace id) and the CSV
    ``hospital_code``. An OAuth client bound to the sender may send for it over HTTP.
    """

    __tablename__ = "senders"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    #: ``Organization/{id}`` the sender is (its data's ``meta.source`` and Provenance agent).
    organization: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: IANA time zone for timestamps sent without an offset.
    timezone: Mapped[str] = mapped_column(String(64), nullable=False)
    #: Assigning authority → identifier system URI.
    identifier_systems: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    #: Local coding-system name → system URI.
    code_systems: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    #: The OAuth client that may send for this hospital over HTTP.
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
