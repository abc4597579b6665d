"""Run due jobs through their AE's submitter and settle each outcome.

One function maps every outcome (like huey's ``_execute``): submitted ->
instances ``submitted``; failed -> retry at ``retry_delay * 2**(attempt-1)``
(capped at an hour) while attempts remain, else ``failed``, with one log
line each.  Failures are recorded in the ledger, never left to APScheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import JobRecord
from ledger.states import State
from processors import backoff
from processors.base import SubmitError, Submitter
from processors.jobdir import prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchRules:
    submitter: Submitter
    group_by: int
    retries: int
    retry_delay_seconds: float

    def retry_at(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None when out of retries."""
        return backoff.retry_at(attempts, self.retries, self.retry_delay_seconds, now)


class Dispatcher:
    def __init__(
        self, processing: Processing, jobs_root: Path, rules: dict[str, DispatchRules]
    ) -> None:
        self.processing = processing
        self.jobs_root = jobs_root
        self.rules = rules  # called AE -> how its jobs are submitted

    def tick(self, now: datetime | None = None) -> int:
        """Run every due job once; return how many ran."""
        ran = 0
        for job in self.processing.due_jobs(now or utcnow()):
            rules = self.rules.get(job.called_ae)
            if rules is None or rules.submitter.name != job.processor:
                continue  # its AE is no longer configured for it: left pending, visible
            self._run(self.processing.start(job.id), rules)
            ran += 1
        return ran

    def _run(self, job: JobRecord, rules: DispatchRules) -> None:
        instances = [i for i in self.processing.job_instances(job.id) if i.state == State.CLAIMED]
        try:
            submission = prepare(self.jobs_root, job, instances, rules.group_by)
            rules.submitter.submit(submission)
        except SubmitError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or an OS error: recorded, retried like any failure
            log.exception("job %d: submitter %s raised", job.id, rules.submitter.name)
            error = f"{type(exc).__name__}: {exc}"
        else:
            self.processing.succeed(job.id)
            return
        now = utcnow()
        self.processing.fail(job.id, error, rules.retry_at(job.attempts, now), now)
