"""search_facts: a row per coding, days as numbers, the Patient's attributes on its own row

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

A two-dimension grouping of 1M Observations spent most of its time joining ``search_facts`` to
the million ``code`` rows of ``search_token`` and to one sub-select per patient attribute, and
in ``age()`` (bench/RESULTS.md, eighth session). ``search_facts`` now has one row per coding of
the ``code`` parameter (``seq``), the clinical day as ``yyyymmdd`` (an age is integer
arithmetic), and on a Patient's row its sex, birth day, province and district
(``search/facts.py``). The rows are rebuilt by the reindex that ``healthhub db upgrade`` runs
when this revision sets its flag.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

COLUMNS = (("event_day", sa.Integer()), ("seq", sa.SmallInteger()), ("system", sa.Text()), ("code", sa.Text()),
           ("gender", sa.Text()), ("birth_day", sa.Integer()), ("province", sa.Text()),
           ("district", sa.Text()))


def upgrade() -> None:
    with op.batch_alter_table('search_facts') as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    op.execute("INSERT INTO app_state (key, value) VALUES ('search.reindex', 'required')")


def downgrade() -> None:
    with op.batch_alter_table('search_facts') as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    op.execute("INSERT INTO app_state (key, value) VALUES ('search.reindex', 'required')")
