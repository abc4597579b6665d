"""One association as a Storage and Verification SCU, on one blocking socket.

Everything happens on the caller's thread: a message is written with one
system call where it fits and the response is read straight off the socket,
so a C-STORE costs a round trip and a few microseconds of Python (pynetdicom's
requestor hands each message across three threads and polls).  No
asynchronous operations are negotiated (PS3.7 D.3.3.3): one message waits for
its response before the next goes out.

Timeouts are the destination's (pynetdicom's names): ``acse_timeout`` for TCP
connect, association set-up and release, ``dimse_timeout`` for a response,
``network_timeout`` for each write.  With TLS (``Peer.tls``, PS3.15 B.1)
the handshake completes within ``acse_timeout`` before the A-ASSOCIATE-RQ
goes out, and the destination's certificate is always verified.  Datasets
stream from disk one PDV at a time, sized to the acceptor's maximum PDU
length, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from dimse import commands as dimse
from dimse import upper_layer as ul
from exporters.wire import AssociationLost, Wire
from spool.incoming import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

if TYPE_CHECKING:
    from config import TlsSettings

# The largest P-DATA-TF variable field we accept.  Only response command sets
# (a few hundred bytes) come our way; a finite bound lets the reader refuse a
# peer that declares a huge PDU instead of allocating for it.
MAX_RECEIVE = 262144
# The largest fragment we send, whatever the acceptor announces: its maximum
# length (0, "no limit", or 0xFFFFFFFF from a spoofed destination) would
# otherwise size our send buffer.
MAX_SEND = 1 << 20


@dataclass(frozen=True)
class Peer:
    """Where and how to associate."""

    ae_title: str
    host: str
    port: int
    calling_ae: str
    acse_timeout: float = 30
    dimse_timeout: float = 60
    network_timeout: float = 60
    tls: TlsSettings | None = None  # None: plain TCP


class AssociationRejected(Exception):
    """The acceptor sent A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent, 2 transient."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"{result}/{source}/{reason}")
        self.result, self.source, self.reason = result, source, reason


class Association:
    """An established association; ``contexts`` maps (SOP class, syntax) to context ID."""

    def __init__(self, wire: Wire, peer: Peer, accepted: ul.Accepted) -> None:
        self.peer = peer
        self.wire = wire
        self.contexts: dict[tuple[str, str], int] = {}
        limit = min(accepted.max_length or MAX_SEND + ul.PDV_HEADER, MAX_SEND + ul.PDV_HEADER)
        self.fragment = max(2, (limit - ul.PDV_HEADER) & ~1)  # even-length fragments
        self._buffer = memoryview(bytearray(ul.PDU_HEADER + ul.PDV_HEADER + self.fragment))
        self._message_id = 0

    @classmethod
    def request(cls, peer: Peer, pairs: list[tuple[str, str]]) -> Association:
        """Connect and associate, proposing each (abstract, transfer) pair as its own context.

        Raises
        ------
        AssociationRejected
            The acceptor rejected the association.
        OSError
            Refused, reset or timed out connection, A-ABORT or anything else.
        """
        proposed = [(2 * i + 1, abstract, transfer) for i, (abstract, transfer) in enumerate(pairs)]
        sock = _connect(peer)
        wire = Wire(sock, MAX_RECEIVE, peer.network_timeout)
        try:
            implementation = (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
            wire.send(
                ul.associate_rq(
                    peer.calling_ae, peer.ae_title, proposed, MAX_RECEIVE, implementation
                )
            )
            pdu_type, body = wire.read(peer.acse_timeout)
            if pdu_type == ul.A_ASSOCIATE_RJ:
                wire.close()
                raise AssociationRejected(*ul.parse_reject(body))
            if pdu_type != ul.A_ASSOCIATE_AC:
                raise AssociationLost(f"answered PDU type 0x{pdu_type:02X}")
        except BaseException:
            wire.abort()
            raise
        accepted = ul.parse_accept(body)
        assoc = cls(wire, peer, accepted)
        for context_id, abstract, transfer in proposed:
            if accepted.contexts.get(context_id) == transfer:
                assoc.contexts[(abstract, transfer)] = context_id
        return assoc

    @property
    def established(self) -> bool:
        return self.wire.open

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def store(self, context_id: int, sop_class: str, sop_instance: str, dataset: BinaryIO) -> int:
        """C-STORE the rest of ``dataset`` (positioned at its first element); the status.

        Raises
        ------
        AssociationLost
            No response: the association was aborted, closed or timed out,
            or the file ended early (the association is aborted then).
        """
        message_id = self._next_id()
        command = dimse.c_store_rq(message_id, sop_class, sop_instance)
        size = os.fstat(dataset.fileno()).st_size - dataset.tell()
        self._send_dataset(context_id, self._command_pdus(context_id, command), dataset, size)
        return self._response(message_id, dimse.C_STORE_RSP)

    def echo(self, context_id: int) -> int:
        """C-ECHO; the status.  Raises AssociationLost as :meth:`store` does."""
        message_id = self._next_id()
        self.wire.send(self._command_pdus(context_id, dimse.c_echo_rq(message_id)))
        return self._response(message_id, dimse.C_ECHO_RSP)

    def _command_pdus(self, context_id: int, command: bytes) -> bytes:
        step = self.fragment
        pieces = [command[i : i + step] for i in range(0, len(command), step)]
        return b"".join(
            ul.pdata(context_id, ul.COMMAND | (ul.LAST if i == len(pieces) - 1 else 0), piece)
            for i, piece in enumerate(pieces)
        )

    def _send_dataset(self, context_id: int, lead: bytes, dataset: BinaryIO, size: int) -> None:
        """Send ``lead`` (the command) and ``size`` bytes of ``dataset``, one PDU per fragment.

        Every fragment has even length: the full ones by construction, and
        the last one of an odd-length data set (a deflated stream written
        without its pad) gets one trailing NUL, the pad PS3.5 A.5 gives a
        deflated stream.  DCMTK aborts the association on an odd fragment.
        """
        buffer, start = self._buffer, ul.PDU_HEADER + ul.PDV_HEADER
        while True:
            length = min(self.fragment, size)
            if _read(dataset, buffer[start : start + length]) != length:
                self.wire.abort()
                raise AssociationLost("the file ended or became unreadable while being sent")
            size -= length
            if size == 0 and length % 2:  # fragment is even, so the pad fits the buffer
                buffer[start + length] = 0
                length += 1
            buffer[:start] = ul.pdata_header(context_id, ul.LAST if size == 0 else 0, length)
            self.wire.send(lead, buffer[: start + length])
            lead = b""
            if size == 0:
                return

    def _response(self, message_id: int, command_field: int) -> int:
        """Wait for the response to ``message_id``; its status."""
        fragments = []
        while True:
            body = self.wire.expect_pdata(self.peer.dimse_timeout)
            try:
                items = ul.pdvs(body)
            except ValueError as exc:
                self.wire.abort()
                raise AssociationLost(f"unreadable response: {exc}") from None
            for _, control, fragment in items:
                if not control & ul.COMMAND:
                    continue  # a data set with a response: nothing we need
                fragments.append(fragment)
                if control & ul.LAST:
                    return self._check(b"".join(fragments), message_id, command_field)

    def _check(self, command: bytes, message_id: int, command_field: int) -> int:
        try:
            response = dimse.parse_response(command)
        except ValueError as exc:
            self.wire.abort()
            raise AssociationLost(f"unreadable response: {exc}") from None
        if (response.command_field, response.responded_to) != (command_field, message_id):
            self.wire.abort()
            raise AssociationLost(
                f"response 0x{response.command_field:04X} to message {response.responded_to}, "
                f"expected 0x{command_field:04X} to {message_id}"
            )
        return response.status

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2); a peer that does not answer in time is aborted.  Never raises."""
        self.wire.release(self.peer.acse_timeout)

    def abort(self) -> None:
        """A-ABORT and close.  Never raises."""
        self.wire.abort()


def _connect(peer: Peer) -> socket.socket:
    """A connected socket (TCP_NODELAY), TLS-wrapped and handshaken if the peer wants TLS.

    Raises
    ------
    ssl.SSLError
        The handshake failed (a certificate refused either way, no common
        protocol version or cipher suite).
    OSError
        Refused, reset or timed out.
    """
    sock = socket.create_connection((peer.host, peer.port), timeout=peer.acse_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if peer.tls is None:
            return sock
        # The handshake runs here, under the socket's timeout (acse_timeout).
        return peer.tls.client_context().wrap_socket(sock, server_hostname=peer.host)
    except BaseException:
        sock.close()
        raise


def _read(dataset: BinaryIO, into: memoryview) -> int:
    """Fill ``into`` from ``dataset``; the byte count, -1 if reading failed."""
    try:
        return dataset.readinto(into)  # type: ignore[attr-defined]
    except OSError:
        return -1
