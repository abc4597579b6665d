"""pynetdicom event handlers: admission, C-ECHO, C-STORE.

The C-STORE handler knows the spool, never the ledger: it has
:func:`spool.accept.accept` judge the instance that streamed into its
incoming file and publish it, and answers with a status from PS3.4 Annex B
only after the file is durable.  It never raises: with chunked
receive, pynetdicom skips removing its temporary file when a handler raises,
so unexpected errors are logged here and answered 0xC211.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from pynetdicom import events as evt

from dimse.pynetdicom_boundary import wake_on_events
from scp.admission import (
    REJECT_LOCAL_LIMIT,
    REJECTION_NAMES,
    AdmissionPolicy,
    is_health_check,
)
from scp.association_log import AssociationLog
from scp.direct import DirectPath
from scp.read_limits import limit_reads
from scp.receiving import Receiving, provenance_of
from scp.tls import arrival_over
from spool.accept import SUCCESS, accept
from spool.incoming import IncomingFile

if TYPE_CHECKING:
    from config import DicomConfig

log = logging.getLogger(__name__)

# Error: processing failure (pynetdicom's code for a failing handler).
PROCESSING_FAILURE = 0xC211


def handle_requested(event: evt.Event, server: object) -> None:
    """EVT_REQUESTED: accept or reject the association before negotiation."""
    assoc = event.assoc
    policy: AdmissionPolicy = server.policy  # type: ignore[attr-defined]
    peer = provenance_of(assoc)
    server.unrequested.requested(assoc)  # type: ignore[attr-defined]
    host = assoc.requestor.address
    arrival = arrival_over(assoc.dul.socket.socket, host)
    rejection, reason = policy.decide(peer.called_ae, peer.calling_ae, arrival)
    if rejection is None:
        held = server.associations_from(host, assoc)  # type: ignore[attr-defined]
        if held >= server.dicom.per_host_limit:  # type: ignore[attr-defined]
            rejection = REJECT_LOCAL_LIMIT
            reason = f"{held} associations from {host} already (max_associations_per_host)"
    if rejection is None and not server.writer.has_room():  # type: ignore[attr-defined]
        rejection, reason = REJECT_LOCAL_LIMIT, "spool free space under min_free"
    if rejection is not None:
        server.tally.rejection(REJECTION_NAMES[rejection])  # type: ignore[attr-defined]
        log.log(
            logging.DEBUG if is_health_check(peer.calling_ae, host) else logging.WARNING,
            "association rejected %d/%d/%d peer=%s calling=%r called=%r: %s",
            *rejection,
            peer.peer_address,
            peer.calling_ae,
            peer.called_ae,
            reason,
        )
        assoc.acse.send_reject(*rejection)
        # As pynetdicom does for its own rejections: wait until the DUL has
        # sent the A-ASSOCIATE-RJ, or the socket closes before it leaves.
        assoc.kill()
        return
    assoc.acceptor.ae_title = peer.called_ae  # echo the called AE title in the A-ASSOCIATE-AC


def handle_conn_open(
    event: evt.Event, dicom: DicomConfig, receiving: Receiving, tally: AssociationLog
) -> None:
    """EVT_CONN_OPEN: no Nagle (small responses would wait for delayed ACKs), no
    polling, reads with a deadline and a length cap, and the direct C-STORE path."""
    assoc = event.assoc
    sock = assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = limit_reads(assoc, dicom.network_timeout, dicom.maximum_pdu_size)

    def store_received(assoc: Any, incoming: IncomingFile, sop_class: str, sop: str) -> int:
        return store(assoc, receiving, tally, receiving.take(assoc, incoming.name), sop_class, sop)

    direct = DirectPath(assoc, reader, receiving.open_for, store_received)
    wake_on_events(assoc, direct.serve)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: Verification, PS3.4 A.4."""
    return SUCCESS


def handle_store(event: evt.Event, receiving: Receiving, tally: AssociationLog) -> int:
    """EVT_C_STORE: make the instance durable in the spool, then answer."""
    return store(
        event.assoc,
        receiving,
        tally,
        receiving.take(event.assoc, event.dataset_path),
        str(event.request.AffectedSOPClassUID),
        str(event.request.AffectedSOPInstanceUID),
    )


def store(
    assoc: Any,
    receiving: Receiving,
    tally: AssociationLog,
    incoming: IncomingFile | None,
    sop_class_uid: str,
    sop_instance_uid: str,
) -> int:
    """Make a received instance durable in the spool; the status to answer.

    For pynetdicom's C-STORE path and for :mod:`scp.direct` alike; the
    decision is :func:`spool.accept.accept`'s, as for STOW-RS.
    """
    try:
        if incoming is None:
            raise RuntimeError(f"no incoming file for sop={sop_instance_uid!r}")
        accepted = accept(receiving.writer, incoming, sop_class_uid, sop_instance_uid)
    except Exception:
        log.exception("C-STORE failed unexpectedly sop=%r: answering 0xC211", sop_instance_uid)
        if incoming is not None and not incoming.published:
            incoming.path.unlink(missing_ok=True)
        tally.refused(assoc)
        return PROCESSING_FAILURE
    if accepted.status != SUCCESS:
        log.warning(
            "C-STORE refused 0x%04X sop=%r: %s", accepted.status, sop_instance_uid, accepted.reason
        )
        tally.refused(assoc)
        return accepted.status
    log.debug("stored sop=%s path=%s", sop_instance_uid, accepted.path)
    tally.stored(assoc, incoming.provenance.called_ae, incoming.size)  # type: ignore[union-attr]
    return SUCCESS
