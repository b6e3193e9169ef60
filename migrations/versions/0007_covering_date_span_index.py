"""covering date span index: (type, param, span, low) also holds high and resource_id

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Date-window searches read one range of ``low`` per width class (``span``). With statistics, SQLite
chose the (low, high) index over (span, low), reading every row of the window's low range for
each class with a table lookup per row: 8–10 ms per statement on the 1M-resource benchmark
database, 0.1–0.3 ms with this covering index (bench/RESULTS.md, third session).
"""
from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_search_date_2', table_name='search_date')
    op.create_index('ix_search_date_2', 'search_date', ['resource_type', 'param', 'span', 'low', 'high', 'resource_id'])


def downgrade() -> None:
    op.drop_index('ix_search_date_2', table_name='search_date')
    op.create_index('ix_search_date_2', 'search_date', ['resource_type', 'param', 'span', 'low'])
