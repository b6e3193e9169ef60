"""audit trail: hash-chained audit events and the resources they name

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Every FHIR interaction, token request and sign-in is recorded as an AuditEvent in
``audit_events``, each row holding its predecessor's hash and its own (issue 4, CONTRACT §9).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
BigIntKey = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
Instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'audit_events',
        sa.Column('seq', BigIntKey, primary_key=True, autoincrement=False),
        sa.Column('recorded', Instant, nullable=False),
        sa.Column('subtype', sa.String(length=32), nullable=False),
        sa.Column('action', sa.String(length=1), nullable=False),
        sa.Column('outcome', sa.String(length=2), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=True),
        sa.Column('username', sa.String(length=128), nullable=True),
        sa.Column('address', sa.String(length=64), nullable=True),
        sa.Column('entity', sa.String(length=160), nullable=True),
        sa.Column('patient', sa.String(length=160), nullable=True),
        sa.Column('content', JsonDocument, nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
    )
    op.create_index('ix_audit_events_recorded', 'audit_events', ['recorded'])
    op.create_index('ix_audit_events_client_id', 'audit_events', ['client_id'])
    op.create_index('ix_audit_events_username', 'audit_events', ['username'])
    op.create_index('ix_audit_events_entity', 'audit_events', ['entity'])
    op.create_index('ix_audit_events_patient', 'audit_events', ['patient'])
    op.create_table(
        'audit_entities',
        sa.Column('reference', sa.String(length=160), primary_key=True),
        sa.Column('seq', BigIntKey, primary_key=True),
    )


def downgrade() -> None:
    op.drop_table('audit_entities')
    op.drop_table('audit_events')
