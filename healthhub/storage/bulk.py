"""Append many rows to one table in the session's transaction, as fast as the database allows.

SQLAlchemy's executemany reaches psycopg as one INSERT per row (pipelined), each parsed and
planned by PostgreSQL; ``COPY … FROM STDIN`` streams the rows as one statement — the write path
of a transaction Bundle went from ~17 INSERTs per resource to a handful of COPYs per Bundle
(bench/RESULTS.md, finding 3). SQLite gets one prepared statement run per row, which is what
its executemany already is. https://www.psycopg.org/psycopg3/docs/basic/copy.html
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import jsonio


def append(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts with the same keys) into ``table``; IntegrityError on a duplicate
    key, as an INSERT would raise it."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), rows)
        return
    import psycopg
    from psycopg.types.json import Jsonb

    names = list(rows[0])
    as_json = {n for n in names if isinstance(table.c[n].type, JSON)}
    raw = connection.connection.driver_connection
    assert raw is not None
    columns = ", ".join(f'"{n}"' for n in names)
    try:
        with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([Jsonb(row[n], dumps=jsonio.dumps_str) if n in as_json and row[n] is not None
                                else row[n] for n in names])
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(f"COPY {table.name}", None, exc) from exc
