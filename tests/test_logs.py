"""What reaches the log: one line per record, and no patient identifier by default."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from logs import configure_logging
from tests.conftest import wait_for, write_config
from tests.dicom import make_study
from tests.peers.send import send_files


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The service's own handler (``configure_logging``), writing into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO")
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def test_a_value_with_a_line_break_cannot_forge_a_log_line(service_log: io.StringIO) -> None:
    log = logging.getLogger("adapter.test")
    log.warning("association rejected calling=%s", "CT01\nERROR adapter: forged")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed for %s", "X\r\nY")
    lines = service_log.getvalue().splitlines()
    assert lines[0].endswith(
        "WARNING adapter.test: association rejected calling=CT01\\x0aERROR adapter: forged"
    )
    assert lines[1].endswith("ERROR adapter.test: failed for X\\x0d\\x0aY")
    assert lines[2] == "Traceback (most recent call last):"  # tracebacks keep their lines
    assert lines[-1] == "ValueError: boom"


def test_a_group_key_is_not_logged(
    start_adapter, tmp_path: Path, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``group_by = PatientID`` the group key is PHI: the claim line leaves it out."""
    caplog.set_level(logging.INFO)
    aes = "[ae:DICOMADAPTER]\nprocessor = command\ncommand = true\ntimeout = 0.2\n"
    start_adapter(write_config(tmp_path, port, aes=aes + "group_by = PatientID"))
    files = make_study(tmp_path / "s", 2, patient_id="PATIENT-4711")
    assert [s for _, s in send_files("127.0.0.1", port, files, called_ae="DICOMADAPTER")] == [0, 0]
    wait_for(lambda: "claimed 2 instances" in caplog.text, timeout=20)
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [line for line in info if "PATIENT-4711" in line], info
