"""The export kind of task: files for one destination, and each file's outcome.

An export is a task (:mod:`ledger.tasks`) of kind ``export`` whose items are
files, sent over one association per attempt.  Each file's own outcome
decides what becomes of it (:class:`ledger.states.ItemState`): delivered is
``sent`` for good; a transient failure, or a file never attempted, stays
``pending`` for the task's next attempt; a refusal is ``failed`` at once.
The task follows its files (:func:`ledger.tasks.conclude`).  A failed
task's files stay on disk until ``dicom-adapter tasks retry`` or
``discard``; only a delivered file is ever reclaimed
(:meth:`Exports.reclaimable_items`).
"""

import logging
from collections.abc import Collection
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from ledger import tasks
from ledger.records import ItemOutcome, ItemRecord, ItemSpec, TaskRecord
from ledger.states import ItemState, TaskKind, TaskState
from ledger.store import Ledger, LedgerTransaction, chunked
from ledger.tasks import TASK_ITEMS, TASKS, Tally
from ledger.wording import plural

log = logging.getLogger(__name__)
_ITEM_FIELDS = [f.name for f in fields(ItemRecord)]
# An export task's submitter: how its destination is reached (``cstore`` for a
# ``type = dicom`` destination, ``stow`` for ``type = dicomweb``).
SENDER = "cstore"


def to_item(row: Any) -> ItemRecord:
    return ItemRecord(**{name: row._mapping[name] for name in _ITEM_FIELDS})


class Exports:
    """Export tasks' creation and items, over the ledger's engine."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def create(
        self,
        destination: str,
        origin: str,
        files: list[ItemSpec],
        parent_id: int | None = None,
        now: datetime | None = None,
        *,
        submitter: str = SENDER,
    ) -> int:
        """A new ``pending`` export task for ``files``, due now, to be sent by ``submitter``."""
        with self.ledger.transaction(now) as tx:
            task_id = tasks.add(
                tx,
                TaskKind.EXPORT,
                destination,
                submitter,
                origin,
                len(files),
                f"{plural(len(files), 'file')} from {origin} for {destination}",
                parent_id=parent_id,
            )
            tx.connection.execute(
                insert(TASK_ITEMS),
                [
                    {**asdict(spec), "task_id": task_id, "state": ItemState.PENDING}
                    for spec in files
                ],
            )
        return task_id

    def reroute(self, task_id: int, submitter: str, now: datetime | None = None) -> None:
        """The task's destination is reached another way now (its ``type`` changed): the
        task is carried out by ``submitter`` from this attempt on, with a history row."""
        with self.ledger.transaction(now, shared=True) as tx:
            before, state = tx.connection.execute(
                select(TASKS.c.submitter, TASKS.c.state).where(TASKS.c.id == task_id)
            ).one()
            tasks.set_values(tx, task_id, submitter=submitter)
            reason = f"its destination is now reached by {submitter}, not {before}"
            tasks.note(tx, task_id, state, state, reason)
        log.info("export %d: %s", task_id, reason)

    def for_job(self, job_id: int, destination: str) -> int | None:
        """The export a forward job already made for ``destination``, if any."""
        rows = self.ledger.read(
            select(TASKS.c.id).where(TASKS.c.parent_id == job_id, TASKS.c.target == destination)
        )
        return rows[0][0] if rows else None

    def items(self, task_id: int, state: ItemState | None = None) -> list[ItemRecord]:
        query = select(TASK_ITEMS).where(TASK_ITEMS.c.task_id == task_id)
        if state is not None:
            query = query.where(TASK_ITEMS.c.state == state)
        return [to_item(row) for row in self.ledger.read(query.order_by(TASK_ITEMS.c.id))]

    def discard_item(self, item_id: int, reason: str, now: datetime | None = None) -> ItemRecord:
        """One undelivered file of a failed export given up on: never sent, and no longer
        unhealthy.  Its file stays on disk (nothing here deletes).  The last one given up
        closes the export as ``discarded``.  Raises LookupError for a file that is not
        an undelivered file of a failed export."""
        with self.ledger.transaction(now) as tx:
            found = tx.connection.execute(
                select(TASK_ITEMS, TASKS.c.state.label("task_state"))
                .select_from(TASK_ITEMS.join(TASKS, TASKS.c.id == TASK_ITEMS.c.task_id))
                .where(TASK_ITEMS.c.id == item_id)
                .with_for_update()
            ).one_or_none()
            if found is None:
                raise LookupError(f"no export file {item_id}")
            item = to_item(found)
            if item.state != ItemState.FAILED or found.task_state != TaskState.FAILED:
                raise LookupError(
                    f"export file {item_id} is {item.state} in a {found.task_state} export, "
                    "not undelivered"
                )
            tx.connection.execute(
                update(TASK_ITEMS)
                .where(TASK_ITEMS.c.id == item_id)
                .values(state=ItemState.DISCARDED)
            )
            state = TaskState.FAILED
            tasks.note(tx, item.task_id, state, state, f"file {item.path} discarded: {reason}")
            left = tx.connection.execute(
                select(func.count()).where(
                    TASK_ITEMS.c.task_id == item.task_id, TASK_ITEMS.c.state == ItemState.FAILED
                )
            ).scalar_one()
            if not left:
                tasks.move(
                    tx,
                    item.task_id,
                    TaskState.DISCARDED,
                    f"every undelivered file discarded: {reason}",
                )
                tasks.set_values(tx, item.task_id, next_attempt_at=None)
        return item

    def to_send(self, task_id: int) -> list[ItemRecord]:
        """A task's ``pending`` files, those no attempt has failed on first.

        A file the destination stalls or aborts on goes last next time, so
        it cannot keep the files after it from ever being attempted.
        """
        query = (
            select(TASK_ITEMS)
            .where(TASK_ITEMS.c.task_id == task_id, TASK_ITEMS.c.state == ItemState.PENDING)
            .order_by(TASK_ITEMS.c.failures, TASK_ITEMS.c.id)
        )
        return [to_item(row) for row in self.ledger.read(query)]

    def settle(
        self,
        task_id: int,
        outcomes: list[ItemOutcome],
        retry_at: datetime | None,
        now: datetime | None = None,
        *,
        attempt: int | None = None,
    ) -> TaskRecord:
        """Record each file's outcome, then decide the task from what its files came to.

        With ``attempt``, only while that attempt still runs: a node whose lease
        lapsed records nothing (:class:`ledger.tasks.LeaseLost`).
        """
        with self.ledger.transaction(now, shared=True) as tx:
            tasks.hold(tx, task_id, attempt)  # LeaseLost: another node has it
            for outcome in outcomes:
                self._record(tx, outcome)
            counts = self._item_counts(tx, task_id)
            tally = Tally(
                counts[ItemState.SENT], counts[ItemState.PENDING], counts[ItemState.FAILED]
            )
            error = next((o.error for o in outcomes if o.error), None)
            tasks.conclude(tx, task_id, tally, error, retry_at)
        return tasks.Tasks(self.ledger).get(task_id)

    @staticmethod
    def _record(tx: LedgerTransaction, outcome: ItemOutcome) -> None:
        if outcome.delivered:
            state = ItemState.SENT
        else:
            state = ItemState.PENDING if outcome.retry else ItemState.FAILED
        missed = outcome.attempted and not outcome.delivered
        tx.connection.execute(
            update(TASK_ITEMS)
            .where(TASK_ITEMS.c.id == outcome.item_id)
            .values(
                state=state,
                status=outcome.status,
                error=outcome.error,
                sent_at=tx.now if outcome.delivered else None,
                failures=TASK_ITEMS.c.failures + int(missed),
            )
        )

    @staticmethod
    def _item_counts(tx: LedgerTransaction, task_id: int) -> dict[str, int]:
        counts = dict.fromkeys(ItemState, 0)
        query = (
            select(TASK_ITEMS.c.state, func.count())
            .where(TASK_ITEMS.c.task_id == task_id)
            .group_by(TASK_ITEMS.c.state)
        )
        counts.update({ItemState(state): count for state, count in tx.connection.execute(query)})
        return counts

    def reclaimable_items(
        self, destination: str, retention_seconds: float, now: datetime, limit: int = 1000
    ) -> list[ItemRecord]:
        """Owned files delivered ``retention`` seconds ago or more, not yet deleted.

        Only a delivered file qualifies, whatever its task's state: a file
        that was refused, or never attempted, is the last copy of something.
        """
        query = (
            select(TASK_ITEMS)
            .join(TASKS, TASKS.c.id == TASK_ITEMS.c.task_id)
            .where(
                TASK_ITEMS.c.state == ItemState.SENT,
                TASK_ITEMS.c.reclaimed_at.is_(None),
                TASK_ITEMS.c.owned,
                TASK_ITEMS.c.sent_at <= now - timedelta(seconds=retention_seconds),
                TASKS.c.target == destination,
                TASKS.c.kind == TaskKind.EXPORT,
            )
            .limit(limit)
        )
        return [to_item(row) for row in self.ledger.read(query)]

    def owned_items(
        self, states: Collection[ItemState], task_id: int | None = None
    ) -> list[ItemRecord]:
        """Owned files in ``states`` not yet deleted (of one task, or of all)."""
        query = select(TASK_ITEMS).where(
            TASK_ITEMS.c.owned,
            TASK_ITEMS.c.state.in_(list(states)),
            TASK_ITEMS.c.reclaimed_at.is_(None),
        )
        if task_id is not None:
            query = query.where(TASK_ITEMS.c.task_id == task_id)
        return [to_item(row) for row in self.ledger.read(query.order_by(TASK_ITEMS.c.id))]

    def mark_reclaimed(
        self, item_ids: Collection[int], reason: str, now: datetime | None = None
    ) -> None:
        """These owned files were deleted; a task with none left is ``reclaimed_at`` too."""
        with self.ledger.transaction(now) as tx:
            touched: set[int] = set()
            for chunk in chunked(item_ids):
                tx.connection.execute(
                    update(TASK_ITEMS).where(TASK_ITEMS.c.id.in_(chunk)).values(reclaimed_at=tx.now)
                )
                touched.update(
                    tx.connection.scalars(
                        select(TASK_ITEMS.c.task_id).where(TASK_ITEMS.c.id.in_(chunk))
                    )
                )
            left = (
                select(TASK_ITEMS.c.id)
                .where(
                    TASK_ITEMS.c.task_id == TASKS.c.id,
                    TASK_ITEMS.c.owned,
                    TASK_ITEMS.c.reclaimed_at.is_(None),
                )
                .exists()
            )
            done = [
                row
                for chunk in chunked(touched)
                for row in tx.connection.execute(
                    select(TASKS.c.id, TASKS.c.state).where(
                        TASKS.c.id.in_(chunk), TASKS.c.reclaimed_at.is_(None), ~left
                    )
                )
            ]
            for task_id, state in done:
                tasks.set_values(tx, task_id, reclaimed_at=tx.now)
                tasks.note(tx, task_id, state, state, reason)

    def item_counts(self) -> dict[str, int]:
        """Export files by state: ``failed`` ones are undelivered and wait for a human."""
        counts = {str(state): 0 for state in ItemState}
        query = select(TASK_ITEMS.c.state, func.count()).group_by(TASK_ITEMS.c.state)
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts

    def undelivered(self) -> int:
        """Files of ``failed`` tasks not delivered: kept on disk, waiting for a human.

        A refused file of a task still retrying its other files counts once
        the task fails, when ``tasks retry`` or ``discard`` can act on it.
        """
        query = (
            select(func.count())
            .select_from(TASK_ITEMS.join(TASKS, TASKS.c.id == TASK_ITEMS.c.task_id))
            .where(TASK_ITEMS.c.state == ItemState.FAILED, TASKS.c.state == TaskState.FAILED)
        )
        return int(self.ledger.read(query)[0][0])

    def staged_paths(self, prefixes: Collection[str]) -> set[str]:
        """Which of these staging folders some task's files live in."""
        found = set()
        for prefix in prefixes:
            query = select(TASK_ITEMS.c.id).where(TASK_ITEMS.c.path.startswith(prefix + "/"))
            if self.ledger.read(query.limit(1)):
                found.add(prefix)
        return found
