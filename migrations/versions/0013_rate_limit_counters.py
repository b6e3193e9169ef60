"""rate limit counters

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

Rate limits shared by every web process (issue 7): requests per key (``client:<id>`` or
``addr:<ip>``) per one-minute window, when no Redis is configured (healthhub/ratelimit.py).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rate_limit_counters',
        sa.Column('key', sa.String(160), primary_key=True),
        sa.Column('window', sa.BigInteger(), primary_key=True),
        sa.Column('count', sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('rate_limit_counters')
