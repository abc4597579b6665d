"""Task leases: which node runs a task, and until when its claim on it holds.

A node that starts a task writes its name and a lease (``[node] lease``
seconds ahead) and renews it while the task runs.  A lease that lapses
(the node was killed, lost power, or cannot reach the ledger) lets any node
put the task back in the queue; the node that comes back finds the attempt
is no longer its own and records nothing.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("node", sa.String(64)))
        batch.add_column(sa.Column("lease_until", sa.String(27)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("node")
