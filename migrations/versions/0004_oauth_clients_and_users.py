"""oauth clients and users

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The authorization server's registered clients and users (issue 4: SMART on FHIR). Secrets are
stored as SHA-256 digests, passwords as salted scrypt hashes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'oauth_clients',
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('grant_type', sa.String(length=32), nullable=False),
        sa.Column('auth_method', sa.String(length=32), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('secret_hash', sa.String(length=64), nullable=True),
        sa.Column('jwks', JsonDocument, nullable=True),
        sa.Column('redirect_uris', JsonDocument, nullable=False),
        sa.Column('organization', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('client_id', name=op.f('pk_oauth_clients')),
    )
    op.create_table(
        'users',
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('fhir_user', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('username', name=op.f('pk_users')),
    )


def downgrade() -> None:
    op.drop_table('users')
    op.drop_table('oauth_clients')
