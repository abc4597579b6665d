"""SIGHUP: new AE titles, sources and destinations without dropping a running association."""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ledger.states import TaskKind, TaskState
from tests.conftest import AdapterProcess, free_port, wait_for
from tests.dicom import make_study
from tests.peers.send import AssociationRejected, echo, send_files


def test_sighup_reloads_and_a_broken_config_is_refused(adapter_process: AdapterProcess) -> None:
    adapter_process.start()
    port, config = adapter_process.port, adapter_process.config
    with pytest.raises(AssociationRejected):
        echo("127.0.0.1", port, called_ae="NEWAE")
    held = AE(ae_title="HOLDER")
    held.add_requested_context(Verification)
    assoc = held.associate("127.0.0.1", port, ae_title="DICOMADAPTER")
    assert assoc.is_established
    try:
        config.write_text(config.read_text() + "\n[ae:NEWAE]\n")
        adapter_process.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in adapter_process.log.read_text(), timeout=10)
        assert echo("127.0.0.1", port, called_ae="NEWAE") == 0
        assert (Path(config.parent) / "spool" / "NEWAE").is_dir()
        assert assoc.is_established and assoc.send_c_echo().Status == 0  # not dropped

        good = config.read_text()
        config.write_text(good + "\n[dicom]\nport = 0\n")  # broken: a duplicate section
        adapter_process.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in adapter_process.log.read_text(), timeout=10)
        refused = [
            line
            for line in adapter_process.log.read_text().splitlines()
            if "reload refused" in line
        ]
        assert len(refused) == 1 and str(config) in refused[0]
        assert echo("127.0.0.1", port, called_ae="NEWAE") == 0  # the running config stays
        assert echo("127.0.0.1", port, called_ae="DICOMADAPTER") == 0
    finally:
        assoc.release()
    assert adapter_process.signal(signal.SIGTERM) == 0


def test_reload_adds_changes_and_removes_destinations(start_adapter, config_path: Path) -> None:
    running = start_adapter(config_path)
    adapter = running.adapter
    base = config_path.read_text()
    destination = "\n[destination:PACS]\nae_title = PACS\nhost = 127.0.0.1\nport = {}\n"
    config_path.write_text(base + destination.format(104))
    lane = ("export", "PACS")
    assert adapter.reload()
    assert adapter.runner.lanes[lane].sender.peer.port == 104
    assert adapter.outbox.outboxes["PACS"] == config_path.parent / "var" / "outbox" / "PACS"
    assert (config_path.parent / "var" / "outbox" / "PACS" / ".sending").is_dir()
    config_path.write_text(base + destination.format(11112))
    assert adapter.reload() and adapter.runner.lanes[lane].sender.peer.port == 11112
    config_path.write_text(base)
    assert adapter.reload()
    assert lane not in adapter.runner.lanes and "PACS" not in adapter.outbox.outboxes


def test_a_processor_added_by_reload_runs(start_adapter, config_path: Path, tmp_path: Path) -> None:
    running = start_adapter(config_path)
    output = tmp_path / "published"
    config_path.write_text(
        config_path.read_text()
        + f"\n[ae:PROC]\nprocessor = folder\noutput = {output}\ntimeout = 0.5\n"
    )
    assert running.adapter.reload()
    files = make_study(tmp_path / "study", 5)
    statuses = send_files("127.0.0.1", running.port, files, called_ae="PROC")
    assert [status for _, status in statuses] == [0] * 5
    wait_for(lambda: len(list(output.glob("job-*/*.dcm"))) == 5, timeout=30)
    # published, then recorded: the job's state follows the folder a moment later
    states = lambda: [job.state for job in running.adapter.tasks.listing()]  # noqa: E731
    wait_for(lambda: states() == [TaskState.SUCCEEDED], timeout=10)


def test_an_outbox_added_by_reload_is_watched(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    running = start_adapter(config_path)
    config_path.write_text(
        config_path.read_text()
        + f"\n[destination:PACS]\nae_title = PACS\nhost = 127.0.0.1\nport = {free_port()}\n"
    )
    assert running.adapter.reload()
    outbox = config_path.parent / "var" / "outbox" / "PACS"
    (dropped,) = make_study(tmp_path / "study", 1)
    shutil.copy(dropped, outbox / "dropped.dcm")
    wait_for(lambda: running.adapter.tasks.listing(TaskKind.EXPORT), timeout=20)
    (task,) = running.adapter.tasks.listing(TaskKind.EXPORT)
    assert task.target == "PACS"


def test_a_reload_that_needs_a_restart_is_refused_whole(
    start_adapter, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_adapter(config_path)
    before = running.adapter.config
    text = config_path.read_text().replace("acse_timeout = 5", "acse_timeout = 7")
    text = text.replace("level = DEBUG", "level = INFO")
    config_path.write_text(text + "\n[ae:NEWAE]\n")
    assert not running.adapter.reload()
    (line,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert line == (
        f"reload refused, keeping the running config: {config_path} [dicom] acse_timeout, "
        "[log] level need a restart"
    )
    assert running.adapter.config is before
    with pytest.raises(AssociationRejected):
        echo("127.0.0.1", running.port, called_ae="NEWAE")  # no AE half-added
    assert not (running.spool / "NEWAE").exists()


def test_the_reload_log_line_counts_in_words(start_adapter, config_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="adapter")
    running = start_adapter(config_path)
    config_path.write_text(
        config_path.read_text()
        + "\n[source:CT]\nae_title = CT\n[destination:PACS]\nae_title = PACS\nhost = h\nport = 1\n"
    )
    assert running.adapter.reload()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reloaded")]
    assert line.endswith(
        ": 1 AE title (0 with a processor), 1 source, 1 destination; "
        "added [source:CT], [destination:PACS]"
    )
    assert running.adapter.reload()
    (_, again) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reloaded")]
    assert again.endswith("; nothing changed")


def test_a_reload_that_removes_an_ae_keeps_what_it_received(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    """Nothing acknowledged goes with its AE: the instances stay received, on disk."""
    base = config_path.read_text()
    processing = f"\n[ae:PROC]\nprocessor = folder\noutput = {tmp_path / 'out'}\ntimeout = 3600\n"
    config_path.write_text(base + processing)
    running = start_adapter(config_path)
    files = make_study(tmp_path / "study", 2)
    statuses = send_files("127.0.0.1", running.port, files, called_ae="PROC")
    assert [status for _, status in statuses] == [0, 0]
    running.wait_rows(2, "received")
    config_path.write_text(base)
    assert running.adapter.reload()
    running.adapter.reclaimer.tick()
    running.adapter._group_tick()
    rows = running.rows()
    assert [r.state for r in rows] == ["received", "received"]
    assert all(Path(r.path).exists() for r in rows)


def test_a_reload_applies_a_changed_group_by_to_intake_and_the_jobs_together(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    """Every config-derived part comes from one build (``derived.derive``): none is left
    on the old config, as a group_by reaching intake but not the job folders once was."""
    output = tmp_path / "published"
    base = config_path.read_text() + f"\n[ae:PROC]\nprocessor = folder\noutput = {output}\n"
    config_path.write_text(base)
    running = start_adapter(config_path)
    adapter = running.adapter
    lane = (TaskKind.PROCESS, "PROC")
    assert adapter.intake.intake.group_by["PROC"] == adapter.runner.lanes[lane].group_by
    assert adapter.runner.lanes[lane].group_by == 0x0020000D
    config_path.write_text(base + "group_by = 0020,000E\nretries = 7\ntimeout = 9\n")
    assert adapter.reload()
    assert adapter.intake.intake.group_by["PROC"] == 0x0020000E
    assert adapter.runner.lanes[lane].group_by == 0x0020000E
    assert adapter.runner.lanes[lane].retries.retries == 7
    assert adapter.groupers["PROC"].rules.timeout_seconds == 9
