"""PostgreSQL: a live path is unique only among rows not yet reclaimed, as on SQLite.

Migration 0001 made ``ux_instances_live_path`` partial with SQLite's
``WHERE state != 'reclaimed'``; PostgreSQL ignored the SQLite-only clause
and built a unique index over every row, so a file received again at the
path of a reclaimed one could not be recorded.  On PostgreSQL the index is
built again with the same condition; on SQLite nothing changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_LIVE = sa.text("state != 'reclaimed'")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ux_instances_live_path", table_name="instances")
    op.create_index(
        "ux_instances_live_path", "instances", ["path"], unique=True, postgresql_where=_LIVE
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ux_instances_live_path", table_name="instances")
    op.create_index("ux_instances_live_path", "instances", ["path"], unique=True)
