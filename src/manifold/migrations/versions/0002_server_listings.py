"""The last lists each server gave, for lazy servers listed while stopped.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade(op: Operations) -> None:
    op.create_table(
        "server_listings",
        sa.Column("server_id", sa.String(64), nullable=False),
        sa.Column("listing", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("server_id", name="pk_server_listings"),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["mcp_servers.id"],
            name="fk_server_listings_server_id_mcp_servers",
            ondelete="CASCADE",
        ),
    )
