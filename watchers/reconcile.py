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

from ledger.store import RECONCILER, Ledger, chunked
from spool.layout import SpoolLayout
from spool.settle import is_open_for_writing

log = logging.getLogger(__name__)
_CHUNK = 2000  # spool paths looked up in the ledger at a time
# Orphans one pass hands to intake at most; the rest wait on disk for the
# next pass, so a backlog of a million unrecorded files costs no memory.
MAX_ORPHANS = 20_000


@dataclass(frozen=True)
class ReconcileReport:
    adopted: int
    missing: int
    found: int
    temporary_removed: int
    more: bool = False  # orphans beyond MAX_ORPHANS are left for the next pass


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
        with self.ledger.alone(RECONCILER) as alone:
            if not alone:  # another node on the ledger scans the shared spool now
                log.debug("reconcile: another node is reconciling; this pass skipped")
                return ReconcileReport(0, 0, 0, removed, False)
            orphans, more = self._orphans(now if scp_idle else now - self.settle_seconds)
            if orphans:
                self.submit(orphans)
            missing, found = self._check_rows()
        report = ReconcileReport(len(orphans), missing, found, removed, more)
        if orphans or missing or found or removed:
            log.info(
                "reconcile: %d files adopted%s, %d rows missing their file, %d found again, "
                "%d temporary files removed",
                len(orphans),
                " (more for the next pass)" if more else "",
                missing,
                found,
                removed,
            )
        return report

    def _orphans(self, settled_before: float) -> tuple[list[Path], bool]:
        """Unrecorded candidate files, quiet since ``settled_before``, open for writing by
        nobody; at most :data:`MAX_ORPHANS`, and whether there were more.

        The spool is walked in chunks, each looked up in the ledger by path
        (an index), and only a file with no row is checked further: at a
        million recorded files a pass costs a walk and a look-up each, and
        memory holds one chunk, not every path.
        """
        orphans: list[Path] = []
        for chunk in chunked(self.layout.candidate_paths(), _CHUNK):
            recorded = self.ledger.recorded(chunk)
            orphans += [
                Path(path)
                for path in chunk
                if path not in recorded and _settled(path, settled_before)
            ]
            if len(orphans) >= MAX_ORPHANS:
                return sorted(orphans[:MAX_ORPHANS]), True
        return sorted(orphans), False

    def _check_rows(self) -> tuple[int, int]:
        changes = []
        for path, instance_id, flagged in self.ledger.live_files():
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
        """This node's stale temporary files; at start-up all of them (and any a version
        before per-node folders left directly in ``.tmp/``)."""
        removed = 0
        folders = [self.layout.tmp] if older_than is not None else self.layout.tmp_folders()
        for entry in (entry for folder in folders for entry in os.scandir(folder)):
            try:
                if older_than is None or entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
        return removed


def _settled(path: str, settled_before: float) -> bool:
    """Quiet since ``settled_before`` and open for writing by nobody."""
    try:
        settled = os.lstat(path).st_mtime <= settled_before
    except FileNotFoundError:
        return False
    return settled and not is_open_for_writing(Path(path))
