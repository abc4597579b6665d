"""The listening SCP: one pynetdicom AE serving every configured called AE title.

Presentation contexts: every Storage SOP class pynetdicom knows, each with
the transfer syntaxes the configuration allows (default: all standard ones),
plus Verification unless switched off.  Admission (called AE, sources, disk
room) happens in EVT_REQUESTED; pynetdicom itself enforces
``max_associations`` with a transient 2/3/2 rejection.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dimse.pynetdicom_boundary import register_server, share_contexts
from scp.admission import AdmissionPolicy
from scp.association_log import AssociationLog
from scp.handlers import handle_conn_open, handle_echo, handle_requested, handle_store
from scp.receiving import Receiving
from scp.tls import HandshakeInThread
from scp.unrequested import Unrequested
from spool.incoming import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from spool.writer import SpoolWriter

if TYPE_CHECKING:
    from config import DicomConfig

log = logging.getLogger(__name__)
SHUTDOWN_POLL_SECONDS = 0.05
LISTEN_BACKLOG = 128
# TLS handshakes in progress at once, and connections not yet associating, per
# allowed association: honest peers finish in milliseconds; silent ones are
# dropped beyond this.
HANDSHAKES_PER_ASSOCIATION = 4


def build_ae(dicom: DicomConfig) -> AE:
    """An AE configured from the ``[dicom]`` section."""
    ae = AE(ae_title=dicom.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = dicom.max_associations
    ae.acse_timeout = dicom.acse_timeout
    ae.dimse_timeout = dicom.dimse_timeout
    ae.network_timeout = dicom.network_timeout
    ae.maximum_pdu_size = dicom.maximum_pdu_size
    ae.require_called_aet = False  # several called AE titles: checked in EVT_REQUESTED
    syntaxes = list(dicom.transfer_syntaxes)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    if dicom.verification:
        ae.add_supported_context(Verification, syntaxes)
    return ae


class _Listener(ThreadedAssociationServer):
    """pynetdicom's server with a listen backlog for a burst of modalities.

    socketserver's default backlog is 5: when more peers connect at once,
    the kernel drops their handshakes' last ACK and retries the SYN-ACK
    with backoff (1, 2, 4, 8, 16 s), so a peer could wait half a minute
    before it is even accepted, long past its own ACSE timeout (measured:
    64 clients at once left about a dozen hanging for 31 s).
    """

    request_queue_size = LISTEN_BACKLOG
    unrequested: Unrequested

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection, unless too many others have not yet associated."""
        if not self.unrequested.admit():
            log.warning(
                "dropping connection from %s:%s: %d connections already waiting to associate",
                client_address[0],
                client_address[1],
                self.unrequested.cap,
            )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)


class _TlsListener(HandshakeInThread, _Listener):
    """The same server on ``tls_port``, its TLS handshakes off the accept path (scp/tls.py)."""


class StoreServer:
    """Starts and stops the SCP; holds the admission policy handlers read."""

    def __init__(self, dicom: DicomConfig, policy: AdmissionPolicy, writer: SpoolWriter) -> None:
        self.dicom = dicom
        self.policy = policy
        self.writer = writer
        self.receiving = Receiving(writer)
        self.tally = AssociationLog()
        self.unrequested = Unrequested(HANDSHAKES_PER_ASSOCIATION * dicom.max_associations)
        self._servers: list[ThreadedAssociationServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """The bound plain port; 0 without a plain listener (``port = 0``: TLS alone)."""
        return self._bound(_Listener, self.dicom.port)

    @property
    def tls_port(self) -> int:
        """The bound TLS port; 0 without a TLS listener."""
        return self._bound(_TlsListener, self.dicom.tls_port)

    def _bound(self, kind: type, configured: int) -> int:
        assert self._servers, "server not started"
        if not configured:
            return 0
        server = next(s for s in self._servers if type(s) is kind)
        return int(server.server_address[1])

    def start(self) -> None:
        """Listen on ``port``, and on ``tls_port`` if set: one AE, so one association limit.

        Raises
        ------
        OSError
            A port cannot be bound.
        ssl.SSLError
            The TLS settings do not load (``config check`` reports this first).
        """
        ae = build_ae(self.dicom)
        self.receiving.install()
        handlers = [
            (evt.EVT_CONN_OPEN, handle_conn_open, [self.dicom, self.receiving, self.tally]),
            (evt.EVT_REQUESTED, handle_requested, [self]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.receiving, self.tally]),
            (evt.EVT_ESTABLISHED, self.tally.opened),
            (evt.EVT_ACSE_SENT, self.tally.acse_sent),
            (evt.EVT_CONN_CLOSE, self.tally.closed),
            (evt.EVT_CONN_CLOSE, self.unrequested.closed),
            (evt.EVT_REJECTED, self.tally.refused_by_pynetdicom),
        ]
        try:
            if self.dicom.port:
                self._servers.append(
                    ae.make_server(
                        (self.dicom.host, self.dicom.port),
                        evt_handlers=handlers,
                        server_class=_Listener,
                    )
                )
            if self.dicom.tls is not None:
                self._servers.append(self._make_tls_server(ae, handlers))
        except BaseException:
            for server in self._servers:
                server.server_close()
            self._servers.clear()
            self.receiving.uninstall()
            raise
        for server in self._servers:
            server.unrequested = self.unrequested
            register_server(ae, server)  # as start_server does: shutdown() removes it
            share_contexts(server)  # no deep copy per connection (a port scan's CPU)
            thread = threading.Thread(
                target=server.serve_forever, name="AcceptorServer", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        answered = ", ".join(sorted(self.policy.called_aes))
        if self.port:
            log.info("listening on %s:%d for %s", self.dicom.host, self.port, answered)
        if self.tls_port:
            log.info(
                "listening for TLS on %s:%d for %s%s",
                self.dicom.host,
                self.tls_port,
                answered,
                "" if self.port else " (no plain port: port = 0)",
            )

    def _make_tls_server(self, ae: AE, handlers: list) -> _TlsListener:  # type: ignore[type-arg]
        assert self.dicom.tls is not None
        context = self.dicom.tls.server_context()
        server = ae.make_server(
            (self.dicom.host, self.dicom.tls_port),
            evt_handlers=handlers,
            server_class=_TlsListener,
        )
        server.setup_tls(
            context,
            self.dicom.acse_timeout,
            HANDSHAKES_PER_ASSOCIATION * self.dicom.max_associations,
        )
        return server

    @property
    def active_associations(self) -> int:
        return sum(len(server.active_associations) for server in self._servers)

    def associations_from(self, host: str, other_than: object) -> int:
        """Associations (connections) ``host`` holds on either listener, besides one."""
        return sum(
            1
            for server in self._servers
            for assoc in server.active_associations
            if assoc is not other_than and assoc.requestor.address == host
        )

    @property
    def running(self) -> bool:
        """True while every accept loop runs."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let established associations finish within the grace, abort the rest.

        ``grace`` defaults to ``[dicom] shutdown_grace``.  A C-STORE cut
        short was never acknowledged: its peer sends it again.
        """
        grace = self.dicom.shutdown_grace if grace is None else grace
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()  # no new associations from here on
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            assoc.is_established for server in servers for assoc in server.active_associations
        ):  # a connection that never associated is not worth waiting for
            time.sleep(SHUTDOWN_POLL_SECONDS)
        for assoc in (assoc for server in servers for assoc in server.active_associations):
            if assoc.is_established:  # the rest never associated: nothing to report
                log.warning(
                    "aborting an association still running after the %gs shutdown grace: peer %s",
                    grace,
                    assoc.requestor.address,
                )
            assoc.abort()
        self.receiving.uninstall()


def ensure_bindable(dicom: DicomConfig) -> None:
    """Bind and release each configured port, before anything else is created.

    So ``run`` on a port already taken (or on port 104 without the right)
    fails at once, naming the address, rather than after creating the
    ledger and spool.

    Raises
    ------
    OSError
        Its ``strerror`` names the address, the port and the reason.
    """
    for port, kind in ((dicom.port, "DICOM"), (dicom.tls_port, "DICOM TLS")):
        if not port:
            continue
        family = socket.AF_INET6 if ":" in dicom.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does
            try:
                probe.bind((dicom.host, port))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(
                    exc.errno, f"cannot listen on {dicom.host}:{port} ({kind} port): {reason}"
                ) from None
