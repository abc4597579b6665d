"""The service's heartbeat lives in ``nodes`` only: its old ``service_state`` rows go.

Before nodes, one service wrote its pid, listeners, problems and heartbeat
time into ``service_state``; ``status`` now reads each node's row in
``nodes`` (``[node] name``), and nothing writes those four names any more.
Left in place they would read, to an admin's ``sqlite3``, as a service that
died at the upgrade.  ``last_reconcile_at`` (whichever node reconciled)
stays.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

MOVED = ("pid", "listening", "problems", "heartbeat_at")


def upgrade() -> None:
    service_state = sa.table("service_state", sa.column("name", sa.String))
    op.execute(service_state.delete().where(service_state.c.name.in_(MOVED)))


def downgrade() -> None:
    """Nothing to put back: an older service writes its heartbeat again as it starts."""
