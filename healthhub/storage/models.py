"""Typed ORM tables of the resource store.

``resources`` holds the current version of every resource (a tombstone after a delete);
``resource_versions`` holds every version ever written and is never updated — the FHIR
history (https://hl7.org/fhir/R4B/http.html#history). ``resource_identifiers`` indexes
``identifier`` (system, value) so conditional create can find a match in SQL.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
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
        ForeignKeyConstraint(
            ["resource_type", "id"], ["resources.resource_type", "resources.id"],
            name="fk_resource_versions_resource",
        ),
        Index("ix_resource_versions_type_pk", "resource_type", "pk"),
        Index("ix_resource_versions_updated", "last_updated"),
    )


class ResourceIdentifier(Base):
    """``identifier`` values of current, non-deleted resources (system may be empty)."""

    __tablename__ = "resource_identifiers"

    pk: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(64), nullable=False)
    system: Mapped[str] = mapped_column(Text, nullable=False, default="")
    value: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        ForeignKeyConstraint(
            ["resource_type", "resource_id"], ["resources.resource_type", "resources.id"],
            name="fk_resource_identifiers_resource", ondelete="CASCADE",
        ),
        Index("ix_resource_identifiers_lookup", "resource_type", "value", "system"),
        Index("ix_resource_identifiers_resource", "resource_type", "resource_id"),
    )


class AppState(Base):
    """Small key/value facts about this installation (e.g. which demo data set is loaded)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
