"""STOW-RS receive (PS3.18 10.5): the parts of one request, each into the spool like a C-STORE.

A request body is ``multipart/related; type="application/dicom"``, one
Part 10 file per part.  :class:`StowParts` is fed the body as it arrives
(python-multipart's push parser calls it back) and never holds it whole:
each part's sender meta is read as it streams (at most 64 KiB), then our
own meta (provenance: the HTTP user and the client's address) and the data
set go to an :class:`spool.incoming.IncomingFile` in ``spool/.tmp/<node>/``,
256 KiB at a time.  At the part's end :func:`spool.accept.accept` makes the
decision a C-STORE gets, with the UIDs the part's meta names as the
request's: refused (its temporary file removed) or fsynced and renamed into
the spool layout, where intake records it as it records a C-STORE.

The outcome of each part becomes an item of the response (PS3.18 Annex I):
ReferencedSOPSequence for what was stored, FailedSOPSequence with the
status as FailureReason for what was refused, OtherFailuresSequence for a
part with no UIDs to name it by (not DICOM, not ``application/dicom``, cut
short).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spool.accept import SUCCESS, Accepted, accept
from spool.incoming import IncomingFile, MetaUids, Provenance
from spool.part10 import meta_end, meta_values
from spool.text import one_line
from spool.writer import SpoolWriter

# FailureReason values (PS3.18 Table I.2-2; the same codes as a C-STORE's status).
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
TRANSFER_SYNTAX_UID = 0x00020010


class TooManyParts(Exception):
    """More parts than ``[http] max_parts``: the request is refused (413)."""


@dataclass(frozen=True)
class PartOutcome:
    """One part: stored or refused (``status``, a FailureReason), and what it named."""

    status: int
    reason: str | None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS


class _Part:
    """One part as it streams: its headers, then the sender's meta, then the data set."""

    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, str] = {}
        self.head = bytearray()  # the sender's preamble and meta, until they are whole
        self.incoming: IncomingFile | None = None
        self.uids: MetaUids | None = None
        self.refusal: str | None = None  # set: the rest of the part is drained


class StowParts:
    """python-multipart callbacks for one request; the outcomes, in part order."""

    def __init__(
        self,
        writer: SpoolWriter,
        provenance: Provenance,
        study: str | None,
        max_parts: int,
        log: Callable[[PartOutcome], None],
    ) -> None:
        self.writer = writer
        self.provenance = provenance
        self.study = study  # the URL's Study Instance UID: every part must belong to it
        self.max_parts = max_parts
        self.log = log
        self.outcomes: list[PartOutcome] = []
        self.complete = False  # the closing boundary arrived
        self._part: _Part | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def abandon(
        self, status: int = CANNOT_UNDERSTAND, reason: str = "the body ended inside this part"
    ) -> None:
        """The body ended (or was cut off, or storing failed) inside a part: it is not kept,
        nor said stored."""
        part, self._part = self._part, None
        if part is not None:
            if part.incoming is not None:
                part.incoming.discard()
            self._record(PartOutcome(status, reason, *_named(part)))

    # -- callbacks -------------------------------------------------------------

    def _begin(self) -> None:
        if len(self.outcomes) >= self.max_parts:
            raise TooManyParts(f"more than {self.max_parts} parts ([http] max_parts)")
        self._part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_value += data[start:end]

    def _header_end(self) -> None:
        part = self._part
        assert part is not None
        name = part.header_field.decode("latin-1").strip().lower()
        part.headers[name] = part.header_value.decode("latin-1").strip()
        part.header_field.clear()
        part.header_value.clear()

    def _headers_finished(self) -> None:
        part = self._part
        assert part is not None
        media_type = part.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/dicom":
            shown = media_type or "none"
            part.refusal = f"part Content-Type is {shown}, not application/dicom"

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        if part.refusal is not None:
            return
        chunk = data[start:end]
        if part.incoming is not None:
            part.incoming.write(chunk)
            return
        part.head += chunk
        try:
            end_of_meta = meta_end(bytes(part.head))
        except ValueError as exc:
            part.refusal = f"not a DICOM Part 10 file: {exc}"
            part.head.clear()
            return
        if end_of_meta is not None:
            self._open(part, end_of_meta)

    def _end(self) -> None:
        part, self._part = self._part, None
        assert part is not None
        if part.refusal is None and part.incoming is None:
            try:  # a part shorter than a meta's first element: walk what there is
                self._open(part, meta_end(bytes(part.head), complete=True))  # type: ignore[arg-type]
            except ValueError as exc:
                part.refusal = f"not a DICOM Part 10 file: {exc}"
        if part.refusal is not None or part.incoming is None or part.uids is None:
            if part.incoming is not None:
                part.incoming.discard()
            self._record(PartOutcome(CANNOT_UNDERSTAND, part.refusal, *_named(part)))
            return
        try:
            accepted = accept(
                self.writer,
                part.incoming,
                part.uids.sop_class_uid,
                part.uids.sop_instance_uid,
                study_instance_uid=self.study,
            )
        except Exception as exc:  # as the SCP answers 0xC211: the part is refused, said why
            accepted = Accepted(PROCESSING_FAILURE, f"storing failed: {one_line(exc)}")
        if not part.incoming.published:
            part.incoming.discard()
        self._record(_outcome(accepted, part.uids))

    def _finished(self) -> None:
        self.complete = True

    # -- helpers ---------------------------------------------------------------

    def _open(self, part: _Part, end_of_meta: int) -> None:
        """The sender's meta is whole: name the instance, start our file, pass the rest on."""
        head = bytes(part.head)
        part.head.clear()
        meta = meta_values(head, end_of_meta)
        part.uids = MetaUids(
            _text(meta.get(MEDIA_STORAGE_SOP_CLASS_UID)),
            _text(meta.get(MEDIA_STORAGE_SOP_INSTANCE_UID)),
            _text(meta.get(TRANSFER_SYNTAX_UID)),
        )
        for value, element in (
            (part.uids.sop_class_uid, "Media Storage SOP Class UID (0002,0002)"),
            (part.uids.sop_instance_uid, "Media Storage SOP Instance UID (0002,0003)"),
            (part.uids.transfer_syntax_uid, "Transfer Syntax UID (0002,0010)"),
        ):
            if not value:
                part.refusal = f"its file meta names no {element}"
                return
        part.incoming = self.writer.open_incoming(self.provenance)
        part.incoming.write_header(part.uids)
        part.incoming.write(head[end_of_meta:])

    def _record(self, outcome: PartOutcome) -> None:
        self.outcomes.append(outcome)
        self.log(outcome)


def _outcome(accepted: Accepted, uids: MetaUids) -> PartOutcome:
    identity = accepted.identity
    return PartOutcome(
        accepted.status,
        accepted.reason,
        (identity.sop_class_uid if identity else None) or uids.sop_class_uid or None,
        (identity.sop_instance_uid if identity else None) or uids.sop_instance_uid or None,
        identity.study_instance_uid if identity else None,
        identity.series_instance_uid if identity else None,
    )


def _named(part: _Part) -> tuple[str | None, str | None]:
    """The SOP Class and Instance UIDs a refused part's meta gave, if it got that far."""
    if part.uids is None:
        return None, None
    return part.uids.sop_class_uid or None, part.uids.sop_instance_uid or None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ") if value else ""
