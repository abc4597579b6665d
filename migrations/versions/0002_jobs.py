"""Processing: jobs, their events, and each instance's group and job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("processor", sa.String(16), nullable=False),
        sa.Column("called_ae", sa.String(16), nullable=False),
        sa.Column("group_key", sa.Text, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.String(27)),
        sa.Column("last_error", sa.Text),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(27), nullable=False),
        sa.Column("updated_at", sa.String(27), nullable=False),
        sa.Column("finished_at", sa.String(27)),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    # Not unique: a study sent again after its job succeeded is a new job with
    # the same content, hence the same key, so a receiver can recognise it.
    op.create_index("ix_jobs_idempotency_key", "jobs", ["idempotency_key"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.String(27), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])
    # Plain ADD COLUMN, no table copy whatever the ledger's size; SQLite cannot
    # add a foreign key that way, so instances.job_id -> jobs.id is kept by code.
    op.add_column("instances", sa.Column("group_key", sa.Text))
    op.add_column("instances", sa.Column("job_id", sa.Integer))
    op.create_index("ix_instances_group", "instances", ["called_ae", "state", "group_key"])
    op.create_index("ix_instances_job_id", "instances", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_instances_job_id", "instances")
    op.drop_index("ix_instances_group", "instances")
    op.drop_column("instances", "job_id")
    op.drop_column("instances", "group_key")
    op.drop_table("job_events")
    op.drop_table("jobs")
