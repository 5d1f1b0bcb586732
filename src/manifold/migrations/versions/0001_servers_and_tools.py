"""Servers and their tools: the schema of the first Manifold releases.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(op: Operations) -> None:
    op.create_table(
        "mcp_servers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mcp_servers"),
        sa.UniqueConstraint("server_name", name="uq_mcp_servers_server_name"),
    )
    op.create_table(
        "tools",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("server_id", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("json_schema", sa.JSON(), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tools"),
        sa.ForeignKeyConstraint(
            ["server_id"], ["mcp_servers.id"], name="fk_tools_server_id_mcp_servers", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("server_id", "name", name="uq_tools_server_id"),
    )
    op.create_index("ix_tools_server_id", "tools", ["server_id"])
