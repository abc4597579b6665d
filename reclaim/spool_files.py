"""Give the disk back: delete the files of ``reclaimable`` instances, keep the rows.

Submitted instances become reclaimable once their AE's ``retention`` has
passed since their job succeeded.  Only ``reclaimable`` files are ever
deleted; the row moves to ``reclaimed`` with an event saying when and why.
Empty study and series folders go too.

On a shared spool one node at a time deletes (a ledger lock), so each file
is deleted once; every node clears its own job folders, once none of the
job's instances is left in the spool.  A superseded copy (set aside by the duplicates
policy) goes only once ``[storage] superseded_retention`` has passed since
it was set aside; by default it never does.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from ledger.models import utcnow
from ledger.processing import Processing
from ledger.store import RECLAIMER
from ledger.wording import plural
from spool.layout import SpoolLayout

log = logging.getLogger(__name__)


class Reclaimer:
    def __init__(
        self,
        processing: Processing,
        layout: SpoolLayout,
        jobs_root: Path,
        retention: Mapping[str, float],
        superseded_retention: float | None = None,
    ) -> None:
        self.processing = processing
        self.layout = layout
        self.jobs_root = jobs_root
        self.retention = retention  # called AE -> seconds to keep after submission
        self.superseded_retention = superseded_retention  # None: kept for good

    def tick(self, now: datetime | None = None) -> int:
        """Reclaim what is due, unless another node is at it; return how many files went."""
        with self.processing.ledger.alone(RECLAIMER) as alone:
            total = self._reclaim(now or utcnow()) if alone else 0
        self._clear_job_folders()
        return total

    def _reclaim(self, now: datetime) -> int:
        for called_ae, seconds in self.retention.items():
            self.processing.release_submitted(called_ae, seconds, now)
        total = 0
        while batch := self.processing.reclaimable():
            for instance in batch:
                self._delete(Path(instance.path))
            self.processing.mark_reclaimed([i.id for i in batch], "file deleted by the reclaimer")
            total += len(batch)
        total += self._reclaim_superseded(now)
        if total:
            log.info("reclaimed %s", plural(total, "file"))
        return total

    def _reclaim_superseded(self, now: datetime) -> int:
        if self.superseded_retention is None:
            return 0
        seconds = self.superseded_retention
        total = 0
        while batch := self.processing.superseded_before(now - timedelta(seconds=seconds)):
            for instance in batch:
                Path(instance.path).unlink(missing_ok=True)
            self.processing.reclaim_superseded(
                [i.id for i in batch], f"superseded_retention of {seconds:g}s is over: deleted"
            )
            total += len(batch)
        return total

    def _clear_job_folders(self) -> None:
        """Delete this node's folders of jobs whose instances have all been reclaimed."""
        folders = {}
        if self.jobs_root.is_dir():
            folders = {int(p.name): p for p in self.jobs_root.iterdir() if p.name.isdigit()}
        for job_id in self.processing.jobs_done_with_files(folders):
            shutil.rmtree(folders[job_id], ignore_errors=True)

    def _delete(self, path: Path) -> None:
        """Delete one file and the study/series folders it leaves empty."""
        path.unlink(missing_ok=True)
        called_ae = self.layout.called_ae_of(path)
        if called_ae is None:
            return
        ae_folder = self.layout.root / called_ae  # kept: it is where files are dropped
        folder = path.parent
        while folder != ae_folder and folder.is_relative_to(ae_folder):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty
            folder = folder.parent
