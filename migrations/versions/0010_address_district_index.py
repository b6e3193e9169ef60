"""index Patient address district

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

HealthHub's own search parameter ``address-district`` (``fhir/search-parameters-healthhub.json``;
public-health statistics group by district) adds index rows to every Patient, Person,
Practitioner and RelatedPerson with an address: the reindex flag makes ``healthhub db upgrade``
rebuild the search index right after this revision. No table changes.
"""
from __future__ import annotations

from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _reindex() -> None:
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    op.execute("INSERT INTO app_state (key, value) VALUES ('search.reindex', 'required')")


def upgrade() -> None:
    _reindex()


def downgrade() -> None:
    _reindex()
