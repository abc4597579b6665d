"""Exports: tasks that send files to a DICOM destination, one row per file.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("file_count", sa.Integer, nullable=False),
        sa.Column("failed_count", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.String(27)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.String(27), nullable=False),
        sa.Column("updated_at", sa.String(27), nullable=False),
        sa.Column("finished_at", sa.String(27)),
        sa.Column("reclaimed_at", sa.String(27)),
    )
    op.create_index("ix_exports_state", "exports", ["destination", "state"])
    op.create_table(
        "export_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("export_id", sa.Integer, sa.ForeignKey("exports.id"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("owned", sa.Boolean, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64)),
        sa.Column("transfer_syntax_uid", sa.String(64)),
        sa.Column("size", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("sent_at", sa.String(27)),
    )
    op.create_index("ix_export_files_export_id", "export_files", ["export_id"])
    op.create_table(
        "export_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("export_id", sa.Integer, sa.ForeignKey("exports.id"), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.String(27), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_export_events_export_id", "export_events", ["export_id"])


def downgrade() -> None:
    op.drop_table("export_events")
    op.drop_table("export_files")
    op.drop_table("exports")
