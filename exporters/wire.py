"""Whole PDUs in and out of one blocking TCP socket, every wait bounded.

The reader refuses a PDU longer than we advertised before reading its body
(never allocate from a declared length), and every failure
(closed, reset, timed out, unexpected PDU) ends the association and surfaces
as :class:`AssociationLost`, so callers have one exception to map.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from dimse import upper_layer as ul

_HEADER = struct.Struct(">BxL")
_RELEASE_ENDS = (ul.A_RELEASE_RP, ul.A_ABORT)


class AssociationLost(ConnectionError):
    """The association ended (or was ended) before the exchange completed."""


class Wire:
    """A socket carrying one association's PDUs; ``open`` until aborted, released or lost."""

    def __init__(self, sock: socket.socket, max_receive: int, network_timeout: float) -> None:
        self.sock = sock
        self.max_receive = max_receive
        self.network_timeout = network_timeout
        self.open = True
        self._pending = bytearray()
        # SSL sockets have no sendmsg(): their parts are joined into one write.
        self._gather = not isinstance(sock, ssl.SSLSocket)

    def _timeout(self, seconds: float) -> None:
        if self.sock.gettimeout() != seconds:
            self.sock.settimeout(seconds)

    def send(self, *parts: bytes | memoryview) -> None:
        """Write ``parts`` in one system call where the socket takes them all."""
        self._timeout(self.network_timeout)
        try:
            if not self._gather:
                self.sock.sendall(b"".join(parts))
                return
            sent = self.sock.sendmsg(parts)
            total = sum(len(part) for part in parts)
            if sent < total:  # a full socket buffer: the rest the ordinary way
                self.sock.sendall(b"".join(parts)[sent:])
        except OSError as exc:
            self.close()
            raise AssociationLost(_why(exc, self.network_timeout)) from None

    def read(self, timeout: float) -> tuple[int, bytes]:
        """The next PDU's type and body."""
        self._timeout(timeout)
        try:
            pdu_type, length = _HEADER.unpack(self._exactly(6))
            if length > self.max_receive:
                raise ValueError(f"a PDU of {length} bytes, over the {self.max_receive} we take")
            return pdu_type, self._exactly(length)
        except AssociationLost:
            raise
        except (OSError, ValueError) as exc:
            self.abort()
            raise AssociationLost(_why(exc, timeout)) from None

    def _exactly(self, count: int) -> bytes:
        while len(self._pending) < count:
            chunk = self.sock.recv(max(65536, count - len(self._pending)))
            if not chunk:
                self.close()
                raise AssociationLost("the destination closed the connection")
            self._pending += chunk
        data = bytes(self._pending[:count])
        del self._pending[:count]
        return data

    def expect_pdata(self, timeout: float) -> bytes:
        """The next P-DATA-TF's body; an A-ABORT or any other PDU ends the association."""
        pdu_type, body = self.read(timeout)
        if pdu_type == ul.P_DATA_TF:
            return body
        if pdu_type == ul.A_ABORT:
            self.close()
            source, reason = ul.parse_abort(body) if len(body) >= 4 else (0, 0)
            raise AssociationLost(
                f"the destination aborted the association (source {source}, reason {reason})"
            )
        self.abort()
        raise AssociationLost(f"unexpected PDU type 0x{pdu_type:02X}")

    def release(self, acse_timeout: float) -> None:
        """A-RELEASE-RQ, then wait for the A-RELEASE-RP; abort if it does not come.

        Never raises: the exchange is over either way.
        """
        if not self.open:
            return
        deadline = time.monotonic() + acse_timeout
        try:
            self.send(ul.release_rq())
            # Anything else (late data, a crossing A-RELEASE-RQ) is skipped until the deadline.
            while self.read(max(0.001, deadline - time.monotonic()))[0] not in _RELEASE_ENDS:
                pass
        except AssociationLost:
            return
        self.close()

    def abort(self) -> None:
        """Send an A-ABORT (best effort) and close.  Never raises."""
        if self.open:
            try:
                self.sock.settimeout(1)
                self.sock.sendall(ul.abort())
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        self.open = False
        self.sock.close()


def _why(exc: Exception, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"connection lost ({type(exc).__name__}: {exc})"
