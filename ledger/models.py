"""SQLAlchemy 2 models of the ledger tables.

Column names follow the DICOM keywords in snake case so an admin can query
``instances`` in ``sqlite3`` without our code.  Times are ISO-8601 UTC text
(``2026-11-27T21:49:40.123456Z``), which sorts and reads well in SQL.  The
schema itself is owned by the Alembic migrations in ``migrations/``; these
models must match them (``tests/test_migrations.py`` checks).
"""

from datetime import UTC, datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class UtcText(TypeDecorator[datetime]):
    """A UTC datetime stored as fixed-width ISO-8601 text."""

    impl = String(27)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).strftime(TIME_FORMAT)

    def process_result_value(self, value: str | None, dialect: object) -> datetime | None:
        return None if value is None else parse_time(value)


def parse_time(text: str) -> datetime:
    """A time the ledger wrote as text (a column, or a ``service_state`` value)."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Instance(Base):
    """One stored (or quarantined) file."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    http_user: Mapped[str | None] = mapped_column(String(64))  # STOW-RS: who stored it
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    # SHA-256 of the dataset bytes after the file meta: what the peer sent.
    sha256: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcText)
    updated_at: Mapped[datetime] = mapped_column(UtcText)
    missing_since: Mapped[datetime | None] = mapped_column(UtcText)
    # The value of the AE's group_by tag: which group (study, series...) it joins.
    group_key: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(Integer)  # its process task (no FK: see 0002)

    __table_args__ = (
        Index("ix_instances_state", "state"),
        # Not extended with received_at: a claim reads a group's rows in id order
        # from it, which a fourth column would turn into a scan of ix_instances_state.
        Index("ix_instances_group", "called_ae", "state", "group_key"),
        Index("ix_instances_job_id", "job_id"),
        Index("ix_instances_sop", "sop_instance_uid", "called_ae"),  # UID first (0005)
        Index("ix_instances_study", "called_ae", "study_instance_uid"),
        Index("ix_instances_received_at", "received_at"),  # newest studies first (0005)
        Index(
            "ux_instances_live_path",
            "path",
            unique=True,
            sqlite_where=text("state != 'reclaimed'"),
            postgresql_where=text("state != 'reclaimed'"),
        ),
    )


class Event(Base):
    """One row per move or notable decision, appended in the same transaction."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcText)
    reason: Mapped[str] = mapped_column(Text)


class Task(Base):
    """One unit of outbound work: a group handed to a processor, or files sent to a destination.

    Both kinds share this row's lifecycle, attempts and backoff; ``kind`` and
    ``submitter`` say how it is carried out, and ``target`` is the lane it
    waits in (its called AE, or its destination): one lane's slow task never
    holds up another's.
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # process | export
    target: Mapped[str] = mapped_column(String(64))  # called AE (process) or destination (export)
    submitter: Mapped[str] = mapped_column(String(16))  # command, folder, ..., cstore
    origin: Mapped[str] = mapped_column(String(16))  # group | outbox | send | forward
    group_key: Mapped[str | None] = mapped_column(Text)  # the group a process task took
    parent_id: Mapped[int | None] = mapped_column(Integer)  # the forward task an export serves
    state: Mapped[str] = mapped_column(String(16))
    item_count: Mapped[int] = mapped_column(Integer)
    failed_count: Mapped[int] = mapped_column(Integer)  # items not delivered by the last attempt
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcText)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Stays the same across retries and restarts: a receiver can de-duplicate on it.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcText)
    updated_at: Mapped[datetime] = mapped_column(UtcText)
    finished_at: Mapped[datetime | None] = mapped_column(UtcText)
    reclaimed_at: Mapped[datetime | None] = mapped_column(UtcText)  # its owned files all deleted
    node: Mapped[str | None] = mapped_column(String(64))  # the node running it (or that last did)
    lease_until: Mapped[datetime | None] = mapped_column(UtcText)  # its claim on a running task

    __table_args__ = (
        Index("ix_tasks_due", "state", "next_attempt_at"),
        Index("ix_tasks_lane", "kind", "target", "state"),
        Index("ix_tasks_parent_id", "parent_id"),
        Index("ix_tasks_idempotency_key", "idempotency_key"),
    )


class TaskItem(Base):
    """One file of an export task, with the outcome its last attempt came to.

    A process task's items are its instances (``instances.job_id``), whose
    state says what became of each.
    """

    __tablename__ = "task_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    owned: Mapped[bool] = mapped_column(Boolean)  # ours to delete once sent (outbox, forward)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # pending | sent | failed | discarded
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UtcText)
    # The spool instance a forwarded file was linked from (no FK, as instances.job_id).
    instance_id: Mapped[int | None] = mapped_column(Integer, index=True)
    reclaimed_at: Mapped[datetime | None] = mapped_column(UtcText)  # an owned file deleted
    # Attempts that reached this file and did not deliver it: sent last next time.
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (Index("ix_task_items_state", "state", "reclaimed_at"),)


class TaskEvent(Base):
    """One row per task state change, appended in the same transaction."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcText)
    reason: Mapped[str] = mapped_column(Text)


class Node(Base):
    """One adapter writing this ledger: its heartbeat, and what ails it (a JSON list)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    listening: Mapped[str] = mapped_column(Text)
    problems: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcText)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcText)


class ServiceState(Base):
    """Facts the running service records about itself (``started_at``, ``last_reconcile_at``)."""

    __tablename__ = "service_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcText)
