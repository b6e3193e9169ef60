"""PostgreSQL: multivariate statistics on the token index's (type, parameter, system, code)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30

PostgreSQL estimates ``resource_type = … AND param = … AND system = … AND code = …`` as if the
four columns were independent: 10,563 rows for an Observation code that 104,395 hold at 1M
Observations. With that estimate a statistics query joined each of the 104,395 matches to its
patient by an index lookup (987 ms) instead of one hash join (576 ms; bench/RESULTS.md, eighth
session); any search by code is planned from the same estimate. An MCV list over the four columns
(https://www.postgresql.org/docs/15/planner-stats.html#PLANNER-STATS-EXTENDED) gives the planner
the common combinations; ANALYZE (autovacuum, or ``storage/planner_stats.py``) fills it. SQLite
has no such statistics: nothing to do there.
"""
from __future__ import annotations

from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE STATISTICS IF NOT EXISTS st_search_token_code (mcv) "
                   "ON resource_type, param, system, code FROM search_token")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_search_token_code")
