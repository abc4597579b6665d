"""Outbox folders: result files dropped in ``outbox/<destination>/`` become export tasks.

Files are taken like hand-dropped spool files: once quiet for the settle
time and open for writing by nobody.  Each scan's files for a destination
move, with their sub-paths, into ``.sending/o-<id>/`` (so no later scan sees
them again) and become one task.  A file that is not DICOM moves to
``quarantine/`` beside a ``.reason`` file, and so does anything that is not
a regular file: a symlink is never followed (its target, perhaps anywhere
on the machine, would be sent and then deleted as the export's own file),
a FIFO never opened.  A staging folder a crash left without its task is
queued at the next scan.  Outboxes on a shared filesystem are scanned by
one node at a time (a ledger lock), so a file becomes one task, whichever
nodes see it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from pathlib import Path

from exporters.files import NotDicom, spec_for
from ledger.exports import SENDER, Exports
from ledger.records import ItemSpec
from ledger.store import OUTBOX
from spool.layout import SpoolLayout
from spool.quarantine import quarantine
from spool.settle import is_open_for_writing

log = logging.getLogger(__name__)
STAGING = ".sending"


class OutboxScanner:
    def __init__(
        self,
        exports: Exports,
        outboxes: dict[str, Path],
        settle_seconds: float,
        senders: dict[str, str] | None = None,
    ) -> None:
        self.exports = exports
        self.outboxes = outboxes  # destination -> folder
        self.settle_seconds = settle_seconds
        self.senders = senders or {}  # destination -> its export tasks' submitter (cstore)

    def ensure(self) -> None:
        for folder in self.outboxes.values():
            (folder / STAGING).mkdir(parents=True, exist_ok=True)
            SpoolLayout(folder).quarantine.mkdir(exist_ok=True)

    def tick(self, now: float | None = None) -> int:
        """Queue what a crash left staged and what is complete in every outbox, unless
        another node is scanning them; return how many tasks were created."""
        with self.exports.ledger.alone(OUTBOX) as alone:
            if not alone:
                return 0
            return self._adopt_orphans() + self._scan(time.time() if now is None else now)

    def _scan(self, now: float) -> int:
        created = 0
        for destination, folder in self.outboxes.items():
            files = list(self._complete_files(folder, now - self.settle_seconds))
            if files:
                staging = folder / STAGING / f"o-{uuid.uuid4().hex[:12]}"
                specs = self._stage(folder, staging, files)
                if specs:
                    self._create(destination, specs)
                    created += 1
        return created

    def _adopt_orphans(self) -> int:
        """Queue staging folders a crash left between the move and the task."""
        adopted = 0
        for destination, folder in self.outboxes.items():
            staged = [p for p in (folder / STAGING).glob("o-*") if p.is_dir()]
            known = self.exports.staged_paths([str(p) for p in staged])
            for orphan in staged:
                if str(orphan) in known:
                    continue
                specs = self._specs(folder, [p for p in orphan.rglob("*") if _not_a_folder(p)])
                if specs:
                    self._create(destination, specs)
                    adopted += 1
        return adopted

    def _create(self, destination: str, specs: list[ItemSpec]) -> None:
        submitter = self.senders.get(destination, SENDER)
        self.exports.create(destination, "outbox", specs, submitter=submitter)

    def _complete_files(self, folder: Path, settled_before: float) -> list[Path]:
        found = []
        for parent, dirs, names in os.walk(folder, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "quarantine"]
            for name in names:
                path = Path(parent, name)
                if name.startswith(".") or name.endswith(".reason"):
                    continue
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    found.append(path)  # quarantined by _specs, never opened
                elif info.st_mtime <= settled_before and not is_open_for_writing(path):
                    found.append(path)
        return found

    def _stage(self, folder: Path, staging: Path, files: list[Path]) -> list[ItemSpec]:
        moved = []
        for path in files:
            target = staging / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(path, target)
            except FileNotFoundError:  # taken away since the walk: not ours to queue
                continue
            moved.append(target)
        return self._specs(folder, moved)

    def _specs(self, folder: Path, files: list[Path]) -> list[ItemSpec]:
        specs = []
        for path in files:
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise NotDicom(
                        f"{path}: not a regular file (symlinks, FIFOs and devices are not followed)"
                    )
                specs.append(spec_for(path, owned=True))
            except NotDicom as exc:
                kept = quarantine(SpoolLayout(folder), path, str(exc))
                log.warning("outbox file quarantined as %s: %s", kept, exc)
        return specs


def _not_a_folder(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
