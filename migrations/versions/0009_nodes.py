"""Nodes: each adapter writing this ledger, with its heartbeat.

One row per ``[node] name`` (the host name by default), written by that
node's heartbeat every few seconds: its process, where it listens, when it
started and last wrote, and what ails it.  On one box it is one row; with
several nodes on one PostgreSQL ledger, ``status`` lists them all.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("listening", sa.Text, nullable=False),
        sa.Column("problems", sa.Text, nullable=False),
        sa.Column("started_at", sa.String(27), nullable=False),
        sa.Column("heartbeat_at", sa.String(27), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("nodes")
