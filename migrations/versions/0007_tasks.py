"""One task table for outbound work: jobs and exports become ``tasks`` of two kinds.

A job (a group handed to a processor) and an export (files sent to a
destination) had the same shape in two copies: a state, attempts, backoff,
a history table.  They become rows of ``tasks`` with ``kind`` ``process`` or
``export``; ``export_files`` becomes ``task_items``, and both history tables
``task_events``.  The export state ``sending`` is ``running``, as a job's.

Jobs keep their ids (``instances.job_id`` and the ``var/jobs/<id>/``
folders name them).  Exports are numbered after the last job: export N is
task N + (the highest job id), and each says so in an event, so an admin
holding an old export id can find it (``SELECT * FROM task_events WHERE
reason LIKE 'export 12 %'``).

The old names stay readable as views (``jobs``, ``job_events``, ``exports``,
``export_files``, ``export_events``), so an admin's saved queries keep
working; they are read-only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TIME = sa.String(27)
# The old tables' columns, as the compatibility views show them.
_VIEWS = {
    "jobs": (
        "SELECT id, submitter AS processor, target AS called_ae, group_key, "
        "item_count AS instance_count, state, attempts, next_attempt_at, last_error, "
        "idempotency_key, created_at, updated_at, finished_at FROM tasks WHERE kind = 'process'"
    ),
    "job_events": (
        "SELECT e.id, e.task_id AS job_id, e.from_state, e.to_state, e.at, e.reason "
        "FROM task_events e JOIN tasks t ON t.id = e.task_id WHERE t.kind = 'process'"
    ),
    "exports": (
        "SELECT id, target AS destination, origin, parent_id AS job_id, state, "
        "item_count AS file_count, failed_count, attempts, next_attempt_at, last_error, "
        "created_at, updated_at, finished_at, reclaimed_at FROM tasks WHERE kind = 'export'"
    ),
    "export_files": (
        "SELECT id, task_id AS export_id, path, owned, sop_instance_uid, sop_class_uid, "
        "transfer_syntax_uid, size, state, status, error, sent_at, instance_id, reclaimed_at, "
        "failures FROM task_items"
    ),
    "export_events": (
        "SELECT e.id, e.task_id AS export_id, e.from_state, e.to_state, e.at, e.reason "
        "FROM task_events e JOIN tasks t ON t.id = e.task_id WHERE t.kind = 'export'"
    ),
}


def _create_tables() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("submitter", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("group_key", sa.Text),
        sa.Column("parent_id", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("failed_count", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TIME),
        sa.Column("last_error", sa.Text),
        sa.Column("idempotency_key", sa.String(64)),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("finished_at", _TIME),
        sa.Column("reclaimed_at", _TIME),
    )
    op.create_index("ix_tasks_due", "tasks", ["state", "next_attempt_at"])
    op.create_index("ix_tasks_lane", "tasks", ["kind", "target", "state"])
    op.create_index("ix_tasks_parent_id", "tasks", ["parent_id"])
    op.create_index("ix_tasks_idempotency_key", "tasks", ["idempotency_key"])
    op.create_table(
        "task_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("owned", sa.Boolean, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64)),
        sa.Column("transfer_syntax_uid", sa.String(64)),
        sa.Column("size", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("sent_at", _TIME),
        sa.Column("instance_id", sa.Integer),
        sa.Column("reclaimed_at", _TIME),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_task_items_task_id", "task_items", ["task_id"])
    op.create_index("ix_task_items_instance_id", "task_items", ["instance_id"])
    op.create_index("ix_task_items_state", "task_items", ["state", "reclaimed_at"])
    op.create_table(
        "task_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_task_events_task_id", "task_events", ["task_id"])


def _running(column: str) -> str:
    return f"CASE {column} WHEN 'sending' THEN 'running' ELSE {column} END"


def upgrade() -> None:
    _create_tables()
    bind = op.get_bind()
    offset = bind.execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM jobs")).scalar_one()
    op.execute(
        "INSERT INTO tasks (id, kind, target, submitter, origin, group_key, parent_id, state, "
        "item_count, failed_count, attempts, next_attempt_at, last_error, idempotency_key, "
        "created_at, updated_at, finished_at) "
        "SELECT id, 'process', called_ae, processor, 'group', group_key, NULL, state, "
        "instance_count, CASE WHEN state = 'succeeded' OR attempts = 0 THEN 0 "
        "ELSE instance_count END, attempts, next_attempt_at, last_error, idempotency_key, "
        "created_at, updated_at, finished_at FROM jobs"
    )
    bind.execute(
        sa.text(
            "INSERT INTO tasks (id, kind, target, submitter, origin, group_key, parent_id, "
            "state, item_count, failed_count, attempts, next_attempt_at, last_error, "
            "idempotency_key, created_at, updated_at, finished_at, reclaimed_at) "
            "SELECT id + :offset, 'export', destination, 'cstore', origin, NULL, job_id, "
            f"{_running('state')}, file_count, failed_count, attempts, next_attempt_at, "
            "last_error, NULL, created_at, updated_at, finished_at, reclaimed_at FROM exports"
        ),
        {"offset": offset},
    )
    bind.execute(
        sa.text(
            "INSERT INTO task_items (id, task_id, path, owned, sop_instance_uid, sop_class_uid, "
            "transfer_syntax_uid, size, state, status, error, sent_at, instance_id, "
            "reclaimed_at, failures) SELECT id, export_id + :offset, path, owned, "
            "sop_instance_uid, sop_class_uid, transfer_syntax_uid, size, state, status, error, "
            "sent_at, instance_id, reclaimed_at, failures FROM export_files"
        ),
        {"offset": offset},
    )
    bind.execute(
        sa.text(
            "INSERT INTO task_events (task_id, from_state, to_state, at, reason) "
            "SELECT task_id, from_state, to_state, at, reason FROM ("
            "SELECT job_id AS task_id, from_state, to_state, at, reason, 0 AS part, id "
            "FROM job_events UNION ALL "
            f"SELECT export_id + :offset, {_running('from_state')}, {_running('to_state')}, "
            "at, reason, 1, id FROM export_events) AS merged ORDER BY at, part, id"
        ),
        {"offset": offset},
    )
    bind.execute(
        sa.text(
            "INSERT INTO task_events (task_id, from_state, to_state, at, reason) "
            "SELECT id + :offset, state, state, :now, 'export ' || id || ' is task ' || "
            "(id + :offset) || ' since ledger migration 0007' FROM exports ORDER BY id"
        ),
        {"offset": offset, "now": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    )
    if bind.dialect.name == "postgresql":  # rows came with their ids: move the counters on
        for table in ("tasks", "task_items"):
            op.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
    for table in ("export_events", "export_files", "exports", "job_events", "jobs"):
        op.drop_table(table)
    for name, query in _VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    """Not offered: export ids were renumbered, and two tables cannot say which was which.

    Restore the copy of the ledger taken before the upgrade instead
    (docs/operations.md, "Upgrade").
    """
    raise NotImplementedError("ledger migration 0007 cannot be undone: restore a backup")
