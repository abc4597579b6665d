"""Send files to a DICOM destination with C-STORE, as stored; one outcome per file.

The SCU is the project's own (:mod:`exporters.dimse_scu`, PS3.8 PDUs and
PS3.7 command sets on one blocking socket with TCP_NODELAY), because
pynetdicom's requestor spent 1.5-3 ms of Python per file and held exports
to about a fifth of DCMTK storescu's rate (``bench/export.py``).  The
presentation contexts proposed are the files' own (SOP class, transfer
syntax) pairs, read from each file's meta when it was queued (the ledger),
so nothing is transcoded: each dataset goes out byte for byte from just
after its file meta, streamed from disk.  More pairs than one association
can propose go over several associations.

Every file gets a :class:`ledger.records.ItemOutcome`, and the outcome says what happens
next: delivered (Success and the
Warning statuses, PS3.4 Annex B), worth another attempt (0xA7xx, anything
unknown, an association lost or never made for a transient reason, and any
file not attempted because of that), or refused for good (0xA9xx, 0xCxxx,
0x0122, 0x0124, no accepted presentation context, a permanent rejection, a
file that can no longer be read); the statuses' classes are
:mod:`exporters.outcomes`.  Nothing here deletes anything: what
becomes of a file is the ledger's decision, from its outcome.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from dimse.commands import VERIFICATION
from exporters.base import Attempt, ExportError
from exporters.dimse_scu import Association, AssociationRejected, Peer
from exporters.outcomes import status_outcome
from exporters.wire import AssociationLost
from ledger.records import ItemOutcome, ItemRecord
from spool.part10 import dataset_offset

__all__ = [
    "MAX_CONTEXTS",
    "CStoreSender",
    "ExportError",
    "Peer",
    "echo",
    "send",
    "status_outcome",
]

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # odd context IDs 1..255 (PS3.8 9.3.2.2)
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


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


def send(peer: Peer, files: list[ItemRecord]) -> list[ItemOutcome]:
    """Send ``files``; one :class:`ItemOutcome` per file, in order.  Never raises ExportError."""
    outcomes: dict[int, ItemOutcome] = {}
    for batch in _batches(files):
        outcomes.update((outcome.item_id, outcome) for outcome in _send_batch(peer, batch))
    return [outcomes[file.id] for file in files]


def _pair(file: ItemRecord) -> tuple[str, str]:
    return file.sop_class_uid or "", file.transfer_syntax_uid or ""


def _batches(files: list[ItemRecord]) -> Iterator[list[ItemRecord]]:
    """The files in groups whose (SOP class, syntax) pairs fit one association's contexts."""
    pairs = sorted({_pair(f) for f in files})
    for start in range(0, len(pairs), MAX_CONTEXTS):
        chosen = set(pairs[start : start + MAX_CONTEXTS])
        yield [f for f in files if _pair(f) in chosen]


def _send_batch(peer: Peer, files: list[ItemRecord]) -> list[ItemOutcome]:
    try:
        assoc = associate(peer, sorted({_pair(f) for f in files}))
    except ExportError as exc:
        return [
            ItemOutcome(f.id, None, f"not attempted: {exc}", exc.retryable, attempted=False)
            for f in files
        ]
    try:
        return [_attempt(assoc, file) for file in files]
    finally:
        assoc.release()


def _attempt(assoc: Association, file: ItemRecord) -> ItemOutcome:
    """One file's outcome; an unexpected error costs that file's attempt, not the others'.

    What the destination made of a message cut short by our own error is
    unknown, so the association is aborted and the files after it wait for
    the next attempt.
    """
    if not assoc.established:
        return ItemOutcome(
            file.id, None, "not attempted: the association was lost", True, attempted=False
        )
    try:
        return _send_one(assoc, file)
    except Exception as exc:
        log.exception("export of %s failed unexpectedly", file.path)
        assoc.abort()
        return ItemOutcome(file.id, None, f"not delivered: {type(exc).__name__}: {exc}", True)


def _send_one(assoc: Association, file: ItemRecord) -> ItemOutcome:
    pair = _pair(file)
    context_id = assoc.contexts.get(pair)
    if context_id is None:
        return ItemOutcome(
            file.id,
            None,
            f"destination accepts no context for SOP class {pair[0]} in transfer syntax {pair[1]}",
        )
    try:
        handle = open(file.path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return ItemOutcome(file.id, None, f"file missing: {file.path}")
    except OSError as exc:  # out of descriptors, a permission to fix: worth another attempt
        reason = f"cannot send {file.path}: {type(exc).__name__}: {exc}"
        return ItemOutcome(file.id, None, reason, retry=True)
    with handle:
        try:
            handle.seek(dataset_offset(handle))
        except (OSError, ValueError) as exc:  # no longer the DICOM file that was queued
            reason = f"cannot send {file.path}: {type(exc).__name__}: {exc}"
            return ItemOutcome(file.id, None, reason)
        try:
            status = assoc.store(context_id, pair[0], file.sop_instance_uid or "", handle)
        except AssociationLost as exc:
            return ItemOutcome(file.id, None, f"not delivered: {exc}", retry=True)
    return status_outcome(file.id, status)


@dataclass(frozen=True)
class CStoreSender:
    """A ``type = dicom`` destination, as an export lane's :class:`exporters.base.Sender`."""

    peer: Peer
    name: ClassVar[str] = "cstore"

    @property
    def where(self) -> str:
        return f"{self.peer.ae_title}@{self.peer.host}:{self.peer.port}"

    def send(self, files: list[ItemRecord]) -> Attempt:
        return Attempt(send(self.peer, files))

    def echo(self) -> str:
        status = echo(self.peer)
        if status != 0:
            raise ExportError(f"C-ECHO answered {status!r}")
        return "C-ECHO Success"
