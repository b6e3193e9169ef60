"""Appending to and verifying the hash chain of audit records.

Each record stores the hash of its predecessor and its own: SHA-256 over the predecessor's hash
and the record's canonical JSON (sorted keys, compact). Appends take a transaction-scoped lock
(PostgreSQL advisory lock; SQLite transactions are serial already) just before the request
commits, read the head and write the next ``seq``: concurrent writers — several gunicorn workers
— keep one unbroken chain, and the lock is held only for the insert and the commit.

What the chain proves: any record edited, removed or moved breaks it at that record, and
``healthhub audit verify`` names it. It cannot show that the newest records were cut off
together, or that someone rewrote every hash after a change: keep copies of the head hash
(the ``verify`` output) outside the database to anchor it (docs/deployment.md).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from .models import AuditEntity, AuditRecord

GENESIS = "0" * 64
#: pg_advisory_xact_lock key of the chain head ("HHAUDIT" in ASCII).
_LOCK_KEY = 0x48484155444954


def canonical(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: str, content: Any) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(content)).hexdigest()


@dataclass(frozen=True)
class Columns:
    """The searchable facts of one event (the rest is in its AuditEvent)."""

    recorded: datetime
    subtype: str
    action: str
    outcome: str
    client_id: str | None
    username: str | None
    address: str | None
    entities: tuple[str, ...]


def append(session: Session, columns: Columns, render: Any) -> AuditRecord:
    """Add the next record; ``render(seq)`` builds its AuditEvent (the id is the ``seq``)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    head = session.execute(select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)).first()
    seq, prev = (head[0] + 1, head[1]) if head is not None else (1, GENESIS)
    content = render(seq)
    record = AuditRecord(seq=seq, recorded=columns.recorded, subtype=columns.subtype, action=columns.action,
                         outcome=columns.outcome, client_id=columns.client_id, username=columns.username,
                         address=columns.address, content=content, prev_hash=prev, hash=link(prev, content))
    session.add(record)
    session.flush()
    refs = list(dict.fromkeys(r[:160] for r in columns.entities))
    if refs:
        session.execute(insert(AuditEntity), [{"reference": r, "seq": seq} for r in refs])
    return record


@dataclass(frozen=True)
class Verdict:
    records: int
    head: str
    broken_at: int | None = None
    reason: str = ""


def verify(session: Session, batch: int = 1000) -> Verdict:
    """Walk the chain in ``seq`` order (streamed); the first broken record, if any."""
    expected_seq, prev, count = 1, GENESIS, 0
    for seq, content, prev_hash, hash_ in _rows(session, batch):
        if seq != expected_seq:
            return Verdict(count, prev, expected_seq, f"record {expected_seq} is missing (next is {seq})")
        if prev_hash != prev:
            return Verdict(count, prev, seq, "its link to the previous record does not match (a record before "
                                             "it was removed, replaced or moved)")
        if not isinstance(content, dict) or content.get("id") != str(seq) or link(prev_hash, content) != hash_:
            return Verdict(count, prev, seq, "its content does not match its hash (the record was edited)")
        prev, expected_seq, count = hash_, seq + 1, count + 1
    return Verdict(count, prev)


def _rows(session: Session, batch: int) -> Iterator[tuple[int, Any, str, str]]:
    after = 0
    while True:
        rows = session.execute(select(AuditRecord.seq, AuditRecord.content, AuditRecord.prev_hash, AuditRecord.hash)
                               .where(AuditRecord.seq > after).order_by(AuditRecord.seq).limit(batch)).all()
        if not rows:
            return
        for row in rows:
            yield row[0], row[1], row[2], row[3]
        after = rows[-1][0]
