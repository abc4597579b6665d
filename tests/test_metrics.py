"""The Prometheus endpoint, scraped for real."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for, write_config
from tests.dcmtk import storescu
from tests.dicom import make_study
from tests.peers.send import AssociationRejected, echo


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, _, value in (
            line.rpartition(" ") for line in text.splitlines() if not line.startswith("#")
        )
    }


def test_metrics_tell_what_happened(start_adapter, tmp_path: Path, port: int) -> None:
    metrics_port = free_port()
    running = start_adapter(
        write_config(
            tmp_path,
            port,
            f"[metrics]\nport = {metrics_port}\n",
            aes="[ae:DICOMADAPTER]\nprocessor = command\ncommand = true\ntimeout = 60",
        )
    )
    assert storescu(port, make_study(tmp_path / "s", 3)).returncode == 0
    running.wait_rows(3)
    with pytest.raises(AssociationRejected):
        echo("127.0.0.1", port, called_ae="NOTME")
    # The SCP process reports its counters twice a second; the rejected
    # association's thread ends a moment after the reject is sent.
    rejected = 'dicom_adapter_associations_rejected_total{reason="called_ae"}'
    wait_for(
        lambda: (
            scrape(metrics_port).get(rejected) == 1
            and scrape(metrics_port)["dicom_adapter_associations_active"] == 0
        )
    )
    values = scrape(metrics_port)
    assert values['dicom_adapter_instances_received_total{called_ae="DICOMADAPTER"}'] == 3
    size = sum(p.stat().st_size for p in (tmp_path / "spool" / "DICOMADAPTER").rglob("*.dcm"))
    assert values['dicom_adapter_received_bytes_total{called_ae="DICOMADAPTER"}'] == size
    assert values['dicom_adapter_associations_rejected_total{reason="called_ae"}'] == 1
    assert values['dicom_adapter_ledger_instances{state="received"}'] == 3
    assert values['dicom_adapter_tasks{kind="process",state="failed"}'] == 0
    assert values['dicom_adapter_tasks{kind="export",state="pending"}'] == 0
    assert 0 < values["dicom_adapter_oldest_open_group_seconds"] < 60
    assert values["dicom_adapter_spool_free_bytes"] > 0
    assert values["dicom_adapter_intake_queued"] == 0
    assert values['dicom_adapter_task_items{state="failed"}'] == 0
    assert values[f'dicom_adapter_node{{node="{socket.gethostname()}"}}'] == 1


def test_no_endpoint_unless_configured(adapter) -> None:
    assert adapter.adapter.metrics is None
