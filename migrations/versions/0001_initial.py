"""Initial ledger: instances, events and the studies view.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("received", "claimed", "submitted", "reclaimable", "reclaimed")

STUDIES_VIEW = (
    "CREATE VIEW studies AS SELECT called_ae, study_instance_uid, "
    "MAX(patient_id) AS patient_id, COUNT(*) AS instances, "
    + "".join(
        f"SUM(CASE WHEN state = '{state}' THEN 1 ELSE 0 END) AS {state}, " for state in STATES
    )
    + "SUM(size) AS bytes, MIN(received_at) AS first_received_at, "
    "MAX(received_at) AS last_received_at "
    "FROM instances WHERE state != 'rejected' "
    "GROUP BY called_ae, study_instance_uid"
)


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64)),
        sa.Column("transfer_syntax_uid", sa.String(64)),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("called_ae", sa.String(16)),
        sa.Column("peer_address", sa.String(64)),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.Integer),
        sa.Column("sha256", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("received_at", sa.String(27), nullable=False),
        sa.Column("updated_at", sa.String(27), nullable=False),
        sa.Column("missing_since", sa.String(27)),
    )
    op.create_index("ix_instances_state", "instances", ["state"])
    op.create_index("ix_instances_sop", "instances", ["called_ae", "sop_instance_uid"])
    op.create_index("ix_instances_study", "instances", ["called_ae", "study_instance_uid"])
    op.create_index(
        "ux_instances_live_path",
        "instances",
        ["path"],
        unique=True,
        sqlite_where=sa.text("state != 'reclaimed'"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.String(27), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_events_instance_id", "events", ["instance_id"])
    op.execute(STUDIES_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW studies")
    op.drop_table("events")
    op.drop_table("instances")
