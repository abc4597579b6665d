"""Processing end to end: real peers send, groups close, commands run, files go.

Each test starts an in-process adapter on 127.0.0.1 whose AE runs a small
Python script (written into ``tmp_path``) as its ``command`` processor.  The
script appends one JSON line per run to ``runs.jsonl``: what it was given on
its command line and what it found in the job folder and the manifest.  The
assertions read that record, the ledger (``instances``, ``events``, ``jobs``,
``job_events``), the spool on disk and the ``dicom-adapter`` command's output.
Quiet periods are kept under a second so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from ledger.models import TIME_FORMAT, utcnow
from ledger.records import InstanceRecord, TaskRecord
from ledger.states import TaskKind
from ledger.tasks import Tasks
from tests.conftest import ROOT, THREE_ATTEMPTS_THEN_FAILED, RunningAdapter, wait_for, write_config
from tests.dcmtk import storescu, storescu_popen
from tests.dicom import make_instance, make_study
from tests.peers.send import send_files

AE = "DICOMADAPTER"
ARGUMENTS = "{manifest} {job_dir} {study_instance_uid} {job_id}"

# Every script starts by recording its run; the tests append what it does next.
RECORD_RUN = """\
import json, os, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
manifest_path, job_dir, study_uid, job_id = sys.argv[1:5]
manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
run = {
    "job_id": int(job_id),
    "study_instance_uid": study_uid,
    "job_dir": job_dir,
    "cwd": os.getcwd(),
    "files": sorted(os.listdir(job_dir)),
    "manifest_job_id": manifest["job_id"],
    "manifest_study_instance_uid": manifest["study_instance_uid"],
    "manifest_sops": sorted(entry["sop_instance_uid"] for entry in manifest["instances"]),
    "attempt": manifest["attempt"],
    "idempotency_key": manifest["idempotency_key"],
}
with open(HERE / "runs.jsonl", "a", encoding="utf-8") as record:
    record.write(json.dumps(run) + "\\n")
"""

FAIL_UNTIL_ALLOWED = """
if not (HERE / "upstream-ok").exists():
    print("uploading", flush=True)
    print(f"error: upstream refused study {study_uid}", file=sys.stderr)
    sys.exit(3)
"""

HANG_WITH_A_CHILD = """
import subprocess, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(HERE / "pids.part").write_text(f"{os.getpid()} {child.pid}")
os.replace(HERE / "pids.part", HERE / "pids")
time.sleep(60)
"""


# -- set-up ---------------------------------------------------------------------


def processing_config(
    folder: Path,
    port: int,
    ae_keys: str,
    *,
    script: str = "",
    reclaim_interval: float = 0.2,
    more_aes: str = "",
) -> Path:
    """A config whose AE runs ``RECORD_RUN + script`` as its ``command`` processor."""
    hook = folder / "hook.py"
    hook.write_text(RECORD_RUN + script, encoding="utf-8")
    command = f"{shlex.join([sys.executable, str(hook)])} {ARGUMENTS}"
    return write_config(
        folder,
        port,
        aes=f"[ae:{AE}]\nprocessor = command\ncommand = {command}\n{ae_keys}\n{more_aes}",
        storage=f"min_free = 0\nreclaim_interval = {reclaim_interval}",
    )


def runs(folder: Path) -> list[dict]:
    record = folder / "runs.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dicom_adapter(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``dicom-adapter ARGS --config CONFIG`` as a user runs it (``python adapter.py``)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# -- ledger reads ---------------------------------------------------------------


def query(running: RunningAdapter, sql: str, *parameters: object) -> list[tuple]:
    with running.ledger.engine.connect() as connection:
        return [tuple(row) for row in connection.exec_driver_sql(sql, parameters)]


def moves(running: RunningAdapter, instance_id: int) -> list[tuple[str | None, str]]:
    """(from_state, to_state) of every event of one instance, in order."""
    return [(source, target) for source, target, _ in history(running, instance_id)]


def history(running: RunningAdapter, instance_id: int) -> list[tuple[str | None, str, str]]:
    return query(
        running,
        "SELECT from_state, to_state, reason FROM events WHERE instance_id = ? ORDER BY id",
        instance_id,
    )


def job_history(running: RunningAdapter, job_id: int) -> list[tuple[str | None, str, str, str]]:
    """(from_state, to_state, at, reason) of every event of one job, in order."""
    return query(
        running,
        "SELECT from_state, to_state, at, reason FROM job_events WHERE job_id = ? ORDER BY id",
        job_id,
    )


def recorded_at(running: RunningAdapter, instance_id: int) -> int:
    """The id of the event that created the instance's row (ids follow commit order)."""
    [(event_id,)] = query(
        running,
        "SELECT id FROM events WHERE instance_id = ? AND from_state IS NULL",
        instance_id,
    )
    return event_id


def jobs_root(running: RunningAdapter) -> Path:
    """Where job folders are built: ``[storage] jobs``, or ``spool/jobs`` before that key."""
    return getattr(running.config.storage, "jobs", running.spool / "jobs")


def jobs(running: RunningAdapter) -> list[TaskRecord]:
    return Tasks(running.adapter.processing.ledger).listing(TaskKind.PROCESS)


def when(text: str) -> datetime:
    """A time as the ledger stores it (ISO-8601 UTC text)."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def all_in(running: RunningAdapter, state: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        rows = running.rows()
        return len(rows) == count and all(row.state == state for row in rows)

    return check


STORY = [
    (None, "received"),
    ("received", "claimed"),
    ("claimed", "submitted"),
    ("submitted", "reclaimable"),
    ("reclaimable", "reclaimed"),
]
JOB_STORY = [(None, "pending"), ("pending", "running"), ("running", "succeeded")]


# -- 1. the whole path, DCMTK to reclaimed --------------------------------------


def test_interleaved_studies_each_run_once_then_are_reclaimed(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    """Three studies over two concurrent storescu associations, files interleaved."""
    running = start_adapter(processing_config(tmp_path, port, "timeout = 1"))
    studies = [make_study(tmp_path / f"study{n}", 6) for n in range(3)]
    interleaved = [study[i] for i in range(6) for study in studies]
    halves = interleaved[0::2], interleaved[1::2]
    for half in halves:  # each association carries part of every study
        assert {path.parent for path in half} == {study[0].parent for study in studies}
    senders = [storescu_popen(port, half, calling=f"MODALITY{n}") for n, half in enumerate(halves)]
    for sender in senders:
        _, log = sender.communicate(timeout=60)
        assert sender.returncode == 0, log.decode()
    rows = running.wait_rows(18)
    expected: dict[str, set[str]] = {}  # study -> its SOP Instance UIDs
    for study in studies:
        uids = {sop_uid(path) for path in study}
        [study_uid] = {row.study_instance_uid for row in rows if row.sop_instance_uid in uids}
        expected[study_uid] = uids
    # Really two associations, each with instances of every study.
    for study_uid in expected:
        senders_of = {
            (r.calling_ae, r.peer_address) for r in rows if r.study_instance_uid == study_uid
        }
        assert {calling for calling, _ in senders_of} == {"MODALITY0", "MODALITY1"}
        assert len({address for _, address in senders_of}) == 2

    wait_for(all_in(running, "reclaimed", 18), timeout=20)

    # The command ran exactly once per study, with exactly that study.
    recorded = runs(tmp_path)
    assert sorted(run["study_instance_uid"] for run in recorded) == sorted(expected)
    finished = {job.id: job for job in jobs(running)}
    assert sorted(finished) == sorted(run["job_id"] for run in recorded)
    for run in recorded:
        sops = expected[run["study_instance_uid"]]
        job = finished[run["job_id"]]
        assert (job.state, job.group_key, job.item_count) == (
            "succeeded",
            run["study_instance_uid"],
            6,
        )
        assert run["files"] == sorted(
            [*(f"{sop}.dcm" for sop in sops), "command.stderr", "command.stdout", "manifest.json"]
        )
        assert run["manifest_sops"] == sorted(sops)
        assert run["manifest_job_id"] == job.id and run["attempt"] == 1
        assert run["manifest_study_instance_uid"] == run["study_instance_uid"]
        assert run["idempotency_key"] == job.idempotency_key
        assert Path(run["cwd"]) == Path(run["job_dir"]) == jobs_root(running) / str(job.id)
        assert [(a, b) for a, b, _, _ in job_history(running, job.id)] == JOB_STORY
        assert "quiet for" in job_history(running, job.id)[0][3]

    # Every instance's whole story, rows kept, files and folders gone.
    rows = running.rows()
    assert len(rows) == 18 and {row.state for row in rows} == {"reclaimed"}
    for row in rows:
        assert moves(running, row.id) == STORY
        assert row.job_id in finished and finished[row.job_id].group_key == row.study_instance_uid
        reasons = [reason for _, _, reason in history(running, row.id)]
        assert reasons[1].startswith(f"claimed by job {row.job_id}: quiet for")
        assert reasons[2] == f"submitted by job {row.job_id}"
        assert reasons[4] == "file deleted by the reclaimer"
        assert not Path(row.path).exists()
    assert list((running.spool / AE).iterdir()) == []
    wait_for(lambda: list(jobs_root(running).iterdir()) == [], timeout=5)
    assert len(runs(tmp_path)) == 3  # and nothing ran again afterwards


# -- 2. a failing command: backoff, failed, jobs retry --------------------------


def test_failing_command_backs_off_fails_and_is_retried_by_hand(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    config = processing_config(
        tmp_path,
        port,
        "timeout = 0.5\nretries = 2\nretry_delay = 0.2",
        script=FAIL_UNTIL_ALLOWED,
    )
    running = start_adapter(config)
    sent = make_study(tmp_path / "study", 4)
    assert storescu(port, sent).returncode == 0
    rows = running.wait_rows(4)
    study_uid = rows[0].study_instance_uid
    wait_for(lambda: jobs(running), timeout=10)
    [job] = jobs(running)

    # Watch the job while it fails: attempts and when each retry is due.
    waiting: dict[int, datetime] = {}

    def failed() -> bool:
        current = Tasks(running.adapter.processing.ledger).get(job.id)
        if current.state == "pending" and current.attempts:
            waiting.setdefault(current.attempts, current.next_attempt_at)
        return current.state == "failed"

    wait_for(failed, timeout=20, interval=0.01)
    job = Tasks(running.adapter.processing.ledger).get(job.id)
    error = f"command exited with 3: error: upstream refused study {study_uid}"
    assert (job.attempts, job.last_error, job.next_attempt_at) == (3, error, None)
    assert [run["attempt"] for run in runs(tmp_path)] == [1, 2, 3]

    # Backoff: each retry was due retry_delay * 2**(attempt-1) after its failure.
    events = job_history(running, job.id)
    assert [(a, b) for a, b, _, _ in events] == THREE_ATTEMPTS_THEN_FAILED
    failures = [when(at) for a, b, at, _ in events if a == "running"]
    starts = [when(at) for a, b, at, _ in events if b == "running"]
    assert sorted(waiting) == [1, 2]
    due = [waiting[n] - failures[n - 1] for n in (1, 2)]
    assert due == [timedelta(seconds=0.2), timedelta(seconds=0.4)]
    gaps = [starts[n] - failures[n - 1] for n in (1, 2)]
    assert gaps[0] >= timedelta(seconds=0.2) and gaps[1] >= timedelta(seconds=0.4)
    assert events[-1][3].endswith(f"delivered: no retries left: {error}")

    # Failed: instances stay claimed, on disk; the job folder keeps the output.
    for row in running.rows():
        assert (row.state, row.job_id) == ("claimed", job.id)
        assert Path(row.path).is_file()
    job_dir = jobs_root(running) / str(job.id)
    stderr = (job_dir / "command.stderr").read_text()
    assert stderr == f"error: upstream refused study {study_uid}\n"
    assert (job_dir / "command.stdout").read_text() == "uploading\n"

    listed = dicom_adapter("jobs", "--state", "failed", config=config)
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.splitlines()
    assert header.split()[:7] == ["ID", "KIND", "STATE", "TARGET", "ITEMS", "FAILED", "ATTEMPTS"]
    assert line.split(None, 8) == [
        str(job.id),
        "job",
        "failed",
        AE,
        "4",
        "4",
        "3",
        study_uid,
        error[:80],
    ]
    reported = dicom_adapter("status", "--json", config=config)
    assert reported.returncode == 1, reported.stderr  # a failed job is unhealthy
    status = json.loads(reported.stdout)
    assert status["health"]["failed_jobs"] == [job.id] and not status["health"]["healthy"]
    assert status["jobs"]["failed"] == 1 and status["counts"]["claimed"] == 4

    # Fix the upstream, retry by hand: the same job runs once more and succeeds.
    (tmp_path / "upstream-ok").touch()
    retried = dicom_adapter("jobs", "retry", str(job.id), config=config)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout == f"job {job.id} is pending again (4 instances)\n"
    wait_for(all_in(running, "reclaimed", 4), timeout=20)
    job = Tasks(running.adapter.processing.ledger).get(job.id)
    assert (job.state, job.attempts, job.last_error) == ("succeeded", 1, None)
    recorded = runs(tmp_path)
    assert [run["attempt"] for run in recorded] == [1, 2, 3, 1]
    assert {run["job_id"] for run in recorded} == {job.id}
    assert {run["idempotency_key"] for run in recorded} == {job.idempotency_key}
    assert recorded[-1]["manifest_sops"] == sorted(map(sop_uid, sent))
    assert [(a, b) for a, b, _, _ in job_history(running, job.id)][-3:] == [
        ("failed", "pending"),
        ("pending", "running"),
        ("running", "succeeded"),
    ]
    for row in running.rows():
        assert moves(running, row.id) == STORY
    assert dicom_adapter("jobs", "--state", "failed", config=config).stdout == header + "\n"
    again = dicom_adapter("jobs", "retry", str(job.id), config=config)
    assert again.returncode == 1
    assert (
        again.stderr
        == f"Error: job {job.id}: cannot move a job in state 'succeeded' to 'pending'\n"
    )


# -- 3. a hung command is killed with its children ------------------------------


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_hung_command_is_killed_with_its_process_group(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    running = start_adapter(
        processing_config(
            tmp_path,
            port,
            "timeout = 0.5\ncommand_timeout = 0.5\nretries = 0",
            script=HANG_WITH_A_CHILD,
        )
    )
    sent = [
        make_instance(tmp_path / "in" / f"{n}.dcm", study_uid="1.2.826.0.1.99.7") for n in range(2)
    ]
    assert [status for _, status in send_files("127.0.0.1", port, sent, called_ae=AE)] == [0, 0]
    running.wait_rows(2)
    pid_file = tmp_path / "pids"
    wait_for(pid_file.exists, timeout=10)
    pids = [int(pid) for pid in pid_file.read_text().split()]
    try:
        # Generous: on a loaded machine the job may start late; how long it ran is
        # what the kill is judged by (ran_for below).
        wait_for(lambda: [job.state for job in jobs(running)] == ["failed"], timeout=30)
        [job] = jobs(running)
        assert job.last_error == "command killed after command_timeout = 0.5s"
        events = job_history(running, job.id)
        assert [(a, b) for a, b, _, _ in events] == [
            (None, "pending"),
            ("pending", "running"),
            ("running", "failed"),
        ]
        ran_for = (when(events[2][2]) - when(events[1][2])).total_seconds()
        assert 0.5 <= ran_for < 5, ran_for  # killed at the timeout, not after the 60 s hang
        # The script and the child it started are both gone, not orphaned.
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)
        for row in running.rows():
            assert row.state == "claimed" and Path(row.path).is_file()
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- 4. max_wait closes a group that never goes quiet ---------------------------


def test_max_wait_closes_a_busy_group_and_late_arrivals_start_a_new_one(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    running = start_adapter(processing_config(tmp_path, port, "timeout = 1\nmax_wait = 0.6"))
    study_uid, series_uid = generate_uid(), generate_uid()
    sent = [
        make_instance(
            tmp_path / "in" / f"{n:02d}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=n,
        )
        for n in range(12)
    ]
    started = time.monotonic()
    for n, path in enumerate(sent):  # one every 0.15 s: never quiet for 1 s
        time.sleep(max(0.0, started + 0.15 * n - time.monotonic()))
        assert send_files("127.0.0.1", port, [path], called_ae=AE) == [(path, 0)]
    wait_for(all_in(running, "reclaimed", 12), timeout=20)

    rows = running.rows()
    found = jobs(running)
    assert len(found) >= 2 and {job.group_key for job in found} == {study_uid}
    assert sum(job.item_count for job in found) == 12
    first = found[0]
    assert first.created_at < max(row.received_at for row in rows)  # claimed mid-stream
    assert "max_wait 0.6s" in job_history(running, first.id)[0][3]
    members = [row for row in rows if row.job_id == first.id]
    late = [row for row in rows if row.job_id != first.id]
    assert members and late
    # In commit order (event ids): every later instance was recorded after the claim.
    [(claimed,)] = query(
        running, "SELECT max(id) FROM events WHERE reason LIKE ?", f"claimed by job {first.id}:%"
    )
    assert all(recorded_at(running, row.id) > claimed for row in late)
    # The first late instance says which job took its group, and starts the next.
    assert history(running, late[0].id)[1] == (
        "received",
        "received",
        f"late arrival: job {first.id} already took this group; starts a new group",
    )
    assert late[0].job_id == found[1].id
    for row in late:
        assert moves(running, row.id) == [STORY[0], ("received", "received"), *STORY[1:]]
        assert "late arrival: job" in history(running, row.id)[1][2]
    for row in members:
        if row.received_at < first.created_at - timedelta(seconds=0.1):
            assert moves(running, row.id) == STORY
    # Every job ran once with exactly its own instances.
    by_job = {run["job_id"]: run["manifest_sops"] for run in runs(tmp_path)}
    assert by_job == {
        job.id: sorted(row.sop_instance_uid for row in rows if row.job_id == job.id)
        for job in found
    }


# -- 5. SOP classes a processor does not want -----------------------------------


@pytest.mark.parametrize(
    "key, uid, reason",
    [
        ("ignored_sop_classes", MRImageStorage, "declined: SOP class in ignored_sop_classes"),
        ("allowed_sop_classes", CTImageStorage, "declined: SOP class not in allowed_sop_classes"),
    ],
    ids=["ignored", "allowed"],
)
def test_declined_sop_classes_skip_processing_and_are_reclaimed(
    start_adapter: Callable[[Path], RunningAdapter],
    tmp_path: Path,
    port: int,
    key: str,
    uid: str,
    reason: str,
) -> None:
    """A mixed CT + MR study where only the CT instances are wanted."""
    # A quiet period well past the watcher's 0.5 s settle time: under a loaded CI host
    # the five files may reach intake in two batches, which must still make one group.
    running = start_adapter(processing_config(tmp_path, port, f"timeout = 2\n{key} = {uid}"))
    study_uid = generate_uid()
    ct = make_study(tmp_path / "ct", 3, study_uid=study_uid, sop_class_uid=CTImageStorage)
    mr = make_study(tmp_path / "mr", 2, study_uid=study_uid, sop_class_uid=MRImageStorage)
    result = storescu(port, [ct[0], mr[0], ct[1], mr[1], ct[2]])
    assert result.returncode == 0, result.stderr
    wait_for(all_in(running, "reclaimed", 5), timeout=20)

    rows = running.rows()
    [job] = jobs(running)
    ct_rows = [row for row in rows if row.sop_class_uid == CTImageStorage]
    mr_rows = [row for row in rows if row.sop_class_uid == MRImageStorage]
    assert len(ct_rows) == 3 and len(mr_rows) == 2
    for row in mr_rows:
        assert row.job_id is None
        assert history(running, row.id) == [
            (None, "received", "received"),
            ("received", "reclaimable", reason),
            ("reclaimable", "reclaimed", "file deleted by the reclaimer"),
        ]
    for row in ct_rows:
        assert row.job_id == job.id and moves(running, row.id) == STORY
    [run] = runs(tmp_path)
    assert run["manifest_sops"] == sorted(sop_uid(path) for path in ct)
    assert [name for name in run["files"] if name.endswith(".dcm")] == sorted(
        f"{sop_uid(path)}.dcm" for path in ct
    )
    assert (job.state, job.item_count) == ("succeeded", 3)
    assert list((running.spool / AE).iterdir()) == []


# -- 6. no processor: a plain receiver keeps everything -------------------------


def test_ae_without_processor_keeps_instances_received_and_on_disk(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    """A plain AE beside a processing one: the ticks run, and leave the plain AE alone."""
    running = start_adapter(
        processing_config(
            tmp_path, port, "timeout = 0.5", reclaim_interval=0.1, more_aes="[ae:PLAIN]\n"
        )
    )
    assert running.config.aes["PLAIN"].processor == "none"
    kept = make_study(tmp_path / "kept", 3)
    processed = make_study(tmp_path / "processed", 2)
    assert storescu(port, kept, called="PLAIN").returncode == 0
    assert storescu(port, processed).returncode == 0
    running.wait_rows(5)
    # The processing AE's study goes all the way: grouping, dispatch and reclaim ran.
    wait_for(
        lambda: sorted(row.state for row in running.rows()) == ["received"] * 3 + ["reclaimed"] * 2,
        timeout=20,
    )
    # Every tick once more, a day from now: still nothing for the plain AE.
    later = utcnow() + timedelta(days=1)
    assert "PLAIN" not in running.adapter.groupers
    assert sum(grouper.tick(later) for grouper in running.adapter.groupers.values()) == 0
    assert running.adapter.runner.tick(later) == 0
    assert running.adapter.reclaimer.tick(later) == 0

    plain: list[InstanceRecord] = [row for row in running.rows() if row.called_ae == "PLAIN"]
    assert len(plain) == 3
    for row in plain:
        assert (row.state, row.job_id) == ("received", None)
        assert Path(row.path).is_file()
        assert moves(running, row.id) == [(None, "received")]
    assert {job.target for job in jobs(running)} == {AE}
    assert query(running, "SELECT count(*) FROM jobs WHERE called_ae = 'PLAIN'") == [(0,)]
