"""What a job hands over is on disk before the job counts as submitted.

Once a job succeeds, the spool's copies of its instances may be reclaimed
(``retention = 0``), so whatever the job published (the ``folder``
processor's copies, a ``forward`` link or, across filesystems, its copy)
must be durable first: each copied file and each folder holding a new name
fsynced.  The submitters run on real files and a real ledger; ``os.fsync``
is wrapped to record which file or folder each call flushed (its
``/proc/self/fd`` link), and ``os.rename`` to record when a folder was
published.  The copy fallbacks are reached for real, with the outputs on
another filesystem (``/dev/shm``, a tmpfs) than the spool.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.processing import Processing
from ledger.store import Ledger
from ledger.tasks import Tasks
from processors.folder import FolderSubmitter
from processors.forward import ForwardSubmitter
from processors.jobdir import prepare
from spool.layout import SpoolLayout
from tests.dicom import make_study
from watchers.intake import Intake

AE = "FWD"


class Flushes:
    """Every fsync and rename in order: ("fsync", path) and ("rename", source, target)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, ...]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(source: object, target: object) -> None:
            self.calls.append(("rename", str(source), str(target)))
            real_rename(source, target)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def synced(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "fsync"]


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than ``tmp_path``: links across them fail (EXDEV)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        if os.environ.get("CI") == "true":
            pytest.fail("/dev/shm is not a filesystem of its own")
        pytest.skip("/dev/shm is not a filesystem of its own")
    folder = shm / f"dicom-adapter-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def claimed(tmp_path: Path) -> Iterator[tuple[Processing, int]]:
    """Four instances recorded and claimed into one job."""
    layout = SpoolLayout(tmp_path / "spool")
    layout.ensure([AE])
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    processing = Processing(Ledger(engine))
    files = make_study(layout.root / AE / "study", 4)
    Intake(layout, processing.ledger, {AE: "replace"}).process(files)
    study = processing.ledger.instances()[0].group_key
    job = processing.claim_group(AE, study, "folder", "quiet")
    assert job is not None
    yield processing, Tasks(processing.ledger).start(job.id).id
    engine.dispose()


def test_folder_copies_and_folders_are_fsynced_before_publishing(
    claimed: tuple[Processing, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processing, job_id = claimed
    job = Tasks(processing.ledger).get(job_id)
    submission = prepare(tmp_path / "jobs", job, processing.job_instances(job_id), 0x0020000D)
    output = tmp_path / "output"
    flushes = Flushes(monkeypatch)
    FolderSubmitter(output).submit(submission)

    [published] = [p for p in output.iterdir()]
    [rename] = [c for c in flushes.calls if c[0] == "rename" and c[2] == str(published)]
    partial = Path(rename[1])
    before = flushes.calls[: flushes.calls.index(rename)]
    names = sorted(p.name for p in published.iterdir())
    assert len(names) == 5  # four instances and the manifest
    synced_before = {call[1] for call in before if call[0] == "fsync"}
    assert {str(partial / name) for name in names} <= synced_before
    assert str(partial) in synced_before
    after = flushes.calls[flushes.calls.index(rename) + 1 :]
    assert ("fsync", str(output)) in after, "the published name itself must be durable"


def test_job_folder_copies_across_filesystems_are_fsynced(
    claimed: tuple[Processing, int], other_filesystem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processing, job_id = claimed
    instances = processing.job_instances(job_id)
    flushes = Flushes(monkeypatch)
    submission = prepare(
        other_filesystem / "jobs", Tasks(processing.ledger).get(job_id), instances, 0x0020000D
    )

    copies = [p for p in submission.job_dir.iterdir() if p.suffix == ".dcm"]
    assert len(copies) == 4
    assert all(p.stat().st_nlink == 1 for p in copies), "expected copies, not links"
    synced = flushes.synced()
    assert {str(p) for p in copies} <= set(synced)
    assert str(submission.job_dir) in synced


def test_forward_links_and_copies_are_durable_before_the_export_is_queued(
    claimed: tuple[Processing, int],
    tmp_path: Path,
    other_filesystem: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processing, job_id = claimed
    job = Tasks(processing.ledger).get(job_id)
    submission = prepare(tmp_path / "jobs", job, processing.job_instances(job_id), 0x0020000D)
    exports = Exports(processing.ledger)
    outboxes = {"NEAR": tmp_path / "outbox" / "NEAR", "FAR": other_filesystem / "outbox"}
    flushes = Flushes(monkeypatch)
    ForwardSubmitter(exports, outboxes).submit(submission)

    synced = flushes.synced()
    for name in outboxes:
        task_id = exports.for_job(job_id, name)
        assert task_id is not None
        staged = [Path(f.path) for f in exports.items(task_id)]
        assert len(staged) == 4 and all(p.is_file() for p in staged)
        assert str(staged[0].parent) in synced, name
        assert str(staged[0].parent.parent) in synced, f"{name}: the new staging folder's name"
        if name == "FAR":  # copies: their data must be flushed too
            assert {str(p) for p in staged} <= set(synced)
        else:
            assert all(p.stat().st_nlink >= 2 for p in staged)
