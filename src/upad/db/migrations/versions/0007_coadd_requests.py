"""coadd requests: a tile coadd in one filter forced now, with a selection of its exposures (``upad coadd``)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coadd_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("unit_key", sa.String(length=255), nullable=False),
        sa.Column("instrument", sa.String(length=32), nullable=False),
        sa.Column("ref_tile_id", sa.Integer(), nullable=False),
        sa.Column("filter", sa.String(length=16), nullable=False),
        sa.Column("selection", sa.Text(), nullable=True),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("requested_by", sa.String(length=255), nullable=True),
        sa.Column("served_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("coadd_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_coadd_requests_unit_key"), ["unit_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("coadd_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_coadd_requests_unit_key"))
    op.drop_table("coadd_requests")
