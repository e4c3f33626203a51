"""faults: blocked jobs wait for a cause to go (jobs.waits_for, jobs.fault); raw files' stat at registration

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fault", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("waits_for", sa.Text(), nullable=True))
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("file_stat", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_column("file_stat")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("waits_for")
        batch_op.drop_column("fault")
