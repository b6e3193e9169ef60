"""each value stored once: current content in ``resources`` only; no index rows for derived parameters

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

Every version row used to hold a copy of its JSON, so each create stored (and PostgreSQL parsed and
compressed) the document twice. Now the current version of a live resource has ``content`` NULL
in ``resource_versions`` and is read from ``resources``; an update or delete first moves the
current content into its version row (``Repository._keep_previous``). This migration drops the
second copy from existing databases (about half of their JSON); the downgrade puts it back.
No schema change: ``resource_versions.content`` was already nullable.

Parameters that are the union of others (``Observation.combo-code`` = ``code`` | ``component-code``)
or another reference parameter limited to one target type (``Observation.patient`` = ``subject``
pointing at a Patient) no longer get index rows of their own: searches read the other
parameters' rows (``search.registry.Storage``). Their old rows are harmless but dead weight, so
this migration asks for a re-index (``healthhub db upgrade`` runs it), as does the downgrade.
"""
from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_CURRENT = ("SELECT 1 FROM resources AS r WHERE r.resource_type = resource_versions.resource_type "
            "AND r.id = resource_versions.id AND r.version_id = resource_versions.version_id AND NOT r.deleted")


def _reindex() -> None:
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    op.execute("INSERT INTO app_state (key, value) VALUES ('search.reindex', 'required')")


def upgrade() -> None:
    op.execute(f"UPDATE resource_versions SET content = NULL WHERE NOT deleted AND content IS NOT NULL "
               f"AND EXISTS ({_CURRENT})")
    _reindex()


def downgrade() -> None:
    op.execute("UPDATE resource_versions SET content = (SELECT r.content FROM resources AS r "
               "WHERE r.resource_type = resource_versions.resource_type AND r.id = resource_versions.id "
               "AND r.version_id = resource_versions.version_id) "
               f"WHERE NOT deleted AND content IS NULL AND EXISTS ({_CURRENT})")
    _reindex()
