"""What a new admin meets first: which AE titles are answered, the version, a
top-level --config, the shutdown line, counted nouns.  Real subprocesses and
exact output, as tests/test_cli.py."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
from pathlib import Path

import pytest

from config import config_warnings, load_config
from health import health
from ledger.delivery import reclaimed_without_a_finished_job
from ledger.states import TaskKind
from ledger.tasks import Tasks
from tests.conftest import AdapterProcess, wait_for, write_config
from tests.dicom import make_study
from tests.peers.send import send_files
from tests.test_cli import cli

EDGE_ONLY_CT = "[ae:CT]"


def edge_config(tmp_path: Path, port: int) -> Path:
    """``[dicom] ae_title = EDGE`` with only ``[ae:CT]``: EDGE is not answered."""
    path = write_config(tmp_path, port, aes=EDGE_ONLY_CT, dicom="ae_title = EDGE")
    return path


def test_config_check_says_the_dicom_ae_title_is_not_answered(tmp_path: Path, port: int) -> None:
    path = edge_config(tmp_path, port)
    (warning,) = config_warnings(load_config(path))
    assert warning == (
        "[dicom] ae_title: EDGE is our calling AE title for exports, and is not answered: "
        "peers must call CT (add [ae:EDGE] to answer it too)"
    )
    result = cli("config", "check", "--config", str(path))
    assert result.returncode == 0
    assert result.stderr == f"Warning: {path} {warning}\n"
    assert result.stdout.startswith(f"{path}: OK, 1 AE title (0 with a processor)")


def test_the_start_up_line_names_the_ae_titles_answered(
    start_adapter, tmp_path: Path, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    start_adapter(edge_config(tmp_path, port))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("listening on")]
    assert lines == [f"listening on 127.0.0.1:{port} for CT"]


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"dicom-adapter {version('dicom-adapter')}\n"


def test_a_top_level_config_reaches_every_command(config_path: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert cli("--config", str(config_path), "db", "upgrade", cwd=elsewhere).returncode == 0
    result = cli("--config", str(config_path), "status", cwd=elsewhere)
    assert "UNHEALTHY: not listening" in result.stdout, result
    # the command's own --config wins over the top-level one
    result = cli("--config", str(tmp_path / "nope.ini"), "status", "--config", str(config_path))
    assert "UNHEALTHY: not listening" in result.stdout, result


def test_one_line_at_shutdown_with_the_reason_and_what_was_in_flight(
    adapter_process: AdapterProcess,
) -> None:
    adapter_process.start()
    assert adapter_process.signal(signal.SIGTERM) == 0
    lines = [line for line in adapter_process.log.read_text().splitlines() if "stopping:" in line]
    assert len(lines) == 1, adapter_process.log.read_text()
    assert lines[0].endswith(
        " INFO adapter: stopping: SIGTERM; in flight: 0 associations, "
        "0 files waiting for intake, 0 running jobs, 0 exports sending"
    )


def test_status_keeps_patient_identifiers_out_unless_asked(
    start_adapter, tmp_path: Path, port: int
) -> None:
    aes = f"[ae:DICOMADAPTER]\nprocessor = folder\noutput = {tmp_path / 'out'}\n"
    aes += "group_by = PatientID\ntimeout = 3600\n"
    path = write_config(tmp_path, port, aes=aes)
    running = start_adapter(path)
    files = make_study(tmp_path / "study", 2, patient_id="PAT-SECRET-7")
    assert [s for _, s in send_files("127.0.0.1", port, files, called_ae="DICOMADAPTER")] == [0, 0]
    running.wait_rows(2)
    wait_for(
        lambda: "PAT-SECRET-7" in cli("status", "--json", "--phi", "--config", str(path)).stdout
    )
    for form in (["--json"], []):
        result = cli("status", *form, "--config", str(path))
        assert "PAT-SECRET-7" not in result.stdout, result.stdout
    report = json.loads(cli("status", "--json", "--config", str(path)).stdout)
    assert report["oldest_open_group"]["group_key"] is None
    assert "patient_id" not in report["studies"][0]
    assert "(group key: --phi)" in cli("status", "--config", str(path)).stdout
    text = cli("status", "--phi", "--config", str(path)).stdout
    assert "patient PAT-SECRET-7" in text and "DICOMADAPTER PAT-SECRET-7, 2 instances" in text
    shown = json.loads(cli("status", "--json", "--phi", "--config", str(path)).stdout)
    assert shown["oldest_open_group"]["group_key"] == "PAT-SECRET-7"
    assert shown["studies"][0]["patient_id"] == "PAT-SECRET-7"


def test_a_failed_job_can_be_discarded_keeping_or_deleting_its_files(
    start_adapter, tmp_path: Path, port: int
) -> None:
    aes = "[ae:DICOMADAPTER]\nprocessor = command\ncommand = /bin/false\nretries = 0\n"
    aes += "timeout = 0.3\n"
    path = write_config(tmp_path, port, aes=aes)
    running = start_adapter(path)
    files = make_study(tmp_path / "study", 3)
    assert [s for _, s in send_files("127.0.0.1", port, files, called_ae="DICOMADAPTER")] == [0] * 3
    processing = running.adapter.processing
    wait_for(
        lambda: [j.state for j in Tasks(processing.ledger).listing(TaskKind.PROCESS)] == ["failed"],
        timeout=30,
    )
    (job,) = Tasks(processing.ledger).listing(TaskKind.PROCESS)
    assert health(running.config, running.ledger)["failed_jobs"] == [job.id]

    refused = cli("jobs", "discard", str(job.id), "--config", str(path), input="n\n")
    assert refused.returncode == 1 and Tasks(processing.ledger).get(job.id).state == "failed"
    result = cli("jobs", "discard", str(job.id), "--config", str(path), input="y\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(
        f"job {job.id} discarded (3 undelivered instances, files kept in the spool)\n"
    )
    assert Tasks(processing.ledger).get(job.id).state == "discarded"
    assert health(running.config, running.ledger)["failed_jobs"] == []
    rows = running.rows()
    assert {r.state for r in rows} == {"claimed"} and all(Path(r.path).exists() for r in rows)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        (reason,) = db.execute(
            "SELECT reason FROM job_events WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job.id,)
        ).fetchone()
    assert (
        reason
        == "3 undelivered instances given up: dicom-adapter jobs discard (files kept in the spool)"
    )

    later = cli("jobs", "discard", str(job.id), "--delete-files", "--yes", "--config", str(path))
    assert (
        later.stdout
        == f"job {job.id} discarded (3 undelivered instances, files deleted by the reclaimer)\n"
    )
    running.adapter.reclaimer.tick()
    assert {r.state for r in running.rows()} == {"reclaimed"}
    assert not any(Path(r.path).exists() for r in rows)
    assert reclaimed_without_a_finished_job(running.ledger) == []  # not "lost": a decision
    again = cli("jobs", "retry", str(job.id), "--config", str(path))
    assert again.returncode == 1 and "cannot move a job in state 'discarded'" in again.stderr
