"""Give back the disk an export's own files used, one delivered file at a time.

Only files the export owns go (outbox drops and forward links, never the
files named on a ``dicom-adapter send`` command line), and only once that
file was delivered and the destination's ``retention`` has passed: a file
that was refused, or never attempted, may be the last copy of an instance,
so nothing about its task (its state, how many of its files failed) can
make it go.  Each deletion is recorded (``export_files.reclaimed_at``, and
the task's once none of its owned files is left), with the staging folders
it leaves empty.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ledger.exports import Exports
from ledger.models import utcnow
from ledger.wording import plural

log = logging.getLogger(__name__)


class ExportReclaimer:
    def __init__(
        self, exports: Exports, retention: Mapping[str, float], staging_roots: Mapping[str, Path]
    ) -> None:
        self.exports = exports
        self.retention = retention  # destination -> seconds after delivery
        self.staging_roots = staging_roots  # destination -> its outbox's .sending/

    def tick(self, now: datetime | None = None) -> int:
        """Delete what is due; return how many files went."""
        now = now or utcnow()
        done = 0
        for destination, seconds in self.retention.items():
            while batch := self.exports.reclaimable_files(destination, seconds, now):
                for file in batch:
                    delete_staged(Path(file.path), self.staging_roots[destination])
                self.exports.mark_reclaimed(
                    [f.id for f in batch], "its delivered outbox files were deleted"
                )
                done += len(batch)
        if done:
            log.info("deleted %s", plural(done, "delivered outbox file"))
        return done


def delete_staged(path: Path, root: Path) -> None:
    """Delete one owned export file and the staging folders it leaves empty, under ``root``."""
    path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
