"""Typed ORM tables of the resource store.

``resources`` holds the current version of every resource (a tombstone after a delete);
``resource_versions`` holds every version ever written and is never updated — the FHIR
history (https://hl7.org/fhir/R4B/http.html#history). The ``search_*`` tables hold the values of
every search parameter, extracted when a resource is written, so searches run in SQL.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Compact JSON: JSONB on PostgreSQL, JSON text on SQLite.
JsonDocument = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: A 64-bit key that autoincrements on SQLite too (SQLite only does that for INTEGER).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Resource(Base):
    """The current version of one resource (``deleted`` marks a tombstone)."""

    __tablename__ = "resources"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    content: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)

    __table_args__ = (Index("ix_resources_type_updated", "resource_type", "last_updated"),)


class ResourceVersion(Base):
    """One immutable version; ``pk`` gives the global order used by history paging."""

    __tablename__ = "resource_versions"

    pk: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64), nullable=False)
    id: Mapped[str] = mapped_column(String(64), nullable=False)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: POST, PUT, PATCH or DELETE: the interaction that wrote this version.
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    content: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)

    __table_args__ = (
        # The unique key is what stops two concurrent writers from both creating version n+1.
        UniqueConstraint("resource_type", "id", "version_id", name="uq_resource_versions_key"),
        # No foreign key to ``resources``: a version and its current row are written in one
        # transaction and neither is ever deleted; the per-row check was the costliest part of
        # a version's write on PostgreSQL (migration 0016).
        Index("ix_resource_versions_type_pk", "resource_type", "pk"),
        Index("ix_resource_versions_updated", "last_updated"),
    )


def _search_table(name: str, columns: dict[str, Any], indexes: list[tuple[str, ...]],
                  per_resource: tuple[str, ...] = ()) -> Table:
    """An index table: one row per extracted value of one search parameter of one resource.

    Every table starts ``(resource_type, resource_id, param)`` and its lookup indexes lead with
    ``(resource_type, param, <value>)`` so a search starts from the index, not from a scan.
    The rows are derived data, written and cleared only with their resource's version (see
    ``search/store.py``), so they carry neither a key nor a foreign key: a per-row FK check cost
    more than the rest of the write on PostgreSQL (bench/RESULTS.md, finding 1), and
    ``(resource_type, resource_id, param)`` is how rows are found and cleared.
    """
    cols: list[Any] = [
        Column("resource_type", String(64), nullable=False),
        Column("resource_id", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *[Column(col, typ, nullable=True) for col, typ in columns.items()],
        Index(f"ix_{name}_resource", "resource_type", "resource_id", "param", *per_resource),
    ]
    for i, idx in enumerate(indexes):
        cols.append(Index(f"ix_{name}_{i}", "resource_type", "param", *idx))
    return Table(name, Base.metadata, *cols)


#: Decimal-ish search values are compared as doubles: exact enough for search, portable to SQLite.
Number = Float(precision=53)
Instant = DateTime(timezone=True)

SearchString = _search_table("search_string", {"value": Text, "exact": Text}, [("exact",)])
# text_pattern_ops: PostgreSQL uses a btree for LIKE 'prefix%' only with it (or the C collation).
Index("ix_search_string_value", SearchString.c.resource_type, SearchString.c.param, SearchString.c.value,
      postgresql_ops={"value": "text_pattern_ops"})
# The trailing resource_id lets an equality lookup return ids in order, so a page sorted by id
# stops after _count rows instead of visiting every match (bench finding 7).
SearchToken = _search_table(
    "search_token",
    {"system": Text, "code": Text, "text": Text, "type_system": Text, "type_code": Text},
    [("code", "system", "resource_id")])
SearchReference = _search_table(
    "search_reference",
    {"target_type": String(64), "target_id": String(64), "url": Text, "ident_system": Text, "ident_value": Text},
    [("target_id", "target_type", "resource_id")],
    # Covering for "what do these resources point at" (_include, $everything): without it SQLite,
    # planning without statistics, preferred the covering lookup index and read every reference of
    # the type (3 s per $everything at 1M resources).
    per_resource=("target_type", "target_id"))
#: ``span`` classes the width of [low, high] (see ``search/dates.py``): a window search bounds
#: ``low`` per class, so it reads the rows near the window, not every row before it. The
#: (span, low) index covers ``high`` and ``resource_id`` too: without them SQLite preferred the
#: (low, high) index and read, per class, every row of the window's low range across all classes
#: with a table lookup each (8–10 ms per statement at 1M resources; 0.1–0.3 ms covering).
SearchDate = _search_table("search_date", {"low": Instant, "high": Instant, "span": SmallInteger},
                           [("low", "high"), ("high",), ("span", "low", "high", "resource_id")])
SearchNumber = _search_table("search_number", {"value": Number}, [("value",)])
SearchQuantity = _search_table(
    "search_quantity",
    {"value": Number, "system": Text, "code": Text, "canonical_value": Number, "canonical_code": Text},
    [("code", "value")])
SearchUri = _search_table("search_uri", {"uri": Text}, [("uri",)])
#: A composite value: up to three components, each as (system, code, num, low, high) — a token
#: or reference uses system/code, a string code, a number num, a quantity num+system/code, a
#: date low/high. https://hl7.org/fhir/R4B/search.html#composite
SearchComposite = _search_table(
    "search_composite",
    {f"c{i}_{field}": typ for i in range(3)
     for field, typ in (("system", Text), ("code", Text), ("num", Number), ("low", Instant), ("high", Instant))},
    [("c0_code",)])
#: For statistics (``search/facts.py``; param ``_facts``): per resource and coding of its ``code``
#: (``seq``), its patient and clinical date (``event_day``: yyyymmdd, UTC); on a Patient's row its
#: sex, birth day, province and district.
SearchFacts = _search_table("search_facts", {
    "patient_id": String(64), "event_at": Instant, "event_day": Integer, "seq": SmallInteger,
    "system": Text, "code": Text, "gender": Text, "birth_day": Integer, "province": Text, "district": Text}, [])
SEARCH_TABLES = (SearchString, SearchToken, SearchReference, SearchDate, SearchNumber, SearchQuantity,
                 SearchUri, SearchComposite, SearchFacts)


def _partial(name: str, table: Table, *columns: str) -> None:
    """An index over rows whose first value column is set: most references have no absolute
    url and no identifier, most quantities no UCUM form, so indexing their NULLs would only
    slow down writes. ``col = value`` implies ``col IS NOT NULL`` on both databases, so
    lookups still use it."""
    where = table.c[columns[0]].is_not(None)
    Index(name, table.c.resource_type, table.c.param, *(table.c[c] for c in columns),
          postgresql_where=where, sqlite_where=where)


_partial("ix_search_reference_1", SearchReference, "url")
_partial("ix_search_reference_2", SearchReference, "ident_value")
_partial("ix_search_quantity_1", SearchQuantity, "canonical_code", "canonical_value")
# Reverse lookups (_revinclude, _has, chains ending at a target) start from the target.
Index("ix_search_reference_target", SearchReference.c.target_type, SearchReference.c.target_id,
      SearchReference.c.param)


class AppState(Base):
    """Small key/value facts about this installation (e.g. which demo data set is loaded)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


# The authorization server's and the audit trail's tables share this metadata: one schema, one Alembic history.
from ..audit import models as _audit_models  # noqa: E402,F401
from ..auth import models as _auth_models  # noqa: E402,F401
from ..bulk import models as _bulk_models  # noqa: E402,F401
from ..ingest import models as _ingest_models  # noqa: E402,F401
from ..mpi import models as _mpi_models  # noqa: E402,F401
from ..ratelimit import models as _ratelimit_models  # noqa: E402,F401
