"""How one lane carries out its tasks: a job through its AE's processor, an export by its sender.

A lane is everything a task needs that the ledger does not hold: the
submitter and its retry rule, built from the config by the adapter.  Each
``run`` makes one attempt of an already ``running`` task and settles it in
the ledger, whatever happens: failures are recorded there, never left to a
thread pool or APScheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from exporters.base import Attempt, Sender
from ledger.exports import Exports
from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import ItemOutcome, TaskRecord
from ledger.states import State
from processors.base import SubmitError, Submitter
from processors.jobdir import prepare
from tasks import backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retries:
    """An AE's or a destination's ``retries`` and ``retry_delay``."""

    retries: int
    retry_delay_seconds: float

    def retry_at(
        self, attempts: int, now: datetime, asked_seconds: float | None = None
    ) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None when out of retries.
        ``asked_seconds``: how long the destination asked to be left alone."""
        return backoff.retry_at(
            attempts, self.retries, self.retry_delay_seconds, now, asked_seconds
        )


class Lane(Protocol):
    def takes(self, task: TaskRecord) -> bool:
        """Whether this lane carries out ``task`` (else it is left pending)."""

    def run(self, task: TaskRecord) -> None:
        """One attempt of a ``running`` task, settled in the ledger before it returns."""


@dataclass(frozen=True)
class ProcessLane:
    """An AE's jobs: link the claimed instances into a job folder, hand it to the processor."""

    processing: Processing
    jobs_root: Path
    processor: Submitter
    group_by: int
    retries: Retries

    @property
    def submitter(self) -> str:
        return self.processor.name

    def takes(self, task: TaskRecord) -> bool:
        """A job made for another processor waits until its AE has that processor again."""
        return task.submitter == self.submitter

    def run(self, task: TaskRecord) -> None:
        instances = [i for i in self.processing.job_instances(task.id) if i.state == State.CLAIMED]
        try:
            submission = prepare(self.jobs_root, task, instances, self.group_by)
            self.processor.submit(submission)
        except SubmitError as exc:
            error: str | None = str(exc)
        except Exception as exc:  # a bug or an OS error: recorded, retried like any failure
            log.exception("job %d: submitter %s raised", task.id, self.processor.name)
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = None
        now = utcnow()
        retry_at = None if error is None else self.retries.retry_at(task.attempts, now)
        self.processing.settle(task.id, error, retry_at, now, attempt=task.attempts)


@dataclass(frozen=True)
class ExportLane:
    """A destination's exports: the task's undelivered files, by its type's sender."""

    exports: Exports
    sender: Sender
    retries: Retries

    @property
    def submitter(self) -> str:
        return self.sender.name

    def takes(self, task: TaskRecord) -> bool:
        """Every export for this destination: its files are owed to the destination, whichever
        way it is reached now (a destination whose ``type`` changed still gets its backlog)."""
        return True

    def run(self, task: TaskRecord) -> None:
        if task.submitter != self.submitter:
            self.exports.reroute(task.id, self.submitter)
        files = self.exports.to_send(task.id)
        try:
            attempt = self.sender.send(files)
        except Exception as exc:  # recorded like any failure
            log.exception("export %d to %s: sender raised", task.id, task.target)
            error = f"not delivered: {type(exc).__name__}: {exc}"
            attempt = Attempt([ItemOutcome(f.id, None, error, retry=True) for f in files])
        now = utcnow()
        retry_at = self.retries.retry_at(task.attempts, now, attempt.retry_after_seconds)
        self.exports.settle(task.id, attempt.outcomes, retry_at, now, attempt=task.attempts)
