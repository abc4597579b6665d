"""A command left running by a crashed adapter is stopped before its job runs again."""

import subprocess
import sys
import time
from pathlib import Path

from processors.command import _start_time, kill_leftovers


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_leftover_process_group_is_killed(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print(flush=True); time.sleep(60)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE
    )
    leader.stdout.readline()  # the grandchild has been started
    children = [
        int(p) for p in Path(f"/proc/{leader.pid}/task/{leader.pid}/children").read_text().split()
    ]
    (tmp_path / "7.pid").write_text(f"{leader.pid} {_start_time(leader.pid)}\n")
    (tmp_path / "8.pid").write_text(f"{leader.pid} 1\n")  # a reused pid: not ours to kill
    assert kill_leftovers(tmp_path) == 1
    leader.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_pid_file_is_only_removed(tmp_path: Path) -> None:
    (tmp_path / "9.pid").write_text("999999999 5\n")
    assert kill_leftovers(tmp_path) == 0
    assert not (tmp_path / "9.pid").exists()
