"""The listening SCP: one pynetdicom AE serving every configured called AE title.

Presentation contexts: every Storage SOP class pynetdicom knows, each with
the transfer syntaxes the configuration allows (default: all standard ones),
plus Verification unless switched off.  Admission (called AE, sources, disk
room) happens in EVT_REQUESTED; pynetdicom itself enforces
``max_associations`` with a transient 2/3/2 rejection.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from scp.admission import AdmissionPolicy
from scp.association_log import AssociationLog
from scp.handlers import handle_conn_open, handle_echo, handle_requested, handle_store
from scp.receiving import Receiving
from spool.incoming import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from spool.writer import SpoolWriter

if TYPE_CHECKING:
    from config import DicomConfig

log = logging.getLogger(__name__)
SHUTDOWN_POLL_SECONDS = 0.05
LISTEN_BACKLOG = 128


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


class StoreServer:
    """Starts and stops the SCP; holds the admission policy handlers read."""

    def __init__(self, dicom: DicomConfig, policy: AdmissionPolicy, writer: SpoolWriter) -> None:
        self.dicom = dicom
        self.policy = policy
        self.writer = writer
        self.receiving = Receiving(writer)
        self.tally = AssociationLog()
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        ae = build_ae(self.dicom)
        self.receiving.install()
        handlers = [
            (evt.EVT_CONN_OPEN, handle_conn_open, [self.dicom]),
            (evt.EVT_REQUESTED, handle_requested, [self]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.receiving, self.tally]),
            (evt.EVT_ESTABLISHED, self.tally.opened),
            (evt.EVT_CONN_CLOSE, self.tally.closed),
            (evt.EVT_REJECTED, self.tally.refused_by_pynetdicom),
        ]
        try:
            self._server = ae.make_server(
                (self.dicom.host, self.dicom.port),
                evt_handlers=handlers,
                server_class=_Listener,
            )
        except BaseException:
            self.receiving.uninstall()
            raise
        ae._servers.append(self._server)  # as start_server does: shutdown() removes it
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="AcceptorServer", daemon=True
        )
        self._thread.start()
        log.info("listening on %s:%d as %s", self.dicom.host, self.port, self.dicom.ae_title)

    @property
    def active_associations(self) -> int:
        return 0 if self._server is None else len(self._server.active_associations)

    @property
    def running(self) -> bool:
        """True while the accept loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let established associations finish within the grace, abort the rest.

        ``grace`` defaults to ``[dicom] shutdown_grace``.  A C-STORE cut
        short was never acknowledged: its peer sends it again.
        """
        grace = self.dicom.shutdown_grace if grace is None else grace
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # no new associations from here on
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(
                assoc.is_established for assoc in server.active_associations
            ):  # a connection that never associated is not worth waiting for
                time.sleep(SHUTDOWN_POLL_SECONDS)
            for assoc in server.active_associations:
                if assoc.is_established:  # the rest never associated: nothing to report
                    log.warning(
                        "aborting an association still running after the %gs shutdown grace: "
                        "peer %s",
                        grace,
                        assoc.requestor.address,
                    )
                assoc.abort()
        self.receiving.uninstall()
