"""The unit file and the notify protocol, tested for real."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningAdapter, port_open

UNIT = ROOT / "systemd" / "dicom-adapter.service"


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    script = Path(sys.executable).parent / "dicom-adapter"
    unit = tmp_path / "dicom-adapter.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/dicom-adapter/.venv/bin/dicom-adapter", str(script))
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_unit_is_hardened_to_an_exposure_of_2_5_or_less(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the shipped unit (it was 5.5 MEDIUM)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


def test_unit_promises() -> None:
    lines = UNIT.read_text().splitlines()
    directives = dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    assert directives["Type"] == "notify" and directives["NotifyAccess"] == "main"
    assert directives["RestartPreventExitStatus"] == "2" and directives["Restart"] == "on-failure"
    assert directives["ProtectSystem"] == "strict" and directives["NoNewPrivileges"] == "yes"
    assert directives["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert directives["UMask"] == "0027" and directives["SystemCallArchitectures"] == "native"
    assert "@system-service" in UNIT.read_text() and directives["RestrictNamespaces"] == "yes"
    for before, line in itertools.pairwise(lines):
        if "=" in line and not line.startswith("#"):
            assert before.startswith("#"), f"no comment above {line!r}"


def receive_all(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_watchdog_stopping_in_order(config_path: Path, port: int, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "adapter.py"), "run", "--config", str(config_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            seen: list[str] = []
            listening_at_ready = None
            deadline = time.monotonic() + 30
            while seen.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
                new = receive_all(sock)
                if "READY=1" in new and listening_at_ready is None:
                    listening_at_ready = port_open(port)
                seen += new
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            seen += receive_all(sock)
        finally:
            process.kill()
    assert seen[0] == "READY=1" and listening_at_ready is True
    assert seen.count("WATCHDOG=1") >= 3
    assert seen[-1] == "STOPPING=1"
    assert set(seen) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}


def test_no_watchdog_ping_from_a_broken_adapter(
    adapter: RunningAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        adapter.adapter._watchdog_tick()
        assert receive_all(sock) == ["WATCHDOG=1"]
        adapter.adapter.intake.stop()  # a dead intake thread: acknowledged files go unrecorded
        assert adapter.adapter.alive() is False
        adapter.adapter._watchdog_tick()
        assert receive_all(sock) == []
