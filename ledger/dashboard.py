"""What the status page reads from the ledger, each an indexed query that stays fast at a
million instances (bench/page_scale.py measures the page).

The page must answer "my study never arrived" without anyone writing SQL:
counts per AE, the last hour's arrivals, what waits for a human (failed
tasks, undelivered export files, quarantined files, each with its reason
and since when), and one study's whole story.  Lists are capped: the page
shows the newest :data:`LISTED`, and says how many more there are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, String, Table, func, select

from ledger.exports import to_item
from ledger.records import InstanceRecord, ItemRecord, TaskRecord
from ledger.states import ItemState, State, TaskState
from ledger.store import EVENTS, INSTANCES, Ledger, chunked, to_record
from ledger.tasks import TASK_EVENTS, TASK_ITEMS, TASKS, to_task

LISTED = 20  # rows of each "needs attention" list, newest first
MINUTE_PREFIX = 16  # "YYYY-MM-DDTHH:MM" of the ledger's fixed-width time text


@dataclass(frozen=True)
class Undelivered:
    """One export file a failed export gave up on: kept on disk, waiting for a human."""

    item: ItemRecord
    task: TaskRecord


@dataclass(frozen=True)
class Story:
    """One event in a study's timeline: an instance's move or a task's."""

    at: datetime
    subject: str  # "instance 12", "job 3", "export 4"
    from_state: str | None
    to_state: str
    reason: str


@dataclass(frozen=True)
class StudyDetail:
    """Everything the ledger knows of one Study Instance UID, across AEs."""

    instances: list[InstanceRecord]
    tasks: list[TaskRecord]
    timeline: list[Story]


class Dashboard:
    """Read-only queries for the status pages."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def counts_by_ae(self) -> dict[str, dict[str, int]]:
        """Instances per called AE and state (``ix_instances_group`` covers it)."""
        query = select(INSTANCES.c.called_ae, INSTANCES.c.state, func.count()).group_by(
            INSTANCES.c.called_ae, INSTANCES.c.state
        )
        counts: dict[str, dict[str, int]] = {}
        for called_ae, state, count in self.ledger.read(query):
            counts.setdefault(called_ae or "(dropped by hand)", {})[state] = count
        return counts

    def received_per_minute(self, now: datetime, minutes: int = 60) -> list[int]:
        """Instances received in each of the last ``minutes`` minutes, oldest first
        (quarantined files are not instances: they are listed, not counted).

        Grouped in the database by the minute of the time text, over the
        ``received_at`` index's last hour only.
        """
        start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
        minute = func.substr(INSTANCES.c.received_at, 1, MINUTE_PREFIX, type_=String)
        query = (
            select(minute, func.count())
            .where(INSTANCES.c.received_at >= start, INSTANCES.c.state != State.REJECTED)
            .group_by(minute)
        )
        found = dict(self.ledger.read(query))
        return [
            int(found.get((start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M"), 0))
            for i in range(minutes)
        ]

    def failed_tasks(self) -> list[TaskRecord]:
        """Failed jobs and exports, newest first (at most :data:`LISTED`)."""
        return [to_task(row) for row in self._newest(TASKS, TaskState.FAILED)]

    def undelivered(self) -> list[Undelivered]:
        """Files failed exports did not deliver, newest first (at most :data:`LISTED`)."""
        query = (
            select(TASK_ITEMS)
            .select_from(TASK_ITEMS.join(TASKS, TASKS.c.id == TASK_ITEMS.c.task_id))
            .where(TASK_ITEMS.c.state == ItemState.FAILED, TASKS.c.state == TaskState.FAILED)
            .order_by(TASK_ITEMS.c.id.desc())
            .limit(LISTED)
        )
        items = [to_item(row) for row in self.ledger.read(query)]
        task_ids = sorted({item.task_id for item in items})
        rows = self.ledger.read(select(TASKS).where(TASKS.c.id.in_(task_ids)))
        tasks = {task.id: task for task in map(to_task, rows)}
        return [Undelivered(item, tasks[item.task_id]) for item in items]

    def quarantined(self) -> list[InstanceRecord]:
        """Files quarantined as not instances (``rejected``), newest first."""
        return [to_record(row) for row in self._newest(INSTANCES, State.REJECTED)]

    def study_sources(self, called_ae: str, study: str) -> list[str]:
        """Who sent a study: calling AE titles, or ``HTTP user@host`` for STOW-RS."""
        query = (
            select(INSTANCES.c.calling_ae, INSTANCES.c.http_user)
            .where(INSTANCES.c.called_ae == called_ae, INSTANCES.c.study_instance_uid == study)
            .distinct()
            .limit(5)
        )
        return sorted(
            calling or (f"HTTP {user}" if user else "HTTP") if calling or user else "by hand"
            for calling, user in self.ledger.read(query)
        )

    def patient_ids(self, job_ids: Collection[int]) -> set[str]:
        """The Patient IDs of these jobs' instances (``ix_instances_job_id``): text a job
        or its exports wrote (a command's stderr, say) may name them."""
        found: set[str] = set()
        for chunk in chunked(sorted(job_ids)):
            query = (
                select(INSTANCES.c.patient_id)
                .where(INSTANCES.c.job_id.in_(chunk), INSTANCES.c.patient_id.is_not(None))
                .distinct()
            )
            found.update(patient_id for (patient_id,) in self.ledger.read(query))
        return found

    def study(self, called_aes: Collection[str], study: str) -> StudyDetail:
        """One study's instances (each AE's, through ``ix_instances_study``), the jobs that
        took them and the exports that sent them, and every event of these, in order."""
        instances: list[InstanceRecord] = []
        for called_ae in sorted(called_aes):
            query = (
                select(INSTANCES)
                .where(
                    INSTANCES.c.called_ae == called_ae,
                    INSTANCES.c.study_instance_uid == study,
                )
                .order_by(INSTANCES.c.id)
            )
            instances += [to_record(row) for row in self.ledger.read(query)]
        ids = [instance.id for instance in instances]
        job_ids = {instance.job_id for instance in instances if instance.job_id is not None}
        export_ids = {
            task_id
            for chunk in chunked(ids)
            for (task_id,) in self.ledger.read(
                select(TASK_ITEMS.c.task_id).where(TASK_ITEMS.c.instance_id.in_(chunk)).distinct()
            )
        }
        if job_ids:
            export_ids |= {
                task_id
                for (task_id,) in self.ledger.read(
                    select(TASKS.c.id).where(TASKS.c.parent_id.in_(sorted(job_ids)))
                )
            }
        task_ids = sorted(job_ids | export_ids)
        tasks = [
            to_task(row)
            for chunk in chunked(task_ids)
            for row in self.ledger.read(select(TASKS).where(TASKS.c.id.in_(chunk)))
        ]
        nouns = {task.id: task.noun for task in tasks}
        timeline = [
            Story(at, f"instance {subject}", source, target, reason)
            for subject, source, target, at, reason in self._events(EVENTS.c.instance_id, ids)
        ]
        timeline += [
            Story(at, f"{nouns[subject]} {subject}", source, target, reason)
            for subject, source, target, at, reason in self._events(TASK_EVENTS.c.task_id, task_ids)
        ]
        timeline.sort(key=lambda story: story.at)
        return StudyDetail(instances, sorted(tasks, key=lambda task: task.id), timeline)

    def _newest(self, table: Table, state: str) -> list[Any]:
        """The newest :data:`LISTED` rows of ``table`` in ``state`` (its state index, then
        its id descending)."""
        query = select(table).where(table.c.state == state).order_by(table.c.id.desc())
        return self.ledger.read(query.limit(LISTED))

    def _events(self, subject: Column[int], ids: list[int]) -> list[Any]:
        """(subject id, from, to, at, reason) of every event of these instances or tasks;
        ``subject`` is the events table's column naming them."""
        table = subject.table
        columns = [subject, *(table.c[name] for name in ("from_state", "to_state", "at", "reason"))]
        return [
            row
            for chunk in chunked(ids)
            for row in self.ledger.read(select(*columns).where(subject.in_(chunk)))
        ]
