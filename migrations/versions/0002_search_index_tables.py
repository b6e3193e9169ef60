"""search index tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

The search_* tables replace resource_identifiers. Existing resources need their index rows
extracted in Python (the FHIRPath expressions of fhir/search-parameters.json), so the migration
flags that and `healthhub db upgrade` runs `search reindex` right after it.
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('search_composite',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('c0_system', sa.Text(), nullable=True),
    sa.Column('c0_code', sa.Text(), nullable=True),
    sa.Column('c0_num', sa.Float(precision=53), nullable=True),
    sa.Column('c0_low', sa.DateTime(timezone=True), nullable=True),
    sa.Column('c0_high', sa.DateTime(timezone=True), nullable=True),
    sa.Column('c1_system', sa.Text(), nullable=True),
    sa.Column('c1_code', sa.Text(), nullable=True),
    sa.Column('c1_num', sa.Float(precision=53), nullable=True),
    sa.Column('c1_low', sa.DateTime(timezone=True), nullable=True),
    sa.Column('c1_high', sa.DateTime(timezone=True), nullable=True),
    sa.Column('c2_system', sa.Text(), nullable=True),
    sa.Column('c2_code', sa.Text(), nullable=True),
    sa.Column('c2_num', sa.Float(precision=53), nullable=True),
    sa.Column('c2_low', sa.DateTime(timezone=True), nullable=True),
    sa.Column('c2_high', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_composite_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_composite'))
    )
    with op.batch_alter_table('search_composite', schema=None) as batch_op:
        batch_op.create_index('ix_search_composite_0', ['resource_type', 'param', 'c0_code'], unique=False)
        batch_op.create_index('ix_search_composite_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_date',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('low', sa.DateTime(timezone=True), nullable=True),
    sa.Column('high', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_date_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_date'))
    )
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.create_index('ix_search_date_0', ['resource_type', 'param', 'low', 'high'], unique=False)
        batch_op.create_index('ix_search_date_1', ['resource_type', 'param', 'high'], unique=False)
        batch_op.create_index('ix_search_date_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_number',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_number_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_number'))
    )
    with op.batch_alter_table('search_number', schema=None) as batch_op:
        batch_op.create_index('ix_search_number_0', ['resource_type', 'param', 'value'], unique=False)
        batch_op.create_index('ix_search_number_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_quantity',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=True),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('canonical_value', sa.Float(precision=53), nullable=True),
    sa.Column('canonical_code', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_quantity_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_quantity'))
    )
    with op.batch_alter_table('search_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_search_quantity_0', ['resource_type', 'param', 'code', 'value'], unique=False)
        batch_op.create_index('ix_search_quantity_1', ['resource_type', 'param', 'canonical_code', 'canonical_value'], unique=False)
        batch_op.create_index('ix_search_quantity_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_reference',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('ident_system', sa.Text(), nullable=True),
    sa.Column('ident_value', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_reference_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_reference'))
    )
    with op.batch_alter_table('search_reference', schema=None) as batch_op:
        batch_op.create_index('ix_search_reference_0', ['resource_type', 'param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index('ix_search_reference_1', ['resource_type', 'param', 'url'], unique=False)
        batch_op.create_index('ix_search_reference_2', ['resource_type', 'param', 'ident_value'], unique=False)
        batch_op.create_index('ix_search_reference_resource', ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index('ix_search_reference_target', ['target_type', 'target_id', 'param'], unique=False)

    op.create_table('search_string',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('exact', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_string_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_string'))
    )
    with op.batch_alter_table('search_string', schema=None) as batch_op:
        batch_op.create_index('ix_search_string_resource', ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index('ix_search_string_value', ['resource_type', 'param', 'value'], unique=False, postgresql_ops={'value': 'text_pattern_ops'})

    op.create_table('search_token',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('type_system', sa.Text(), nullable=True),
    sa.Column('type_code', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_token_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_token'))
    )
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.create_index('ix_search_token_0', ['resource_type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_search_token_resource', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_uri',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('uri', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name='fk_search_uri_resource', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_search_uri'))
    )
    with op.batch_alter_table('search_uri', schema=None) as batch_op:
        batch_op.create_index('ix_search_uri_0', ['resource_type', 'param', 'uri'], unique=False)
        batch_op.create_index('ix_search_uri_resource', ['resource_type', 'resource_id'], unique=False)

    with op.batch_alter_table('resource_identifiers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_identifiers_lookup'))
        batch_op.drop_index(batch_op.f('ix_resource_identifiers_resource'))

    op.drop_table('resource_identifiers')
    app_state = sa.table("app_state", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(app_state, [{"key": "search.reindex", "value": "required"}])


def downgrade() -> None:
    op.execute("DELETE FROM app_state WHERE key = 'search.reindex'")
    op.create_table('resource_identifiers',
    sa.Column('pk', sa.INTEGER(), nullable=False),
    sa.Column('resource_type', sa.VARCHAR(length=64), nullable=False),
    sa.Column('resource_id', sa.VARCHAR(length=64), nullable=False),
    sa.Column('system', sa.TEXT(), nullable=False),
    sa.Column('value', sa.TEXT(), nullable=False),
    sa.ForeignKeyConstraint(['resource_type', 'resource_id'], ['resources.resource_type', 'resources.id'], name=op.f('fk_resource_identifiers_resource'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_resource_identifiers'))
    )
    with op.batch_alter_table('resource_identifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_identifiers_resource'), ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_identifiers_lookup'), ['resource_type', 'value', 'system'], unique=False)

    with op.batch_alter_table('search_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_search_uri_resource')
        batch_op.drop_index('ix_search_uri_0')

    op.drop_table('search_uri')
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.drop_index('ix_search_token_resource')
        batch_op.drop_index('ix_search_token_0')

    op.drop_table('search_token')
    with op.batch_alter_table('search_string', schema=None) as batch_op:
        batch_op.drop_index('ix_search_string_value', postgresql_ops={'value': 'text_pattern_ops'})
        batch_op.drop_index('ix_search_string_resource')

    op.drop_table('search_string')
    with op.batch_alter_table('search_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_search_reference_target')
        batch_op.drop_index('ix_search_reference_resource')
        batch_op.drop_index('ix_search_reference_2')
        batch_op.drop_index('ix_search_reference_1')
        batch_op.drop_index('ix_search_reference_0')

    op.drop_table('search_reference')
    with op.batch_alter_table('search_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_search_quantity_resource')
        batch_op.drop_index('ix_search_quantity_1')
        batch_op.drop_index('ix_search_quantity_0')

    op.drop_table('search_quantity')
    with op.batch_alter_table('search_number', schema=None) as batch_op:
        batch_op.drop_index('ix_search_number_resource')
        batch_op.drop_index('ix_search_number_0')

    op.drop_table('search_number')
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.drop_index('ix_search_date_resource')
        batch_op.drop_index('ix_search_date_1')
        batch_op.drop_index('ix_search_date_0')

    op.drop_table('search_date')
    with op.batch_alter_table('search_composite', schema=None) as batch_op:
        batch_op.drop_index('ix_search_composite_resource')
        batch_op.drop_index('ix_search_composite_0')

    op.drop_table('search_composite')
