"""What the service writes holds patient data: never readable by other users.

The adapter runs as a real process started with umask 000 (the loosest an
admin could leave), receives a study and runs a job on it; every file and
folder it made is then at most 0640 / 0750.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AdapterProcess, wait_for, write_config
from tests.dicom import make_study
from tests.peers.send import send_files


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Start children with umask 000 (inherited through fork and exec)."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_spool_jobs_manifests_command_output_and_ledger_are_private(
    loose_umask: None, tmp_path: Path, port: int
) -> None:
    command = f"{sys.executable} -c pass"
    aes = f"[ae:DICOMADAPTER]\nprocessor = command\ncommand = {command}\ntimeout = 0.3\n"
    aes += "retention = 3600\n"
    config = write_config(tmp_path, port, aes=aes)
    adapter = AdapterProcess(config, port, tmp_path / "adapter.log")
    adapter.start()
    try:
        files = make_study(tmp_path / "sent", 2)
        assert [s for _, s in send_files("127.0.0.1", port, files, called_ae="DICOMADAPTER")] == [
            0,
            0,
        ]
        ledger = adapter.ledger()
        wait_for(lambda: [r.state for r in ledger.instances()] == ["submitted"] * 2, timeout=20)
        ledger.engine.dispose()
    finally:
        adapter.signal(15)
    made = [
        path
        for root in (tmp_path / "spool", tmp_path / "var" / "jobs")
        for path in [root, *root.rglob("*")]
    ] + list(tmp_path.glob("ledger.db*"))
    assert any(p.name == "manifest.json" for p in made)
    assert any(p.name == "command.stdout" for p in made)
    loose = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in made
        if stat.S_IMODE(p.stat().st_mode) & 0o027
    }
    assert loose == {}
