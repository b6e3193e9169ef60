"""The raw-payload archive: every inbound payload, as it arrived, with what became of it.

A payload that is stored is archived in the transaction that stores it, with its final outcome,
so the archive row and the data commit together (or not at all). A payload that is refused or
fails is archived on its own, after its transaction rolled back, with the reason — nothing is
ever dropped without a row that says why, and such rows can be replayed
(:mod:`healthhub.ingest.replay`). A streamed upload (a CSV file of any size) gets its row first,
as ``received``, and its bytes in ``inbound_chunks`` as they are read.
Final outcomes are counted for ``/metrics`` once their transaction commits (a rolled-back one
is not counted: its payload is archived again, alone, with the outcome that holds).
https://hl7.org/fhir/R4B/provenance.html names what the archive is for: where a record came from.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.orm import Session

from ..db import Database
from ..jsonio import cut as _cut
from ..jsonio import storable
from ..metrics import INGESTED
from .models import InboundChunk, InboundMessage

#: Outcomes a replay can take up again.
REPLAYABLE = ("rejected", "failed", "received", "partial")
#: Size of the pieces a streamed payload is stored in.
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Arrival:
    """What arrived, from whom and how (everything but the outcome)."""

    transport: str  # http-fhir | http-hl7v2 | mllp | http-csv | cli
    kind: str  # hl7v2 | csv | fhir
    payload: bytes | None  # None for a streamed payload (chunks)
    content_type: str | None = None
    sender: str | None = None
    client_id: str | None = None
    peer: str | None = None
    message_type: str | None = None
    control_id: str | None = None
    replay_of: int | None = None

    def with_(self, **changes: Any) -> Arrival:
        return replace(self, **changes)


def add(session: Session, arrival: Arrival, outcome: str, now: datetime, detail: Any = None) -> int:
    """Insert the archive row of ``arrival`` in the session's transaction; its id."""
    data = arrival.payload or b""
    values = dict(received_at=now, transport=arrival.transport, kind=arrival.kind, sender=_cut(arrival.sender, 64),
                  client_id=_cut(arrival.client_id, 64), peer=_cut(arrival.peer, 512),
                  content_type=_cut(arrival.content_type, 100), message_type=_cut(arrival.message_type, 64),
                  control_id=_cut(arrival.control_id, 200), sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                  payload=arrival.payload, outcome=outcome, detail=storable(detail),
                  processed_at=None if outcome == "received" else now, replay_of=arrival.replay_of)
    message_id = int(session.execute(insert(InboundMessage).values(**values).returning(InboundMessage.id)).scalar_one())
    if outcome != "received":
        _count(session, message_id, arrival.kind, outcome)
    return message_id


def add_alone(db: Database, arrival: Arrival, outcome: str, now: datetime, detail: Any = None) -> int:
    """:func:`add` in a transaction of its own (a refused or failed payload, after the rollback)."""
    with db.transaction() as session:
        return add(session, arrival, outcome, now, detail)


def finish(session: Session, message_id: int, outcome: str, now: datetime, detail: Any = None,
           digest: tuple[str, int] | None = None) -> None:
    """Set the outcome (and, for a streamed payload, its SHA-256 and size) of an archive row."""
    values: dict[str, Any] = dict(outcome=outcome, detail=storable(detail), processed_at=now)
    if digest is not None:
        values.update(sha256=digest[0], size=digest[1])
    kind = session.execute(update(InboundMessage).where(InboundMessage.id == message_id).values(**values)
                           .returning(InboundMessage.kind)).scalar_one_or_none()
    if kind is not None:
        _count(session, message_id, kind, outcome)


_PENDING = "healthhub.ingest.counted"


def _count(session: Session, message_id: int, kind: str, outcome: str) -> None:
    # By message: a row added and then finished in one transaction is one payload, with its last outcome.
    session.info.setdefault(_PENDING, {})[message_id] = (kind, outcome)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.in_nested_transaction():  # a SAVEPOINT released: the outer transaction may still roll back
        return
    for kind, outcome in session.info.pop(_PENDING, {}).values():
        INGESTED.labels(kind, outcome).inc()


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous: Any) -> None:
    if previous.parent is None:  # the whole transaction, not a SAVEPOINT inside it
        session.info.pop(_PENDING, None)


def add_chunk(session: Session, message_id: int, seq: int, data: bytes) -> None:
    session.execute(insert(InboundChunk).values(message_id=message_id, seq=seq, data=data))


def get(session: Session, message_id: int) -> InboundMessage | None:
    return session.get(InboundMessage, message_id)


def payload_chunks(session: Session, message: InboundMessage) -> Iterator[bytes]:
    """The payload, a chunk at a time (one chunk for a payload stored whole)."""
    if message.payload is not None:
        yield message.payload
        return
    seq = -1
    while True:
        row = session.execute(select(InboundChunk.seq, InboundChunk.data).where(
            InboundChunk.message_id == message.id, InboundChunk.seq > seq).order_by(InboundChunk.seq).limit(1)).first()
        if row is None:
            return
        seq = row[0]
        yield row[1]


def listing(session: Session, outcomes: Sequence[str] | None = None, limit: int = 100,
            before: int | None = None) -> list[InboundMessage]:
    """Archive rows, newest first (without their payloads), optionally of some outcomes."""
    stmt = select(InboundMessage).where(*(
        [InboundMessage.outcome.in_(outcomes)] if outcomes else []), *(
        [InboundMessage.id < before] if before is not None else []))
    stmt = stmt.order_by(InboundMessage.id.desc()).limit(limit)
    return list(session.scalars(stmt.execution_options(yield_per=limit)))


def counts(session: Session) -> dict[str, int]:
    """Archive rows per outcome."""
    rows = session.execute(select(InboundMessage.outcome, func.count()).group_by(InboundMessage.outcome))
    return {outcome: int(n) for outcome, n in rows}


class Digest:
    """SHA-256 and size of a payload read in pieces."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def value(self) -> tuple[str, int]:
        return self._hash.hexdigest(), self.size


