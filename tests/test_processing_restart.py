"""Processing across SIGKILL: a real ``dicom-adapter run`` killed, then started again.

The AE's processor is ``command``: a recorder script (written to tmp_path)
that appends one JSON line to a record file when it starts and one when it
finishes, each with the job id, the manifest's idempotency key and attempt,
the study, the SOP Instance UIDs in the manifest and the instance files in
the job folder.  The record is the outside world's view: how many times a
group was handed over, and with what.

Three crashes:

* during a group's quiet period (no job yet): after the restart the group is
  claimed once the quiet period that started before the crash is over, not a
  whole ``timeout`` after the restart, and run once with every instance;
* while the job's command runs: the job is requeued ("interrupted by a
  restart") and runs again as the same job with the same idempotency key and
  the same instances.  The command was started in its own session, so the
  SIGKILL does not reach it; the restart kills it (from the pid file beside
  its job folder) before the job runs again, so it is never handed over twice
  at once;
* with two studies in their quiet period: each is processed exactly once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ledger.models import Event, TaskEvent
from ledger.processing import Processing, idempotency_key
from ledger.states import TaskKind
from ledger.store import Ledger
from ledger.tasks import Tasks
from tests.conftest import AdapterProcess, wait_for, write_config
from tests.dicom import make_study
from tests.peers.send import send_files

AE = "DICOMADAPTER"
COUNT = 10
DONE = ("submitted", "reclaimable", "reclaimed")

# Appends one line per phase; pauses on its first run only (the marker file
# says a run already started) so the adapter can be killed in the middle.
RECORDER = """\
import json, os, sys, time
from pathlib import Path

record, marker, pause, manifest, job_dir, job_id, study = sys.argv[1:8]


def instance_files(folder):
    path = Path(folder)
    if not path.is_dir():
        return None
    return sorted(p.name for p in path.iterdir() if p.suffix == ".dcm")


def blocked_signals():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    return None


def append(line):
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


document = json.loads(Path(manifest).read_text())
run = {
    "pid": os.getpid(),
    "job_id": int(job_id),
    "manifest_job_id": document["job_id"],
    "idempotency_key": document["idempotency_key"],
    "attempt": document["attempt"],
    "study_instance_uid": study,
    "sop_instance_uids": sorted(e["sop_instance_uid"] for e in document["instances"]),
    "files": instance_files(job_dir),
    "blocked_signals": blocked_signals(),
}
append({"phase": "started", "at": time.time(), **run})
if float(pause) > 0 and not os.path.exists(marker):
    Path(marker).touch()
    time.sleep(float(pause))
append({"phase": "finished", "at": time.time(), "files_now": instance_files(job_dir), **run})
"""


class Recorder:
    """The recorder script, its record file, and the AE keys that run it."""

    def __init__(self, folder: Path, pause: float = 0.0) -> None:
        self.script = folder / "recorder.py"
        self.record = folder / "record.jsonl"
        self.marker = folder / "first-run-started"
        self.pause = pause
        self.script.write_text(RECORDER)

    def ae_keys(self, *, timeout: float) -> str:
        fixed = [sys.executable, str(self.script), str(self.record), str(self.marker)]
        command = shlex.join([*fixed, str(self.pause)])
        return (
            "processor = command\n"
            f"command = {command} {{manifest}} {{job_dir}} {{job_id}} {{study_instance_uid}}\n"
            f"timeout = {timeout:g}\n"
            "retry_delay = 1\n"
        )

    def lines(self, phase: str | None = None) -> list[dict]:
        if not self.record.exists():
            return []
        # A line still being appended has no newline yet: leave it for the next look.
        *whole, _ = self.record.read_text().split("\n")
        lines = [json.loads(line) for line in whole]
        return [line for line in lines if phase is None or line["phase"] == phase]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Path, int], AdapterProcess]]:
    """AdapterProcess factory; any process still alive is SIGKILLed at teardown."""
    made: list[AdapterProcess] = []

    def make(config: Path, port: int) -> AdapterProcess:
        process = AdapterProcess(config, port, tmp_path / "adapter.log")
        made.append(process)
        return process

    yield make
    for process in made:
        if process.process is not None and process.process.poll() is None:
            process.kill()


@pytest.fixture
def ledgers() -> Iterator[Callable[[AdapterProcess], Ledger]]:
    """Ledger readers over the adapter's database, disposed at teardown."""
    opened: list[Ledger] = []

    def open_ledger(process: AdapterProcess) -> Ledger:
        opened.append(process.ledger())
        return opened[-1]

    yield open_ledger
    for ledger in opened:
        ledger.engine.dispose()


def sop_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def send(port: int, files: list[Path]) -> None:
    results = send_files("127.0.0.1", port, files, called_ae=AE)
    assert [status for _, status in results] == [0] * len(files), results


def stop(process: AdapterProcess) -> None:
    """SIGTERM: a clean stop, and no traceback in the whole log (both runs)."""
    assert process.signal(signal.SIGTERM) == 0
    log = process.log.read_text()
    assert "Traceback" not in log, log[-5000:]


def claims_per_instance(ledger: Ledger) -> dict[int, list[str]]:
    """instance id -> the reasons of its ``claimed`` events (one per claim)."""
    events = Event.__table__
    rows = ledger.read(
        select(events.c.instance_id, events.c.reason).where(events.c.to_state == "claimed")
    )
    claims: dict[int, list[str]] = {}
    for instance_id, reason in rows:
        claims.setdefault(instance_id, []).append(reason)
    return claims


def job_event_reasons(ledger: Ledger, job_id: int) -> list[str]:
    events = TaskEvent.__table__
    query = select(events.c.reason).where(events.c.task_id == job_id).order_by(events.c.id)
    return [reason for (reason,) in ledger.read(query)]


def check_run(line: dict, job, sops: set[str]) -> None:
    """One run of the recorder handed exactly this job's group over."""
    assert line["job_id"] == line["manifest_job_id"] == job.id
    assert line["idempotency_key"] == job.idempotency_key
    assert set(line["sop_instance_uids"]) == sops
    assert len(line["sop_instance_uids"]) == len(sops)
    assert set(line["files"]) == {f"{sop}.dcm" for sop in sops}
    assert line["study_instance_uid"] == job.group_key


def check_settled(ledger: Ledger, jobs: list, sops_by_study: dict[str, set[str]]) -> None:
    """Each study: one succeeded job holding all its instances, each claimed once."""
    assert sorted(job.group_key for job in jobs) == sorted(sops_by_study)
    processing = Processing(ledger)
    claims = claims_per_instance(ledger)
    for job in jobs:
        assert job.state == "succeeded", job
        sops = sops_by_study[job.group_key]
        members = processing.job_instances(job.id)
        assert {i.sop_instance_uid for i in members} == sops
        assert job.item_count == len(members) == len(sops)
        assert all(i.state in DONE for i in members), [(i.id, i.state) for i in members]
        assert job.idempotency_key == idempotency_key("command", AE, job.group_key, sops)
    rows = ledger.instances()
    assert len(rows) == sum(len(s) for s in sops_by_study.values())
    assert all(row.job_id is not None for row in rows)
    for row in rows:
        assert len(claims[row.id]) == 1, (row.id, claims[row.id])
        assert claims[row.id][0].startswith(f"claimed by job {row.job_id}:")


def test_kill_in_quiet_period_resumes_the_timer(
    tmp_path: Path, port: int, spawn: Callable, ledgers: Callable, ledger_url: str
) -> None:
    """Killed 2.5 s into a 5 s quiet period: claimed ~5 s after the last instance."""
    timeout, kill_after = 5.0, 2.5
    tick = 1.0  # adapter.group_tick_seconds for a 5 s timeout
    recorder = Recorder(tmp_path)
    config = write_config(tmp_path, port, recorder.ae_keys(timeout=timeout), ledger=ledger_url)
    process = spawn(config, port)
    files = make_study(tmp_path / "study", COUNT)
    sops = sop_uids(files)
    [study] = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}

    process.start()
    ledger = ledgers(process)
    processing = Processing(ledger)
    send(port, files)
    wait_for(lambda: len(ledger.instances(state="received")) == COUNT, timeout=15)
    last = max(row.received_at for row in ledger.instances()).timestamp()
    kill_at = last + kill_after
    assert time.time() < kill_at - 0.5, "recording took too long to kill inside the quiet period"
    time.sleep(kill_at - time.time())
    process.kill()
    killed = time.time()
    assert Tasks(processing.ledger).listing(TaskKind.PROCESS) == [], (
        "a job was claimed before the quiet period ended"
    )
    assert {row.state for row in ledger.instances()} == {"received"}

    restart = time.time()
    process.start()
    ready = time.time()
    wait_for(
        lambda: (
            [j.state for j in Tasks(processing.ledger).listing(TaskKind.PROCESS)] == ["succeeded"]
        ),
        timeout=20,
    )
    [job] = Tasks(processing.ledger).listing(TaskKind.PROCESS)
    claimed = job.created_at.timestamp()
    print(
        f"kill {killed - last:.2f}s after the last instance; restart took {ready - restart:.2f}s;"
        f" claimed {claimed - last:.2f}s after the last instance,"
        f" {claimed - restart:.2f}s after the restart began"
    )
    # The quiet period is measured from the stored received_at, across the crash:
    assert claimed - last >= timeout
    assert claimed <= max(last + timeout, ready) + tick + 1.0
    # ...so the claim came well before a fresh timeout after the restart.
    assert claimed - restart < timeout - 0.5

    [run] = recorder.lines("finished")
    assert len(recorder.lines("started")) == 1
    check_run(run, job, sops)
    assert run["attempt"] == job.attempts == 1
    check_settled(ledger, [job], {study: sops})
    reasons = job_event_reasons(ledger, job.id)
    assert reasons[0].startswith(f"{COUNT} instances of group {study!r}: quiet for"), reasons
    stop(process)


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_during_first_run(
    process: AdapterProcess, processing: Processing, recorder: Recorder
) -> dict:
    """SIGKILL the adapter once its job is running and the command has started."""

    def first_run_started() -> bool:
        jobs = Tasks(processing.ledger).listing(TaskKind.PROCESS)
        return bool(jobs) and jobs[0].state == "running" and bool(recorder.lines("started"))

    wait_for(first_run_started, timeout=20)
    process.kill()
    [first] = recorder.lines("started")
    return first


@contextmanager
def reaping(recorder: Recorder, pid: int) -> Iterator[None]:
    """Whatever happens, leave no recorder process behind."""
    try:
        yield
    finally:
        cmdline = Path(f"/proc/{pid}/cmdline")
        if pid_running(pid) and str(recorder.script).encode() in cmdline.read_bytes():
            os.kill(pid, signal.SIGKILL)


def test_kill_while_the_command_runs(
    tmp_path: Path, port: int, spawn: Callable, ledgers: Callable, ledger_url: str
) -> None:
    """Killed mid-command: requeued, run again as the same job, key and instances."""
    pause = 3.0
    recorder = Recorder(tmp_path, pause=pause)
    config = write_config(tmp_path, port, recorder.ae_keys(timeout=1), ledger=ledger_url)
    process = spawn(config, port)
    files = make_study(tmp_path / "study", COUNT)
    sops = sop_uids(files)
    [study] = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}

    process.start()
    ledger = ledgers(process)
    processing = Processing(ledger)
    send(port, files)
    first = kill_during_first_run(process, processing, recorder)
    killed = time.time()
    orphan = first["pid"]
    with reaping(recorder, orphan):
        orphan_survived = pid_running(orphan)
        [job] = Tasks(processing.ledger).listing(TaskKind.PROCESS)
        assert job.state == "running", job  # as the crash left it
        assert {row.state for row in ledger.instances()} == {"claimed"}

        process.start()
        wait_for(
            lambda: Tasks(processing.ledger).listing(TaskKind.PROCESS)[0].state == "succeeded",
            timeout=20,
        )
        # The orphan sleeps out its pause; let it finish before judging the record.
        wait_for(lambda: not pid_running(orphan), timeout=first["at"] + pause + 10 - time.time())

    [job] = Tasks(processing.ledger).listing(TaskKind.PROCESS)
    started = recorder.lines("started")
    finished = recorder.lines("finished")
    ends = [(r["attempt"], r["pid"], round(r["at"] - killed, 2)) for r in finished]
    print(
        f"orphaned command (pid {orphan}) still running after the SIGKILL: {orphan_survived};"
        f" runs started: {[(r['attempt'], r['pid']) for r in started]};"
        f" runs finished (attempt, pid, s after the kill): {ends};"
        f" instance files the orphan saw in its job folder at the end: "
        f"{[r['files_now'] and len(r['files_now']) for r in finished if r['pid'] == orphan]};"
        f" blocked signal mask of the command: {hex(first['blocked_signals'])}"
    )

    # Requeued by the restart, run once more: same job, same key, same instances.
    reasons = job_event_reasons(ledger, job.id)
    assert any(reason.startswith("interrupted by a restart") for reason in reasons), reasons
    assert job.attempts == 2
    assert [r["attempt"] for r in started] == [1, 2]
    for run in started + finished:
        check_run(run, job, sops)
    # The orphan outlived the SIGKILL, the restart killed it: only the second run finished.
    assert orphan_survived
    assert [r["attempt"] for r in finished] == [2]
    assert [r["pid"] for r in finished] != [orphan]
    # Commands run with no signal blocked: `kill PID` reaches them.
    assert first["blocked_signals"] == 0
    check_settled(ledger, [job], {study: sops})
    stop(process)


def test_watcher_outlives_an_orphaned_command(
    tmp_path: Path, port: int, spawn: Callable, ledgers: Callable, ledger_url: str
) -> None:
    """After the re-run, the reclaim of its folder and the orphan's end, intake still works.

    Job folders live outside the watched spool (``[storage] jobs``), and the
    restart kills the orphaned command, so watchdog 7.1's KeyError in
    ``_remove_watch_internally`` (its inotify thread dying when a watched
    folder an orphan still held was rebuilt and removed) cannot happen here.
    """
    pause = 2.0
    recorder = Recorder(tmp_path, pause=pause)
    config = write_config(tmp_path, port, recorder.ae_keys(timeout=1), ledger=ledger_url)
    config.write_text(
        config.read_text().replace("min_free = 0\n", "min_free = 0\nreclaim_interval = 0.5\n")
    )
    process = spawn(config, port)
    process.start()
    ledger = ledgers(process)
    processing = Processing(ledger)
    send(port, make_study(tmp_path / "first", COUNT))
    orphan = kill_during_first_run(process, processing, recorder)["pid"]
    with reaping(recorder, orphan):
        process.start()
        wait_for(
            lambda: (
                {row.state for row in ledger.instances()} == {"reclaimed"}
                and not (tmp_path / "var" / "jobs" / "1").exists()
            ),
            timeout=20,
        )
        wait_for(lambda: not pid_running(orphan), timeout=pause + 10)
    time.sleep(0.5)  # the orphan's exit frees the old folder: inotify reports it now

    late = make_study(tmp_path / "late", 3)
    send(port, late)
    deadline = time.monotonic() + 5
    while len(ledger.instances()) < COUNT + len(late) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ledger.instances()) == COUNT + len(late), (
        "acknowledged instances not recorded: the spool watcher stopped;"
        f" log tail:\n{process.log.read_text()[-3000:]}"
    )
    stop(process)


def test_two_studies_killed_in_quiet_period_each_run_once(
    tmp_path: Path, port: int, spawn: Callable, ledgers: Callable, ledger_url: str
) -> None:
    timeout = 2.0
    recorder = Recorder(tmp_path)
    config = write_config(tmp_path, port, recorder.ae_keys(timeout=timeout), ledger=ledger_url)
    process = spawn(config, port)
    studies = {}
    for name in ("a", "b"):
        files = make_study(tmp_path / name, COUNT)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        studies[uid] = files
    sops_by_study = {uid: sop_uids(files) for uid, files in studies.items()}

    process.start()
    ledger = ledgers(process)
    processing = Processing(ledger)
    send(port, [f for files in studies.values() for f in files])
    wait_for(lambda: len(ledger.instances(state="received")) == 2 * COUNT, timeout=15)
    last = max(row.received_at for row in ledger.instances()).timestamp()
    assert time.time() < last + timeout - 0.5, "recording took too long to kill in the quiet period"
    process.kill()
    assert Tasks(processing.ledger).listing(TaskKind.PROCESS) == [], (
        "killed too late: a group was already claimed"
    )

    process.start()
    wait_for(
        lambda: (
            [j.state for j in Tasks(processing.ledger).listing(TaskKind.PROCESS)]
            == ["succeeded"] * 2
        ),
        timeout=20,
    )
    jobs = Tasks(processing.ledger).listing(TaskKind.PROCESS)
    check_settled(ledger, jobs, sops_by_study)
    assert len({job.idempotency_key for job in jobs}) == 2

    runs = recorder.lines("finished")
    assert len(recorder.lines("started")) == len(runs) == 2
    by_study = {run["study_instance_uid"]: run for run in runs}
    assert sorted(by_study) == sorted(studies)
    for job in jobs:
        check_run(by_study[job.group_key], job, sops_by_study[job.group_key])
    stop(process)
