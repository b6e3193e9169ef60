"""Index rows in and out of the ``search_*`` tables (the repository's only way to touch them).

https://hl7.org/fhir/R4B/search.html — values are extracted once, at write time, so a search
is a SQL query over typed columns.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.orm import Session

from ..db import Database
from ..storage import bulk, models
from . import facts
from . import indexer as ix
from .registry import default_registry
from .values import MAX_CODE, MAX_STRING, MAX_URI, clip, span_class


@lru_cache(maxsize=1)
def default_indexer() -> ix.Indexer:
    """One Indexer per process: its compiled expressions are reused by every write."""
    return ix.Indexer(default_registry())


def write_index(session: Session, resource_type: str, resource_id: str, content: dict[str, Any] | None,
                *, replace: bool) -> None:
    """Make the index rows of one resource match ``content`` (None: a tombstone, no rows)."""
    if replace:
        clear_index(session, resource_type, [resource_id])
    if content is None:
        return
    bulk.append(session, index_rows(resource_type, resource_id, content))


def index_rows(resource_type: str, resource_id: str, content: dict[str, Any]) -> dict[Table, list[dict[str, Any]]]:
    """The index rows of one resource, grouped by table."""
    return table_rows(resource_type, resource_id, default_indexer().extract(content))


def clear_index(session: Session, resource_type: str, resource_ids: list[str]) -> None:
    for table in models.SEARCH_TABLES:
        session.execute(delete(table).where(table.c.resource_type == resource_type,
                                            table.c.resource_id.in_(resource_ids)))


def table_rows(resource_type: str, resource_id: str, rows: Iterable[Any]) -> dict[Table, list[dict[str, Any]]]:
    """Group extracted rows by table, as column dicts ready for one executemany per table."""
    out: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    rows = list(rows)
    for fact in facts.facts_rows(resource_type, resource_id, rows):
        out[models.SearchFacts].append({"resource_type": resource_type, "resource_id": resource_id,
                                        "param": facts.PARAM, **fact})
    for row in rows:
        found = _columns(row)
        if found is None:
            continue
        table, values = found
        # Every row of a table carries every column, so one executemany can take them all.
        out[table].append({**_EMPTY[table.name], "resource_type": resource_type, "resource_id": resource_id,
                           "param": row.param, **values})
    return out


_EMPTY: dict[str, dict[str, None]] = {
    t.name: {c.name: None for c in t.columns if c.name not in ("resource_type", "resource_id", "param")}
    for t in models.SEARCH_TABLES}


def _columns(row: Any) -> tuple[Table, dict[str, Any]] | None:
    """The table and columns of one extracted row; indexed texts clipped (``values.MAX_*``)."""
    if isinstance(row, ix.StringRow):
        return models.SearchString, {"value": clip(row.value, MAX_STRING), "exact": clip(row.exact, MAX_STRING)}
    if isinstance(row, ix.TokenRow):
        return models.SearchToken, {"system": clip(row.system, MAX_CODE), "code": clip(row.code, MAX_CODE),
                                    "text": clip(row.text, MAX_STRING), "type_system": clip(row.type_system, MAX_CODE),
                                    "type_code": clip(row.type_code, MAX_CODE)}
    if isinstance(row, ix.ReferenceRow):
        return models.SearchReference, {"target_type": row.target_type, "target_id": row.target_id,
                                        "url": clip(row.url, MAX_URI), "ident_system": clip(row.ident_system, MAX_CODE),
                                        "ident_value": clip(row.ident_value, MAX_CODE)}
    if isinstance(row, ix.DateRow):
        return models.SearchDate, {"low": row.low, "high": row.high, "span": span_class(row.low, row.high)}
    if isinstance(row, ix.NumberRow):
        value = to_float(row.value)
        return None if value is None else (models.SearchNumber, {"value": value})
    if isinstance(row, ix.QuantityRow):
        value = to_float(row.value)
        if value is None:
            return None
        # Clipped like every other indexed code: a long random unit code made PostgreSQL's btree
        # on (code, value) refuse the row, and the write answered 500 (tests/system/test_hostile_input.py).
        return models.SearchQuantity, {"value": value, "system": clip(row.system, MAX_CODE),
                                       "code": clip(row.code, MAX_CODE),
                                       "canonical_value": to_float(row.canonical_value),
                                       "canonical_code": clip(row.canonical_code, MAX_CODE)
                                       if row.canonical_value is not None else None}
    if isinstance(row, ix.UriRow):
        return models.SearchUri, {"uri": clip(row.uri, MAX_URI)}
    if isinstance(row, ix.CompositeRow):
        values: dict[str, Any] = {}
        for i, part in enumerate(row.parts[:3]):
            cols = composite_part(part)
            if cols is None:
                return None
            values.update({f"c{i}_{k}": v for k, v in cols.items()})
        return models.SearchComposite, values
    return None


def composite_part(part: Any) -> dict[str, Any] | None:
    """(system, code, num, low, high) of one component value, as ``search_composite`` stores it."""
    if isinstance(part, ix.TokenRow):
        # A CodeableConcept's text-only row matches no composite search: skip its combinations.
        return None if part.code is None else {"system": clip(part.system, MAX_CODE), "code": clip(part.code, MAX_CODE)}
    if isinstance(part, ix.ReferenceRow):
        return {"system": part.target_type, "code": part.target_id}
    if isinstance(part, ix.StringRow):
        return {"code": clip(part.value, MAX_STRING)}
    if isinstance(part, ix.NumberRow):
        value = to_float(part.value)
        return None if value is None else {"num": value}
    if isinstance(part, ix.QuantityRow):
        value = to_float(part.canonical_value if part.canonical_value is not None else part.value)
        code = part.canonical_code if part.canonical_value is not None else part.code
        return None if value is None else {"num": value, "system": clip(part.system, MAX_CODE),
                                           "code": clip(code, MAX_CODE)}
    if isinstance(part, ix.DateRow):
        return {"low": part.low, "high": part.high}
    if isinstance(part, ix.UriRow):
        return {"code": clip(part.uri, MAX_CODE)}
    return None


def to_float(value: Decimal | float | int | None) -> float | None:
    """A finite double, or None when the value does not fit one (it is then not indexed)."""
    if value is None:
        return None
    try:
        out = float(value)
    except (OverflowError, ValueError):
        return None
    return out if math.isfinite(out) else None




REINDEX_FLAG = "search.reindex"


def reindex(db: Database, resource_type: str | None = None, batch_size: int = 500,
            progress: Callable[[int], None] = lambda n: None) -> int:
    """Rebuild the index rows of every current resource (of one type, or all), ``batch_size``
    resources per transaction, walking ``resources`` in key order (never all in memory).
    Clears the "reindex required" flag a migration may have set. Returns the number indexed."""
    R = models.Resource
    done = 0
    after: tuple[str, str] = ("", "")
    while True:
        with db.transaction() as session:
            stmt = select(R.resource_type, R.id, R.content).where(R.deleted.is_(False),
                                                                  tuple_(R.resource_type, R.id) > after)
            if resource_type is not None:
                stmt = stmt.where(R.resource_type == resource_type)
            rows = session.execute(stmt.order_by(R.resource_type, R.id).limit(batch_size)).all()
            if not rows:
                break
            by_type: dict[str, list[str]] = defaultdict(list)
            for rtype, rid, _ in rows:
                by_type[rtype].append(rid)
            for rtype, rids in by_type.items():
                clear_index(session, rtype, rids)
            inserts: dict[Table, list[dict[str, Any]]] = defaultdict(list)
            for rtype, rid, content in rows:
                for table, values in table_rows(rtype, rid, default_indexer().extract(content)).items():
                    inserts[table].extend(values)
            bulk.append(session, inserts)
        done += len(rows)
        progress(len(rows))
        after = (rows[-1][0], rows[-1][1])
    if resource_type is None:
        with db.transaction() as session:
            session.execute(delete(models.AppState).where(models.AppState.key == REINDEX_FLAG))
    return done


def reindex_required(db: Database) -> bool:
    with db.transaction() as session:
        return session.get(models.AppState, REINDEX_FLAG) is not None
