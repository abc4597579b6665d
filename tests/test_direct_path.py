"""The SCP's direct C-STORE path, and its hand-over to pynetdicom, byte by byte.

A raw socket plays a sender whose PDUs are built exactly as each case needs
(``dimse.upper_layer``, ``dimse.commands``): the common layouts are served
by ``scp/direct.py``, the unusual ones by pynetdicom, and a data set broken
mid-way is aborted without a file left behind.  Every stored instance must
arrive byte for byte.
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest
from pydicom import dcmread

from dimse import commands
from dimse import upper_layer as ul
from tests.conftest import RunningAdapter, tmp_files, wait_for
from tests.dcmtk import storescu
from tests.dicom import dataset_bytes, make_instance, make_study
from tests.peers.raw import read_pdu

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CONTEXT = 1
TIMEOUT = 10


def associate(port: int) -> socket.socket:
    """An established association proposing CT in explicit VR little endian."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        ul.associate_rq(
            "RAWSCU",
            "DICOMADAPTER",
            [(CONTEXT, CT_IMAGE, EXPLICIT_LE), (3, commands.VERIFICATION, EXPLICIT_LE)],
            16384,
            ("1.2.3.4", "RAW"),
        )
    )
    pdu_type, body = read_pdu(sock)
    assert pdu_type == ul.A_ASSOCIATE_AC
    assert ul.parse_accept(body).contexts == {CONTEXT: EXPLICIT_LE, 3: EXPLICIT_LE}
    return sock


def store_status(sock: socket.socket) -> int:
    """The status of the next C-STORE-RSP."""
    pdu_type, body = read_pdu(sock)
    assert pdu_type == ul.P_DATA_TF, pdu_type
    [(context_id, control, command)] = ul.pdvs(body)
    assert (context_id, control) == (CONTEXT, ul.COMMAND | ul.LAST)
    response = commands.parse_response(command)
    assert response.command_field == commands.C_STORE_RSP
    return response.status


def release(sock: socket.socket) -> None:
    sock.sendall(ul.release_rq())
    assert read_pdu(sock)[0] == ul.A_RELEASE_RP
    sock.close()


def instance(tmp_path: Path, name: str) -> tuple[str, bytes]:
    """A CT instance's SOP Instance UID and data set bytes."""
    path = make_instance(tmp_path / f"{name}.dcm")
    data = dataset_bytes(path)
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), data


def command(message_id: int, sop_instance_uid: str) -> bytes:
    return commands.c_store_rq(message_id, CT_IMAGE, sop_instance_uid)


def stored_data(adapter: RunningAdapter, sop_instance_uid: str) -> bytes:
    """The data set of the instance's ledger row, once intake has recorded it."""

    def rows() -> list:
        return [r for r in adapter.rows() if r.sop_instance_uid == sop_instance_uid]

    wait_for(rows, timeout=TIMEOUT)
    [row] = rows()
    return dataset_bytes(Path(row.path))


def test_command_and_data_set_in_one_pdu(adapter: RunningAdapter, tmp_path: Path) -> None:
    """What pynetdicom and many modalities send for a small instance: one PDU, two PDVs."""
    uid, data = instance(tmp_path, "one")
    sock = associate(adapter.port)
    sock.sendall(
        ul.pdata_many([(CONTEXT, ul.COMMAND | ul.LAST, command(1, uid)), (CONTEXT, ul.LAST, data)])
    )
    assert store_status(sock) == 0x0000
    release(sock)
    assert stored_data(adapter, uid) == data


@pytest.fixture
def logged(start_adapter, config_path: Path, caplog: pytest.LogCaptureFixture) -> RunningAdapter:
    """An adapter whose SCP process logs INFO (it takes the level at start)."""
    caplog.set_level(logging.INFO)
    return start_adapter(config_path)


def test_dcmtk_is_served_by_the_direct_path(
    logged: RunningAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_study(tmp_path / "study", 3)
    result = storescu(logged.port, files)
    assert result.returncode == 0, result.stderr
    logged.wait_rows(3)
    wait_for(lambda: "association released" in caplog.text, timeout=5)  # logs come by pipe
    assert "handed to pynetdicom" not in caplog.text


def test_two_messages_in_one_pdu_hand_the_second_to_pynetdicom(
    logged: RunningAdapter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data set's last PDV followed by the next message's command: both are answered.

    pynetdicom alone fails this (KeyError in its DIMSE decoder) and answers neither.
    """
    adapter = logged
    first_uid, first = instance(tmp_path, "first")
    second_uid, second = instance(tmp_path, "second")
    sock = associate(adapter.port)
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(1, first_uid)))
    sock.sendall(
        ul.pdata_many(
            [
                (CONTEXT, 0, first[:100]),
                (CONTEXT, ul.LAST, first[100:]),
                (CONTEXT, ul.COMMAND, command(3, second_uid)[:20]),  # split: pynetdicom's
                (CONTEXT, ul.COMMAND | ul.LAST, command(3, second_uid)[20:]),
            ]
        )
    )
    assert store_status(sock) == 0x0000
    sock.sendall(ul.pdata(CONTEXT, ul.LAST, second))
    assert store_status(sock) == 0x0000
    release(sock)
    assert stored_data(adapter, first_uid) == first
    assert stored_data(adapter, second_uid) == second
    wait_for(lambda: "handed to pynetdicom" in caplog.text, timeout=5)  # logs come by pipe


def test_a_command_fragment_inside_a_data_set_aborts(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    uid, data = instance(tmp_path, "broken")
    sock = associate(adapter.port)
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(1, uid)))
    sock.sendall(ul.pdata(CONTEXT, 0, data[:200]))
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(3, uid)))
    assert read_pdu(sock)[0] == ul.A_ABORT
    sock.close()
    adapter.settle()
    assert adapter.rows() == []
    assert tmp_files(adapter.spool) == []


@pytest.mark.parametrize("item_length", [1, 10_000])
def test_a_bad_pdv_item_length_aborts(
    adapter: RunningAdapter, tmp_path: Path, item_length: int
) -> None:
    uid, data = instance(tmp_path, "bad-item")
    sock = associate(adapter.port)
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(1, uid)))
    body = struct.pack(">L", item_length) + bytes((CONTEXT, ul.LAST)) + data[:100]
    sock.sendall(struct.pack(">BxL", ul.P_DATA_TF, len(body)) + body)
    assert read_pdu(sock)[0] == ul.A_ABORT
    sock.close()
    adapter.settle()
    assert adapter.rows() == []


def test_echo_then_store_on_one_association(adapter: RunningAdapter, tmp_path: Path) -> None:
    uid, data = instance(tmp_path, "after-echo")
    sock = associate(adapter.port)
    sock.sendall(ul.pdata(3, ul.COMMAND | ul.LAST, commands.c_echo_rq(1)))
    pdu_type, body = read_pdu(sock)
    assert pdu_type == ul.P_DATA_TF
    [(context_id, _, response)] = ul.pdvs(body)
    assert context_id == 3
    assert commands.parse_response(response).command_field == commands.C_ECHO_RSP
    sock.sendall(ul.pdata(CONTEXT, ul.COMMAND | ul.LAST, command(3, uid)))
    for start in range(0, len(data), 1000):  # many small PDUs
        last = start + 1000 >= len(data)
        sock.sendall(ul.pdata(CONTEXT, ul.LAST if last else 0, data[start : start + 1000]))
    assert store_status(sock) == 0x0000
    release(sock)
    assert stored_data(adapter, uid) == data
