"""tiling: the pixel grid and footprint flag of a pointing (tiles), the planned tiles per filter (tile_filters)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: the rows ingest made for the tile ids of frames have no grid
    with op.batch_alter_table("tiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instrument", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("naxis1", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("naxis2", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("pixel_scale", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("tiling", sa.String(length=160), nullable=True))
        batch_op.add_column(sa.Column("in_footprint", sa.Boolean(), nullable=True))
    op.create_table(
        "tile_filters",
        sa.Column("tile_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ref_tile_id", sa.Integer(), nullable=False),
        sa.Column("filter", sa.String(length=16), nullable=False),
        sa.Column("planned_exposures", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["ref_tile_id"], ["tiles.id"]),
        sa.PrimaryKeyConstraint("tile_id"),
    )
    with op.batch_alter_table("tile_filters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tile_filters_ref_tile_id"), ["ref_tile_id"], unique=False)
        batch_op.create_index("ix_tile_filters_ref_filter", ["ref_tile_id", "filter"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("tile_filters", schema=None) as batch_op:
        batch_op.drop_index("ix_tile_filters_ref_filter")
        batch_op.drop_index(batch_op.f("ix_tile_filters_ref_tile_id"))
    op.drop_table("tile_filters")
    with op.batch_alter_table("tiles", schema=None) as batch_op:
        batch_op.drop_column("in_footprint")
        batch_op.drop_column("tiling")
        batch_op.drop_column("pixel_scale")
        batch_op.drop_column("naxis2")
        batch_op.drop_column("naxis1")
        batch_op.drop_column("instrument")
