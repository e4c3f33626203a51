"""calibration epochs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calib_epochs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("instrument", sa.String(length=32), nullable=True),
        sa.Column("filter", sa.String(length=16), nullable=True),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("metric", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("retracted_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("calib_epochs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calib_epochs_time"), ["time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calib_epochs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calib_epochs_time"))
    op.drop_table("calib_epochs")
