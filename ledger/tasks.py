"""The one queue of outbound work: tasks, their moves, and how an attempt settles.

A job (a claimed group handed to a processor) and an export (files sent to
a destination) are both tasks: one table, one lifecycle
(:data:`ledger.states.TASK_TRANSITIONS`), one backoff, one retry and
discard.  What differs is only who carries a task out (its ``submitter``)
and what its items are: an export's files are ``task_items`` rows with an
outcome each; a job's are its instances, whose state says the same.  Each
move is one ``BEGIN IMMEDIATE`` transaction with its ``task_events`` row.
"""

import logging
from collections.abc import Collection
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update

from errors import AdapterError
from ledger.models import Task, TaskEvent, TaskItem, utcnow
from ledger.records import TaskRecord
from ledger.states import ItemState, TaskKind, TaskState, check_task_move
from ledger.store import Ledger, LedgerTransaction
from ledger.wording import plural

log = logging.getLogger(__name__)
TASKS = Task.__table__
TASK_ITEMS = TaskItem.__table__
TASK_EVENTS = TaskEvent.__table__
_TASK_FIELDS = [f.name for f in fields(TaskRecord)]
NOUNS = {TaskKind.PROCESS: "job", TaskKind.EXPORT: "export"}


class LeaseLost(AdapterError):
    """The attempt is no longer this node's: its lease lapsed and the task was taken back."""


def to_task(row: Any) -> TaskRecord:
    return TaskRecord(**{name: row._mapping[name] for name in _TASK_FIELDS})


@dataclass(frozen=True)
class Tally:
    """What a task's items came to after an attempt: delivered, to try again, refused."""

    sent: int
    waiting: int
    refused: int

    @property
    def total(self) -> int:
        return self.sent + self.waiting + self.refused


def add(
    tx: LedgerTransaction,
    kind: TaskKind,
    target: str,
    submitter: str,
    origin: str,
    item_count: int,
    reason: str,
    **extra: Any,
) -> int:
    """Insert a new ``pending`` task, due now, inside the caller's transaction."""
    check_task_move(None, TaskState.PENDING)
    task_id = tx.connection.execute(
        insert(TASKS)
        .values(
            kind=kind,
            target=target,
            submitter=submitter,
            origin=origin,
            item_count=item_count,
            failed_count=0,
            state=TaskState.PENDING,
            attempts=0,
            next_attempt_at=tx.now,
            created_at=tx.now,
            updated_at=tx.now,
            **extra,
        )
        .returning(TASKS.c.id)
    ).scalar_one()
    note(tx, task_id, None, TaskState.PENDING, reason)
    return int(task_id)


def move(tx: LedgerTransaction, task_id: int, target: TaskState, reason: str) -> TaskRecord:
    """Check and make one move with its history row; return the task as it was."""
    row = tx.connection.execute(select(TASKS).where(TASKS.c.id == task_id)).one()
    task = to_task(row)
    check_task_move(TaskState(task.state), target, task.noun)
    set_values(tx, task_id, state=target)
    note(tx, task_id, task.state, target, reason)
    log.info("%s %d %s -> %s: %s", task.noun, task_id, task.state, target, reason)
    return task


def set_values(tx: LedgerTransaction, task_id: int, **values: Any) -> None:
    tx.connection.execute(
        update(TASKS).where(TASKS.c.id == task_id).values(**values, updated_at=tx.now)
    )


def note(tx: LedgerTransaction, task_id: int, source: str | None, target: str, reason: str) -> None:
    """Append one history row."""
    tx.connection.execute(
        insert(TASK_EVENTS).values(
            task_id=task_id, from_state=source, to_state=target, at=tx.now, reason=reason
        )
    )


def set_items(tx: LedgerTransaction, task_id: int, source: ItemState, target: ItemState) -> int:
    """Move every item of a task in ``source`` to ``target``; return how many."""
    return tx.connection.execute(
        update(TASK_ITEMS)
        .where(TASK_ITEMS.c.task_id == task_id, TASK_ITEMS.c.state == source)
        .values(state=target)
    ).rowcount


def hold(tx: LedgerTransaction, task_id: int, attempt: int | None) -> None:
    """Lock the task's row to the end of the caller's transaction, so no other node can
    take it back meanwhile; with ``attempt``, raise :class:`LeaseLost` unless the task
    still runs that attempt: a node that lost its lease (and the task to another node,
    or back to the queue) records nothing."""
    state, attempts = tx.connection.execute(
        select(TASKS.c.state, TASKS.c.attempts).where(TASKS.c.id == task_id).with_for_update()
    ).one()
    if attempt is not None and (state != TaskState.RUNNING or attempts != attempt):
        raise LeaseLost(f"task {task_id}: attempt {attempt} is no longer running here")


def conclude(
    tx: LedgerTransaction,
    task_id: int,
    tally: Tally,
    error: str | None,
    retry_at: datetime | None,
) -> TaskState:
    """Decide a running task from what its items came to, after one attempt.

    Every item delivered: ``succeeded``.  Some item worth another attempt:
    ``pending`` until ``retry_at``, or, when that is None (no retries left),
    those items are ``failed`` too.  Nothing left to try but some item
    refused: ``failed``, for a human to retry or discard.
    """
    kind = tx.connection.execute(select(TASKS.c.kind).where(TASKS.c.id == task_id)).scalar_one()
    item = "instance" if kind == TaskKind.PROCESS else "file"
    summary = f"{tally.sent} of {plural(tally.total, item)} delivered"
    if tally.waiting and retry_at is None:
        set_items(tx, task_id, ItemState.PENDING, ItemState.FAILED)
        target, reason = TaskState.FAILED, f"{summary}: no retries left"
    elif tally.waiting:
        target = TaskState.PENDING
        reason = f"{summary}, {tally.waiting} to try again at {retry_at:%H:%M:%S}"
    elif tally.refused:
        target, reason = TaskState.FAILED, f"{summary}, {tally.refused} refused"
    else:
        target, reason = TaskState.SUCCEEDED, summary
    if error and target != TaskState.SUCCEEDED:
        reason = f"{reason}: {error}"
    move(tx, task_id, target, reason)
    set_values(
        tx,
        task_id,
        failed_count=tally.total - tally.sent,
        last_error=error if target != TaskState.SUCCEEDED else None,
        next_attempt_at=retry_at if target == TaskState.PENDING else None,
        finished_at=None if target == TaskState.PENDING else tx.now,
    )
    return target


class Tasks:
    """The queue's reads, and the moves that do not depend on a task's kind."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def get(self, task_id: int) -> TaskRecord:
        """The task; :class:`LookupError` naming it if there is none."""
        rows = self.ledger.read(select(TASKS).where(TASKS.c.id == task_id))
        if not rows:
            raise LookupError(f"no task {task_id}")
        return to_task(rows[0])

    def listing(
        self, kind: TaskKind | None = None, state: TaskState | None = None
    ) -> list[TaskRecord]:
        """Tasks oldest first, of one kind or state if given."""
        query = select(TASKS).order_by(TASKS.c.id)
        if kind is not None:
            query = query.where(TASKS.c.kind == kind)
        if state is not None:
            query = query.where(TASKS.c.state == state)
        return [to_task(row) for row in self.ledger.read(query)]

    def due(self, now: datetime) -> list[TaskRecord]:
        """Pending tasks whose time has come, in the order they fell due."""
        query = (
            select(TASKS)
            .where(TASKS.c.state == TaskState.PENDING, TASKS.c.next_attempt_at <= now)
            .order_by(TASKS.c.next_attempt_at, TASKS.c.id)
        )
        return [to_task(row) for row in self.ledger.read(query)]

    def start(
        self,
        task_id: int,
        now: datetime | None = None,
        *,
        node: str | None = None,
        lease_seconds: float | None = None,
    ) -> TaskRecord | None:
        """pending -> running, one more attempt, held by ``node`` for ``lease_seconds``.

        None when the task is no longer pending, no longer due (another node
        ran it since and it waits for its next attempt), or another node is
        taking it this moment (its row locked: skipped, not waited for).
        """
        with self.ledger.transaction(now, shared=True) as tx:
            pending = tx.connection.execute(
                select(TASKS.c.id)
                .where(
                    TASKS.c.id == task_id,
                    TASKS.c.state == TaskState.PENDING,
                    TASKS.c.next_attempt_at <= tx.now,  # not put off since it was listed
                )
                .with_for_update(skip_locked=True)
            ).first()
            if pending is None:
                return None
            reason = "started" if node is None else f"started on node {node}"
            attempts = move(tx, task_id, TaskState.RUNNING, reason).attempts
            lease = None if lease_seconds is None else tx.now + timedelta(seconds=lease_seconds)
            set_values(tx, task_id, attempts=attempts + 1, node=node, lease_until=lease)
        return self.get(task_id)

    def renew(
        self,
        task_ids: Collection[int],
        node: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> int:
        """Hold ``node``'s running tasks ``lease_seconds`` longer; how many it still holds."""
        if not task_ids:
            return 0
        with self.ledger.transaction(now, shared=True) as tx:
            return tx.connection.execute(
                update(TASKS)
                .where(
                    TASKS.c.id.in_(list(task_ids)),
                    TASKS.c.node == node,
                    TASKS.c.state == TaskState.RUNNING,
                )
                .values(lease_until=tx.now + timedelta(seconds=lease_seconds))
            ).rowcount

    def requeue_lapsed(self, now: datetime | None = None) -> int:
        """Running tasks whose node's lease lapsed go back to the queue, due at once.

        The same task, the same idempotency key: delivery stays at least once.
        """
        lapsed = select(TASKS.c.id, TASKS.c.node, TASKS.c.lease_until).where(
            TASKS.c.state == TaskState.RUNNING, TASKS.c.lease_until < (now or utcnow())
        )
        if not self.ledger.read(lapsed):
            return 0
        with self.ledger.transaction(now, shared=True) as tx:
            # Again, locking them: one being settled or taken back now is skipped.
            rows = tx.connection.execute(lapsed.with_for_update(skip_locked=True)).all()
            for task_id, node, until in rows:
                reason = f"the lease of node {node} lapsed at {until:%H:%M:%S}: run again"
                move(tx, task_id, TaskState.PENDING, reason)
                set_values(tx, task_id, next_attempt_at=tx.now, lease_until=None)
        return len(rows)

    def retry(
        self, task_id: int, now: datetime | None = None, reason: str = "retry requested"
    ) -> TaskRecord:
        """failed -> pending now, its undelivered items with it, with fresh attempts."""
        with self.ledger.transaction(now) as tx:
            move(tx, task_id, TaskState.PENDING, reason)
            set_items(tx, task_id, ItemState.FAILED, ItemState.PENDING)
            set_values(tx, task_id, attempts=0, next_attempt_at=tx.now, finished_at=None)
        return self.get(task_id)

    def discard(self, task_id: int, reason: str, now: datetime | None = None) -> int:
        """failed -> discarded: nobody will try it again; returns its items given up.

        Nothing is deleted here: a job's instances stay claimed by it and an
        export's files stay where they are, unless the caller lets them go
        (``tasks discard --delete-files``).
        """
        with self.ledger.transaction(now) as tx:
            kind, count = tx.connection.execute(
                select(TASKS.c.kind, TASKS.c.item_count).where(TASKS.c.id == task_id)
            ).one()
            given_up = set_items(tx, task_id, ItemState.FAILED, ItemState.DISCARDED)
            if kind == TaskKind.PROCESS:
                given_up, what = count, "undelivered instance"
            else:
                what = "undelivered file"
            move(tx, task_id, TaskState.DISCARDED, f"{plural(given_up, what)} given up: {reason}")
            set_values(tx, task_id, next_attempt_at=None)
        return given_up

    def recover(self, node: str | None = None, now: datetime | None = None) -> dict[TaskKind, int]:
        """After a restart, the tasks this node was running run again (at least once).

        Only ``node``'s own (and those no node holds: written before leases, or
        with no node given): another node's running tasks are its to finish,
        or, if it died, anyone's once its lease lapses.  How many of each kind.
        """
        requeued = dict.fromkeys(TaskKind, 0)
        mine = (
            TASKS.c.node.is_(None)
            if node is None
            else or_(TASKS.c.node == node, TASKS.c.node.is_(None))
        )
        with self.ledger.transaction(now) as tx:
            running = tx.connection.execute(
                select(TASKS.c.id, TASKS.c.kind).where(TASKS.c.state == TaskState.RUNNING, mine)
            ).all()
            for task_id, kind in running:
                move(tx, task_id, TaskState.PENDING, "interrupted by a restart: run again")
                set_values(tx, task_id, next_attempt_at=tx.now)
                requeued[TaskKind(kind)] += 1
        return requeued

    def counts(self, kind: TaskKind) -> dict[str, int]:
        """Tasks of one kind by state, every state present."""
        counts = {str(state): 0 for state in TaskState}
        query = (
            select(TASKS.c.state, func.count()).where(TASKS.c.kind == kind).group_by(TASKS.c.state)
        )
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts
