"""Export rules end to end, against a destination that fails on purpose.

The destination is :class:`tests.peers.flaky_scp.FlakyStorageSCP`, a real
pynetdicom SCP on loopback that answers a failure status for chosen SOP
Instance UIDs, aborts after a number of stores or accepts no context for a
SOP class, and records every C-STORE it gets.

* Per-file outcomes (README "Exports"): a transient failure is retried with a
  doubling delay, whatever the share of files it hits, and finally
  ``failed``; a refusal fails that file at once; a file never attempted goes
  next time; files already delivered are not sent again; and no undelivered
  file is ever deleted, however its task ended.
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
from ledger.exports import Exports
from ledger.states import TaskKind
from ledger.tasks import TASK_EVENTS, Tasks
from tests.conftest import (
    ROOT,
    THREE_ATTEMPTS_THEN_FAILED,
    AdapterProcess,
    RunningAdapter,
    free_port,
    wait_for,
    write_config,
)
from tests.dicom import dataset_bytes, make_study
from tests.peers.flaky_scp import OUT_OF_RESOURCES, FlakyStorageSCP
from tests.peers.send import send_files

DESTINATION = "FLAKY"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
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
    query = select(TASK_EVENTS).where(TASK_EVENTS.c.task_id == export_id)
    return exports.ledger.read(query.order_by(TASK_EVENTS.c.id))


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


def test_transient_failures_are_retried_with_backoff_whatever_their_share_then_kept(
    start_adapter: Callable[[Path], RunningAdapter], flaky: FlakyStorageSCP, tmp_path: Path
) -> None:
    """0xA700 (out of resources) is worth another attempt: 6 of 10 failing and 2 of
    10 failing are both retried with a doubling delay (the seed system's
    more-than-half rule called the second a success and dropped its two
    files), then ``failed``, every undelivered file kept on disk."""
    began = time.monotonic()
    files_a = make_study(tmp_path / "a", 10)
    files_b = make_study(tmp_path / "b", 10)
    original = {sop_uid(p): p for p in files_a + files_b}
    sops_a = [sop_uid(p) for p in files_a]
    sops_b = [sop_uid(p) for p in files_b]
    bad_a = {sops_a[i] for i in (0, 2, 3, 5, 7, 8)}  # 6 of 10
    bad_b = {sops_b[3], sops_b[8]}  # 2 of 10
    good_a = set(sops_a) - bad_a
    flaky.set_phase("rules", fail=bad_a | bad_b)

    config = write_config(tmp_path, free_port(), destination_section(flaky.port))
    running = start_adapter(config)
    exports = running.adapter.exports

    # Task A: ten files dropped in the destination's outbox.
    drop_into_outbox(tmp_path / "var" / "outbox" / DESTINATION, files_a, tmp_path / "scratch")
    wait_for(lambda: Tasks(exports.ledger).listing(TaskKind.EXPORT), timeout=10)
    [task_a] = Tasks(exports.ledger).listing(TaskKind.EXPORT)
    assert (task_a.origin, task_a.item_count) == ("outbox", 10)
    # Task B: ten files queued as `dicom-adapter send` would, left where they are.
    b_id = exports.create(DESTINATION, "send", [spec_for(p, owned=False) for p in files_b])

    # Watch A while it runs: each time it waits for a retry, how long it was told to wait.
    scheduled: dict[int, timedelta] = {}
    deadline = time.monotonic() + 30
    while not all(
        Tasks(exports.ledger).get(i).state in ("succeeded", "failed") for i in (task_a.id, b_id)
    ):
        assert time.monotonic() < deadline, [
            Tasks(exports.ledger).get(i) for i in (task_a.id, b_id)
        ]
        task = Tasks(exports.ledger).get(task_a.id)
        if task.state == "pending" and task.attempts and task.next_attempt_at is not None:
            scheduled.setdefault(task.attempts, task.next_attempt_at - task.updated_at)
        time.sleep(0.01)
    took = time.monotonic() - began

    # --- A: three attempts with a doubling delay, then failed. ---
    task_a = Tasks(exports.ledger).get(task_a.id)
    assert (task_a.state, task_a.attempts, task_a.failed_count) == ("failed", 3, 6), task_a
    assert task_a.next_attempt_at is None and task_a.finished_at is not None
    assert task_a.last_error == "destination answered 0xA700"
    assert scheduled == {
        1: timedelta(seconds=RETRY_DELAY),
        2: timedelta(seconds=2 * RETRY_DELAY),
    }, scheduled
    events_a = export_events(exports, task_a.id)
    assert moves(events_a) == THREE_ATTEMPTS_THEN_FAILED, [
        (e.from_state, e.to_state, e.reason) for e in events_a
    ]
    assert "4 of 10 files delivered, 6 to try again at" in events_a[2].reason
    assert "4 of 10 files delivered, 6 to try again at" in events_a[4].reason
    assert events_a[6].reason.startswith("4 of 10 files delivered: no retries left: "), events_a[6]
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

    files = {f.sop_instance_uid: f for f in exports.items(task_a.id)}
    assert set(files) == set(sops_a)
    for sop in bad_a:
        row = files[sop]
        assert (row.state, row.status, row.sent_at) == ("failed", OUT_OF_RESOURCES, None), row
        assert row.error == "destination answered 0xA700", row
    for sop in good_a:
        row = files[sop]
        assert (row.state, row.status, row.error) == ("sent", 0, None), row
        assert row.sent_at is not None, row
    # Owned outbox files: moved to .sending/; the undelivered ones are kept.
    assert all(f.owned and "/.sending/" in f.path for f in files.values())
    assert all(Path(files[sop].path).is_file() for sop in bad_a)

    # --- B: two of ten failing is not a success either: retried, then failed. ---
    task_b = Tasks(exports.ledger).get(b_id)
    assert (task_b.state, task_b.attempts, task_b.failed_count) == ("failed", 3, 2), task_b
    assert {sop: counts[sop] for sop in sops_b} == {
        sop: 3 if sop in bad_b else 1 for sop in sops_b
    }, counts
    rows_b = {f.sop_instance_uid: f for f in exports.items(b_id)}
    assert {sop for sop, row in rows_b.items() if row.state == "failed"} == bad_b
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


FORWARD_AE = f"""[ae:DICOMADAPTER]
processor = forward
destinations = {DESTINATION}
timeout = 0.5
retention = 0
"""


def test_refused_files_of_a_forwarded_study_are_kept_until_a_retry_delivers_them(
    start_adapter: Callable[[Path], RunningAdapter], flaky: FlakyStorageSCP, tmp_path: Path
) -> None:
    """Defect 1: with processor = forward and retention = 0 the outbox link is the
    last copy.  A destination refusing a third of a study (0xA900, permanent)
    must leave those three files on disk, the task ``failed`` and the adapter
    unhealthy, however many reclaimer runs go by; ``exports retry`` then
    delivers them, and only then are they reclaimed."""
    from health import health

    files = make_study(tmp_path / "study", 9)
    sops = [sop_uid(p) for p in files]
    refused = set(sops[::3])
    flaky.set_phase("refuse", fail=refused)
    flaky.failure_status = 0xA900
    config = write_config(
        tmp_path,
        free_port(),
        destination_section(flaky.port),
        storage="min_free = 0\nreclaim_interval = 0.2",
        aes=FORWARD_AE,
    )
    running = start_adapter(config)
    exports = running.adapter.exports
    results = send_files("127.0.0.1", running.port, files, called_ae="DICOMADAPTER")
    assert [status for _, status in results] == [0] * 9

    wait_for(
        lambda: [t.state for t in Tasks(exports.ledger).listing(TaskKind.EXPORT)] == ["failed"],
        timeout=20,
    )
    [task] = Tasks(exports.ledger).listing(TaskKind.EXPORT)
    assert (task.origin, task.attempts, task.failed_count) == ("forward", 1, 3), task
    rows = {f.sop_instance_uid: f for f in exports.items(task.id)}
    # The spool's copies go (the job succeeded), and so do the delivered links...
    wait_for(lambda: len(running.rows("reclaimed")) == 9, timeout=10)
    wait_for(lambda: sum(1 for f in exports.items(task.id) if f.reclaimed_at) == 6, timeout=10)
    time.sleep(1)  # five more reclaimer runs
    for sop, row in rows.items():
        assert Path(row.path).is_file() == (sop in refused), sop
        assert row.state == ("failed" if sop in refused else "sent"), row
        assert row.instance_id is not None
    facts = health(running.config, running.ledger)
    assert not facts["healthy"] and facts["undelivered_files"] == 3, facts
    assert facts["failed_exports"] == [task.id]
    assert Tasks(running.ledger).listing(TaskKind.PROCESS)[0].state == "succeeded"

    flaky.set_phase("accept", fail=())
    Tasks(exports.ledger).retry(task.id)
    wait_for(lambda: Tasks(exports.ledger).get(task.id).state == "succeeded", timeout=20)
    wait_for(lambda: Tasks(exports.ledger).get(task.id).reclaimed_at is not None, timeout=10)
    assert not any(Path(row.path).exists() for row in rows.values())
    assert flaky.counts() == {sop: 2 if sop in refused else 1 for sop in sops}
    facts = health(running.config, running.ledger)
    assert facts["undelivered_files"] == 0 and facts["failed_exports"] == []


def test_files_never_attempted_after_an_abort_are_sent_on_the_next_attempt(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    """Defect 2: a destination that aborts after 6 of 10 stores.  The 4 files after
    the abort were never attempted: they stay ``pending`` and go next time."""
    files = make_study(tmp_path / "study", 10)
    with FlakyStorageSCP(abort_after=6) as scp:
        config = write_config(tmp_path, free_port(), destination_section(scp.port))
        running = start_adapter(config)
        exports = running.adapter.exports
        export_id = exports.create(DESTINATION, "send", [spec_for(p, owned=False) for p in files])
        wait_for(
            lambda: Tasks(exports.ledger).get(export_id).state in ("succeeded", "failed"),
            timeout=20,
        )
        task = Tasks(exports.ledger).get(export_id)
        counts, aborts = scp.counts(), scp.aborts
    assert (task.state, task.attempts, task.failed_count) == ("succeeded", 2, 0), task
    assert counts == dict.fromkeys((sop_uid(p) for p in files), 1), counts
    assert aborts == 1
    first = export_events(exports, export_id)[2]
    assert first.reason.startswith("6 of 10 files delivered, 4 to try again at"), first.reason


def test_a_sop_class_the_destination_accepts_no_context_for_fails_at_once_and_is_kept(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path
) -> None:
    """Defect 10: no presentation context is a refusal, not a retry: that file is
    ``failed`` after the first attempt, with the reason, and stays on disk."""
    ct = make_study(tmp_path / "ct", 3)
    mr = [
        p.rename(p.with_name(f"mr-{p.name}"))
        for p in make_study(tmp_path / "mr", 2, sop_class_uid=MR_IMAGE)
    ]
    with FlakyStorageSCP(refuse_classes={MR_IMAGE}) as scp:
        config = write_config(tmp_path, free_port(), destination_section(scp.port))
        running = start_adapter(config)
        exports = running.adapter.exports
        drop_into_outbox(tmp_path / "var" / "outbox" / DESTINATION, ct + mr, tmp_path / "scratch")
        wait_for(
            lambda: [t.state for t in Tasks(exports.ledger).listing(TaskKind.EXPORT)] == ["failed"],
            timeout=20,
        )
        [task] = Tasks(exports.ledger).listing(TaskKind.EXPORT)
        time.sleep(3 * RETRY_DELAY)  # no retry comes
        counts = scp.counts()
    assert (task.attempts, task.failed_count) == (1, 2), task
    assert Tasks(exports.ledger).get(task.id).attempts == 1
    assert counts == dict.fromkeys((sop_uid(p) for p in ct), 1)
    for row in exports.items(task.id):
        if row.sop_class_uid == MR_IMAGE:
            assert row.state == "failed" and Path(row.path).is_file(), row
            assert row.error == (
                f"destination accepts no context for SOP class {MR_IMAGE} "
                "in transfer syntax 1.2.840.10008.1.2.1"
            )
        else:
            assert row.state == "sent", row


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
                task = Tasks(exports.ledger).get(1)
                assert (task.state, task.attempts) == ("running", 1), task
                assert 0 < len(before_kill) < count, before_kill

                adapter.start()
                wait_for(
                    lambda: Tasks(exports.ledger).get(1).state in ("succeeded", "failed"),
                    timeout=30,
                )
                task = Tasks(exports.ledger).get(1)
                rows = exports.items(1)
                events = export_events(exports, 1)
            finally:
                ledger.engine.dispose()
            assert adapter.signal(signal.SIGTERM) == 0
        finally:
            if adapter.process is not None and adapter.process.poll() is None:
                adapter.kill()
    took = time.monotonic() - began

    assert (task.state, task.attempts, task.failed_count) == ("succeeded", 2, 0), task
    assert ("running", "pending") in moves(events)
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
        wait_for(
            lambda: Tasks(exports.ledger).get(export_id).state in ("succeeded", "failed"),
            timeout=20,
        )
        task = Tasks(exports.ledger).get(export_id)
        assert (task.state, task.failed_count) == ("failed", 1)
        [bad] = [f for f in exports.items(export_id) if f.state == "failed"]
        assert bad.path == str(files[5].resolve()) and "cannot send" in bad.error
        assert sorted(scp.counts().values()) == [1] * 9
