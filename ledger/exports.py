"""The ledger's side of exporting: tasks, their files' outcomes, their history.

An export task is a set of files for one destination, sent over one
association per attempt.  Each file's own outcome decides what becomes of
it (:class:`ledger.states.FileState`): delivered is ``sent`` for good; a
transient failure, or a file never attempted, stays ``pending`` for the
task's next attempt; a refusal is ``failed`` at once.  The task follows its
files: ``succeeded`` once every file is delivered, ``pending`` (backoff)
while some file may still be, and ``failed`` when what is left was refused
or is out of retries.  A failed task's files stay on disk until
``dicom-adapter exports retry`` or ``discard``; only a delivered file is
ever reclaimed (:meth:`Exports.reclaimable_files`).
"""

import logging
from collections.abc import Collection
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from ledger.lifecycle import Lifecycle
from ledger.models import Export, ExportEvent, ExportFile
from ledger.records import ExportFileRecord, ExportFileSpec, ExportRecord, FileOutcome
from ledger.states import ExportState, FileState, check_export_move
from ledger.store import Ledger, LedgerTransaction, chunked
from ledger.wording import plural

log = logging.getLogger(__name__)
EXPORTS = Export.__table__
EXPORT_FILES = ExportFile.__table__
EXPORT_EVENTS = ExportEvent.__table__
_EXPORT_FIELDS = [f.name for f in fields(ExportRecord)]
_FILE_FIELDS = [f.name for f in fields(ExportFileRecord)]
EXPORT = Lifecycle(EXPORTS, EXPORT_EVENTS, "export_id", ExportState, check_export_move, "export")


def to_export(row: Any) -> ExportRecord:
    return ExportRecord(**{name: row._mapping[name] for name in _EXPORT_FIELDS})


def to_export_file(row: Any) -> ExportFileRecord:
    return ExportFileRecord(**{name: row._mapping[name] for name in _FILE_FIELDS})


class Exports:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def create(
        self,
        destination: str,
        origin: str,
        files: list[ExportFileSpec],
        job_id: int | None = None,
        now: datetime | None = None,
    ) -> int:
        """A new ``pending`` task for ``files``, due now."""
        with self.ledger.transaction(now) as tx:
            check_export_move(None, ExportState.PENDING)
            export_id = tx.connection.execute(
                insert(EXPORTS)
                .values(
                    destination=destination,
                    origin=origin,
                    job_id=job_id,
                    state=ExportState.PENDING,
                    file_count=len(files),
                    failed_count=0,
                    attempts=0,
                    next_attempt_at=tx.now,
                    created_at=tx.now,
                    updated_at=tx.now,
                )
                .returning(EXPORTS.c.id)
            ).scalar_one()
            tx.connection.execute(
                insert(EXPORT_FILES),
                [
                    {**asdict(spec), "export_id": export_id, "state": FileState.PENDING}
                    for spec in files
                ],
            )
            EXPORT.note(
                tx,
                export_id,
                None,
                ExportState.PENDING,
                f"{plural(len(files), 'file')} from {origin} for {destination}",
            )
        return export_id

    def get(self, export_id: int) -> ExportRecord:
        [row] = self.ledger.read(select(EXPORTS).where(EXPORTS.c.id == export_id))
        return to_export(row)

    def for_job(self, job_id: int, destination: str) -> ExportRecord | None:
        rows = self.ledger.read(
            select(EXPORTS).where(EXPORTS.c.job_id == job_id, EXPORTS.c.destination == destination)
        )
        return to_export(rows[0]) if rows else None

    def tasks(self, state: ExportState | None = None) -> list[ExportRecord]:
        query = select(EXPORTS).order_by(EXPORTS.c.id)
        if state is not None:
            query = query.where(EXPORTS.c.state == state)
        return [to_export(row) for row in self.ledger.read(query)]

    def files(self, export_id: int, state: FileState | None = None) -> list[ExportFileRecord]:
        query = select(EXPORT_FILES).where(EXPORT_FILES.c.export_id == export_id)
        if state is not None:
            query = query.where(EXPORT_FILES.c.state == state)
        return [to_export_file(row) for row in self.ledger.read(query.order_by(EXPORT_FILES.c.id))]

    def to_send(self, export_id: int) -> list[ExportFileRecord]:
        """A task's ``pending`` files, those no attempt has failed on first.

        A file the destination stalls or aborts on goes last next time, so
        it cannot keep the files after it from ever being attempted.
        """
        query = (
            select(EXPORT_FILES)
            .where(EXPORT_FILES.c.export_id == export_id, EXPORT_FILES.c.state == FileState.PENDING)
            .order_by(EXPORT_FILES.c.failures, EXPORT_FILES.c.id)
        )
        return [to_export_file(row) for row in self.ledger.read(query)]

    def due(self, destination: str, now: datetime) -> list[ExportRecord]:
        query = (
            select(EXPORTS)
            .where(
                EXPORTS.c.destination == destination,
                EXPORTS.c.state == ExportState.PENDING,
                EXPORTS.c.next_attempt_at <= now,
            )
            .order_by(EXPORTS.c.next_attempt_at, EXPORTS.c.id)
        )
        return [to_export(row) for row in self.ledger.read(query)]

    def start(self, export_id: int, now: datetime | None = None) -> ExportRecord:
        with self.ledger.transaction(now) as tx:
            attempts = EXPORT.move(tx, export_id, ExportState.SENDING, "sending")
            EXPORT.update(tx, export_id, attempts=attempts + 1)
        return self.get(export_id)

    def settle(
        self,
        export_id: int,
        outcomes: list[FileOutcome],
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> ExportRecord:
        """Record each file's outcome, then decide the task from what its files came to.

        Every file delivered: ``succeeded``.  Some file worth another attempt:
        ``pending`` until ``retry_at``, or, when that is None (no retries
        left), those files are ``failed`` too.  Nothing left to try but some
        file refused: ``failed``, for a human to retry or discard.
        """
        with self.ledger.transaction(now) as tx:
            for outcome in outcomes:
                self._record(tx, outcome)
            counts = self._file_counts(tx, export_id)
            total = sum(counts.values())
            sent, waiting = counts[FileState.SENT], counts[FileState.PENDING]
            summary = f"{sent} of {plural(total, 'file')} delivered"
            if waiting and retry_at is None:
                self._set_files(tx, export_id, FileState.PENDING, FileState.FAILED)
                target, reason = ExportState.FAILED, f"{summary}: no retries left"
            elif waiting:
                target = ExportState.PENDING
                reason = f"{summary}, {waiting} to try again at {retry_at:%H:%M:%S}"
            elif counts[FileState.FAILED]:
                target = ExportState.FAILED
                reason = f"{summary}, {counts[FileState.FAILED]} refused"
            else:
                target, reason = ExportState.SUCCEEDED, summary
            EXPORT.move(tx, export_id, target, reason)
            EXPORT.update(
                tx,
                export_id,
                failed_count=total - sent,
                last_error=next((o.error for o in outcomes if o.error), None),
                next_attempt_at=retry_at if target == ExportState.PENDING else None,
                finished_at=None if target == ExportState.PENDING else tx.now,
            )
        return self.get(export_id)

    @staticmethod
    def _record(tx: LedgerTransaction, outcome: FileOutcome) -> None:
        if outcome.delivered:
            state = FileState.SENT
        else:
            state = FileState.PENDING if outcome.retry else FileState.FAILED
        missed = outcome.attempted and not outcome.delivered
        tx.connection.execute(
            update(EXPORT_FILES)
            .where(EXPORT_FILES.c.id == outcome.file_id)
            .values(
                state=state,
                status=outcome.status,
                error=outcome.error,
                sent_at=tx.now if outcome.delivered else None,
                failures=EXPORT_FILES.c.failures + int(missed),
            )
        )

    @staticmethod
    def _file_counts(tx: LedgerTransaction, export_id: int) -> dict[str, int]:
        counts = dict.fromkeys(FileState, 0)
        query = (
            select(EXPORT_FILES.c.state, func.count())
            .where(EXPORT_FILES.c.export_id == export_id)
            .group_by(EXPORT_FILES.c.state)
        )
        counts.update({FileState(state): count for state, count in tx.connection.execute(query)})
        return counts

    @staticmethod
    def _set_files(
        tx: LedgerTransaction, export_id: int, source: FileState, target: FileState
    ) -> int:
        return tx.connection.execute(
            update(EXPORT_FILES)
            .where(EXPORT_FILES.c.export_id == export_id, EXPORT_FILES.c.state == source)
            .values(state=target)
        ).rowcount

    def retry(self, export_id: int, now: datetime | None = None) -> ExportRecord:
        """failed -> pending now, its undelivered files with it, with fresh attempts."""
        with self.ledger.transaction(now) as tx:
            EXPORT.move(tx, export_id, ExportState.PENDING, "retry requested")
            self._set_files(tx, export_id, FileState.FAILED, FileState.PENDING)
            EXPORT.update(tx, export_id, attempts=0, next_attempt_at=tx.now, finished_at=None)
        return self.get(export_id)

    def discard(self, export_id: int, reason: str, now: datetime | None = None) -> ExportRecord:
        """failed -> discarded: its undelivered files are given up (their files are kept)."""
        with self.ledger.transaction(now) as tx:
            given_up = self._set_files(tx, export_id, FileState.FAILED, FileState.DISCARDED)
            EXPORT.move(
                tx,
                export_id,
                ExportState.DISCARDED,
                f"{plural(given_up, 'undelivered file')} given up: {reason}",
            )
        return self.get(export_id)

    def recover(self, now: datetime | None = None) -> int:
        """After a restart, tasks that were sending are sent again (at least once)."""
        with self.ledger.transaction(now) as tx:
            sending = [
                i
                for (i,) in tx.connection.execute(
                    select(EXPORTS.c.id).where(EXPORTS.c.state == ExportState.SENDING)
                )
            ]
            for export_id in sending:
                EXPORT.move(
                    tx, export_id, ExportState.PENDING, "interrupted by a restart: send again"
                )
                EXPORT.update(tx, export_id, next_attempt_at=tx.now)
        return len(sending)

    def reclaimable_files(
        self, destination: str, retention_seconds: float, now: datetime, limit: int = 1000
    ) -> list[ExportFileRecord]:
        """Owned files delivered ``retention`` seconds ago or more, not yet deleted.

        Only a delivered file qualifies, whatever its task's state: a file
        that was refused, or never attempted, is the last copy of something.
        """
        query = (
            select(EXPORT_FILES)
            .join(EXPORTS, EXPORTS.c.id == EXPORT_FILES.c.export_id)
            .where(
                EXPORT_FILES.c.state == FileState.SENT,
                EXPORT_FILES.c.reclaimed_at.is_(None),
                EXPORT_FILES.c.owned,
                EXPORT_FILES.c.sent_at <= now - timedelta(seconds=retention_seconds),
                EXPORTS.c.destination == destination,
            )
            .limit(limit)
        )
        return [to_export_file(row) for row in self.ledger.read(query)]

    def owned_files(
        self, states: Collection[FileState], export_id: int | None = None
    ) -> list[ExportFileRecord]:
        """Owned files in ``states`` not yet deleted (of one task, or of all)."""
        query = select(EXPORT_FILES).where(
            EXPORT_FILES.c.owned,
            EXPORT_FILES.c.state.in_(list(states)),
            EXPORT_FILES.c.reclaimed_at.is_(None),
        )
        if export_id is not None:
            query = query.where(EXPORT_FILES.c.export_id == export_id)
        return [to_export_file(row) for row in self.ledger.read(query.order_by(EXPORT_FILES.c.id))]

    def mark_reclaimed(
        self, file_ids: Collection[int], reason: str, now: datetime | None = None
    ) -> None:
        """These owned files were deleted; a task with none left is ``reclaimed_at`` too."""
        with self.ledger.transaction(now) as tx:
            touched: set[int] = set()
            for chunk in chunked(file_ids):
                tx.connection.execute(
                    update(EXPORT_FILES)
                    .where(EXPORT_FILES.c.id.in_(chunk))
                    .values(reclaimed_at=tx.now)
                )
                touched.update(
                    tx.connection.scalars(
                        select(EXPORT_FILES.c.export_id).where(EXPORT_FILES.c.id.in_(chunk))
                    )
                )
            left = (
                select(EXPORT_FILES.c.id)
                .where(
                    EXPORT_FILES.c.export_id == EXPORTS.c.id,
                    EXPORT_FILES.c.owned,
                    EXPORT_FILES.c.reclaimed_at.is_(None),
                )
                .exists()
            )
            done = [
                row
                for chunk in chunked(touched)
                for row in tx.connection.execute(
                    select(EXPORTS.c.id, EXPORTS.c.state).where(
                        EXPORTS.c.id.in_(chunk), EXPORTS.c.reclaimed_at.is_(None), ~left
                    )
                )
            ]
            for export_id, state in done:
                EXPORT.update(tx, export_id, reclaimed_at=tx.now)
                EXPORT.note(tx, export_id, state, state, reason)

    def counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in ExportState}
        query = select(EXPORTS.c.state, func.count()).group_by(EXPORTS.c.state)
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts

    def file_counts(self) -> dict[str, int]:
        """Export files by state: ``failed`` ones are undelivered and wait for a human."""
        counts = {str(state): 0 for state in FileState}
        query = select(EXPORT_FILES.c.state, func.count()).group_by(EXPORT_FILES.c.state)
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts

    def undelivered(self) -> int:
        """Files of ``failed`` tasks not delivered: kept on disk, waiting for a human.

        A refused file of a task still retrying its other files counts once
        the task fails, when ``exports retry`` or ``discard`` can act on it.
        """
        query = (
            select(func.count())
            .select_from(EXPORT_FILES.join(EXPORTS, EXPORTS.c.id == EXPORT_FILES.c.export_id))
            .where(EXPORT_FILES.c.state == FileState.FAILED, EXPORTS.c.state == ExportState.FAILED)
        )
        return int(self.ledger.read(query)[0][0])

    def staged_paths(self, prefixes: Collection[str]) -> set[str]:
        """Which of these staging folders some task's files live in."""
        found = set()
        for prefix in prefixes:
            query = select(EXPORT_FILES.c.id).where(EXPORT_FILES.c.path.startswith(prefix + "/"))
            if self.ledger.read(query.limit(1)):
                found.add(prefix)
        return found
