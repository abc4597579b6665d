"""An index on instances.received_at, for the most recent studies at scale.

``dicom-adapter status`` lists the latest studies; through the ``studies``
view alone that aggregates every row (seconds at a million instances).  With
this index the ledger walks the newest instances until it has seen enough
studies and aggregates only those (``bench/ledger_scale.py`` measures it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instances_received_at", "instances", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_instances_received_at", table_name="instances")
