"""pynetdicom event handlers: admission, C-ECHO, C-STORE.

The C-STORE handler knows the spool, never the ledger: it places the
instance, hands it to :class:`spool.writer.SpoolWriter`, and answers with a
status from PS3.4 Annex B only after the file is durable.  It never raises:
with chunked receive, pynetdicom skips removing its temporary file when a
handler raises, so unexpected errors are logged here and answered 0xC211.
"""

import logging
import socket
from pathlib import Path

from pynetdicom import events as evt

from scp.admission import AdmissionPolicy
from scp.placement import read_placement
from spool.layout import UnsafeName
from spool.names import validate_uid
from spool.part10 import dataset_offset
from spool.writer import Received, SpoolFull, SpoolWriter

log = logging.getLogger(__name__)

SUCCESS = 0x0000
# Refused: Out of Resources (PS3.4 B.2.3): disk full or under min_free.
OUT_OF_RESOURCES = 0xA700
# Error: Cannot Understand: unusable UIDs or an unparsable dataset.
CANNOT_UNDERSTAND = 0xC210
# Error: processing failure (pynetdicom's code for a failing handler).
PROCESSING_FAILURE = 0xC211


def called_ae_of(assoc: object) -> str:
    return str(assoc.requestor.primitive.called_ae_title).strip()  # type: ignore[attr-defined]


def calling_ae_of(assoc: object) -> str:
    return str(assoc.requestor.primitive.calling_ae_title).strip()  # type: ignore[attr-defined]


def handle_requested(event: evt.Event, policy_source: object) -> None:
    """EVT_REQUESTED: accept or reject the association before negotiation."""
    assoc = event.assoc
    policy: AdmissionPolicy = policy_source.policy  # type: ignore[attr-defined]
    called, calling, peer = called_ae_of(assoc), calling_ae_of(assoc), assoc.requestor.address
    rejection, reason = policy.decide(called, calling, peer)
    if rejection is None and not policy_source.writer.has_room():  # type: ignore[attr-defined]
        rejection, reason = (0x02, 0x03, 0x02), "spool free space under min_free"
    if rejection is not None:
        log.warning(
            "association rejected %d/%d/%d peer=%s calling=%r called=%r: %s",
            *rejection,
            peer,
            calling,
            called,
            reason,
        )
        assoc.acse.send_reject(*rejection)
        # As pynetdicom does for its own rejections: wait until the DUL has
        # sent the A-ASSOCIATE-RJ, or the socket closes before it leaves.
        assoc.kill()
        return
    assoc.acceptor.ae_title = called  # echo the called AE title in the A-ASSOCIATE-AC


def handle_conn_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN: disable Nagle, or small responses wait for delayed ACKs."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: Verification, PS3.4 A.4."""
    return SUCCESS


def handle_store(event: evt.Event, writer: SpoolWriter) -> int:
    """EVT_C_STORE: make the instance durable in the spool, then answer."""
    request = event.request
    try:
        return _store(event, writer)
    except Exception:
        log.exception(
            "C-STORE failed unexpectedly sop=%s: answering 0xC211", request.AffectedSOPInstanceUID
        )
        return PROCESSING_FAILURE


def _store(event: evt.Event, writer: SpoolWriter) -> int:
    request, assoc = event.request, event.assoc
    source: Path = event.dataset_path
    sop_instance_uid = str(request.AffectedSOPInstanceUID)
    try:
        placement = read_placement(source)
        offset = dataset_offset(source)
    except Exception as exc:  # pydicom raises many kinds on bad input
        return _refuse(CANNOT_UNDERSTAND, sop_instance_uid, f"unreadable dataset: {exc}")
    if placement.sop_instance_uid != sop_instance_uid:
        return _refuse(
            CANNOT_UNDERSTAND,
            sop_instance_uid,
            f"dataset SOP Instance UID {placement.sop_instance_uid!r} differs from the request's",
        )
    for name, uid in (
        ("SOP Class UID", str(request.AffectedSOPClassUID)),
        ("Study Instance UID", placement.study_instance_uid),
        ("Series Instance UID", placement.series_instance_uid),
    ):
        ok, reason = validate_uid(uid)
        if not ok:
            return _refuse(CANNOT_UNDERSTAND, sop_instance_uid, f"{name}: {reason}")
    item = Received(
        source=source,
        dataset_offset=offset,
        called_ae=called_ae_of(assoc),
        calling_ae=calling_ae_of(assoc),
        peer_address=f"{assoc.requestor.address}:{assoc.requestor.port}",
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        study_instance_uid=placement.study_instance_uid,  # type: ignore[arg-type]
        series_instance_uid=placement.series_instance_uid,  # type: ignore[arg-type]
    )
    try:
        path = writer.accept(item)
    except SpoolFull as exc:
        return _refuse(OUT_OF_RESOURCES, sop_instance_uid, f"spool full: {exc.strerror or exc}")
    except UnsafeName as exc:
        return _refuse(CANNOT_UNDERSTAND, sop_instance_uid, str(exc))
    log.debug("stored sop=%s path=%s", sop_instance_uid, path)
    return SUCCESS


def _refuse(status: int, sop_instance_uid: str, reason: str) -> int:
    log.warning("C-STORE refused 0x%04X sop=%r: %s", status, sop_instance_uid, reason)
    return status
