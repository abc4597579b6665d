"""SIGHUP: new AE titles, sources and destinations without dropping a running association."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import AdapterProcess, wait_for
from tests.peers.send import AssociationRejected, echo


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
    assert adapter.reload()
    assert adapter.export_runners["PACS"].rules.peer.port == 104
    assert adapter.scheduler.get_job("export:PACS") is not None
    assert (config_path.parent / "var" / "outbox" / "PACS" / ".sending").is_dir()
    config_path.write_text(base + destination.format(11112))
    assert adapter.reload() and adapter.export_runners["PACS"].rules.peer.port == 11112
    config_path.write_text(base)
    assert adapter.reload()
    assert "PACS" not in adapter.export_runners and adapter.scheduler.get_job("export:PACS") is None
