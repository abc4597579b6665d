"""Send files to a DICOM destination with C-STORE, as stored.

One association per call, on the project's own SCU (:mod:`exporters.dimse_scu`,
PS3.8 PDUs and PS3.7 command sets on one blocking socket with TCP_NODELAY),
because pynetdicom's requestor spent 1.5-3 ms of Python per file and held
exports to about a fifth of DCMTK storescu's rate (``bench/export.py``).  The
presentation contexts proposed are the files' own (SOP class, transfer
syntax) pairs, read from each file's meta when it was queued (the ledger), so
nothing is transcoded: each dataset goes out byte for byte from just after
its file meta, streamed from disk in PDVs that fit the destination's maximum
PDU length.

Association-level failures raise :class:`ExportError`, saying whether a
retry may help (PS3.8: a transient rejection, an abort or a refused
connection may; a permanent rejection will not).  Per-file outcomes follow
PS3.4 Annex B: Success and the Warning statuses count as delivered.
"""

from __future__ import annotations

import ssl

from dimse.commands import VERIFICATION
from exporters.dimse_scu import Association, AssociationRejected, Peer
from exporters.wire import AssociationLost
from ledger.records import ExportFileRecord
from spool.part10 import dataset_offset

__all__ = ["DELIVERED", "MAX_CONTEXTS", "ExportError", "Peer", "echo", "send"]

MAX_CONTEXTS = 128  # odd context IDs 1..255 (PS3.8 9.3.2.2)
DELIVERED = {0x0000, 0xB000, 0xB006, 0xB007}
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

Outcome = tuple[int, int | None, str | None]


class ExportError(Exception):
    """No file could be sent; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def associate(peer: Peer, pairs: list[tuple[str, str]]) -> Association:
    """Associate, or raise ExportError saying why not."""
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        return Association.request(peer, pairs)
    except AssociationRejected as exc:
        raise ExportError(
            f"{where} rejected the association {exc}", retryable=exc.result == 0x02
        ) from None
    except ssl.SSLError as exc:  # retried: a fixed certificate should not need a manual retry
        raise ExportError(f"{where}: TLS handshake failed: {_ssl_reason(exc)}") from None
    except OSError:  # refused, reset, timed out, aborted, or not DICOM
        raise ExportError(f"{where} did not answer (refused, aborted or timed out)") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    detail = getattr(exc, "verify_message", None)
    reason = exc.reason or str(exc)
    return f"{reason}: {detail}" if detail else str(reason)


def echo(peer: Peer) -> int | None:
    """C-ECHO ``peer``: its status, or raise ExportError."""
    assoc = associate(peer, [(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)])
    try:
        context_id = assoc.contexts.get((VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN))
        if context_id is None:
            raise ExportError(f"{peer.ae_title}@{peer.host}:{peer.port} refused Verification")
        try:
            return assoc.echo(context_id)
        except AssociationLost as exc:
            raise ExportError(f"{peer.ae_title}@{peer.host}:{peer.port}: {exc}") from None
    finally:
        assoc.release()


def send(peer: Peer, files: list[ExportFileRecord]) -> list[Outcome]:
    """Send ``files``; per file ``(file id, DIMSE status, error or None if delivered)``."""
    pairs = sorted({(f.sop_class_uid or "", f.transfer_syntax_uid or "") for f in files})
    if len(pairs) > MAX_CONTEXTS:
        raise ExportError(
            f"{len(pairs)} SOP class/transfer syntax pairs: more than one "
            f"association can propose ({MAX_CONTEXTS})",
            retryable=False,
        )
    assoc = associate(peer, pairs)
    try:
        return [_send_one(assoc, file) for file in files]
    finally:
        assoc.release()


def _send_one(assoc: Association, file: ExportFileRecord) -> Outcome:
    pair = (file.sop_class_uid or "", file.transfer_syntax_uid or "")
    context_id = assoc.contexts.get(pair)
    if context_id is None:
        return (
            file.id,
            None,
            f"destination accepts no context for SOP class {pair[0]} in transfer syntax {pair[1]}",
        )
    if not assoc.established:
        return file.id, None, "association lost before this file"
    try:
        handle = open(file.path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return file.id, None, f"file missing: {file.path}"
    except OSError as exc:
        return file.id, None, f"cannot send {file.path}: {type(exc).__name__}: {exc}"
    with handle:
        try:
            handle.seek(dataset_offset(handle))
        except (OSError, ValueError) as exc:  # no longer the DICOM file that was queued
            return file.id, None, f"cannot send {file.path}: {type(exc).__name__}: {exc}"
        try:
            status = assoc.store(context_id, pair[0], file.sop_instance_uid or "", handle)
        except AssociationLost as exc:
            return file.id, None, f"not delivered: {exc}"
    if status in DELIVERED:
        return file.id, status, None
    return file.id, status, f"destination answered 0x{status:04X}"
