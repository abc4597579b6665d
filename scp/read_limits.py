"""Deadlines and a size cap on every PDU an accepted association reads.

pynetdicom 3.0 reads a PDU with blocking ``recv`` calls on the accepted
socket, which Python hands over with no timeout: a peer that sends half a
PDU and goes silent holds its thread and its ``max_associations`` slot for
ever, whatever the ACSE, DIMSE and network timeouts say.  It also reads
whatever length a PDU header declares, so a peer that claims hundreds of
megabytes and sends them makes the receiver buffer them all.

:func:`limit_reads` routes one association's reads through a
:class:`LimitedReader` at EVT_CONN_OPEN, before anything is read (the
pynetdicom boundary's ``read_through`` hook):

- each read of a PDU header or body must complete within the network
  timeout, or the connection is dropped (pynetdicom treats the error as the
  transport closing: Evt17);
- a P-DATA-TF body may be no longer than the maximum PDU length we
  negotiated (PS3.8 D.1: the peer must not send more), any other PDU no
  longer than :data:`OTHER_PDU_LIMIT` (an A-ASSOCIATE-RQ with 128
  presentation contexts of 30 transfer syntaxes each is about 270 KB); a
  longer declaration drops the connection before its body is read;
- every P-DATA-TF goes through a :class:`scp.message_limits.MessageMeter`,
  whoever reads it (the direct path or pynetdicom), so no message makes the
  process buffer more than its bounds: the association is aborted first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time
from typing import Any

from dimse import upper_layer as ul
from dimse.pynetdicom_boundary import read_through
from scp.message_limits import MessageMeter, MessageOverrun

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
OTHER_PDU_LIMIT = 1 << 20
_HEADER = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)
_MIN_CHUNK = 64 * 1024
_MAX_CHUNK = 1 << 20


class LimitedReader:
    """An association's reads, with a deadline, a length cap and a buffer.

    pynetdicom reads each PDU as a 6-byte header and then its body, 4 KB
    per ``recv``; with a timeout, Python polls before every ``recv`` too.
    Here one read takes whatever the kernel holds (up to 64 KiB or the
    PDU's length), so a small C-STORE's PDUs usually cost one system call
    between them, and :attr:`ready` reads instead of asking ``select``.  Each
    system call releases the GIL, which the association threads of four
    busy peers then fight over: fewer calls, far fewer context switches.
    """

    def __init__(self, assoc: Any, read_timeout: float, max_p_data: int) -> None:
        self.assoc = assoc
        self._read_timeout = read_timeout
        self._max_p_data = max_p_data
        self._pdu_type: int | None = None  # of the header just read: its body comes next
        self._inbox = bytearray()
        self._meter = MessageMeter()
        self._premetered = 0  # bytes at the head of the inbox metered when first read

    @property
    def socket(self) -> Any:
        """The connection's socket; None once pynetdicom closed it."""
        return self.assoc.dul.socket.socket

    def ready(self, connected: bool) -> bool | None:
        """Data is buffered, or arrives in the one read this makes (or the peer closed).

        None: pynetdicom's own check decides (not connected, or TLS).
        """
        if self._inbox:
            return True
        sock = self.socket
        if sock is None or not connected or isinstance(sock, ssl.SSLSocket):
            return None
        chunk = _take_waiting(sock, _MIN_CHUNK)
        if chunk is None:
            return False
        self._inbox += chunk
        return True  # b"": closed, and pynetdicom's next read sees it

    def recv(self, nr_bytes: int) -> bytearray:
        pdu_type, self._pdu_type = self._pdu_type, None
        if pdu_type is not None:  # pynetdicom reads a PDU's body right after its header
            limit = self._max_p_data if pdu_type == P_DATA_TF else OTHER_PDU_LIMIT
            if nr_bytes > limit:
                raise self._refuse(
                    f"PDU type 0x{pdu_type:02X} declares {nr_bytes} bytes, over the {limit} allowed"
                )
        data = self._read(nr_bytes)
        seen = min(self._premetered, len(data))
        self._premetered -= seen
        if pdu_type == P_DATA_TF and not seen:
            self._measure(data)
        if pdu_type is None and nr_bytes == _HEADER and len(data) == _HEADER:
            self._pdu_type = data[0]
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front: the next reads return it first (metered already)."""
        self._inbox[0:0] = data
        self._premetered += len(data)
        self._pdu_type = None

    def _measure(self, body: bytes) -> None:
        """Meter one P-DATA-TF body; abort the association past a bound."""
        try:
            spans = ul.pdv_spans(body)
        except ValueError:
            return  # malformed: whoever reads it refuses it
        try:
            self._meter.take(body, spans)
        except MessageOverrun as exc:
            self._abort()
            raise self._refuse(str(exc)) from None

    def _abort(self) -> None:
        """An A-ABORT to the peer (best effort) before the connection is dropped."""
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(ul.abort())

    def _read(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the buffer, filled within the deadline; fewer if the peer closed."""
        inbox = self._inbox
        sock = self.socket
        if len(inbox) < nr_bytes and sock is not None:
            self._fill(sock, nr_bytes)
        data = inbox[:nr_bytes]
        del inbox[:nr_bytes]
        return data

    def _fill(self, sock: Any, nr_bytes: int) -> None:
        inbox = self._inbox
        deadline = time.monotonic() + self._read_timeout
        waited = False  # the socket's own timeout is the whole budget for the first wait
        try:
            while len(inbox) < nr_bytes:
                chunk = _take_waiting(sock, _chunk_size(nr_bytes - len(inbox)))
                if chunk is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._refuse(
                            f"read {len(inbox)} of {nr_bytes} bytes in "
                            f"{self._read_timeout:g}s: too slow"
                        )
                    if waited:
                        sock.settimeout(remaining)
                    waited = True
                    try:
                        chunk = sock.recv(_chunk_size(nr_bytes - len(inbox)))
                    except TimeoutError:
                        continue  # the deadline check above decides
                if not chunk:
                    break  # closed: pynetdicom sees the short read
                inbox += chunk
        finally:
            if waited:
                sock.settimeout(self._read_timeout)  # what sends get: a peer that never reads

    def _refuse(self, reason: str) -> OSError:
        peer = self.assoc.requestor
        log.warning("dropping connection from %s:%s: %s", peer.address, peer.port, reason)
        return OSError(reason)


def _chunk_size(missing: int) -> int:
    """At least 64 KiB (the next PDU is often already there), at most 1 MiB per call."""
    return max(_MIN_CHUNK, min(missing, _MAX_CHUNK))


def _take_waiting(sock: Any, size: int) -> bytes | None:
    """What the kernel already holds, in one system call; None if nothing yet.

    A socket with a timeout polls before every ``recv``; the descriptor is
    non-blocking, so a plain ``read`` on it returns at once.  TLS sockets
    must go through ``recv`` (the record layer), so they always wait there.
    """
    if isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return os.read(sock.fileno(), size)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # reset or closed: pynetdicom sees the short read


def limit_reads(assoc: Any, read_timeout: float, max_p_data: int) -> LimitedReader:
    """Give a not yet started acceptor association's reads their limits; its reader."""
    reader = LimitedReader(assoc, read_timeout, max_p_data)
    read_through(assoc, reader)
    sock = reader.socket
    if sock is not None:
        sock.settimeout(read_timeout)  # also makes the descriptor non-blocking
    return reader
