"""Give back the disk an export's own files used, once it succeeded and retention passed.

Only files the export owns go (outbox drops and forward links, never the
files named on a ``dicom-adapter send`` command line), with the staging
folder they leave empty; the task row stays, with ``reclaimed_at`` and an
event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ledger.exports import Exports
from ledger.models import utcnow

log = logging.getLogger(__name__)


class ExportReclaimer:
    def __init__(
        self, exports: Exports, retention: Mapping[str, float], staging_roots: Mapping[str, Path]
    ) -> None:
        self.exports = exports
        self.retention = retention  # destination -> seconds after success
        self.staging_roots = staging_roots  # destination -> its outbox's .sending/

    def tick(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        done = 0
        for destination, seconds in self.retention.items():
            for task in self.exports.reclaimable(destination, seconds, now):
                for file in self.exports.files(task.id):
                    if file.owned:
                        self._delete(Path(file.path), self.staging_roots[destination])
                self.exports.mark_reclaimed(task.id)
                done += 1
        if done:
            log.info("reclaimed the outbox files of %d exports", done)
        return done

    @staticmethod
    def _delete(path: Path, root: Path) -> None:
        path.unlink(missing_ok=True)
        folder = path.parent
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent
