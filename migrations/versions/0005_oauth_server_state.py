"""oauth server state: revoked tokens, assertion jtis, authorization codes, refresh tokens, login failures

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

What the authorization server must share between web processes (issue 4): revoked access
tokens, the ``jti`` of accepted client assertions (replay refusal), one-use authorization codes
and rotated refresh tokens. Codes and refresh tokens are stored as SHA-256 digests.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
Instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'oauth_revoked_tokens',
        sa.Column('jti', sa.String(length=64), primary_key=True),
        sa.Column('expires_at', Instant, nullable=False),
    )
    op.create_index('ix_oauth_revoked_tokens_expires_at', 'oauth_revoked_tokens', ['expires_at'])
    op.create_table(
        'oauth_assertion_jtis',
        sa.Column('client_id', sa.String(length=64), primary_key=True),
        sa.Column('jti', sa.String(length=255), primary_key=True),
        sa.Column('expires_at', Instant, nullable=False),
    )
    op.create_index('ix_oauth_assertion_jtis_expires_at', 'oauth_assertion_jtis', ['expires_at'])
    op.create_table(
        'oauth_authorization_codes',
        sa.Column('code_hash', sa.String(length=64), primary_key=True),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('redirect_uri', sa.Text(), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=True),
        sa.Column('nonce', sa.Text(), nullable=True),
        sa.Column('code_challenge', sa.String(length=128), nullable=False),
        sa.Column('code_challenge_method', sa.String(length=8), nullable=False),
        sa.Column('auth_time', Instant, nullable=False),
        sa.Column('expires_at', Instant, nullable=False),
        sa.Column('used_at', Instant, nullable=True),
        sa.Column('token_jtis', JsonDocument, nullable=False),
        sa.Column('refresh_family', sa.String(length=64), nullable=True),
    )
    op.create_table(
        'oauth_refresh_tokens',
        sa.Column('token_hash', sa.String(length=64), primary_key=True),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=True),
        sa.Column('issued_at', Instant, nullable=False),
        sa.Column('expires_at', Instant, nullable=False),
        sa.Column('used_at', Instant, nullable=True),
        sa.Column('revoked', sa.Boolean(), nullable=False),
        sa.Column('access_jti', sa.String(length=64), nullable=True),
    )
    op.create_index('ix_oauth_refresh_tokens_family', 'oauth_refresh_tokens', ['family'])
    op.create_table(
        'oauth_login_failures',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('at', Instant, nullable=False),
    )
    op.create_index('ix_oauth_login_failures_username', 'oauth_login_failures', ['username'])
    op.create_index('ix_oauth_login_failures_address', 'oauth_login_failures', ['address'])


def downgrade() -> None:
    op.drop_table('oauth_login_failures')
    op.drop_table('oauth_refresh_tokens')
    op.drop_table('oauth_authorization_codes')
    op.drop_table('oauth_assertion_jtis')
    op.drop_table('oauth_revoked_tokens')
