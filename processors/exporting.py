"""Send due export tasks to one destination, and settle each attempt.

One runner per destination, each its own APScheduler job, so a destination
that is down (every attempt waiting out a connect timeout) never holds up
the others.  An attempt sends only the task's ``pending`` files: one
delivered stays delivered, one refused waits for a human
(:mod:`ledger.exports` decides from each file's outcome).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from exporters import cstore
from exporters.cstore import Peer
from ledger.exports import Exports
from ledger.models import utcnow
from ledger.records import ExportRecord, FileOutcome
from processors.backoff import retry_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportRules:
    peer: Peer
    retries: int
    retry_delay_seconds: float


class ExportRunner:
    def __init__(self, exports: Exports, destination: str, rules: ExportRules) -> None:
        self.exports = exports
        self.destination = destination
        self.rules = rules

    def tick(self, now: datetime | None = None) -> int:
        """Send every due task once; return how many were tried."""
        due = self.exports.due(self.destination, now or utcnow())
        for task in due:
            self._run(self.exports.start(task.id))
        return len(due)

    def _run(self, task: ExportRecord) -> None:
        """One attempt: the task's undelivered files, then one settle from their outcomes."""
        files = self.exports.to_send(task.id)
        try:
            outcomes = cstore.send(self.rules.peer, files)
        except Exception as exc:  # recorded like any failure, never left to APScheduler
            log.exception("export %d to %s: sender raised", task.id, self.destination)
            error = f"not delivered: {type(exc).__name__}: {exc}"
            outcomes = [FileOutcome(f.id, None, error, retry=True) for f in files]
        now = utcnow()
        next_try = retry_at(task.attempts, self.rules.retries, self.rules.retry_delay_seconds, now)
        self.exports.settle(task.id, outcomes, next_try, now)
