"""Each AE and each destination is a lane: one lane's slow work never holds up another's.

The service runs with two AEs whose processors are real commands: one that
takes 40 s, one that is quick.  The quick AE's study is processed while the
slow one's job is still running.  The runner's own bounds (one task per
lane at a time, at most ``workers`` lanes at once) are checked with lanes
that wait for the test to let them go, over a real ledger.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ledger.db import make_engine
from ledger.migrate import upgrade
from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import TaskRecord
from ledger.states import TaskKind
from ledger.store import Ledger
from ledger.tasks import Tally, Tasks, conclude
from tasks.runner import TaskRunner
from tests.conftest import RunningAdapter, new_instance, wait_for, write_config
from tests.dicom import make_instance
from tests.peers.send import send_files

SLOW_COMMAND = """\
import os, sys, time
from pathlib import Path
Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(40)
"""


def command_ae(name: str, folder: Path, script: str) -> str:
    hook = folder / f"{name}.py"
    hook.write_text(script, encoding="utf-8")
    marker = folder / f"{name}.started"
    command = shlex.join([sys.executable, str(hook), str(marker)])
    return (
        f"[ae:{name}]\nprocessor = command\ncommand = {command}\ntimeout = 0.5\n"
        "command_timeout = 120\nretries = 0\n"
    )


def test_one_ae_s_40_s_command_does_not_delay_another_ae_s_job(
    start_adapter: Callable[[Path], RunningAdapter], tmp_path: Path, port: int
) -> None:
    aes = command_ae("SLOW", tmp_path, SLOW_COMMAND) + command_ae(
        "QUICK", tmp_path, "import sys\nfrom pathlib import Path\nPath(sys.argv[1]).touch()\n"
    )
    running = start_adapter(write_config(tmp_path, port, aes=aes))
    slow = make_instance(tmp_path / "in" / "slow.dcm", study_uid="1.2.826.0.1.77.1")
    quick = make_instance(tmp_path / "in" / "quick.dcm", study_uid="1.2.826.0.1.77.2")
    assert [s for _, s in send_files("127.0.0.1", port, [slow], called_ae="SLOW")] == [0]
    wait_for((tmp_path / "SLOW.started").exists, timeout=20)
    slow_pid = int((tmp_path / "SLOW.started").read_text())
    try:
        started = time.monotonic()
        assert [s for _, s in send_files("127.0.0.1", port, [quick], called_ae="QUICK")] == [0]

        def states() -> dict[str, str]:
            listed = running.adapter.tasks.listing(TaskKind.PROCESS)
            return {task.target: task.state for task in listed}

        wait_for(lambda: states().get("QUICK") == "succeeded", timeout=20)
        waited = time.monotonic() - started
        assert states()["SLOW"] == "running", "the slow command should still be running"
        assert (tmp_path / "QUICK.started").exists()
        # Quiet period (0.5 s), a group tick and a task tick: seconds, not the 40 s.
        assert waited < 15, waited
    finally:
        os.kill(slow_pid, signal.SIGKILL)


class GatedLane:
    """A lane that holds each task until the test lets it go, and counts who runs at once."""

    def __init__(self, tasks: Tasks, record: list[tuple[str, int]], gate: threading.Event) -> None:
        self.tasks, self.record, self.gate = tasks, record, gate

    def takes(self, task: TaskRecord) -> bool:
        return task.submitter == "gated"

    def run(self, task: TaskRecord) -> None:
        self.record.append((task.target, task.id))
        self.gate.wait(10)
        with self.tasks.ledger.transaction() as tx:
            conclude(tx, task.id, Tally(task.item_count, 0, 0), None, None)


def add_jobs(processing: Processing, called_ae: str, count: int) -> list[int]:
    ids = []
    for n in range(count):
        study = f"9.{called_ae}.{n}"
        new = new_instance(
            f"/spool/{called_ae}/{n}.dcm", called_ae, f"1.2.{len(called_ae)}.{n}", study
        )
        with processing.ledger.transaction() as tx:
            tx.add(new, "received")
        job = processing.claim_group(called_ae, f"9.{called_ae}.{n}", "gated", "test")
        assert job is not None
        ids.append(job.id)
    return ids


def test_a_lane_runs_one_task_at_a_time_and_workers_bound_the_lanes(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    processing, tasks = Processing(ledger), Tasks(ledger)
    for ae in ("A", "B", "C"):
        add_jobs(processing, ae, 2)
    runner = TaskRunner(tasks, workers=2)
    gate, record = threading.Event(), []
    runner.lanes = {(TaskKind.PROCESS, ae): GatedLane(tasks, record, gate) for ae in "ABC"}
    try:
        later = utcnow() + timedelta(seconds=1)
        assert runner.tick(later) == 6
        wait_for(lambda: len(record) == 2, timeout=5)
        time.sleep(0.3)  # were a third lane or a lane's second task to start, it would now
        assert len(record) == 2 and len({target for target, _ in record}) == 2
        assert runner.tick(later) == 0  # every lane with due work is busy or queued
        gate.set()
        wait_for(lambda: all(t.state == "succeeded" for t in tasks.listing()), timeout=10)
        # Each lane ran its own tasks in the order they fell due.
        for ae in "ABC":
            ids = [task_id for target, task_id in record if target == ae]
            assert ids == sorted(ids) and len(ids) == 2
    finally:
        gate.set()
        runner.shutdown()
        engine.dispose()
