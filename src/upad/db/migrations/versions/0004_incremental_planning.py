"""incremental planning: change journal, plan cursors, waiting units; products.night

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("night", sa.String(length=10), nullable=True),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("flow_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flow_changes_time"), ["time"], unique=False)
    op.create_table(
        "plan_cursors",
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("change_id", sa.Integer(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("code_version", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("step"),
    )
    op.create_table(
        "plan_waiting",
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("unit_key", sa.String(length=255), nullable=False),
        sa.Column("night", sa.String(length=10), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("step", "unit_key"),
    )
    with op.batch_alter_table("plan_waiting", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_waiting_night"), ["night"], unique=False)
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.add_column(sa.Column("night", sa.String(length=10), nullable=True))
        batch_op.create_index("ix_products_kind_night", ["kind", "night"], unique=False)
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.create_index("ix_frames_instrument_date", ["instrument", "date_obs"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_step_unit", ["step", "unit_key"], unique=False)
    # products made before this revision: their night from the unit's context
    conn = op.get_bind()
    products = sa.table("products", sa.column("id", sa.Integer), sa.column("context", sa.JSON),
                        sa.column("night", sa.String))
    rows = conn.execute(sa.select(products.c.id, products.c.context)).all()
    for pid, ctx in rows:
        night = (ctx or {}).get("night") if isinstance(ctx, dict) else None
        if night:
            conn.execute(products.update().where(products.c.id == pid).values(night=str(night)[:10]))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_step_unit")
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index("ix_frames_instrument_date")
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_index("ix_products_kind_night")
        batch_op.drop_column("night")
    with op.batch_alter_table("plan_waiting", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_waiting_night"))
    op.drop_table("plan_waiting")
    op.drop_table("plan_cursors")
    with op.batch_alter_table("flow_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flow_changes_time"))
    op.drop_table("flow_changes")
