"""bulk export jobs and files

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

FHIR Bulk Data export (issue 6): ``export_jobs`` holds each ``$export`` request and its state
(a worker claims it, heartbeats, and writes files; any process answers its status);
``export_files`` the NDJSON files a job wrote.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
Instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'export_jobs',
        sa.Column('id', sa.String(64), primary_key=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('request', sa.Text(), nullable=False),
        sa.Column('level', sa.String(8), nullable=False),
        sa.Column('group_id', sa.String(64), nullable=True),
        sa.Column('types', JsonDocument, nullable=False),
        sa.Column('type_filters', JsonDocument, nullable=False),
        sa.Column('since', Instant, nullable=True),
        sa.Column('transaction_time', Instant, nullable=False),
        sa.Column('client_id', sa.String(64), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('patient', sa.String(64), nullable=True),
        sa.Column('created_at', Instant, nullable=False),
        sa.Column('started_at', Instant, nullable=True),
        sa.Column('finished_at', Instant, nullable=True),
        sa.Column('expires_at', Instant, nullable=True),
        sa.Column('worker', sa.String(128), nullable=True),
        sa.Column('heartbeat_at', Instant, nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('progress', sa.String(200), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
    )
    op.create_index('ix_export_jobs_status', 'export_jobs', ['status', 'created_at'])
    op.create_table(
        'export_files',
        sa.Column('job_id', sa.String(64), primary_key=True),
        sa.Column('name', sa.String(128), primary_key=True),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('resource_type', sa.String(64), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('export_files')
    op.drop_index('ix_export_jobs_status', 'export_jobs')
    op.drop_table('export_jobs')
