"""ingest archive, senders and the master patient index

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Hospital ingest (issue 5): every inbound payload is archived raw with its outcome
(``inbound_messages``, streamed uploads in ``inbound_chunks``), HL7 message ids already stored
(``inbound_keys``: a re-sent message is not stored twice), rejected CSV rows kept for replay
(``inbound_rows``), registered sending hospitals (``senders``), and the master patient index
(``mpi_keys`` blocking keys, ``mpi_links`` between one person's records, ``mpi_persons`` the
person of each linked record, ``mpi_reviews`` of possible matches).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
BigIntKey = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
Instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'inbound_messages',
        sa.Column('id', BigIntKey, primary_key=True, autoincrement=True),
        sa.Column('received_at', Instant, nullable=False),
        sa.Column('transport', sa.String(length=16), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('sender', sa.String(length=64), nullable=True),
        sa.Column('client_id', sa.String(length=64), nullable=True),
        sa.Column('peer', sa.String(length=512), nullable=True),
        sa.Column('content_type', sa.String(length=100), nullable=True),
        sa.Column('message_type', sa.String(length=64), nullable=True),
        sa.Column('control_id', sa.String(length=200), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('detail', JsonDocument, nullable=True),
        sa.Column('processed_at', Instant, nullable=True),
        sa.Column('replay_of', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_inbound_messages'),
    )
    op.create_index('ix_inbound_messages_outcome', 'inbound_messages', ['outcome', 'id'])
    op.create_index('ix_inbound_messages_sender_control', 'inbound_messages', ['sender', 'control_id'])
    op.create_index('ix_inbound_messages_received', 'inbound_messages', ['received_at'])
    op.create_table(
        'inbound_chunks',
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('message_id', 'seq', name='pk_inbound_chunks'),
    )
    op.create_table(
        'inbound_keys',
        sa.Column('sender', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('sender', 'kind', 'key', name='pk_inbound_keys'),
    )
    op.create_table(
        'inbound_rows',
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.Column('row', sa.Integer(), nullable=False),
        sa.Column('case_id', sa.String(length=200), nullable=True),
        sa.Column('raw', JsonDocument, nullable=False),
        sa.Column('errors', JsonDocument, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('message_id', 'row', name='pk_inbound_rows'),
    )
    op.create_table(
        'senders',
        sa.Column('code', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('organization', sa.String(length=128), nullable=True),
        sa.Column('timezone', sa.String(length=64), nullable=False),
        sa.Column('identifier_systems', JsonDocument, nullable=False),
        sa.Column('code_systems', JsonDocument, nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=True),
        sa.Column('created_at', Instant, nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('code', name='pk_senders'),
        sa.UniqueConstraint('client_id', name='uq_senders_client_id'),
    )
    op.create_table(
        'mpi_keys',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('key', 'patient_id', name='pk_mpi_keys'),
    )
    op.create_index('ix_mpi_keys_patient', 'mpi_keys', ['patient_id'])
    op.create_table(
        'mpi_links',
        sa.Column('a', sa.String(length=64), nullable=False),
        sa.Column('b', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.Column('replaced', sa.String(length=64), nullable=True),
        sa.Column('created_at', Instant, nullable=False),
        sa.PrimaryKeyConstraint('a', 'b', name='pk_mpi_links'),
    )
    op.create_index('ix_mpi_links_b', 'mpi_links', ['b'])
    op.create_table(
        'mpi_persons',
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('person_id', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('patient_id', name='pk_mpi_persons'),
    )
    op.create_index('ix_mpi_persons_person', 'mpi_persons', ['person_id'])
    op.create_table(
        'mpi_reviews',
        sa.Column('a', sa.String(length=64), nullable=False),
        sa.Column('b', sa.String(length=64), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.Column('grade', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', Instant, nullable=False),
        sa.PrimaryKeyConstraint('a', 'b', name='pk_mpi_reviews'),
    )
    op.create_index('ix_mpi_reviews_status', 'mpi_reviews', ['status'])
    if op.get_bind().dialect.name == 'postgresql':
        # Payloads (a 1 MB FHIR Bundle, a CSV chunk) are compressed by lz4, several times faster
        # than the default pglz on the write path that archives every payload.
        op.execute('ALTER TABLE inbound_messages ALTER COLUMN payload SET COMPRESSION lz4')
        op.execute('ALTER TABLE inbound_chunks ALTER COLUMN data SET COMPRESSION lz4')


def downgrade() -> None:
    for table in ('mpi_reviews', 'mpi_persons', 'mpi_links', 'mpi_keys', 'senders', 'inbound_rows', 'inbound_keys',
                  'inbound_chunks', 'inbound_messages'):
        op.drop_table(table)
