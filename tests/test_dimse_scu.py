"""The exporter's SCU against real peers (DCMTK storescp, a pynetdicom SCP) and scripted ones.

Real peers show that what we send is stored byte for byte and that context
negotiation and statuses are read right; :class:`ScriptedPeer` (PDUs written
by hand, like pynetdicom's ``tests/parrot.py``) plays the misbehaviours a
real peer will not do on cue: rejecting, aborting, hanging up, never
answering, answering the wrong message, declaring a huge PDU.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from exporters import cstore
from exporters.cstore import ExportError, Peer
from exporters.files import spec_for
from ledger.records import ItemOutcome, ItemRecord
from spool.part10 import dataset_offset
from tests.conftest import free_port, port_open, require_tool, wait_for
from tests.dicom import make_large_multiframe, make_mixed_set, make_odd_deflated, make_study
from tests.peers.flaky_scp import FlakyStorageSCP
from tests.peers.raw import read_pdu
from tests.test_upper_layer import accept_pdu, command_set

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def records(paths: list[Path]) -> list[ItemRecord]:
    """Export file rows for ``paths``, as the ledger would hand them to the exporter."""
    rows = []
    for number, path in enumerate(paths, start=1):
        spec = spec_for(path, owned=False)
        rows.append(
            ItemRecord(
                id=number,
                task_id=1,
                path=spec.path,
                owned=False,
                sop_instance_uid=spec.sop_instance_uid,
                sop_class_uid=spec.sop_class_uid,
                transfer_syntax_uid=spec.transfer_syntax_uid,
                size=spec.size,
                state="pending",
                status=None,
                error=None,
                sent_at=None,
                instance_id=None,
                reclaimed_at=None,
                failures=0,
            )
        )
    return rows


def dataset(path: Path) -> bytes:
    """Everything after the file meta: exactly what goes on the wire."""
    with path.open("rb") as handle:
        handle.seek(dataset_offset(handle))
        return handle.read()


# -- real peers -----------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., tuple[int, Path]]]:
    """Start DCMTK storescp (TCP_NODELAY=1, ``+B``: datasets kept as received) with options."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> tuple[int, Path]:
        port, out = free_port(), tmp_path / f"scp-{len(started)}"
        out.mkdir()
        cmd = [require_tool("storescp"), "+B", *options, "-aet", "STORESCP", "-od", str(out)]
        process = subprocess.Popen(
            [*cmd, str(port)], env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL
        )
        started.append(process)
        wait_for(lambda: port_open(port) or process.poll() is not None, timeout=10)
        return port, out

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def peer(port: int, ae_title: str = "STORESCP", **timeouts: float) -> Peer:
    return Peer(ae_title, "127.0.0.1", port, "EXPORTER", **timeouts)


def received_datasets(out: Path) -> dict[str, bytes]:
    """SOP Instance UID (storescp names files by modality and UID) -> dataset bytes."""
    return {path.name.split(".", 1)[1]: dataset(path) for path in out.iterdir()}


def test_1000_small_files_in_one_export_arrive_byte_identical(storescp, tmp_path: Path) -> None:
    files = make_study(tmp_path / "study", 1000)
    port, out = storescp("+xa")
    rows = records(files)
    began = time.perf_counter()
    outcomes = cstore.send(peer(port), rows)
    took = time.perf_counter() - began
    assert outcomes == [ItemOutcome(row.id, 0, None) for row in rows]
    arrived = received_datasets(out)
    assert sorted(arrived) == sorted(row.sop_instance_uid for row in rows)
    for row, path in zip(rows, files, strict=True):
        assert arrived[row.sop_instance_uid] == dataset(path), path.name
    print(f"1000 small files in {took:.2f} s ({1000 / took:.0f}/s)")


def test_a_peer_accepting_some_contexts_gets_only_those_files(storescp, tmp_path: Path) -> None:
    files = make_mixed_set(tmp_path / "mixed")  # storescp without +xa: uncompressed only
    port, out = storescp()
    rows = records(files)
    outcomes = {outcome.item_id: outcome for outcome in cstore.send(peer(port), rows)}
    arrived = received_datasets(out)
    for row, path in zip(rows, files, strict=True):
        outcome = outcomes[row.id]
        if row.transfer_syntax_uid in UNCOMPRESSED:
            assert outcome == ItemOutcome(row.id, 0, None), path.name
            assert arrived[row.sop_instance_uid] == dataset(path), path.name
        else:
            assert row.sop_instance_uid not in arrived, path.name
            # Refused for good: no retry can change what the destination accepts.
            assert outcome == ItemOutcome(
                row.id,
                None,
                f"destination accepts no context for SOP class {row.sop_class_uid} "
                f"in transfer syntax {row.transfer_syntax_uid}",
                retry=False,
            )
    assert len(arrived) == 4


@pytest.mark.parametrize("status, retry", [(0xA900, False), (0xA700, True)])
def test_a_failure_status_fails_that_file_only(tmp_path: Path, status: int, retry: bool) -> None:
    files = make_study(tmp_path / "study", 4)
    rows = records(files)
    with FlakyStorageSCP(fail={rows[1].sop_instance_uid}, failure_status=status) as scp:
        outcomes = cstore.send(peer(scp.port, "FLAKYSCP"), rows)
        stores = scp.stores()
    assert outcomes == [
        ItemOutcome(1, 0, None),
        ItemOutcome(2, status, f"destination answered 0x{status:04X}", retry=retry),
        ItemOutcome(3, 0, None),
        ItemOutcome(4, 0, None),
    ]
    assert [s.data for s in stores] == [dataset(path) for path in files]


@pytest.mark.parametrize(
    "status, delivered, retry",
    [
        (0x0000, True, False),
        (0xB000, True, False),
        (0xB007, True, False),
        (0xA700, False, True),
        (0xA7FF, False, True),
        (0x0110, False, True),
        (0x0211, False, True),
        (0xA900, False, False),
        (0xC000, False, False),
        (0xC211, False, False),
        (0x0122, False, False),
        (0x0124, False, False),
    ],
)
def test_each_status_class_says_whether_to_resend(status: int, delivered: bool, retry: bool):
    """Each status class: delivered, try again, or refused for good."""
    outcome = cstore.status_outcome(7, status)
    assert (outcome.delivered, outcome.retry, outcome.status) == (delivered, retry, status)


def test_a_large_file_streams_in_bounded_memory(storescp, tmp_path: Path) -> None:
    path = make_large_multiframe(tmp_path / "large.dcm", 64 * 1024 * 1024)
    port, out = storescp("+xa", "--max-pdu", "131072")
    tracemalloc.start()
    try:
        outcomes = cstore.send(peer(port), records([path]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcomes == [ItemOutcome(1, 0, None)]
    assert peak < 1024 * 1024, peak  # one 128 KiB fragment buffer, not 64 MiB
    [stored] = out.iterdir()
    assert hashlib.sha256(dataset(stored)).digest() == hashlib.sha256(dataset(path)).digest()


def test_an_odd_length_deflated_data_set_goes_out_padded_to_storescp(
    storescp, tmp_path: Path
) -> None:
    """DCMTK aborts on an odd-length PDV ("DIMSE: Odd Fragment Length"); PS3.5 A.5
    pads a deflated stream with one trailing NUL, so the last fragment gets it."""
    path = make_odd_deflated(tmp_path / "odd.dcm")
    assert len(dataset(path)) % 2 == 1
    port, out = storescp("+xa", "--max-pdu", "4096")  # several fragments, the last one odd
    assert cstore.send(peer(port), records([path])) == [ItemOutcome(1, 0, None)]
    [stored] = out.iterdir()
    assert dataset(stored) == dataset(path) + b"\x00"
    assert dcmread(stored).PatientID == dcmread(path).PatientID


def test_echo_a_real_peer(storescp) -> None:
    port, _ = storescp()
    assert cstore.echo(peer(port)) == 0


# -- scripted peers ---------------------------------------------------------------------


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">BxLLBB", 4, len(data) + 6, len(data) + 2, context_id, control) + data


class ScriptedPeer:
    """Accepts one association and answers C-STOREs by script, recording what it got.

    ``misbehave`` names what it does once the first dataset is complete
    (``None``: answer Success, like any SCP); ``reject`` answers the
    A-ASSOCIATE-RQ with that A-ASSOCIATE-RJ instead; ``max_length`` is the
    maximum PDU length its A-ASSOCIATE-AC announces.
    """

    def __init__(self, misbehave: str | None = None, *, reject=None, max_length=16384) -> None:
        self.misbehave, self.reject, self.max_length = misbehave, reject, max_length
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pdus: list[tuple[int, int]] = []  # (type, length) of every PDU after the RQ
        self.fragments: list[bytes] = []  # every PDV's data, in order
        self.datasets: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, name="scripted-peer")
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes an accept() still waiting (Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            _, rq = read_pdu(conn)
            if self.reject:
                conn.sendall(struct.pack(">BxLxBBB", 3, 4, *self.reject))
                return
            ids = self._context_ids(rq)
            conn.sendall(accept_pdu([(i, 0, syntax) for i, syntax in ids], self.max_length))
            with contextlib.suppress(ConnectionError):  # the scripted hang-ups end here
                self._converse(conn)

    @staticmethod
    def _context_ids(rq: bytes) -> list[tuple[int, str]]:
        from pynetdicom.pdu import A_ASSOCIATE_RQ

        pdu = A_ASSOCIATE_RQ()
        pdu.decode(struct.pack(">BxL", 1, len(rq)) + rq)
        contexts = pdu.to_primitive().presentation_context_definition_list
        return [(c.context_id, c.transfer_syntax[0]) for c in contexts]

    def _converse(self, conn: socket.socket) -> None:
        command, data = b"", b""
        while True:
            pdu_type, body = read_pdu(conn)
            self.pdus.append((pdu_type, len(body)))
            if pdu_type != 4:  # A-RELEASE-RQ or A-ABORT
                if pdu_type == 5:
                    conn.sendall(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                return
            context_id, control, fragment = body[4], body[5], body[6:]
            self.fragments.append(fragment)
            if control & 1:
                command += fragment
                continue
            data += fragment
            if control & 2:
                self.datasets.append(data)
                self._answer(conn, context_id, command)
                command, data = b"", b""

    def _answer(self, conn: socket.socket, context_id: int, command: bytes) -> None:
        message_id = struct.unpack_from("<H", command, command.index(b"\x00\x00\x10\x01") + 8)[0]
        if self.misbehave == "abort":
            conn.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
        elif self.misbehave == "close":
            conn.close()
        elif self.misbehave == "huge pdu":
            conn.sendall(struct.pack(">BxL", 4, 1 << 31))
        elif self.misbehave != "silent":
            responded_to = 99 if self.misbehave == "wrong id" else message_id
            rsp = command_set(CommandField=0x8001, MessageIDBeingRespondedTo=responded_to, Status=0)
            conn.sendall(pdata(context_id, 3, rsp))
            return
        if self.misbehave == "silent":  # the exporter must give up and abort
            self.pdus.append((read_pdu(conn)[0], 0))
        raise ConnectionError(self.misbehave)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedPeer]]:
    peers: list[ScriptedPeer] = []

    def start(*args, **kwargs) -> ScriptedPeer:
        peers.append(ScriptedPeer(*args, **kwargs))
        return peers[-1]

    yield start
    for scripted_peer in peers:
        scripted_peer.close()


def test_fragments_fit_the_peer_maximum_pdu_length(scripted, tmp_path: Path) -> None:
    files = make_study(tmp_path / "study", 2, rows=64, columns=64)  # ~8 KB each
    scp = scripted(max_length=4096)
    assert cstore.send(peer(scp.port), records(files)) == [
        ItemOutcome(1, 0, None),
        ItemOutcome(2, 0, None),
    ]
    scp.close()
    assert scp.datasets == [dataset(path) for path in files]
    assert max(length for pdu_type, length in scp.pdus if pdu_type == 4) <= 4096
    assert all(len(fragment) % 2 == 0 for fragment in scp.fragments)
    assert scp.pdus[-1] == (5, 4)  # released


@pytest.mark.parametrize("announced", [0, 0xFFFFFFFF], ids=["no-limit", "4-gib"])
def test_the_send_buffer_is_clamped_whatever_the_destination_announces(
    scripted, tmp_path: Path, announced: int
) -> None:
    """A spoofed destination announcing a 4 GiB maximum PDU (or 0, no limit) must not
    size our send buffer: fragments, and the buffer, stay at most 1 MiB."""
    from exporters.dimse_scu import Association

    path = make_large_multiframe(tmp_path / "large.dcm", 3 * 1024 * 1024)
    [row] = records([path])
    probe = scripted(max_length=announced)
    assoc = Association.request(peer(probe.port), [(row.sop_class_uid, row.transfer_syntax_uid)])
    assert assoc.fragment == 1 << 20
    assoc.release()
    scp = scripted(max_length=announced)
    assert cstore.send(peer(scp.port), [row]) == [ItemOutcome(1, 0, None)]
    scp.close()
    assert scp.datasets == [dataset(path)]
    assert max(length for pdu_type, length in scp.pdus if pdu_type == 4) == (1 << 20) + 6


@pytest.mark.parametrize(
    "reject, retryable", [((1, 1, 3), False), ((2, 3, 2), True)], ids=["permanent", "transient"]
)
def test_a_rejection_says_whether_to_retry(scripted, tmp_path, reject, retryable) -> None:
    scp = scripted(reject=reject)
    outcomes = cstore.send(peer(scp.port), records(make_study(tmp_path, 2)))
    where = f"STORESCP@127.0.0.1:{scp.port}"
    error = f"not attempted: {where} rejected the association {'/'.join(map(str, reject))}"
    assert outcomes == [ItemOutcome(i, None, error, retryable, attempted=False) for i in (1, 2)]


def test_a_refused_connection_is_retryable(tmp_path: Path) -> None:
    port = free_port()
    [outcome] = cstore.send(peer(port), records(make_study(tmp_path, 1)))
    assert outcome.retry and "did not answer" in (outcome.error or "")
    with pytest.raises(ExportError, match="did not answer") as raised:
        cstore.echo(peer(port))
    assert raised.value.retryable


def test_more_contexts_than_one_association_holds_go_over_two(tmp_path: Path) -> None:
    """130 (SOP class, transfer syntax) pairs: the 128 context IDs of one association
    (PS3.8 9.3.2.2) are not enough, so the files go over two associations."""
    from pynetdicom import AllStoragePresentationContexts

    [row] = records(make_study(tmp_path, 1))
    classes = [c.abstract_syntax for c in AllStoragePresentationContexts][:65]
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    rows = [
        row.__class__(**{**row.__dict__, "id": n, "sop_class_uid": c, "transfer_syntax_uid": s})
        for n, (c, s) in enumerate(((c, s) for c in classes for s in syntaxes), start=1)
    ]
    with FlakyStorageSCP() as scp:
        outcomes = cstore.send(peer(scp.port, "FLAKYSCP"), rows)
        associations = scp.association_count
    assert outcomes == [ItemOutcome(r.id, 0, None) for r in rows]
    assert associations == 2


@pytest.mark.parametrize(
    "misbehave, error",
    [
        ("abort", "not delivered: the destination aborted the association (source 2, reason 0)"),
        ("close", "not delivered: the destination closed the connection"),
        ("silent", "not delivered: no answer within 0.5 s"),
        ("wrong id", "not delivered: response 0x8001 to message 99, expected 0x8001 to 1"),
        ("huge pdu", "not delivered: a PDU of 2147483648 bytes, over the 262144 we take"),
    ],
)
def test_a_lost_association_fails_the_file_and_the_rest(
    scripted, tmp_path: Path, misbehave: str, error: str
) -> None:
    files = make_study(tmp_path, 3)
    scp = scripted(misbehave)
    outcomes = cstore.send(peer(scp.port, dimse_timeout=0.5), records(files))
    # Not delivered, or never attempted: each worth another attempt.
    assert outcomes == [
        ItemOutcome(1, None, error, retry=True),
        ItemOutcome(2, None, "not attempted: the association was lost", True, attempted=False),
        ItemOutcome(3, None, "not attempted: the association was lost", True, attempted=False),
    ]
    scp.close()
    assert scp.datasets == [dataset(files[0])]
    if misbehave in ("silent", "wrong id"):
        assert scp.pdus[-1][0] == 7  # we aborted
