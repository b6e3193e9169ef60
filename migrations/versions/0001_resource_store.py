"""resource store

Revision ID: 0001
Revises: 
Create Date: 2026-11-26
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('app_state',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_app_state'))
    )
    op.create_table('resources',
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('resource_type', 'id', name=op.f('pk_resources'))
    )
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.create_index('ix_resources_type_updated', ['resource_type', 'last_updated'], unique=False)

    op.create_table('resource_identifiers',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('system', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_resource_identifiers_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_resource_identifiers'))
    )
    with op.batch_alter_table('resource_identifiers', schema=None) as batch_op:
        batch_op.create_index('ix_resource_identifiers_lookup', ['resource_type', 'value', 'system'], unique=False)
        batch_op.create_index('ix_resource_identifiers_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('resource_versions',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'id'], ['resources.resource_type', 'resources.id'], name='fk_resource_versions_resource'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_resource_versions')),
    sa.UniqueConstraint('resource_type', 'id', 'version_id', name='uq_resource_versions_key')
    )
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.create_index('ix_resource_versions_type_pk', ['resource_type', 'pk'], unique=False)
        batch_op.create_index('ix_resource_versions_updated', ['last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resource_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_versions_updated')
        batch_op.drop_index('ix_resource_versions_type_pk')

    op.drop_table('resource_versions')
    with op.batch_alter_table('resource_identifiers', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_identifiers_resource')
        batch_op.drop_index('ix_resource_identifiers_lookup')

    op.drop_table('resource_identifiers')
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_index('ix_resources_type_updated')

    op.drop_table('resources')
    op.drop_table('app_state')
