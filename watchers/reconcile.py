"""Reconcile: make spool and ledger agree by a full scan.

Runs before the SCP starts (so a crash or reboot is recovered before new
data arrives) and then periodically, because inotify drops events on
overflow.  It adopts files with no row (through intake), flags rows whose
file vanished (and clears the flag when it comes back), and removes
temporary files: all of them at start-up (nothing in ``.tmp/`` was ever
acknowledged), only stale ones while running.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ledger.store import Ledger
from spool.layout import SpoolLayout
from spool.settle import is_open_for_writing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    adopted: int
    missing: int
    found: int
    temporary_removed: int


class Reconciler:
    def __init__(
        self,
        layout: SpoolLayout,
        ledger: Ledger,
        submit: Callable[[Iterable[Path]], None],
        settle_seconds: float,
        stale_tmp_seconds: float,
    ) -> None:
        self.layout = layout
        self.ledger = ledger
        self.submit = submit
        self.settle_seconds = settle_seconds
        self.stale_tmp_seconds = stale_tmp_seconds

    def tick(
        self, now: float | None = None, *, startup: bool = False, shutdown: bool = False
    ) -> ReconcileReport:
        """One full pass; ``now`` is wall-clock seconds (``time.time()``).

        ``startup``: nothing in ``.tmp/`` can belong to a live transfer.
        ``startup`` and ``shutdown``: the SCP is not running, so a file nobody
        has open for writing is complete however recent.
        """
        now = time.time() if now is None else now
        removed = self._clean_tmp(None if startup else now - self.stale_tmp_seconds)
        scp_idle = startup or shutdown
        on_disk = set(self._spool_files(now if scp_idle else now - self.settle_seconds))
        recorded = self.ledger.recorded_paths()
        orphans = sorted(path for path in on_disk if str(path) not in recorded)
        if orphans:
            self.submit(orphans)
        missing, found = self._check_rows()
        report = ReconcileReport(len(orphans), missing, found, removed)
        if orphans or missing or found or removed:
            log.info(
                "reconcile: %d files adopted, %d rows missing their file, %d found again, "
                "%d temporary files removed",
                *report.__dict__.values(),
            )
        return report

    def _spool_files(self, settled_before: float) -> Iterable[Path]:
        """Candidate files quiet since ``settled_before`` and open for writing by nobody."""
        for path in self.layout.candidate_files():
            try:
                settled = os.lstat(path).st_mtime <= settled_before
            except FileNotFoundError:
                continue
            if settled and not is_open_for_writing(path):
                yield path

    def _check_rows(self) -> tuple[int, int]:
        changes = []
        for path, (instance_id, flagged) in self.ledger.live_files().items():
            exists = os.path.lexists(path)
            if exists == flagged:
                changes.append((instance_id, not exists))
        if changes:
            with self.ledger.transaction() as tx:
                for instance_id, missing in changes:
                    tx.set_missing(instance_id, missing)
        missing = sum(1 for _, m in changes if m)
        return missing, len(changes) - missing

    def _clean_tmp(self, older_than: float | None) -> int:
        removed = 0
        for entry in os.scandir(self.layout.tmp):
            try:
                if older_than is None or entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
        return removed
