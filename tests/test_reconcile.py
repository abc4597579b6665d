"""After a crash or restart: the spool and the ledger are made to agree before any association."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from config import load_config
from tests.conftest import RunningAdapter, write_config
from tests.dicom import make_study
from tests.peers.send import send_files

AE = "DICOMADAPTER"


def test_files_added_while_stopped_are_adopted_before_listening(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    spool = load_config(config_path).storage.spool
    for index, original in enumerate(make_study(tmp_path / "study", 5)):
        target = spool / AE / "offline" / f"{index}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, target)
        old = time.time() - 3600
        os.utime(target, (old, old))
    running = start_adapter(config_path)
    # start() returns once reconcile and intake are done: no waiting needed.
    assert len(running.rows("received")) == 5


def test_leftover_temporary_files_are_removed_at_start(start_adapter, config_path: Path) -> None:
    spool = load_config(config_path).storage.spool
    (spool / ".tmp").mkdir(parents=True)
    leftovers = [spool / ".tmp" / "tmpabc.dcm", spool / ".tmp" / "0f0f.part"]
    for path in leftovers:
        path.write_bytes(b"half an instance")
    running = start_adapter(config_path)
    assert not any(path.exists() for path in leftovers)
    assert running.rows() == []


def test_a_node_clears_only_its_own_temporary_files(start_adapter, config_path: Path) -> None:
    """On a spool several nodes share, one node's start-up never touches another's transfers."""
    spool = load_config(config_path).storage.spool
    mine = spool / ".tmp" / "edge-1" / "0f0f.part"
    theirs = spool / ".tmp" / "edge-2" / "1e1e.part"
    for path in (mine, theirs):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half an instance")
    config_path.write_text("[node]\nname = edge-1\n\n" + config_path.read_text())
    running = start_adapter(config_path)
    assert running.adapter.layout.tmp == spool / ".tmp" / "edge-1"
    assert not mine.exists() and theirs.read_bytes() == b"half an instance"


def test_vanished_file_is_flagged_and_found_again(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    running = start_adapter(config_path)
    [original] = make_study(tmp_path / "s", 1)
    assert send_files("127.0.0.1", running.port, [original], called_ae=AE)[0][1] == 0
    [row] = running.wait_rows(1)
    running.adapter.stop()
    moved = tmp_path / "aside.dcm"
    os.rename(row.path, moved)
    running = start_adapter(config_path)
    [row] = running.rows()
    assert row.missing_since is not None and row.state == "received"
    os.rename(moved, row.path)
    report = running.adapter.reconciler.tick()
    assert (report.missing, report.found) == (0, 1)
    assert running.ledger.get(row.id).missing_since is None
    with running.ledger.engine.connect() as connection:
        reasons = [
            r
            for (r,) in connection.exec_driver_sql(
                "SELECT reason FROM events WHERE instance_id = ? ORDER BY id", (row.id,)
            )
        ]
    assert reasons == ["received", "file missing from spool", "file found again"]


def test_periodic_reconcile_catches_lost_events(adapter: RunningAdapter, tmp_path: Path) -> None:
    """inotify drops events on overflow: a stopped watcher stands in for that here."""
    adapter.adapter.watcher.stop()
    originals = make_study(tmp_path / "s", 3)
    for original in originals:
        shutil.copyfile(original, adapter.spool / AE / original.name)
    adapter.settle()
    assert adapter.rows() == []
    report = adapter.adapter.reconciler.tick(time.time() + 60)
    adapter.settle()
    assert report.adopted == 3 and len(adapter.rows("received")) == 3
    # A second pass finds nothing new: reconcile is idempotent.
    assert adapter.adapter.reconciler.tick(time.time() + 60).adopted == 0


def test_scheduler_runs_reconcile_periodically(start_adapter, tmp_path: Path, port: int) -> None:
    config = tmp_path / "config.ini"
    write_config(tmp_path, port)
    config.write_text(
        config.read_text().replace("reconcile_interval = 3600", "reconcile_interval = 0.5")
    )
    running = start_adapter(config)
    running.adapter.watcher.stop()  # only the scheduled reconcile can find the file now
    [original] = make_study(tmp_path / "s", 1)
    target = running.spool / AE / "late.dcm"
    shutil.copyfile(original, target)
    old = time.time() - 3600
    os.utime(target, (old, old))
    [row] = running.wait_rows(1, "received", timeout=10)
    assert row.path == str(target)


def test_restart_adopts_files_written_just_before(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    """At start the SCP is not running: a file nobody has open is complete, however new."""
    spool = load_config(config_path).storage.spool
    [original] = make_study(tmp_path / "s", 1)
    target = spool / AE / "fresh.dcm"
    target.parent.mkdir(parents=True)
    shutil.copyfile(original, target)
    running = start_adapter(config_path)
    assert [row.path for row in running.rows("received")] == [str(target)]


def test_a_dead_watcher_is_restarted_before_the_next_scan(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    watcher = adapter.adapter.watcher
    for emitter in list(watcher._observer.emitters):  # as when watchdog's inotify thread dies
        emitter.stop()
        emitter.join()
    assert watcher.ensure_alive() is False
    assert watcher.ensure_alive() is True
    [original] = make_study(tmp_path / "s", 1)
    shutil.copyfile(original, adapter.spool / AE / "after.dcm")
    adapter.wait_rows(1, "received")  # the doorbell rings again, no scan needed


def test_reconcile_queues_a_file_once_and_intake_skips_recorded_files_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile and intake must not feed each other: a file reported by every
    pass is queued once, and a recorded file is never read (hashed) again."""
    import watchers.intake as intake_module
    from ledger.db import make_engine
    from ledger.migrate import upgrade
    from ledger.store import Ledger
    from spool.layout import SpoolLayout
    from tests.dicom import make_instance
    from watchers.intake import Intake, IntakeWorker
    from watchers.reconcile import Reconciler

    layout = SpoolLayout(tmp_path / "spool")
    layout.ensure(["AE"])
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    ledger = Ledger(engine)
    intake = Intake(layout, ledger, {"AE": "replace"})
    worker = IntakeWorker(intake)  # not started: nothing drains its queue
    reconciler = Reconciler(layout, ledger, worker.submit, 0.0, stale_tmp_seconds=600)
    files = [make_instance(layout.root / "AE" / f"{n}.dcm") for n in range(3)]
    for _ in range(5):
        assert reconciler.tick(startup=True).adopted == 3
    assert worker.queued == 3

    read = []
    real = intake_module.read_header
    monkeypatch.setattr(
        intake_module, "read_header", lambda path, *a: read.append(path) or real(path, *a)
    )
    assert intake.process(files) == 3
    assert intake.process(files + files) == 0
    assert read == files, "a recorded file was read again"
    engine.dispose()


def test_a_backlog_costs_disk_not_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender outrunning intake for hours: intake's queue and a reconcile pass hold a
    bounded number of paths; the rest wait on disk (durable already) for the next pass."""
    import watchers.intake as intake_module
    import watchers.reconcile as reconcile_module
    from ledger.db import make_engine
    from ledger.migrate import upgrade
    from ledger.store import Ledger
    from spool.layout import SpoolLayout
    from tests.dicom import make_instance
    from watchers.intake import Intake, IntakeWorker
    from watchers.reconcile import Reconciler

    monkeypatch.setattr(intake_module, "MAX_QUEUED", 4)
    monkeypatch.setattr(reconcile_module, "MAX_ORPHANS", 3)
    layout = SpoolLayout(tmp_path / "spool")
    layout.ensure(["AE"])
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    ledger = Ledger(engine)
    intake = Intake(layout, ledger, {"AE": "replace"})
    worker = IntakeWorker(intake)  # not started: nothing drains its queue
    files = [make_instance(layout.root / "AE" / f"{n}.dcm") for n in range(7)]
    reconciler = Reconciler(layout, ledger, worker.submit, 0.0, stale_tmp_seconds=600)
    first = reconciler.tick(startup=True)
    assert (first.adopted, first.more) == (3, True)
    assert worker.queued == 3
    worker.submit(files)  # the watcher reports all seven
    worker.submit(files)
    assert worker.queued == 4  # the cap: three wait on disk for a later pass
    assert caplog.text.count("intake's queue is full (4 files)") == 1
    # Drained a pass at a time (what Adapter.start does), every file is recorded.
    synchronous = Reconciler(layout, ledger, intake.process, 0.0, stale_tmp_seconds=600)
    while synchronous.tick(startup=True).more:
        pass
    assert sorted(ledger.recorded([str(f) for f in files])) == sorted(str(f) for f in files)
    engine.dispose()
