"""The TLS listener: handshakes in each connection's thread, never in the accept loop.

pynetdicom 3.0 wraps an accepted socket with ``SSLContext.wrap_socket`` in
``AssociationServer.get_request``, which performs the whole TLS handshake
in the one thread that accepts connections.  A peer that opens a TCP
connection and never sends a ClientHello (a port scanner, a modality
configured for plain DICOM) therefore stalls every other connection to that
port until it gives up (measured: a concurrent TLS C-ECHO waited 60 s).

:class:`HandshakeInThread` wraps without handshaking at accept, then runs
the handshake in the connection's own thread, under one deadline for the
whole exchange (the ACSE timeout: the handshake is part of setting up the
association).  A peer that fails or stalls is dropped with one log line
before pynetdicom creates an association for it, so it never holds an
association slot.  Handshakes in progress are capped too, so a flood of
silent connections costs a bounded number of threads.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from typing import Any

from scp.admission import Arrival

log = logging.getLogger(__name__)


class HandshakeInThread:
    """Mixin for pynetdicom's ThreadedAssociationServer (put it first in the bases)."""

    tls_context: ssl.SSLContext
    handshake_timeout: float
    max_handshakes: int
    _handshakes: int
    _handshakes_lock: threading.Lock
    socket: socket.socket

    def setup_tls(self, context: ssl.SSLContext, timeout: float, max_handshakes: int) -> None:
        """Give the listener its context; call before it serves."""
        self.tls_context = context
        self.handshake_timeout = timeout
        self.max_handshakes = max_handshakes
        self._handshakes = 0
        self._handshakes_lock = threading.Lock()

    def get_request(self) -> tuple[ssl.SSLSocket, Any]:
        """Accept and wrap; no bytes are exchanged here."""
        sock, address = self.socket.accept()
        try:
            wrapped = self.tls_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            sock.close()
            raise
        return wrapped, address

    def process_request(self, request: ssl.SSLSocket, client_address: Any) -> None:
        """Start the connection's thread, unless too many handshakes are already waiting."""
        with self._handshakes_lock:
            busy = self._handshakes >= self.max_handshakes
            if not busy:
                self._handshakes += 1
        if busy:
            _dropped(client_address, f"{self.max_handshakes} TLS handshakes already in progress")
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request(request, client_address)  # type: ignore[misc]

    def process_request_thread(self, request: ssl.SSLSocket, client_address: Any) -> None:
        """Handshake, then hand the connection to pynetdicom as a plain accepted one."""
        try:
            reason = handshake(request, self.handshake_timeout)
        finally:
            with self._handshakes_lock:
                self._handshakes -= 1
        if reason is not None:
            _dropped(client_address, reason)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        super().process_request_thread(request, client_address)  # type: ignore[misc]


def handshake(sock: ssl.SSLSocket, timeout: float) -> str | None:
    """Run the server side of the handshake within ``timeout`` seconds; None or why not.

    Non-blocking with select(), so the deadline covers the whole exchange:
    a peer trickling one byte at a time cannot stretch it.  The socket is
    blocking again afterwards, as pynetdicom expects.
    """
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return None
            except ssl.SSLWantReadError:
                readers, writers = [sock], []
            except ssl.SSLWantWriteError:
                readers, writers = [], [sock]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(readers, writers, [], remaining)[:2]):
                return f"no TLS handshake within {timeout:g}s"
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError):
        return "closed the connection during the TLS handshake"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {describe(exc)}"
    except OSError as exc:
        return f"TLS handshake failed: {exc.strerror or exc}"
    finally:
        if sock.fileno() >= 0:
            sock.setblocking(True)


def describe(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, plus the verification message when a certificate was refused."""
    reason = exc.reason or str(exc)
    detail = getattr(exc, "verify_message", None)
    return f"{reason}: {detail}" if detail else str(reason)


def _dropped(client_address: Any, reason: str) -> None:
    host, port = client_address[0], client_address[1]
    log.warning("dropping TLS connection from %s:%s: %s", host, port, reason)


# RFC 4514's short names for the attributes Python's getpeercert() spells out.
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "streetAddress": "STREET",
    "userId": "UID",
}


def arrival_over(sock: Any, peer_ip: str) -> Arrival:
    """How a connection came in: over TLS or not, and with which verified client certificate.

    The certificate's subject is in RFC 4514 order and short names (``CN=ct1,O=Hospital``,
    as ``openssl x509 -subject -nameopt rfc2253`` prints it); the names are
    that subject, each common name, and each subjectAltName value (DNS, IP
    address, URI, email).  Python only returns a certificate the handshake
    verified.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return Arrival(peer_ip)
    certificate = sock.getpeercert()
    if not certificate:
        return Arrival(peer_ip, tls=True)
    rdns = certificate.get("subject", ())
    subject = ",".join(
        "+".join(f"{_SHORT_NAMES.get(key, key)}={value}" for key, value in rdn)
        for rdn in reversed(rdns)
    )
    common = {value for rdn in rdns for key, value in rdn if key == "commonName"}
    alternative = {value.strip() for _, value in certificate.get("subjectAltName", ())}
    return Arrival(peer_ip, True, subject, frozenset({subject, *common, *alternative}))
