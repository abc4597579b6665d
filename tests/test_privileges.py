"""A command the adapter runs never holds the capability to bind port 104.

systemd gives the service ``CAP_NET_BIND_SERVICE`` as an ambient capability,
which every program it executes would inherit.  Here the adapter runs as a
real process under ``setpriv`` the way systemd would start it: the ambient
set holds ``CAP_NET_BIND_SERVICE`` and, with ``SECBIT_NOROOT``, uid 0 gains
nothing else on exec (so running as root in CI still tells).  The SCP
process must keep it (it binds a port below 1024); a ``command`` processor's
program must have no capability at all.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, port_open, wait_for, write_config
from tests.dicom import make_study
from tests.peers.send import send_files

CAP_NET_BIND_SERVICE = 10


def capabilities(status: str) -> dict[str, int]:
    """The Cap* masks of a /proc/<pid>/status text."""
    return {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith("Cap")
    }


def privileged_free_port() -> int:
    for port in range(900, 1000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024")


def test_the_listener_keeps_cap_net_bind_service_and_commands_get_none(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is not installed (Debian package util-linux)")
    port = privileged_free_port()
    report = tmp_path / "command-status"
    command = f"{sys.executable} -c \"import shutil; shutil.copy('/proc/self/status', '{report}')\""
    aes = f"[ae:DICOMADAPTER]\nprocessor = command\ncommand = {command}\ntimeout = 0.2\n"
    config = write_config(tmp_path, port, aes=aes)
    systemd_like = [
        setpriv,
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
    ]
    log = tmp_path / "adapter.log"
    with open(log, "wb") as output:
        adapter = subprocess.Popen(
            [
                *systemd_like,
                sys.executable,
                str(ROOT / "adapter.py"),
                "run",
                "--config",
                str(config),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_for(lambda: port_open(port) or adapter.poll() is not None, timeout=30)
        assert adapter.poll() is None, log.read_text()  # the SCP bound a port below 1024
        files = make_study(tmp_path / "sent", 1)
        assert send_files("127.0.0.1", port, files, called_ae="DICOMADAPTER")[0][1] == 0
        wait_for(report.exists, timeout=20)
        assert capabilities(report.read_text()) == {
            "CapInh": 1 << CAP_NET_BIND_SERVICE,
            "CapPrm": 0,
            "CapEff": 0,
            "CapBnd": 1 << CAP_NET_BIND_SERVICE,
            "CapAmb": 0,
        }
    finally:
        adapter.terminate()
        adapter.wait(timeout=60)
