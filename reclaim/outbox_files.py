"""Give back the disk an export's own files used, one delivered file at a time.

Only files the export owns go (outbox drops and forward links, never the
files named on a ``dicom-adapter send`` command line), and only once that
file was delivered and the destination's ``retention`` has passed: a file
that was refused, or never attempted, may be the last copy of an instance,
so nothing about its task (its state, how many of its files failed) can
make it go.  Each deletion is recorded (``task_items.reclaimed_at``, and
the task's once none of its owned files is left), with the staging folders
it leaves empty.  On a shared outbox one node at a time deletes (a ledger
lock), so each file is deleted once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ledger.exports import Exports
from ledger.models import utcnow
from ledger.store import RECLAIMER
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
        """Delete what is due, unless another node is at it; return how many files went."""
        with self.exports.ledger.alone(RECLAIMER) as alone:
            return self._reclaim(now or utcnow()) if alone else 0

    def _reclaim(self, now: datetime) -> int:
        done = 0
        for destination, seconds in self.retention.items():
            root = self.staging_roots[destination]
            while batch := self.exports.reclaimable_items(destination, seconds, now):
                deleted = [f.id for f in batch if delete_staged(Path(f.path), root)]
                left = [f.id for f in batch if f.id not in deleted]
                self.exports.mark_reclaimed(deleted, "its delivered outbox files were deleted")
                if left:  # recorded, so the next run does not meet them again
                    reason = "delivered files outside the staging folder left in place"
                    self.exports.mark_reclaimed(left, reason)
                done += len(deleted)
        if done:
            log.info("deleted %s", plural(done, "delivered outbox file"))
        return done


def delete_staged(path: Path, root: Path) -> bool:
    """Delete one owned export file and the staging folders it leaves empty, under ``root``.

    Only inside ``root`` (an outbox's ``.sending/``), judged by the path and
    by where its folder really is: a path leading out, through ``..`` or a
    symlinked folder, is left alone (False) with one log line.
    """
    real_root = os.path.realpath(root)
    inside = path.is_relative_to(root) and ".." not in path.relative_to(root).parts
    if not inside or not Path(os.path.realpath(path.parent)).is_relative_to(real_root):
        log.warning("not deleting %s: outside its outbox's staging folder %s", path, root)
        return False
    path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return True
        folder = folder.parent
    return True
