"""Raw PDU streams for protocol fuzzing: record real ones, replay any bytes, read the answer.

The fuzz test mutates what a real SCU sends rather than hand-built PDUs, so
the starting points are exactly what the adapter sees from pynetdicom.
:func:`record` runs a pynetdicom SCU through a small TCP proxy in front of
the adapter and keeps what the SCU sent; :func:`split_pdus` cuts that into
PDUs by their headers (PS3.8 9.3.1).  :func:`exchange` plays any bytes at
the adapter over a fresh connection and reads until the adapter closes it,
so a C-STORE the adapter acknowledged is never missed (the spool check
counts acknowledged instances) and a connection the adapter forgets to
close shows up as ``held``.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

P_DATA_TF = 0x04
C_STORE_RSP = 0x8001
AWAIT_ANSWER = -1.0  # a chunk's pause meaning "wait for the adapter's next PDU", as peers do
ANSWER_WAIT = 2.0  # longest such a wait lasts
_FINAL_PDUS = {0x03, 0x06, 0x07}  # A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT: a peer hangs up
_HEADER = struct.Struct(">BxL")


@dataclass(frozen=True)
class Recording:
    """What a pynetdicom SCU sent for one association: echo, store, release."""

    pdus: tuple[bytes, ...]
    store_status: int | None


@dataclass
class Reply:
    """What the adapter answered to one stream, and how the connection ended."""

    received: bytes = b""
    stored: list[str] = field(default_factory=list)  # SOP Instance UIDs acknowledged 0x0000
    held: bool = False  # still open at the deadline
    refused: bool = False  # connect refused or reset before anything was sent
    seconds: float = 0.0

    @property
    def first_pdu_type(self) -> int | None:
        return self.received[0] if self.received else None


def split_pdus(stream: bytes) -> list[bytes]:
    """Cut a byte stream into PDUs by their declared lengths; a short tail stays whole."""
    pdus, offset = [], 0
    while offset < len(stream):
        end = offset + _HEADER.size
        if end <= len(stream):
            end += _HEADER.unpack_from(stream, offset)[1]
        pdus.append(stream[offset:end])
        offset = end
    return pdus


def record(port: int, called_ae: str, instance: Path) -> Recording:
    """Run C-ECHO, C-STORE of ``instance`` and A-RELEASE through a recording proxy."""
    with _Proxy(port) as proxy:
        ae = AE(ae_title="FUZZSCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(_sop_class_of(instance), "1.2.840.10008.1.2.1")
        for name in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(ae, name, 10)
        assoc = ae.associate("127.0.0.1", proxy.port, ae_title=called_ae)
        assert assoc.is_established, "the adapter refused the recording association"
        assert assoc.send_c_echo().get("Status") == 0
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # the file's own bytes, unchanged
        try:
            status = assoc.send_c_store(instance).get("Status")
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
        sent = proxy.finish()
    return Recording(tuple(split_pdus(sent)), status)


def exchange(
    port: int,
    chunks: list[tuple[bytes, float]],
    *,
    deadline: float,
) -> Reply:
    """Send ``chunks`` (bytes, then a pause in seconds) and read until the adapter closes.

    A pause of :data:`AWAIT_ANSWER` waits for the adapter's next complete PDU
    instead, the way a requestor waits for A-ASSOCIATE-AC before sending
    P-DATA (without it every stream ends at "P-DATA before AC": A-ABORT).
    Reading goes on while sending (a separate thread), because the adapter
    may answer or hang up part way through; after an A-ASSOCIATE-RJ,
    A-RELEASE-RP or A-ABORT we hang up, as a peer does.  ``deadline``
    bounds the whole exchange: a connection still open then is ``held``.
    """
    reply = Reply()
    start = time.monotonic()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=deadline)
    except OSError:
        reply.refused = True
        return reply
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = _Answers()
        reader = threading.Thread(target=_read_all, args=(sock, answers, reply, start + deadline))
        reader.start()
        try:
            for data, pause in chunks:
                if not reader.is_alive():
                    break
                sock.sendall(data)
                if pause == AWAIT_ANSWER:
                    answers.wait_for_next(ANSWER_WAIT)
                elif pause:
                    time.sleep(pause)
        except OSError:
            pass  # the adapter hung up on us; the reader sees the rest
        reader.join()
    reply.seconds = time.monotonic() - start
    reply.stored = acknowledged_stores(reply.received)
    return reply


def acknowledged_stores(received: bytes) -> list[str]:
    """SOP Instance UIDs of every C-STORE-RSP with status 0x0000 in an adapter's answer."""
    stored: list[str] = []
    command = bytearray()
    for pdu in split_pdus(received):
        if pdu[0] != P_DATA_TF or len(pdu) < _HEADER.size:
            continue
        offset = _HEADER.size
        while offset + 6 <= len(pdu):
            length = struct.unpack_from(">L", pdu, offset)[0]
            control = pdu[offset + 5]
            value = pdu[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if not control & 0x01:
                continue  # a dataset fragment
            command += value
            if control & 0x02:
                uid = _stored_uid(bytes(command))
                if uid is not None:
                    stored.append(uid)
                command.clear()
    return stored


def _stored_uid(command: bytes) -> str | None:
    try:
        ds = read_dataset(io.BytesIO(command), is_implicit_VR=True, is_little_endian=True)
    except Exception:
        return None
    if ds.get("CommandField") != C_STORE_RSP or ds.get("Status") != 0:
        return None
    return str(ds.AffectedSOPInstanceUID).rstrip("\x00 ")


class _Answers:
    """Complete PDUs read so far, for the sender to wait on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0
        self._seen = 0
        self.closed = False

    def update(self, received: bytes, closed: bool = False) -> bool:
        """Count complete PDUs in ``received``; True once one ends the association."""
        pdus = [pdu for pdu in split_pdus(received) if _complete(pdu)]
        with self._changed:
            self._count, self.closed = len(pdus), self.closed or closed
            self._changed.notify_all()
        return any(pdu[0] in _FINAL_PDUS for pdu in pdus)

    def wait_for_next(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._count > self._seen or self.closed, timeout)
            self._seen = self._count


def _complete(pdu: bytes) -> bool:
    return len(pdu) >= _HEADER.size and len(pdu) == _HEADER.size + _HEADER.unpack_from(pdu)[1]


def _read_all(sock: socket.socket, answers: _Answers, reply: Reply, until: float) -> None:
    chunks: list[bytes] = []
    try:
        _read_until_done(sock, answers, reply, until, chunks)
    finally:
        reply.received = b"".join(chunks)
        answers.update(reply.received, closed=True)


def _read_until_done(
    sock: socket.socket, answers: _Answers, reply: Reply, until: float, chunks: list[bytes]
) -> None:
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            reply.held = True
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break  # reset: as good as closed
        if not chunk:
            break
        chunks.append(chunk)
        if answers.update(b"".join(chunks)):
            break


def _sop_class_of(path: Path) -> str:
    from pydicom.filereader import read_file_meta_info

    return str(read_file_meta_info(path).MediaStorageSOPClassUID)


class _Proxy:
    """Forwards one connection to the adapter and keeps a copy of what the client sent."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sent = bytearray()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> _Proxy:
        thread = threading.Thread(target=self._serve, name="fuzz-recording-proxy")
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def finish(self) -> bytes:
        """What the client sent, once both directions have closed."""
        for thread in list(self._threads):
            thread.join(timeout=10)
        return bytes(self._sent)

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pump, args=(upstream, client, None))
        back.start()
        _pump(client, upstream, self._sent)
        back.join()
        client.close()
        upstream.close()


def _pump(source: socket.socket, dest: socket.socket, copy: bytearray | None) -> None:
    try:
        while chunk := source.recv(65536):
            if copy is not None:
                copy += chunk
            dest.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, dest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next whole PDU on ``sock``: (type, body); ConnectionError if it closes first."""
    pdu_type, length = _HEADER.unpack(_exactly(sock, 6))
    return pdu_type, _exactly(sock, length)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data
