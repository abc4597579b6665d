"""Send files to a DICOM destination with C-STORE, as stored.

One association per call.  The presentation contexts proposed are the
files' own (SOP class, transfer syntax) pairs, read from each file's meta in
the ledger, so nothing is transcoded; pynetdicom streams each dataset from
disk (``STORE_SEND_CHUNKED_DATASET``, set by the composition root), never
loading it.  pynetdicom as a sender never sets TCP_NODELAY, which stalls
small objects on Nagle plus delayed ACKs; the socket gets it here.  Two more
adjustments to the association, both measured with ``bench/export.py``, are
explained in :func:`_tune`: responses the association's reactor takes by
mistake are handed back, and the network thread polls every 0.1 ms instead of
every 1 ms while an export runs.

Association-level failures raise :class:`ExportError`, saying whether a
retry may help (PS3.8: a transient rejection, an abort or a refused
connection may; a permanent rejection will not).  Per-file outcomes follow
PS3.4 Annex B: Success and the Warning statuses count as delivered.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from ledger.records import ExportFileRecord

MAX_CONTEXTS = 128
POLL_SECONDS = 0.0001  # the DUL thread's idle poll while an export runs (pynetdicom: 0.001)
DELIVERED = {0x0000, 0xB000, 0xB006, 0xB007}


class ExportError(Exception):
    """No file could be sent; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


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


def _new_ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    return ae


def associate(ae: AE, peer: Peer) -> Association:
    """Associate, or raise ExportError saying why not."""
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if assoc.is_established:
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _tune(assoc)
        return assoc
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        result, source, reason = rejection.result, rejection.result_source, rejection.diagnostic
        raise ExportError(
            f"{peer.ae_title}@{peer.host}:{peer.port} rejected the association "
            f"{result}/{source}/{reason}",
            retryable=result == 0x02,
        )
    raise ExportError(
        f"{peer.ae_title}@{peer.host}:{peer.port} did not answer (refused, aborted or timed out)"
    )


def _tune(assoc: Association) -> None:
    """Make pynetdicom 3.0's requestor lose no response and wait less per message.

    Lost responses: ``send_c_store`` pauses the association's reactor thread
    before sending and then waits on the DIMSE queue for the response.  The
    pause is confirmed by a flag that is still set from the previous C-STORE
    when the reactor has not woken up yet, so on a fast peer the reactor runs
    on, takes the response off the queue, logs "Received unexpected C-STORE
    service message" and drops it; the sender then waits out the DIMSE timeout
    and aborts the association.  ``bench/export.py`` hit this in every export
    of 1000 small files to storescp on 127.0.0.1, and in some of 200 CT
    instances (the export failed with "no response").  An association we request
    never serves requests, so anything the reactor takes that is not a
    request goes back on the queue the sender is waiting on.

    Polling: the DUL thread sleeps 1 ms whenever it finds nothing to do, so
    every response waits up to 1 ms to be read; for small instances that
    is about a quarter of the time per file (1000 small files: about 240/s
    with 1 ms, 330/s with 0.1 ms).  The shorter poll costs some CPU, only
    while an association is open.
    """
    serve = assoc._serve_request

    def serve_or_hand_back(msg: Any, context_id: int) -> None:
        if msg.is_valid_request:
            serve(msg, context_id)
        else:
            assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = serve_or_hand_back  # type: ignore[method-assign]
    assoc.dul._run_loop_delay = POLL_SECONDS


def echo(peer: Peer) -> int | None:
    """C-ECHO ``peer``: its status, or raise ExportError."""
    ae = _new_ae(peer)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = associate(ae, peer)
    try:
        response = assoc.send_c_echo()
        return int(response.Status) if "Status" in response else None
    finally:
        assoc.release()


def send(peer: Peer, files: list[ExportFileRecord]) -> list[tuple[int, int | None, str | None]]:
    """Send ``files``; per file ``(file id, DIMSE status, error or None if delivered)``."""
    pairs = sorted({(f.sop_class_uid or "", f.transfer_syntax_uid or "") for f in files})
    if len(pairs) > MAX_CONTEXTS:
        raise ExportError(
            f"{len(pairs)} SOP class/transfer syntax pairs: more than one "
            f"association can propose ({MAX_CONTEXTS})",
            retryable=False,
        )
    ae = _new_ae(peer)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, syntax)
    assoc = associate(ae, peer)
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    outcomes = []
    try:
        for file in files:
            outcomes.append(_send_one(assoc, file, accepted))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _send_one(
    assoc: Association, file: ExportFileRecord, accepted: set[tuple[str, str]]
) -> tuple[int, int | None, str | None]:
    if (file.sop_class_uid, file.transfer_syntax_uid) not in accepted:
        return (
            file.id,
            None,
            (
                f"destination accepts no context for SOP class "
                f"{file.sop_class_uid} in transfer syntax "
                f"{file.transfer_syntax_uid}"
            ),
        )
    if not assoc.is_established:
        return file.id, None, "association lost before this file"
    if not Path(file.path).exists():
        return file.id, None, f"file missing: {file.path}"
    try:
        response = assoc.send_c_store(Path(file.path))
    except Exception as exc:  # unreadable, or no longer the DICOM file that was queued
        return file.id, None, f"cannot send {file.path}: {type(exc).__name__}: {exc}"
    if "Status" not in response:
        return file.id, None, "no response (association aborted or timed out)"
    status = int(response.Status)
    if status in DELIVERED:
        return file.id, status, None
    return file.id, status, f"destination answered 0x{status:04X}"
