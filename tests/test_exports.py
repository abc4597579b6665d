"""Exports end to end: the adapter sends to a real DICOM peer (DCMTK ``storescp``).

Each test runs an in-process adapter on 127.0.0.1 with one or more
``[destination:NAME]`` sections, each a ``storescp`` started with ``+B``
(datasets written exactly as they came off the wire) and ``+xa`` (every
transfer syntax accepted).  What arrived is compared with what was sent
through :func:`tests.dicom.dataset_bytes`, file by file, matched by SOP
Instance UID.  The ``dicom-adapter`` command runs as a real subprocess on the
same config, so it reads and writes the ledger file the adapter uses.
Export ticks are 0.5 s and the outbox settle time 0.5 s, so the file runs in
well under a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from ledger.models import TIME_FORMAT
from ledger.records import TaskRecord
from ledger.states import TaskKind
from ledger.tasks import Tasks
from tests.conftest import ROOT, RunningAdapter, free_port, port_open, wait_for, write_config
from tests.dcmtk import storescp_popen, storescu
from tests.dicom import dataset_bytes, make_mixed_set, make_study

AE = "DICOMADAPTER"
ACSE_TIMEOUT = 2  # seconds a destination that never answers holds its attempt


# -- the receiving peer -----------------------------------------------------------


class Storescp:
    """One running ``storescp``: where it listens and what it has written."""

    def __init__(self, port: int, folder: Path, ae_title: str, log: Path) -> None:
        self.port, self.folder, self.ae_title, self.log = port, folder, ae_title, log
        with open(log, "ab") as output:
            self.process = storescp_popen(port, folder, ae_title=ae_title, output=output)
        wait_for(lambda: port_open(port) or self.process.poll() is not None, timeout=10)
        assert self.process.poll() is None, log.read_text()

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> the file storescp wrote for it."""
        return {
            str(read_file_meta_info(path).MediaStorageSOPInstanceUID): path
            for path in self.folder.iterdir()
            if path.is_file()
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., Storescp]]:
    """Start a ``storescp`` (on a free port unless one is given); all are killed at the end."""
    started: list[Storescp] = []

    def start(port: int | None = None, ae_title: str = "STORESCP") -> Storescp:
        port = port or free_port()
        name = f"storescp-{ae_title}-{port}"
        scp = Storescp(port, tmp_path / name, ae_title, tmp_path / f"{name}.log")
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def silent_port() -> Iterator[socket.socket]:
    """A port that completes TCP handshakes but never answers an A-ASSOCIATE-RQ.

    The socket listens and never accepts, so every association attempt waits
    out the destination's ``acse_timeout``: a destination that is down the
    slow way.  Close it to free the port for a real peer.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(32)
    yield sock
    sock.close()


def assert_delivered(originals: list[Path], scp: Storescp) -> None:
    """``scp`` holds exactly these instances, each dataset byte-identical, in its own syntax."""
    received = scp.received()
    expected = {
        str(read_file_meta_info(path).MediaStorageSOPInstanceUID): path for path in originals
    }
    assert sorted(received) == sorted(expected)
    for uid, original in expected.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(original), original.name
        assert (
            read_file_meta_info(received[uid]).TransferSyntaxUID
            == read_file_meta_info(original).TransferSyntaxUID
        ), original.name


# -- set-up -------------------------------------------------------------------------


def destination(name: str, scp_port: int, ae_title: str = "STORESCP", keys: str = "") -> str:
    return (
        f"[destination:{name}]\nae_title = {ae_title}\nhost = 127.0.0.1\n"
        f"port = {scp_port}\n{keys}\n"
    )


def exports_config(
    folder: Path, port: int, destinations: str, *, aes: str = f"[ae:{AE}]", reclaim: float = 30
) -> Path:
    storage = f"min_free = 0\nreclaim_interval = {reclaim}"
    return write_config(folder, port, destinations, aes=aes, storage=storage)


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``dicom-adapter ARGS --config CONFIG`` as a user runs it (``python adapter.py``)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )


def drop(files: list[Path], outbox: Path, name: str, *, settled: bool = False) -> Path:
    """Copy ``files`` into ``outbox/name/`` so that one outbox scan takes them all.

    They are copied into a hidden folder the scanner skips, given one
    modification time, and the folder is renamed into place: a scan sees all
    of them or none, so they become one task.  ``settled``: dated a minute
    back, as if they had held still a while, so the next scan takes them.
    """
    hidden = outbox / f".copying-{name}"
    hidden.mkdir(parents=True)
    stamp = time.time() - (60 if settled else 0)
    for path in files:
        shutil.copyfile(path, hidden / path.name)
        os.utime(hidden / path.name, (stamp, stamp))
    target = outbox / name
    hidden.rename(target)
    return target


def tasks_for(running: RunningAdapter, destination_name: str) -> list[TaskRecord]:
    return [
        t
        for t in Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)
        if t.target == destination_name
    ]


def wait_state(
    running: RunningAdapter, export_id: int, state: str, timeout: float = 20
) -> TaskRecord:
    return follow(running, export_id, state, timeout)[-1]


def follow(
    running: RunningAdapter,
    export_id: int,
    until: str,
    timeout: float,
    on_change: Callable[[TaskRecord], object] = lambda task: None,
) -> list[TaskRecord]:
    """Poll the task every 20 ms until it is in state ``until``.

    Returns the task as first seen in each (state, attempts) it went through;
    ``on_change`` is called with each as it is seen.
    """
    seen: list[TaskRecord] = []
    deadline = time.monotonic() + timeout
    while True:
        task = Tasks(running.adapter.exports.ledger).get(export_id)
        if not seen or (task.state, task.attempts) != (seen[-1].state, seen[-1].attempts):
            seen.append(task)
            on_change(task)
        if task.state == until:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"export {export_id} not {until} after {timeout}s: {seen}")
        time.sleep(0.02)


def export_moves(running: RunningAdapter, export_id: int) -> list[tuple[str | None, str, str]]:
    """``(from, to, at)`` of every ``export_events`` row of the task, in order."""
    with running.ledger.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT from_state, to_state, at FROM export_events WHERE export_id = ? ORDER BY id",
            (export_id,),
        )
        return [tuple(row) for row in rows]


def parse_queued(stdout: str, destination_name: str, count: int) -> int:
    first = stdout.splitlines()[0]
    match = re.fullmatch(rf"queued {count} files as export (\d+) for {destination_name}", first)
    assert match, stdout
    return int(match.group(1))


# -- the tests ----------------------------------------------------------------------


def test_outbox_files_reach_the_destination_byte_identical_then_are_reclaimed(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    tmp_path: Path,
    port: int,
) -> None:
    scp = storescp()
    config = exports_config(
        tmp_path, port, destination("PACS", scp.port, keys="retention = 0"), reclaim=0.2
    )
    running = start_adapter(config)
    outbox = tmp_path / "var" / "outbox" / "PACS"
    assert (outbox / ".sending").is_dir()  # made at start

    # Eight files: CT, MR, SC and SR in native, deflated, JPEG, JPEG 2000 and RLE syntaxes.
    originals = make_mixed_set(tmp_path / "results")
    drop(originals, outbox, "results")

    wait_for(
        lambda: len(Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)) == 1, timeout=10
    )
    [task] = Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)
    task = wait_state(running, task.id, "succeeded")
    assert (task.target, task.origin, task.parent_id) == ("PACS", "outbox", None)
    assert (task.item_count, task.failed_count, task.attempts) == (len(originals), 0, 1)
    assert task.last_error is None

    assert_delivered(originals, scp)
    files = running.adapter.exports.items(task.id)
    by_uid = {str(read_file_meta_info(p).MediaStorageSOPInstanceUID): p for p in originals}
    assert sorted(f.sop_instance_uid for f in files) == sorted(by_uid)
    for file in files:
        meta = read_file_meta_info(by_uid[file.sop_instance_uid])
        assert (file.state, file.status, file.error, file.owned) == ("sent", 0, None, True)
        assert file.sop_class_uid == meta.MediaStorageSOPClassUID
        assert file.transfer_syntax_uid == meta.TransferSyntaxUID
        assert file.sent_at is not None
        # Taken out of the outbox into its staging folder, sub-path kept.
        assert Path(file.path).parent.parent.parent == outbox / ".sending"
        assert Path(file.path).parent.name == "results"

    # retention = 0: the next reclaimer run deletes the staged files, the row stays.
    wait_for(
        lambda: Tasks(running.adapter.exports.ledger).get(task.id).reclaimed_at is not None,
        timeout=10,
    )
    reclaimed = Tasks(running.adapter.exports.ledger).get(task.id)
    assert reclaimed.state == "succeeded" and reclaimed.reclaimed_at >= reclaimed.finished_at
    assert not any(Path(f.path).exists() for f in files)
    assert [p for p in outbox.rglob("*") if not p.is_dir()] == []
    assert list((outbox / ".sending").iterdir()) == []  # staging folders gone too
    assert [(a, b) for a, b, _ in export_moves(running, task.id)] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "succeeded"),
        ("succeeded", "succeeded"),  # the reclaim
    ]


def test_a_non_dicom_outbox_file_is_quarantined_and_the_rest_is_sent(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    tmp_path: Path,
    port: int,
) -> None:
    scp = storescp()
    running = start_adapter(exports_config(tmp_path, port, destination("PACS", scp.port)))
    outbox = tmp_path / "var" / "outbox" / "PACS"
    originals = make_study(tmp_path / "results", 2)
    (tmp_path / "results" / "notes.txt").write_text("not an image\n")
    drop([*originals, tmp_path / "results" / "notes.txt"], outbox, "results", settled=True)

    wait_for(lambda: list(outbox.glob("quarantine/*-notes.txt.reason")), timeout=5)
    [kept] = outbox.glob("quarantine/*-notes.txt")
    assert kept.read_text() == "not an image\n"
    reason = kept.with_name(kept.name + ".reason").read_text()
    assert "not a DICOM file: no 'DICM' after a 128-byte preamble" in reason
    assert "force" not in reason  # our words, not pydicom's
    wait_for(
        lambda: len(Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)) == 1, timeout=5
    )
    [task] = Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)
    task = wait_state(running, task.id, "succeeded")
    assert (task.item_count, task.failed_count) == (2, 0)
    assert_delivered(originals, scp)


def test_cli_send_wait_and_echo_against_a_running_adapter(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    tmp_path: Path,
    port: int,
) -> None:
    scp = storescp()
    nobody = free_port()
    config = exports_config(
        tmp_path,
        port,
        destination("PACS", scp.port, keys="retention = 0")
        + destination("NOBODY", nobody, ae_title="NOBODYAE"),
        reclaim=0.2,
    )
    running = start_adapter(config)

    echo = cli("echo", "PACS", config=config)
    assert echo.returncode == 0, echo.stderr
    assert re.fullmatch(
        rf"PACS \(STORESCP@127\.0\.0\.1:{scp.port}\): C-ECHO Success in \d+ ms\n", echo.stdout
    )
    assert echo.stderr == ""
    refused = cli("echo", "NOBODY", config=config)
    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"Error: NOBODY (NOBODYAE@127.0.0.1:{nobody}): ")
    assert "did not answer" in line

    # A folder, sent recursively: a study in a sub-folder plus the mixed set.
    folder = tmp_path / "to-send"
    originals = make_mixed_set(folder) + make_study(folder / "study", 3)
    before = {path: path.read_bytes() for path in originals}
    sent = cli("send", "--dest", "PACS", "--wait", str(folder), config=config)
    assert sent.returncode == 0, sent.stderr
    count = len(originals)
    export_id = parse_queued(sent.stdout, "PACS", count)
    assert sent.stdout.splitlines()[1:] == [
        f"export {export_id} succeeded: {count} of {count} files sent"
    ]
    task = Tasks(running.adapter.exports.ledger).get(export_id)
    assert (task.origin, task.state, task.item_count, task.failed_count) == (
        "send",
        "succeeded",
        count,
        0,
    )
    assert_delivered(originals, scp)
    files = running.adapter.exports.items(export_id)
    assert {(f.state, f.status, f.owned) for f in files} == {("sent", 0, False)}
    assert sorted(f.path for f in files) == sorted(str(p) for p in originals)

    # A reclaimer run (retention = 0) leaves them alone: a send task owns no file.
    assert running.adapter.export_reclaimer.tick() == 0  # nothing deleted, nothing logged
    assert {path: path.read_bytes() for path in originals} == before
    assert Tasks(running.adapter.exports.ledger).get(export_id).reclaimed_at is None

    # One file that is not DICOM: one error line naming it, nothing queued.
    (folder / "study" / "notes.txt").write_text("not an image\n")
    bad = cli("send", "--dest", "PACS", "--wait", str(folder), config=config)
    assert bad.returncode == 1 and bad.stdout == ""
    [line] = bad.stderr.splitlines()
    assert line == (
        f"Error: {folder / 'study' / 'notes.txt'}: not a DICOM file: "
        "no 'DICM' after a 128-byte preamble (DICOM Part 10)"
    )
    assert [t.id for t in Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)] == [
        export_id
    ]
    assert {path: path.read_bytes() for path in originals} == before


def test_forward_ae_sends_each_received_instance_on_unchanged(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    tmp_path: Path,
    port: int,
) -> None:
    scp = storescp()
    config = exports_config(
        tmp_path,
        port,
        destination("PACS", scp.port),
        aes=f"[ae:{AE}]\nprocessor = forward\ndestinations = PACS\ntimeout = 0.5",
    )
    running = start_adapter(config)
    originals = make_study(tmp_path / "study", 5)
    result = storescu(port, originals)
    assert result.returncode == 0, result.stderr

    wait_for(
        lambda: (
            [j.state for j in Tasks(running.adapter.processing.ledger).listing(TaskKind.PROCESS)]
            == ["succeeded"]
        ),
        15,
    )
    [job] = Tasks(running.adapter.processing.ledger).listing(TaskKind.PROCESS)
    assert job.submitter == "forward" and job.item_count == len(originals)
    wait_for(
        lambda: len(Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)) == 1, timeout=10
    )
    [task] = Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)
    task = wait_state(running, task.id, "succeeded")
    assert (task.target, task.origin, task.parent_id) == ("PACS", "forward", job.id)
    assert (task.item_count, task.failed_count) == (len(originals), 0)

    assert_delivered(originals, scp)
    files = running.adapter.exports.items(task.id)
    assert {(f.state, f.status, f.owned) for f in files} == {("sent", 0, True)}
    staging = tmp_path / "var" / "outbox" / "PACS" / ".sending" / f"job-{job.id}"
    assert {Path(f.path).parent for f in files} == {staging}
    assert {r.state for r in running.rows()} == {"submitted"}


def test_a_destination_that_is_down_fails_alone_and_is_sent_after_a_retry(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    silent_port: socket.socket,
    tmp_path: Path,
    port: int,
) -> None:
    up = storescp()
    down_port = silent_port.getsockname()[1]
    config = exports_config(
        tmp_path,
        port,
        destination(
            "DOWN",
            down_port,
            ae_title="DOWNAE",
            keys=f"retries = 2\nretry_delay = 0.2\nacse_timeout = {ACSE_TIMEOUT}",
        )
        + destination("UP", up.port),
    )
    running = start_adapter(config)
    up_outbox = tmp_path / "var" / "outbox" / "UP"

    down_files = make_study(tmp_path / "for-down", 3)
    queued = cli("send", "--dest", "DOWN", *map(str, down_files), config=config)
    assert queued.returncode == 0, queued.stderr
    down_id = parse_queued(queued.stdout, "DOWN", 3)
    first_up = make_study(tmp_path / "for-up-1", 2)
    drop(first_up, up_outbox, "first")

    # Follow DOWN's task (every 20 ms) until it gives up.  Its first attempt
    # failed; while its second waits for an answer, queue more for UP.
    second_up = make_study(tmp_path / "for-up-2", 1)

    def while_second_attempt(task: TaskRecord) -> None:
        if (task.state, task.attempts) == ("running", 2):
            drop(second_up, up_outbox, "second", settled=True)

    seen = follow(running, down_id, "failed", timeout=30, on_change=while_second_attempt)
    states = [(t.state, t.attempts) for t in seen]
    if states[0] == ("pending", 0):  # else the first attempt began before we looked
        states.pop(0)
    assert states == [
        ("running", 1),
        ("pending", 1),
        ("running", 2),
        ("pending", 2),
        ("running", 3),
        ("failed", 3),
    ]
    # Each retry after the backoff: retry_delay, then twice that.
    backoff = [
        t.next_attempt_at - t.updated_at for t in seen if t.state == "pending" and t.attempts
    ]
    assert backoff == [timedelta(seconds=0.2), timedelta(seconds=0.4)]
    wait_for(lambda: len(tasks_for(running, "UP")) == 2, timeout=10)
    up_tasks = [wait_state(running, t.id, "succeeded") for t in tasks_for(running, "UP")]

    down = wait_state(running, down_id, "failed", timeout=20)
    assert (down.attempts, down.item_count, down.failed_count) == (3, 3, 3)
    peer = f"DOWNAE@127.0.0.1:{down_port}"
    refused = f"{peer} did not answer (refused, aborted or timed out)"
    assert down.last_error == f"not attempted: {refused}"
    assert {(f.state, f.status, f.error) for f in running.adapter.exports.items(down_id)} == {
        ("failed", None, down.last_error)
    }
    assert [t.attempts for t in up_tasks] == [1, 1]
    assert_delivered(first_up + second_up, up)

    moves = export_moves(running, down_id)
    assert [to for _, to, _ in moves] == ["pending"] + ["running", "pending"] * 2 + [
        "running",
        "failed",
    ]
    at = [datetime.strptime(when, TIME_FORMAT).replace(tzinfo=UTC) for _, _, when in moves]
    for attempt in range(3):  # each attempt waited out the ACSE timeout
        assert at[2 + 2 * attempt] - at[1 + 2 * attempt] >= timedelta(seconds=ACSE_TIMEOUT - 0.1)
    assert at[3] - at[2] >= backoff[0] and at[5] - at[4] >= backoff[1]
    # UP's task queued during DOWN's second attempt went out at once: it was
    # sent before that attempt gave up, so DOWN held nothing up.
    second = up_tasks[1]
    assert second.finished_at - second.created_at < timedelta(seconds=2)
    assert at[3] < second.created_at < second.finished_at < at[4]

    listed = cli("exports", "--state", "failed", config=config)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:7] == ["ID", "KIND", "STATE", "TARGET", "ITEMS", "FAILED", "ATTEMPTS"]
    assert [row.split()[:7] for row in rows] == [
        [str(down_id), "export", "failed", "DOWN", "3", "3", "3"]
    ]
    assert peer in rows[0]

    # The peer comes back: a retry sends the task, with fresh attempts.
    silent_port.close()
    back = storescp(port=down_port, ae_title="DOWNAE")
    retried = cli("exports", "retry", str(down_id), config=config)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == f"export {down_id} is pending again (3 files)\n"
    down = wait_state(running, down_id, "succeeded", timeout=10)
    assert (down.attempts, down.failed_count, down.last_error) == (1, 0, None)
    assert {(f.state, f.status) for f in running.adapter.exports.items(down_id)} == {("sent", 0)}
    assert_delivered(down_files, back)
    assert all(path.exists() for path in down_files)  # sent, not moved


def test_an_outbox_symlink_or_fifo_is_quarantined_never_followed_and_its_target_kept(
    start_adapter: Callable[[Path], RunningAdapter],
    storescp: Callable[..., Storescp],
    tmp_path: Path,
    port: int,
) -> None:
    """A symlink dropped into an outbox used to be resolved: its target (anywhere on
    the machine) was sent, then deleted by the export reclaimer as the export's
    own file.  Now only regular files are taken; the rest goes to quarantine."""
    scp = storescp()
    config = exports_config(
        tmp_path, port, destination("PACS", scp.port, keys="retention = 0"), reclaim=0.2
    )
    running = start_adapter(config)
    outbox = tmp_path / "var" / "outbox" / "PACS"
    [outside] = make_study(tmp_path / "elsewhere", 1)  # somebody's file, not the outbox's
    before = outside.read_bytes()
    [regular] = make_study(tmp_path / "results", 1)
    folder = drop([regular], outbox, "results", settled=True).parent / ".links"
    folder.mkdir()
    (folder / "link.dcm").symlink_to(outside)
    os.mkfifo(folder / "pipe.dcm")
    past = time.time() - 60
    for name in ("link.dcm", "pipe.dcm"):
        os.utime(folder / name, (past, past), follow_symlinks=False)
    folder.rename(outbox / "links")

    wait_for(lambda: len(list(outbox.glob("quarantine/*.reason"))) == 2, timeout=10)
    reasons = sorted(p.read_text() for p in outbox.glob("quarantine/*.reason"))
    assert all(
        "not a regular file (symlinks, FIFOs and devices are not followed)" in r for r in reasons
    )
    wait_for(lambda: Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT), timeout=10)
    [task] = Tasks(running.adapter.exports.ledger).listing(TaskKind.EXPORT)
    task = wait_state(running, task.id, "succeeded")
    assert task.item_count == 1
    wait_for(
        lambda: Tasks(running.adapter.exports.ledger).get(task.id).reclaimed_at is not None,
        timeout=10,
    )
    assert outside.read_bytes() == before, "the link's target must be neither sent nor deleted"
    assert set(scp.received()) == {str(read_file_meta_info(regular).MediaStorageSOPInstanceUID)}


def test_the_export_reclaimer_deletes_nothing_outside_the_staging_folder(tmp_path: Path) -> None:
    from reclaim.outbox_files import delete_staged

    root = tmp_path / "outbox" / ".sending"
    (root / "o-1").mkdir(parents=True)
    victim = tmp_path / "victim.dcm"
    victim.write_text("keep me")
    (root / "o-1" / "linked").symlink_to(tmp_path, target_is_directory=True)
    for path in (
        root / "o-1" / ".." / ".." / ".." / "victim.dcm",
        root / "o-1" / "linked" / "victim.dcm",
    ):
        assert delete_staged(path, root) is False
    assert victim.read_text() == "keep me"
    inside = root / "o-1" / "a.dcm"
    inside.write_text("ours")
    assert delete_staged(inside, root) is True and not inside.exists()
