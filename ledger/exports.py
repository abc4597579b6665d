"""The ledger's side of exporting: tasks, their files' outcomes, their history.

An export task is a set of files for one destination, sent over one
association per attempt.  Each file keeps the DIMSE status it last got; the
task's state follows the rule of the system the adapter replaces (more than
half the files failed: the task failed and is retried).
"""

import logging
from collections.abc import Collection
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, insert, select, update

from ledger.lifecycle import Lifecycle
from ledger.models import Export, ExportEvent, ExportFile
from ledger.records import ExportFileRecord, ExportFileSpec, ExportRecord
from ledger.states import ExportState, check_export_move
from ledger.store import Ledger

log = logging.getLogger(__name__)
EXPORTS = Export.__table__
EXPORT_FILES = ExportFile.__table__
EXPORT_EVENTS = ExportEvent.__table__
_EXPORT_FIELDS = [f.name for f in fields(ExportRecord)]
_FILE_FIELDS = [f.name for f in fields(ExportFileRecord)]
FILE_PENDING, FILE_SENT, FILE_FAILED = "pending", "sent", "failed"
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
                [{**asdict(spec), "export_id": export_id, "state": FILE_PENDING} for spec in files],
            )
            EXPORT.note(
                tx,
                export_id,
                None,
                ExportState.PENDING,
                f"{len(files)} files from {origin} for {destination}",
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

    def files(self, export_id: int) -> list[ExportFileRecord]:
        query = select(EXPORT_FILES).where(EXPORT_FILES.c.export_id == export_id)
        return [to_export_file(row) for row in self.ledger.read(query.order_by(EXPORT_FILES.c.id))]

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
        outcomes: list[tuple[int, int | None, str | None]],
        retry_at: datetime | None,
        now: datetime | None = None,
    ) -> ExportRecord:
        """Record each file's outcome ``(file id, status, error or None if sent)`` and decide.

        More than half of the task's files failed: the task is retried at
        ``retry_at`` (or ``failed`` when None); otherwise it succeeded, its
        failed files recorded one by one.
        """
        with self.ledger.transaction(now) as tx:
            for file_id, status, error in outcomes:
                tx.connection.execute(
                    update(EXPORT_FILES)
                    .where(EXPORT_FILES.c.id == file_id)
                    .values(
                        state=FILE_FAILED if error else FILE_SENT,
                        status=status,
                        error=error,
                        sent_at=None if error else tx.now,
                    )
                )
            total, failed = tx.connection.execute(
                select(
                    func.count(), func.sum(case((EXPORT_FILES.c.state != FILE_SENT, 1), else_=0))
                ).where(EXPORT_FILES.c.export_id == export_id)
            ).one()
            failed = int(failed or 0)
            summary = f"{total - failed} of {total} files sent"
            if failed * 2 <= total:
                target, reason = ExportState.SUCCEEDED, summary
            elif retry_at is not None:
                target = ExportState.PENDING
                reason = f"{summary}: more than half failed, retry at {retry_at:%H:%M:%S}"
            else:
                target, reason = ExportState.FAILED, f"{summary}: no retries left"
            EXPORT.move(tx, export_id, target, reason)
            EXPORT.update(
                tx,
                export_id,
                failed_count=failed,
                last_error=_first_error(outcomes),
                next_attempt_at=retry_at if target == ExportState.PENDING else None,
                finished_at=None if target == ExportState.PENDING else tx.now,
            )
        return self.get(export_id)

    def retry(self, export_id: int, now: datetime | None = None) -> ExportRecord:
        """failed -> pending now, with fresh attempts (``exports retry``)."""
        with self.ledger.transaction(now) as tx:
            EXPORT.move(tx, export_id, ExportState.PENDING, "retry requested")
            EXPORT.update(tx, export_id, attempts=0, next_attempt_at=tx.now, finished_at=None)
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

    def reclaimable(
        self, destination: str, retention_seconds: float, now: datetime
    ) -> list[ExportRecord]:
        """Succeeded tasks whose owned files may go."""
        query = select(EXPORTS).where(
            EXPORTS.c.destination == destination,
            EXPORTS.c.state == ExportState.SUCCEEDED,
            EXPORTS.c.reclaimed_at.is_(None),
            EXPORTS.c.finished_at <= now - timedelta(seconds=retention_seconds),
        )
        return [to_export(row) for row in self.ledger.read(query)]

    def mark_reclaimed(self, export_id: int, now: datetime | None = None) -> None:
        with self.ledger.transaction(now) as tx:
            EXPORT.update(tx, export_id, reclaimed_at=tx.now)
            state = tx.connection.execute(
                select(EXPORTS.c.state).where(EXPORTS.c.id == export_id)
            ).scalar_one()
            EXPORT.note(
                tx, export_id, state, state, "its outbox files were deleted by the reclaimer"
            )

    def counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in ExportState}
        query = select(EXPORTS.c.state, func.count()).group_by(EXPORTS.c.state)
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts

    def staged_paths(self, prefixes: Collection[str]) -> set[str]:
        """Which of these staging folders some task's files live in."""
        found = set()
        for prefix in prefixes:
            query = select(EXPORT_FILES.c.id).where(EXPORT_FILES.c.path.startswith(prefix + "/"))
            if self.ledger.read(query.limit(1)):
                found.add(prefix)
        return found


def _first_error(outcomes: list[tuple[int, int | None, str | None]]) -> str | None:
    return next((error for _, _, error in outcomes if error), None)


def _first_error(outcomes: list[tuple[int, int | None, str | None]]) -> str | None:
    return next((error for _, _, error in outcomes if error), None)
