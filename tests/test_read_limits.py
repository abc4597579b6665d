"""Peers that stall mid-PDU or declare huge PDUs are dropped; plain pynetdicom 3.0 keeps them.

Raw sockets over 127.0.0.1: half a PDU then silence (slowloris), and PDU
headers that claim far more than the negotiated maximum.  Each test fails on
pynetdicom as shipped: its accepted sockets have no timeout and it reads
whatever length a header declares.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.conftest import RunningAdapter, wait_for, write_config
from tests.peers.send import echo

NETWORK_TIMEOUT = 1.5


@pytest.fixture
def strict(start_adapter, tmp_path: Path, port: int) -> RunningAdapter:
    """One association slot, a short network timeout, a small maximum PDU."""
    config = write_config(tmp_path, port)
    limits = f"max_associations = 1\nmaximum_pdu_size = 16384\nnetwork_timeout = {NETWORK_TIMEOUT}"
    config.write_text(config.read_text().replace("network_timeout = 10", limits))
    return start_adapter(config)


def closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closes ``sock``; fails if it does not within ``within``."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within}s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"\x01\x00\x00",  # half a PDU header
        struct.pack(">BBL", 0x01, 0, 200) + b"\x00\x01" * 5,  # a header and 10 of 200 bytes
    ],
    ids=["half-header", "half-body"],
)
def test_a_stalled_pdu_is_dropped_and_frees_its_slot(
    strict: RunningAdapter, first_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(first_bytes)
        elapsed = closed_by_server(sock, within=NETWORK_TIMEOUT + 5)
    assert elapsed >= NETWORK_TIMEOUT - 0.2
    # The only slot is free again.
    wait_for(lambda: _echo_ok(strict.port), timeout=5)


def test_a_huge_association_request_is_dropped_unread(strict: RunningAdapter) -> None:
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 256 << 20))  # claims 256 MiB, sends none
        elapsed = closed_by_server(sock, within=NETWORK_TIMEOUT)
    assert elapsed < NETWORK_TIMEOUT / 2  # at once, not after a timeout
    # The slot is free at once too, not after acse_timeout (5 s here).
    wait_for(lambda: _echo_ok(strict.port), timeout=2)


def test_connect_and_close_frees_the_slot_at_once(strict: RunningAdapter) -> None:
    """A port scanner's probe must not hold one of max_associations for acse_timeout."""
    for _ in range(3):
        socket.create_connection(("127.0.0.1", strict.port)).close()
        wait_for(lambda: _echo_ok(strict.port), timeout=2)


def test_p_data_over_the_negotiated_maximum_is_dropped(strict: RunningAdapter) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", strict.port, ae_title="DICOMADAPTER")
    assert assoc.is_established
    try:
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 16384 + 1024))  # over our 16384
        wait_for(lambda: not assoc.is_established, timeout=NETWORK_TIMEOUT / 2)
    finally:
        assoc.abort()
    wait_for(lambda: _echo_ok(strict.port), timeout=5)


def _echo_ok(port: int) -> bool:
    try:
        return echo("127.0.0.1", port, called_ae="DICOMADAPTER") == 0
    except Exception:
        return False
