"""Read a spool file's header into what the ledger records about it.

Every file is untrusted (a peer sent it, or someone dropped it in), so its
header is read by the bounded structure walk (:mod:`spool.header`), which
also refuses text, PNG and other non-DICOM files (they belong in quarantine,
not the ledger).  The checksum streams the file.

Whether it is kept is decided by the rule the SCP applied before it
answered (:func:`spool.identity.judge`): what the SCP acknowledged, intake
records, with a warning event for whatever is odd.  A file the SCP wrote
carries the data set's length as received in its file meta
(:func:`spool.incoming.received_length`); while it still has that length it
is complete, and never called truncated.  Any other file (dropped in by
hand, or cut short since) is also checked for the signs of a copy that
stopped early.  An unknown SOP class is fine: private SOP classes are
legitimate, and the ledger records whatever the header says.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from pydicom.uid import UID_dictionary

from ledger.models import Instance
from spool.header import STUDY_INSTANCE_UID, HeaderValues, Malformed, read_values
from spool.identity import (
    IDENTITY_TAGS,
    MEDIA_STORAGE_SOP_CLASS_UID,
    MEDIA_STORAGE_SOP_INSTANCE_UID,
    SOP_CLASS_UID,
    identity_of,
    judge,
)
from spool.incoming import received_length
from spool.part10 import dataset_offset
from spool.text import one_line

_HASH_CHUNK = 2**20
INSTANCE_COLUMNS = Instance.__table__.c
# Tags of the elements the ledger records, besides the AE's group_by element.
PATIENT_ID = 0x00100020
ROWS = 0x00280010
TRANSFER_SYNTAX_UID = 0x00020010
SOURCE_AE_TITLE = 0x00020016
SENDING_PRESENTATION_ADDRESS = 0x00020027
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_DELIMITER_SEARCH = 64 * 1024


@dataclass(frozen=True)
class Header:
    """What intake learned from one file."""

    size: int
    sha256: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    patient_id: str | None
    calling_ae: str | None
    peer_address: str | None
    group_key: str | None
    http_user: str | None = None


@dataclass(frozen=True)
class Inspection:
    """A header to record, and what is odd about the file (each a warning event)."""

    header: Header
    warnings: tuple[str, ...] = ()


class NotAnInstance(ValueError):
    """The file is not a DICOM instance the adapter can keep."""


def dataset_sha256(handle: BinaryIO, offset: int | None = None) -> tuple[int, str]:
    """(file size, hex SHA-256 of the dataset bytes after the file meta), streaming.

    ``offset`` is where the dataset starts, if known; else it is read from
    the file meta.  The digest covers what the peer sent, not our file meta
    (which names the peer's port and so differs between two sends of the
    same instance): two copies with the same digest are the same instance,
    byte for byte.
    """
    digest = hashlib.sha256()
    handle.seek(dataset_offset(handle) if offset is None else offset)
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
    return handle.tell(), digest.hexdigest()


def read_header(path: Path, group_tag: int = STUDY_INSTANCE_UID) -> Inspection:
    """Read ``path``'s header; ``group_tag`` is the AE's ``group_by`` element.

    Raises
    ------
    NotAnInstance
        With a one-line reason, for anything that is not a usable instance.
    """
    wanted = (*IDENTITY_TAGS, PATIENT_ID, ROWS, group_tag)
    warnings: list[str] = []
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            values = read_values(handle, size, wanted)
            structure = values.structure
            problem = _looks_cut_short(values, handle)
            if problem is not None:
                if not _complete_as_received(values, size):
                    raise NotAnInstance(f"truncated: {problem}")
                warnings.append(f"{problem}, as the sender sent it")
            size, digest = dataset_sha256(handle, structure.dataset_offset)
        header = _header(values, size, digest, group_tag, warnings)
    except NotAnInstance:
        raise
    except Malformed as exc:
        raise NotAnInstance(str(exc)) from None
    except Exception as exc:  # anything odder from a hostile file
        raise NotAnInstance(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    return Inspection(header, tuple(warnings))


def _header(
    values: HeaderValues, size: int, digest: str, group_tag: int, warnings: list[str]
) -> Header:
    """The ledger's columns for a file the rule keeps (:func:`spool.identity.judge`)."""
    identity = identity_of(values)
    # The file meta records the C-STORE request's UIDs (ours, for a received file).
    request = (
        values.text(MEDIA_STORAGE_SOP_CLASS_UID),
        values.text(MEDIA_STORAGE_SOP_INSTANCE_UID),
    )
    verdict = judge(identity, request)
    if verdict.refusal is not None:
        raise NotAnInstance(verdict.refusal)
    warnings += verdict.warnings
    peer, http_user = sender(values.text(SENDING_PRESENTATION_ADDRESS))
    return Header(
        size=size,
        sha256=digest,
        sop_instance_uid=identity.sop_instance_uid,  # type: ignore[arg-type]  # judged
        study_instance_uid=identity.study_instance_uid,  # type: ignore[arg-type]
        series_instance_uid=identity.series_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=_fit(values.text(TRANSFER_SYNTAX_UID), "transfer_syntax_uid", warnings),
        patient_id=_fit(_text(values, PATIENT_ID, "Patient ID", warnings), "patient_id", warnings),
        calling_ae=_fit(values.text(SOURCE_AE_TITLE), "calling_ae", warnings),
        peer_address=_fit(peer, "peer_address", warnings),
        group_key=_text(values, group_tag, "the group_by element", warnings),
        http_user=_fit(http_user, "http_user", warnings),
    )


def sender(address: str | None) -> tuple[str | None, str | None]:
    """(peer address, HTTP user) from a Sending Presentation Address our meta wrote:
    ``dicom://ip:port``, or ``https://user@ip:port`` for STOW-RS."""
    if not address:
        return None, None
    scheme, found, rest = address.partition("://")
    if not found or scheme not in ("dicom", "http", "https"):
        return address, None
    user, at, peer = rest.rpartition("@")
    return peer, unquote(user) if at else None


def _fit(value: str | None, column: str, warnings: list[str]) -> str | None:
    """``value`` cut to its ledger column's width (PostgreSQL enforces it), with a warning.

    A hand-dropped file's meta or a hostile data set can hold anything; one
    over-long value must not fail the insert of a whole intake batch.
    """
    limit = INSTANCE_COLUMNS[column].type.length
    if value is None or limit is None or len(value) <= limit:
        return value
    warnings.append(f"{column} longer than {limit} characters: recorded cut to {limit}")
    return value[:limit]


def _text(values: HeaderValues, tag: int, name: str, warnings: list[str]) -> str | None:
    """An element's text; a value pydicom cannot convert is absent, with a warning."""
    try:
        return values.text(tag)
    except Exception as exc:  # pydicom's conversion of an odd value
        element = f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
        warnings.append(f"{name} ({element}) is unreadable: {one_line(exc)}")
        return None


def _complete_as_received(values: HeaderValues, size: int) -> bool:
    """True when our SCP wrote this file and it still holds every byte it received."""
    length = received_length(values)
    return length is not None and length == size - values.structure.dataset_offset


def _looks_cut_short(values: HeaderValues, handle: BinaryIO) -> str | None:
    """What says a copy of this file may have stopped early, if anything does."""
    structure = values.structure
    if structure.stopped_at is None and _expects_pixels(values):
        return "an image without Pixel Data"
    encapsulated = structure.pixel_length == _UNDEFINED_LENGTH and not structure.deflated
    if encapsulated and not _delimited(handle, structure.pixel_offset or 0):
        return "encapsulated Pixel Data has no sequence delimiter"
    return None


def _expects_pixels(values: HeaderValues) -> bool:
    """Whether the header says Pixel Data must follow: Rows, or an image storage class.

    A file cut at an element boundary before Pixel Data looks like a shorter
    valid dataset; only what the header promises can tell.  Unknown (private)
    SOP classes promise nothing, so they are judged by Rows alone.
    """
    if values.has(ROWS):
        return True
    entry = UID_dictionary.get(values.text(SOP_CLASS_UID) or "")
    return entry is not None and entry[0].endswith("Image Storage")


def _delimited(handle: BinaryIO, pixel_offset: int) -> bool:
    """Whether encapsulated Pixel Data is closed near the file's end.

    The structure walk checked every declared length up to Pixel Data,
    including a defined Pixel Data length; an encapsulated value has none,
    so a half-copied file is told by its missing Sequence Delimitation Item.
    Not for deflated datasets (the walk inflated those to their end).
    """
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(max(pixel_offset, size - _DELIMITER_SEARCH))
    return _SEQUENCE_DELIMITER in handle.read()
