"""Indexes for a ledger of a million instances (``bench/ledger_scale.py`` measures them).

``ix_instances_received_at``: ``dicom-adapter status`` lists the latest
studies; through the ``studies`` view alone that aggregates every row
(seconds at a million instances), with this index the ledger walks the
newest instances until it has seen enough studies.

``ix_instances_sop`` leads with the SOP Instance UID: intake's duplicate
look-up (AE and UID) uses it as before, and the cookbook's "history of one
instance" (UID only) no longer reads the whole table.

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
    op.drop_index("ix_instances_sop", table_name="instances")
    op.create_index("ix_instances_sop", "instances", ["sop_instance_uid", "called_ae"])


def downgrade() -> None:
    op.drop_index("ix_instances_sop", table_name="instances")
    op.create_index("ix_instances_sop", "instances", ["called_ae", "sop_instance_uid"])
    op.drop_index("ix_instances_received_at", table_name="instances")
