"""Export rules end to end, against a destination that fails on purpose.

The destination is :class:`tests.peers.flaky_scp.FlakyStorageSCP`, a real
pynetdicom SCP on loopback that answers 0xA700 (Refused: Out of Resources)
for chosen SOP Instance UIDs and records every C-STORE it gets.

* The 50% rule (README "Exports"): more than half of a task's files failed,
  the task is retried with a doubling delay and finally ``failed``, and files
  already delivered are not sent again; at most half failed, it succeeds at
  once and its failed files are recorded one by one.
* At-least-once delivery: a real ``dicom-adapter run`` killed with SIGKILL in
  the middle of an export sends the task again after the restart; every file
  arrives, byte-identical, some of them twice.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from exporters.files import spec_for
from ledger.exports import EXPORT_EVENTS, Exports
from tests.conftest import ROOT, AdapterProcess, RunningAdapter, free_port, wait_for, write_config
from tests.dicom import dataset_bytes, make_study
from tests.peers.flaky_scp import OUT_OF_RESOURCES, FlakyStorageSCP

DESTINATION = "FLAKY"
RETRY_DELAY = 0.2
RETRIES = 2  # three attempts in all


def destination_section(
    port: int, *, retries: int = RETRIES, retry_delay: float = RETRY_DELAY
) -> str:
    return f"""
[destination:{DESTINATION}]
ae_title = FLAKYSCP
host = 127.0.0.1
port = {port}
acse_timeout = 5
dimse_timeout = 10
network_timeout = 10
retries = {retries}
retry_delay = {retry_delay}
"""


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def export_events(exports: Exports, export_id: int) -> list:
    query = select(EXPORT_EVENTS).where(EXPORT_EVENTS.c.export_id == export_id)
    return exports.ledger.read(query.order_by(EXPORT_EVENTS.c.id))


def moves(events: list) -> list[tuple[str | None, str]]:
    return [(e.from_state, e.to_state) for e in events]


def drop_into_outbox(outbox: Path, files: list[Path], scratch: Path) -> None:
    """Put ``files`` in ``outbox`` as one folder, all at once and already settled.

    They are copied next to the outbox first, dated back past the settle
    time, then the folder is renamed in: one scan sees all of them, so they
    become one task.
    """
    folder = scratch / "drop"
    folder.mkdir(parents=True)
    past = time.time() - 60
    for path in files:
        copy = shutil.copy2(path, folder / path.name)
        os.utime(copy, (past, past))
    outbox.mkdir(parents=True, exist_ok=True)
    os.rename(folder, outbox / "study")


@pytest.fixture
def flaky() -> Iterator[FlakyStorageSCP]:
    with FlakyStorageSCP() as scp:
        yield scp


def test_more_than_half_failed_is_retried_then_failed_and_at_most_half_is_a_success(
    start_adapter: Callable[[Path], RunningAdapter], flaky: FlakyStorageSCP, tmp_path: Path
) -> None:
    began = time.monotonic()
    files_a = make_study(tmp_path / "a", 10)
    files_b = make_study(tmp_path / "b", 10)
    original = {sop_uid(p): p for p in files_a + files_b}
    sops_a = [sop_uid(p) for p in files_a]
    sops_b = [sop_uid(p) for p in files_b]
    bad_a = {sops_a[i] for i in (0, 2, 3, 5, 7, 8)}  # 6 of 10: more than half
    bad_b = {sops_b[3], sops_b[8]}  # 2 of 10: at most half
    good_a = set(sops_a) - bad_a
    flaky.set_phase("rules", fail=bad_a | bad_b)

    config = write_config(tmp_path, free_port(), destination_section(flaky.port))
    running = start_adapter(config)
    exports = running.adapter.exports

    # Task A: ten files dropped in the destination's outbox.
    drop_into_outbox(tmp_path / "var" / "outbox" / DESTINATION, files_a, tmp_path / "scratch")
    wait_for(lambda: exports.tasks(), timeout=10)
    [task_a] = exports.tasks()
    assert (task_a.origin, task_a.file_count) == ("outbox", 10)
    # Task B: ten files queued as `dicom-adapter send` would, left where they are.
    b_id = exports.create(DESTINATION, "send", [spec_for(p, owned=False) for p in files_b])

    # Watch A while it runs: each time it waits for a retry, how long it was told to wait.
    scheduled: dict[int, timedelta] = {}
    deadline = time.monotonic() + 30
    while not all(exports.get(i).state in ("succeeded", "failed") for i in (task_a.id, b_id)):
        assert time.monotonic() < deadline, [exports.get(i) for i in (task_a.id, b_id)]
        task = exports.get(task_a.id)
        if task.state == "pending" and task.attempts and task.next_attempt_at is not None:
            scheduled.setdefault(task.attempts, task.next_attempt_at - task.updated_at)
        time.sleep(0.01)
    took = time.monotonic() - began

    # --- A: three attempts with a doubling delay, then failed. ---
    task_a = exports.get(task_a.id)
    assert (task_a.state, task_a.attempts, task_a.failed_count) == ("failed", 3, 6), task_a
    assert task_a.next_attempt_at is None and task_a.finished_at is not None
    assert task_a.last_error == "destination answered 0xA700"
    assert scheduled == {
        1: timedelta(seconds=RETRY_DELAY),
        2: timedelta(seconds=2 * RETRY_DELAY),
    }, scheduled
    events_a = export_events(exports, task_a.id)
    assert moves(events_a) == [
        (None, "pending"),
        ("pending", "sending"),
        ("sending", "pending"),
        ("pending", "sending"),
        ("sending", "pending"),
        ("pending", "sending"),
        ("sending", "failed"),
    ], [(e.from_state, e.to_state, e.reason) for e in events_a]
    assert "4 of 10 files sent: more than half failed, retry at" in events_a[2].reason
    assert "4 of 10 files sent: more than half failed, retry at" in events_a[4].reason
    assert events_a[6].reason == "4 of 10 files sent: no retries left"
    # Each retry started no sooner than its delay after the attempt before it settled.
    waited = [(events_a[i + 1].at - events_a[i].at).total_seconds() for i in (2, 4)]
    assert waited[0] >= RETRY_DELAY and waited[1] >= 2 * RETRY_DELAY, waited

    # The destination saw the four good files once, the six bad ones three times.
    counts = flaky.counts()
    assert {sop: counts[sop] for sop in good_a} == dict.fromkeys(good_a, 1), counts
    assert {sop: counts[sop] for sop in bad_a} == dict.fromkeys(bad_a, 3), counts
    starts = [
        min(s.at for s in flaky.stores() if s.sop_instance_uid in bad_a and s.attempt == n)
        for n in (1, 2, 3)
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] >= RETRY_DELAY and gaps[1] >= 2 * RETRY_DELAY, gaps

    files = {f.sop_instance_uid: f for f in exports.files(task_a.id)}
    assert set(files) == set(sops_a)
    for sop in bad_a:
        row = files[sop]
        assert (row.state, row.status, row.sent_at) == ("failed", OUT_OF_RESOURCES, None), row
        assert row.error == "destination answered 0xA700", row
    for sop in good_a:
        row = files[sop]
        assert (row.state, row.status, row.error) == ("sent", 0, None), row
        assert row.sent_at is not None, row
    # Owned outbox files: moved to .sending/, kept while the task is failed.
    assert all(
        f.owned and "/.sending/" in f.path and Path(f.path).is_file() for f in files.values()
    )

    # --- B: at most half failed, so it succeeded at once, failures on record. ---
    task_b = exports.get(b_id)
    assert (task_b.state, task_b.attempts, task_b.failed_count) == ("succeeded", 1, 2), task_b
    assert task_b.last_error == "destination answered 0xA700"
    assert moves(export_events(exports, b_id)) == [
        (None, "pending"),
        ("pending", "sending"),
        ("sending", "succeeded"),
    ]
    assert export_events(exports, b_id)[-1].reason == "8 of 10 files sent"
    assert {sop: counts[sop] for sop in sops_b} == dict.fromkeys(sops_b, 1), counts
    files_b_rows = {f.sop_instance_uid: f for f in exports.files(b_id)}
    assert set(files_b_rows) == set(sops_b)
    for sop, row in files_b_rows.items():
        if sop in bad_b:
            assert (row.state, row.status) == ("failed", OUT_OF_RESOURCES), row
            assert row.error == "destination answered 0xA700", row
            assert row.sent_at is None
        else:
            assert (row.state, row.status, row.error) == ("sent", 0, None), row
    assert all(p.is_file() for p in files_b), "files named on a send are never moved"

    # What arrived is what was queued, byte for byte, every time.
    for store in flaky.stores():
        assert store.data == dataset_bytes(original[store.sop_instance_uid]), store.sop_instance_uid
    print(
        f"A: scheduled retry delays {[d.total_seconds() for d in scheduled.values()]} s, "
        f"attempt gaps at the SCP {[round(g, 3) for g in gaps]} s; "
        f"{len(flaky.stores())} C-STOREs over {flaky.association_count} associations; "
        f"took {took:.1f} s"
    )


def test_sigkill_mid_export_sends_again_after_restart(tmp_path: Path) -> None:
    began = time.monotonic()
    count = 30
    files = make_study(tmp_path / "study", count)
    original = {sop_uid(p): p for p in files}
    port = free_port()
    with FlakyStorageSCP(delay=0.1) as scp:
        config = write_config(tmp_path, port, destination_section(scp.port, retries=3))
        adapter = AdapterProcess(config, port, tmp_path / "adapter.log")
        try:
            adapter.start()
            send = [sys.executable, str(ROOT / "adapter.py"), "send", "--dest", DESTINATION]
            queued = subprocess.run(
                [*send, "--config", str(config), str(tmp_path / "study")],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert queued.returncode == 0, queued.stderr
            assert queued.stdout.strip() == f"queued {count} files as export 1 for {DESTINATION}"

            wait_for(lambda: len(scp.stores()) >= count // 2, timeout=30, interval=0.005)
            adapter.kill()
            before_kill = scp.counts()
            ledger = adapter.ledger()
            exports = Exports(ledger)
            try:
                task = exports.get(1)
                assert (task.state, task.attempts) == ("sending", 1), task
                assert 0 < len(before_kill) < count, before_kill

                adapter.start()
                wait_for(lambda: exports.get(1).state in ("succeeded", "failed"), timeout=30)
                task = exports.get(1)
                rows = exports.files(1)
                events = export_events(exports, 1)
            finally:
                ledger.engine.dispose()
            assert adapter.signal(signal.SIGTERM) == 0
        finally:
            if adapter.process is not None and adapter.process.poll() is None:
                adapter.kill()
    took = time.monotonic() - began

    assert (task.state, task.attempts, task.failed_count) == ("succeeded", 2, 0), task
    assert ("sending", "pending") in moves(events)
    assert any(
        e.to_state == "pending" and "interrupted by a restart" in e.reason for e in events
    ), [(e.from_state, e.to_state, e.reason) for e in events]
    assert all((r.state, r.status, r.error) == ("sent", 0, None) for r in rows), rows

    counts = scp.counts()
    assert set(counts) == set(original), set(original) - set(counts)
    for store in scp.stores():
        assert store.data == dataset_bytes(original[store.sop_instance_uid]), store.sop_instance_uid
    twice = sorted(sop for sop, n in counts.items() if n > 1)
    assert twice, "nothing was sent twice: the kill did not catch the export mid-way"
    assert set(twice) <= set(before_kill), "only files sent before the kill may come twice"
    assert scp.association_count == 2, scp.association_count
    assert max(counts.values()) == 2, counts
    assert "Traceback" not in (tmp_path / "adapter.log").read_text()
    print(
        f"killed after {sum(before_kill.values())} of {count} C-STOREs; "
        f"after the restart {sum(counts.values())} C-STOREs in all over "
        f"{scp.association_count} associations, {len(twice)} files received twice; "
        f"took {took:.1f} s"
    )


def test_a_file_changed_after_queueing_fails_alone(
    start_adapter, tmp_path: Path, port: int
) -> None:
    """One unreadable file must not take the task's other files down with it."""
    from exporters.files import spec_for
    from tests.conftest import wait_for, write_config
    from tests.dicom import make_study
    from tests.peers.flaky_scp import FlakyStorageSCP

    with FlakyStorageSCP() as scp:
        config = write_config(
            tmp_path,
            port,
            f"[destination:FLAKY]\nae_title = FLAKYSCP\nhost = 127.0.0.1\nport = {scp.port}\n"
            "retries = 0\n",
        )
        files = make_study(tmp_path / "study", 10)
        running = start_adapter(config)
        exports = running.adapter.exports
        specs = [spec_for(path, owned=False) for path in files]
        files[5].write_text("no longer DICOM\n")
        export_id = exports.create("FLAKY", "send", specs)
        wait_for(lambda: exports.get(export_id).state in ("succeeded", "failed"), timeout=20)
        task = exports.get(export_id)
        assert (task.state, task.failed_count) == ("succeeded", 1)
        [bad] = [f for f in exports.files(export_id) if f.state == "failed"]
        assert bad.path == str(files[5].resolve()) and "cannot send" in bad.error
        assert sorted(scp.counts().values()) == [1] * 9
