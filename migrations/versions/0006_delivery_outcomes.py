"""Per-file delivery outcomes: which spool instance an export file is, and when it went.

``export_files.instance_id`` names the ``instances`` row a forwarded file
was linked from, so ``ledger check`` can tell whether every destination
confirmed an instance whose spool copy is gone.  Existing forward files get
it from their name, which has always been ``<instance id>.dcm`` in
``.sending/job-<job id>/``.  ``export_files.reclaimed_at``
records when the reclaimer deleted an owned file: files are reclaimed one by
one once delivered, never because their task as a whole succeeded.
``export_files.failures`` counts the attempts that reached a file and did not
deliver it: the next attempt sends such files last, so one file a
destination stalls on cannot hold back the rest of its task.
``ix_export_files_state`` serves the count of undelivered files that
``status`` and the health check read, and the reclaimer's search.

Tasks that an older version marked ``succeeded`` while some of their files
were not delivered are reopened as ``failed``, with an event, so that an
admin sees them (``dicom-adapter exports retry`` or ``discard``).

The ``studies`` view counts superseded copies (a different resend moved
aside, see README "Duplicates") in a column of their own, not as instances.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from datetime import UTC, datetime
from pathlib import PurePath

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OLD_STATES = ("received", "claimed", "submitted", "reclaimable", "reclaimed")
_STATES = (*_OLD_STATES, "superseded")


def _studies_view(states: tuple[str, ...], instance_states: str) -> str:
    return (
        "CREATE VIEW studies AS SELECT called_ae, study_instance_uid, "
        "MAX(patient_id) AS patient_id, "
        f"SUM(CASE WHEN {instance_states} THEN 1 ELSE 0 END) AS instances, "
        + "".join(
            f"SUM(CASE WHEN state = '{state}' THEN 1 ELSE 0 END) AS {state}, " for state in states
        )
        + f"SUM(CASE WHEN {instance_states} THEN size ELSE 0 END) AS bytes, "
        "MIN(received_at) AS first_received_at, MAX(received_at) AS last_received_at "
        "FROM instances WHERE state != 'rejected' "
        "GROUP BY called_ae, study_instance_uid"
    )


def upgrade() -> None:
    with op.batch_alter_table("export_files") as batch:
        batch.add_column(sa.Column("instance_id", sa.Integer))
        batch.add_column(sa.Column("reclaimed_at", sa.String(27)))
        batch.add_column(sa.Column("failures", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_export_files_state", "export_files", ["state", "reclaimed_at"])
    op.create_index("ix_export_files_instance_id", "export_files", ["instance_id"])
    # Owned files of tasks already reclaimed went with their task.
    op.execute(
        "UPDATE export_files SET reclaimed_at = "
        "(SELECT reclaimed_at FROM exports WHERE exports.id = export_files.export_id) "
        "WHERE owned AND export_id IN (SELECT id FROM exports WHERE reclaimed_at IS NOT NULL)"
    )
    _link_forwarded_files()
    undelivered = (
        "SELECT id FROM exports WHERE state = 'succeeded' AND EXISTS "
        "(SELECT 1 FROM export_files f WHERE f.export_id = exports.id AND f.state != 'sent')"
    )
    op.get_bind().execute(
        sa.text(
            "INSERT INTO export_events (export_id, from_state, to_state, at, reason) "
            "SELECT id, 'succeeded', 'failed', :now, "
            "'reopened by ledger migration 0006: undelivered files: ' || failed_count "
            f"FROM exports WHERE id IN ({undelivered})"
        ),
        {"now": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},  # as ledger.models
    )
    op.execute(f"UPDATE exports SET state = 'failed' WHERE id IN ({undelivered})")
    op.execute("DROP VIEW studies")
    op.execute(_studies_view(_STATES, "state != 'superseded'"))


def _link_forwarded_files() -> None:
    """Name each existing forward file's instance: ``<instance id>.dcm``, of the task's job."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT f.id, f.path, e.job_id FROM export_files f "
            "JOIN exports e ON e.id = f.export_id WHERE e.origin = 'forward'"
        )
    ).all()
    for file_id, path, job_id in rows:
        stem = PurePath(path).stem
        if not stem.isdecimal():
            continue
        bind.execute(
            sa.text(
                "UPDATE export_files SET instance_id = :instance WHERE id = :file AND EXISTS "
                "(SELECT 1 FROM instances WHERE id = :instance AND job_id = :job)"
            ),
            {"instance": int(stem), "file": file_id, "job": job_id},
        )


def downgrade() -> None:
    op.execute("DROP VIEW studies")
    op.execute(_studies_view(_OLD_STATES, "1 = 1"))
    op.drop_index("ix_export_files_instance_id", table_name="export_files")
    op.drop_index("ix_export_files_state", table_name="export_files")
    with op.batch_alter_table("export_files") as batch:
        batch.drop_column("failures")
        batch.drop_column("reclaimed_at")
        batch.drop_column("instance_id")
