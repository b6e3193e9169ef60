"""Append many rows to several tables in the session's transaction, in as few round trips as
the database allows.

SQLAlchemy's executemany reaches psycopg as one INSERT per row, each parsed and planned by
PostgreSQL, and one round trip per table. On PostgreSQL large row sets go in by
``COPY … FROM STDIN`` (a transaction Bundle: a handful of COPYs instead of ~17 INSERTs per
resource, bench/RESULTS.md finding 3) and small ones — the index rows of one resource — as
INSERTs sent together in one pipeline, so all tables cost one round trip. SQLite runs in
process: one prepared executemany per table is already the fast path.
https://www.psycopg.org/psycopg3/docs/basic/copy.html,
https://www.psycopg.org/psycopg3/docs/advanced/pipeline.html
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import jsonio

#: From this many rows a table's rows go by COPY; below, each table's rows are one multi-row
#: INSERT and all tables share one pipelined round trip, where a COPY per table would need two
#: round trips each (the index rows of a single-resource write span 3–5 tables). The threshold
#: is a judgement, not a measured optimum.
COPY_MIN_ROWS = 64


def append(session: Session, rows_by_table: Mapping[Table, list[dict[str, Any]]]) -> None:
    """INSERT each table's rows (dicts with the same keys per table); IntegrityError on a
    duplicate key, as an INSERT would raise it."""
    todo = {table: rows for table, rows in rows_by_table.items() if rows}
    if not todo:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        for table, rows in todo.items():
            session.execute(insert(table), rows)
        return
    import psycopg

    raw = connection.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cur:
            small = {t: rows for t, rows in todo.items() if len(rows) < COPY_MIN_ROWS}
            if small:
                # One multi-row INSERT per table, all in one pipeline: one round trip, and a
                # statement per table for the server to parse (an INSERT per row cost an HL7
                # message ~100 statements: bench/RESULTS.md, fourth session).
                with raw.pipeline():
                    for table, rows in small.items():
                        names = list(rows[0])
                        row = "(" + ", ".join(["%s"] * len(names)) + ")"
                        values = [v for r in _rows(table, names, rows, _jsonb) for v in r]
                        cur.execute(f'INSERT INTO "{table.name}" ({_columns(names)}) VALUES '
                                    + ", ".join([row] * len(rows)), values)
            for table, rows in todo.items():
                if table not in small:
                    names = list(rows[0])
                    with cur.copy(f'COPY "{table.name}" ({_columns(names)}) FROM STDIN') as copy:
                        # COPY's text format takes the JSON text as it is.
                        for values in _rows(table, names, rows, str):
                            copy.write_row(values)
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(f"bulk insert into {', '.join(t.name for t in todo)}", None, exc) from exc


def _jsonb(text: str) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(text, dumps=_as_is)


def _as_is(text: str) -> str:
    return text


def _columns(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _rows(table: Table, names: list[str], rows: list[dict[str, Any]], wrap: Callable[[str], Any]) -> list[Any]:
    """Rows as value sequences in ``names`` order, JSON values serialised and wrapped."""
    json_at = [i for i, n in enumerate(names) if isinstance(table.c[n].type, JSON)]
    if json_at:
        return [_json_row(row, names, json_at, wrap) for row in rows]
    get = itemgetter(*names)
    return [get(row) for row in rows] if len(names) > 1 else [(get(row),) for row in rows]


def _json_row(row: dict[str, Any], names: list[str], json_at: list[int], wrap: Callable[[str], Any]) -> list[Any]:
    out = [row[n] for n in names]
    for i in json_at:
        if out[i] is not None:
            out[i] = wrap(jsonio.dumps_str(out[i]))
    return out
