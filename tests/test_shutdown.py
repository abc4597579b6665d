"""SIGTERM: stop accepting, let the C-STORE in flight finish, record it, exit 0."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

from tests.conftest import AdapterProcess, wait_for, write_config
from tests.dicom import dataset_digest, make_large_multiframe
from tests.peers.send import echo, send_files


def test_store_in_flight_finishes_and_is_recorded(
    adapter_process: AdapterProcess, tmp_path: Path
) -> None:
    large = make_large_multiframe(tmp_path / "large.dcm", 150 * 2**20)
    adapter_process.start()
    results: list = []
    sender = threading.Thread(
        target=lambda: results.extend(
            send_files(
                "127.0.0.1", adapter_process.port, [large], called_ae="DICOMADAPTER", timeout=60
            )
        )
    )
    sender.start()
    incoming = tmp_path / "spool" / ".tmp" / socket.gethostname()  # this node's folder
    wait_for(
        lambda: any(p.stat().st_size > 2**20 for p in incoming.glob("*.part")),
        timeout=30,
        interval=0.001,
    )
    adapter_process.process.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert adapter_process.process.wait(timeout=60) == 0
    assert [status for _, status in results] == [0x0000]
    # Recorded before the exit (the last reconcile), byte for byte, nothing half-written left.
    [row] = adapter_process.ledger().instances()
    assert row.state == "received" and dataset_digest(Path(row.path)) == dataset_digest(large)
    assert list(incoming.iterdir()) == []
    # And nothing listens any more.
    try:
        status = echo("127.0.0.1", adapter_process.port, called_ae="DICOMADAPTER", timeout=2)
    except Exception:
        status = None
    assert status is None


def test_a_connection_that_never_associates_does_not_hold_up_a_stop(
    tmp_path: Path, port: int
) -> None:
    import socket
    import time

    config = write_config(tmp_path, port)  # waits of 30 s: ARTIM and the shutdown grace
    config.write_text(config.read_text().replace("acse_timeout = 5", "acse_timeout = 30"))
    process = AdapterProcess(config, port, tmp_path / "adapter.log")
    process.start()
    try:
        with socket.create_connection(("127.0.0.1", port)):  # connects, says nothing
            time.sleep(0.2)
            started = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            assert process.process.wait(timeout=60) == 0
        assert time.monotonic() - started < 15
    finally:
        if process.process.poll() is None:
            process.kill()
