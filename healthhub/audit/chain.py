"""Appending to and verifying the hash chain of audit records.

Each record stores the hash of its predecessor and its own: hex SHA-256 of
``"{prev_hash}:{seq}:{canonical JSON}"`` (sorted keys, compact). An append is one
``INSERT … SELECT`` that reads the head (``max(seq)`` and its hash) and computes the new hash in
the database (PostgreSQL's ``sha256``; on SQLite the same function registered by the hub), so a
request pays one statement for its record; concurrent writers — several gunicorn workers —
keep one unbroken chain (:func:`_append_statement`).

What the chain proves: any record edited, removed or moved breaks it at that record, and
``healthhub audit verify`` names it. It cannot show that the newest records were cut off
together, or that someone rewrote every hash after a change: keep copies of the head hash
(the ``verify`` output) outside the database to anchor it (README, "Audit trail").
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import DateTime, Table, Text, bindparam, cast, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from ..storage import bulk
from ..storage.models import JsonDocument
from .models import AuditEntity, AuditRecord

GENESIS = "0" * 64
_RECORDS: Table = AuditRecord.__table__  # type: ignore[assignment]
_ENTITIES: Table = AuditEntity.__table__  # type: ignore[assignment]
_MAX_TRIES = 1000


def canonical(content: Any) -> str:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()


def link(prev_hash: str, seq: int, content: Any) -> str:
    return sha256_hex(f"{prev_hash}:{seq}:{canonical(content)}")


def sha256_hex(value: str) -> str:
    """What the databases compute for :class:`Sha256Hex` (registered on SQLite connections)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class Sha256Hex(FunctionElement[str]):
    """Hex SHA-256 of a text, in SQL."""

    type = Text()
    inherit_cache = True


@compiles(Sha256Hex, "postgresql")
def _sha256_pg(element: Sha256Hex, compiler: Any, **kw: Any) -> str:
    return f"encode(sha256(convert_to({compiler.process(element.clauses, **kw)}, 'UTF8')), 'hex')"


@compiles(Sha256Hex, "sqlite")
def _sha256_sqlite(element: Sha256Hex, compiler: Any, **kw: Any) -> str:
    return f"hh_sha256({compiler.process(element.clauses, **kw)})"


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
    patient: str | None


def append(session: Session, columns: Columns, content: dict[str, Any], durable: bool = True) -> tuple[int, str]:
    """Add the next record holding ``content`` (an AuditEvent without id: the id is the
    ``seq``); returns its ``seq`` and hash.

    ``durable=False`` (the transaction changed nothing else) lets PostgreSQL commit without
    waiting for the WAL flush (https://www.postgresql.org/docs/current/wal-async-commit.html):
    a crash can then lose the last fraction of a second of such records — a tail, never a hole,
    since the WAL is sequential and any later durable commit makes earlier records durable too.
    A change's record always commits durably with the change."""
    refs = list(dict.fromkeys(r[:160] for r in columns.entities))
    params = {"recorded": columns.recorded, "subtype": columns.subtype, "action": columns.action,
              "outcome": columns.outcome, "client_id": columns.client_id, "username": columns.username,
              "address": columns.address, "entity": refs[0] if refs else None, "patient": columns.patient,
              "content": content, "canonical": canonical(content)}
    statement = _append_statement(session.get_bind().dialect.name, durable)
    for _ in range(_MAX_TRIES):
        row = session.execute(statement, params).first()
        if row is not None:
            break
        # PostgreSQL: a concurrent request took this seq. ON CONFLICT waited for it to commit;
        # the next statement's snapshot sees its record as the head.
    else:
        raise RuntimeError("could not append to the audit chain: the head kept moving")
    new_seq, digest = row
    if len(refs) > 1:  # a Bundle's: by COPY on PostgreSQL when there are many
        bulk.append(session, {_ENTITIES: [{"reference": r, "seq": new_seq} for r in refs[1:]]})
    return int(new_seq), str(digest)


@lru_cache(maxsize=4)
def _append_statement(dialect: str, durable: bool) -> Any:
    """The append, built once with bind parameters (building it per request cost more than
    running it): the next ``seq`` and the new hash come from the head in the same statement.

    Concurrent appends on PostgreSQL: both compute the same ``seq``; the second one's
    ``ON CONFLICT (seq) DO NOTHING`` waits until the first commits, inserts nothing, and
    :func:`append` runs it again with a new snapshot, now seeing the first one's record. So
    records commit in ``seq`` order and each links to the record before it — one unbroken chain
    without a lock statement of its own. SQLite transactions are serial already."""
    head_seq = func.coalesce(select(func.max(AuditRecord.seq)).scalar_subquery(), 0)
    head_hash = func.coalesce(select(AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1).scalar_subquery(),
                              GENESIS)
    seq = head_seq + 1
    source = select(
        seq, bindparam("recorded", type_=DateTime(timezone=True)), bindparam("subtype", type_=Text()),
        bindparam("action", type_=Text()), bindparam("outcome", type_=Text()), bindparam("client_id", type_=Text()),
        bindparam("username", type_=Text()), bindparam("address", type_=Text()), bindparam("entity", type_=Text()),
        bindparam("patient", type_=Text()), bindparam("content", type_=JsonDocument), head_hash,
        Sha256Hex(head_hash.concat(":").concat(cast(seq, Text())).concat(":").concat(
            bindparam("canonical", type_=Text()))))
    if dialect == "postgresql" and not durable:
        # https://www.postgresql.org/docs/current/wal-async-commit.html, for this transaction only
        source = source.where(func.set_config("synchronous_commit", "off", True).is_not(None))
    table = _RECORDS
    names = ("seq", "recorded", "subtype", "action", "outcome", "client_id", "username", "address", "entity",
             "patient", "content", "prev_hash", "hash")
    columns = [table.c[n] for n in names]
    if dialect == "postgresql":
        return (postgresql.insert(table).from_select(columns, source)
                .on_conflict_do_nothing(index_elements=["seq"]).returning(table.c.seq, table.c.hash))
    return insert(table).from_select(columns, source).returning(table.c.seq, table.c.hash)


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
        if link(prev_hash, seq, content) != hash_:
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
