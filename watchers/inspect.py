"""Read a spool file's header into what the ledger records about it.

Every file is untrusted (a peer sent it, or someone dropped it in), so its
header is read by the bounded structure walk (:mod:`spool.header`), which
also refuses text, PNG and other non-DICOM files (they belong in quarantine,
not the ledger).  The checksum streams the file.

A missing or malformed SOP Class UID is (no exporter could name the instance
to a peer), but an unknown one is not: private SOP classes are legitimate,
and the ledger records whatever the header says.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID_dictionary

from spool.header import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    HeaderValues,
    Malformed,
    read_values,
)
from spool.names import validate_uid
from spool.part10 import dataset_offset

_HASH_CHUNK = 2**20
# Tags of the elements the ledger records, besides the AE's group_by element.
SOP_CLASS_UID = 0x00080016
PATIENT_ID = 0x00100020
ROWS = 0x00280010
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
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


def read_header(path: Path, group_tag: int = STUDY_INSTANCE_UID) -> Header:
    """Read ``path``'s header; ``group_tag`` is the AE's ``group_by`` element.

    Raises
    ------
    NotAnInstance
        With a one-line reason, for anything that is not a usable instance.
    """
    wanted = (SOP_CLASS_UID, SOP_INSTANCE_UID, PATIENT_ID, STUDY_INSTANCE_UID)
    wanted += (SERIES_INSTANCE_UID, ROWS, group_tag)
    try:
        with open(path, "rb", buffering=0) as handle:
            values = read_values(handle, os.fstat(handle.fileno()).st_size, wanted)
            structure = values.structure
            if structure.stopped_at is None and _expects_pixels(values):
                raise NotAnInstance("truncated: an image without Pixel Data")
            if structure.pixel_length == _UNDEFINED_LENGTH and not structure.deflated:
                _check_delimited(handle, structure.pixel_offset or 0)
            size, digest = dataset_sha256(handle, structure.dataset_offset)
            text = {tag: values.text(tag) for tag in wanted}
    except NotAnInstance:
        raise
    except Malformed as exc:
        raise NotAnInstance(str(exc)) from None
    except Exception as exc:  # pydicom's conversion of an odd value, say
        raise NotAnInstance(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    sop_class = text[SOP_CLASS_UID] or values.text(MEDIA_STORAGE_SOP_CLASS_UID)
    for keyword, uid in (
        ("SOPInstanceUID", text[SOP_INSTANCE_UID]),
        ("StudyInstanceUID", text[STUDY_INSTANCE_UID]),
        ("SOPClassUID", sop_class),
    ):
        ok, reason = validate_uid(uid)
        if not ok:
            raise NotAnInstance(f"{keyword}: {reason}")
    if text[SERIES_INSTANCE_UID] is not None:
        ok, reason = validate_uid(text[SERIES_INSTANCE_UID])
        if not ok:
            raise NotAnInstance(f"SeriesInstanceUID: {reason}")
    address = values.text(SENDING_PRESENTATION_ADDRESS)
    return Header(
        size=size,
        sha256=digest,
        sop_instance_uid=text[SOP_INSTANCE_UID],  # type: ignore[arg-type]
        study_instance_uid=text[STUDY_INSTANCE_UID],  # type: ignore[arg-type]
        series_instance_uid=text[SERIES_INSTANCE_UID],
        sop_class_uid=sop_class,
        transfer_syntax_uid=values.text(TRANSFER_SYNTAX_UID),
        patient_id=text[PATIENT_ID],
        calling_ae=values.text(SOURCE_AE_TITLE),
        peer_address=address.removeprefix("dicom://") if address else None,
        group_key=text[group_tag],
    )


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


def _check_delimited(handle: BinaryIO, pixel_offset: int) -> None:
    """Refuse a file whose encapsulated Pixel Data is not closed near its end.

    The structure walk checked every declared length up to Pixel Data,
    including a defined Pixel Data length; an encapsulated value has none,
    so a half-copied file is told by its missing Sequence Delimitation Item.
    Not for deflated datasets (the walk inflated those to their end).
    """
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(max(pixel_offset, size - _DELIMITER_SEARCH))
    if _SEQUENCE_DELIMITER not in handle.read():
        raise NotAnInstance("truncated: encapsulated Pixel Data has no sequence delimiter")
