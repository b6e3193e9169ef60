"""cheaper writes: no foreign key from resource_versions to resources; lz4 for large values

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30

Measured on the Synthea corpus (13,048 resources as transaction Bundles, PostgreSQL 15, time the
hub waited for each table's COPY to finish; bench/RESULTS.md, ninth session):

- ``resource_versions`` took 65 µs a row, twice ``resources`` and nine times an index table: the
  foreign key's check is a query per row (planned per row, ``plan_cache_mode =
  force_custom_plan``, db.py) that also locks the ``resources`` row. The repository writes a
  version and its current row in one transaction and never deletes either (a delete is a
  tombstone version), so the constraint guarded nothing the code could break. Without it: under
  1 µs a row. Medplum's history tables have no such key either; the search index tables lost
  theirs in 0003 for the same reason.
- ``resources.content`` (JSONB) took 29 µs a row, and the archive's raw Bundles more: values over
  2 kB are compressed by TOAST, with pglz by default. lz4 (PostgreSQL ≥ 14 built with it, as the
  PGDG, Debian and cloud builds are) compressed a 1 MB Synthea Bundle in 2 ms instead of 12,
  into 110 kB instead of 208 kB. Values written before keep pglz; both are read alike.
  https://www.postgresql.org/docs/15/storage-toast.html

SQLite has neither cost worth the name (in process, no compression); the constraint goes there
too, so both databases keep one schema (a table copy: SQLite cannot drop a constraint in place).
"""
from __future__ import annotations

from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

#: (table, column) compressed with lz4 where the server offers it.
_LARGE = (("resources", "content"), ("resource_versions", "content"), ("inbound_messages", "payload"),
          ("inbound_chunks", "data"))
_FK = "fk_resource_versions_resource"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("resource_versions") as batch:
            batch.drop_constraint(_FK, type_="foreignkey")
        return
    op.drop_constraint(_FK, "resource_versions", type_="foreignkey")
    if _has_lz4(bind):
        for table, column in _LARGE:
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION lz4')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("resource_versions") as batch:
            batch.create_foreign_key(_FK, "resources", ["resource_type", "id"], ["resource_type", "id"])
        return
    if _has_lz4(bind):
        for table, column in _LARGE:
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET COMPRESSION DEFAULT')
    op.create_foreign_key(_FK, "resource_versions", "resources", ["resource_type", "id"], ["resource_type", "id"])


def _has_lz4(bind: object) -> bool:
    """Whether this server can compress with lz4 (column compression came in PostgreSQL 14; lz4 is
    a build option, listed among ``default_toast_compression``'s values when present)."""
    from sqlalchemy import text

    values = bind.execute(text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")  # type: ignore[attr-defined]
                          ).scalar()
    return bool(values) and "lz4" in values
