"""initial: frames, tiles, events, quarantine

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('original_path', sa.Text(), nullable=False),
    sa.Column('quarantine_path', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('detected_at', sa.DateTime(), nullable=False),
    sa.Column('resolved', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantine_category'), ['category'], unique=False)
        batch_op.create_index(batch_op.f('ix_quarantine_filename'), ['filename'], unique=False)
        batch_op.create_index(batch_op.f('ix_quarantine_sha256'), ['sha256'], unique=False)

    op.create_table('tiles',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('ra', sa.Float(), nullable=True),
    sa.Column('dec', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('frames',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('original_path', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('ingested_at', sa.DateTime(), nullable=False),
    sa.Column('instrument', sa.String(length=32), nullable=False),
    sa.Column('telescope', sa.String(length=32), nullable=False),
    sa.Column('detector', sa.String(length=64), nullable=True),
    sa.Column('header_convention', sa.String(length=16), nullable=False),
    sa.Column('layout', sa.String(length=16), nullable=False),
    sa.Column('naxis1', sa.Integer(), nullable=False),
    sa.Column('naxis2', sa.Integer(), nullable=False),
    sa.Column('n_detectors', sa.Integer(), nullable=False),
    sa.Column('obs_type', sa.String(length=16), nullable=False),
    sa.Column('filter', sa.String(length=16), nullable=True),
    sa.Column('read_mode', sa.String(length=32), nullable=True),
    sa.Column('exptime', sa.Float(), nullable=False),
    sa.Column('date_obs', sa.DateTime(), nullable=False),
    sa.Column('mjd', sa.Float(), nullable=False),
    sa.Column('night', sa.String(length=10), nullable=False),
    sa.Column('object', sa.String(length=80), nullable=True),
    sa.Column('ra', sa.Float(), nullable=True),
    sa.Column('dec', sa.Float(), nullable=True),
    sa.Column('airmass', sa.Float(), nullable=True),
    sa.Column('tile_id', sa.Integer(), nullable=True),
    sa.Column('header', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('valid', sa.Boolean(), nullable=False),
    sa.Column('invalid_reason', sa.Text(), nullable=True),
    sa.Column('qc_status', sa.String(length=8), nullable=False),
    sa.Column('qc_reasons', sa.JSON(), nullable=False),
    sa.Column('qc_bias', sa.JSON(), nullable=True),
    sa.Column('qc_sky_median', sa.Float(), nullable=True),
    sa.Column('qc_sky_noise', sa.Float(), nullable=True),
    sa.Column('qc_saturated_fraction', sa.Float(), nullable=True),
    sa.Column('qc_fwhm', sa.Float(), nullable=True),
    sa.Column('qc_n_sources', sa.Integer(), nullable=True),
    sa.Column('qc_seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['tile_id'], ['tiles.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('filename')
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frames_date_obs'), ['date_obs'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_filter'), ['filter'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_instrument'), ['instrument'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_night'), ['night'], unique=False)
        batch_op.create_index('ix_frames_night_type_filter', ['night', 'obs_type', 'filter'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_obs_type'), ['obs_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_qc_status'), ['qc_status'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_tile_id'), ['tile_id'], unique=False)

    op.create_table('frame_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('frame_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frame_events_frame_id'), ['frame_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('frame_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_frame_events_frame_id'))

    op.drop_table('frame_events')
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_frames_tile_id'))
        batch_op.drop_index(batch_op.f('ix_frames_state'))
        batch_op.drop_index(batch_op.f('ix_frames_sha256'))
        batch_op.drop_index(batch_op.f('ix_frames_qc_status'))
        batch_op.drop_index(batch_op.f('ix_frames_obs_type'))
        batch_op.drop_index('ix_frames_night_type_filter')
        batch_op.drop_index(batch_op.f('ix_frames_night'))
        batch_op.drop_index(batch_op.f('ix_frames_instrument'))
        batch_op.drop_index(batch_op.f('ix_frames_filter'))
        batch_op.drop_index(batch_op.f('ix_frames_date_obs'))

    op.drop_table('frames')
    op.drop_table('tiles')
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantine_sha256'))
        batch_op.drop_index(batch_op.f('ix_quarantine_filename'))
        batch_op.drop_index(batch_op.f('ix_quarantine_category'))

    op.drop_table('quarantine')
