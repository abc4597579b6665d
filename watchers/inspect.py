"""Read a spool file's header into what the ledger records about it.

Header only (up to Pixel Data), never ``force=True``: pydicom returns an
empty dataset for text or PNG files when forced, and such files belong in
quarantine, not the ledger.  Every file is untrusted (a peer sent it, or
someone dropped it in), so pydicom only sees it after the bounded structure
walk of :mod:`spool.bounded` passed it.  The checksum streams the file.

A missing or malformed SOP Class UID is (no exporter could name the instance
to a peer), but an unknown one is not: private SOP classes are legitimate,
and the ledger records whatever the header says.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileDataset
from pydicom.uid import UID_dictionary

from spool.bounded import Malformed, read_bounded
from spool.names import validate_uid
from spool.part10 import dataset_offset, element_text

_HASH_CHUNK = 2**20
STUDY_INSTANCE_UID = 0x0020000D
_PIXEL_DATA = 0x7FE00010
_ROWS = 0x00280010
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


def dataset_sha256(handle: BinaryIO) -> tuple[int, str]:
    """(file size, hex SHA-256 of the dataset bytes after the file meta), streaming.

    The digest covers what the peer sent, not our file meta (which names the
    peer's port and so differs between two sends of the same instance): two
    copies with the same digest are the same instance, byte for byte.
    """
    digest = hashlib.sha256()
    handle.seek(dataset_offset(handle))
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
    return handle.tell(), digest.hexdigest()


def read_header(path: Path, group_tag: int = STUDY_INSTANCE_UID) -> Header:
    """Parse ``path``'s header; ``group_tag`` is the AE's ``group_by`` element.

    Raises
    ------
    NotAnInstance
        With a one-line reason, for anything that is not a usable instance.
    """
    try:
        with open(path, "rb") as handle:
            ds, structure = read_bounded(handle)
            if structure.stopped_at is None and _expects_pixels(ds):
                raise NotAnInstance("truncated: an image without Pixel Data")
            if structure.inflated is None:  # the walk inflated a deflated one whole
                _check_complete(handle, ds, os.fstat(handle.fileno()).st_size)
            size, digest = dataset_sha256(handle)
        meta = ds.file_meta
        group_element = ds.get(group_tag)
        group_key = element_text(None if group_element is None else group_element.value)
        values = {
            keyword: element_text(ds.get(keyword))
            for keyword in (
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPClassUID",
                "PatientID",
            )
        }
    except NotAnInstance:
        raise
    except Malformed as exc:
        raise NotAnInstance(str(exc)) from None
    except Exception as exc:  # pydicom raises many types on bad input
        raise NotAnInstance(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    values["SOPClassUID"] = values["SOPClassUID"] or element_text(
        meta.get("MediaStorageSOPClassUID")
    )
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        ok, reason = validate_uid(values[keyword])
        if not ok:
            raise NotAnInstance(f"{keyword}: {reason}")
    if values["SeriesInstanceUID"] is not None:
        ok, reason = validate_uid(values["SeriesInstanceUID"])
        if not ok:
            raise NotAnInstance(f"SeriesInstanceUID: {reason}")
    address = element_text(meta.get("SendingPresentationAddress"))
    return Header(
        size=size,
        sha256=digest,
        sop_instance_uid=values["SOPInstanceUID"],  # type: ignore[arg-type]
        study_instance_uid=values["StudyInstanceUID"],  # type: ignore[arg-type]
        series_instance_uid=values["SeriesInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        transfer_syntax_uid=element_text(meta.get("TransferSyntaxUID")),
        patient_id=values["PatientID"],
        calling_ae=element_text(meta.get("SourceApplicationEntityTitle")),
        peer_address=address.removeprefix("dicom://") if address else None,
        group_key=group_key,
    )


def _expects_pixels(ds: FileDataset) -> bool:
    """Whether the header says Pixel Data must follow: Rows, or an image storage class.

    A file cut at an element boundary before Pixel Data looks like a shorter
    valid dataset; only what the header promises can tell.  Unknown (private)
    SOP classes promise nothing, so they are judged by Rows alone.
    """
    if _ROWS in ds:
        return True
    entry = UID_dictionary.get(element_text(ds.get("SOPClassUID")) or "")
    return entry is not None and entry[0].endswith("Image Storage")


def _check_complete(handle: BinaryIO, ds: FileDataset, size: int) -> None:
    """Refuse a file whose Pixel Data ends past the end of the file.

    pydicom reads truncated files without complaint (RELIABILITY.md), so a
    half-copied file would pass as an instance.  ``dcmread`` with
    ``stop_before_pixels`` leaves ``handle`` at the Pixel Data element, if
    any: a defined length must fit in the file; an encapsulated value must be
    closed by its Sequence Delimitation Item near the end.  Not for deflated
    datasets (the structure walk inflated those to their end).
    """
    start = handle.tell()
    implicit, little = ds.original_encoding
    header = handle.read(8 if implicit else 12)
    order = "little" if little else "big"
    if len(header) < 8:
        return  # no Pixel Data element: the header parse covered the dataset
    tag = (int.from_bytes(header[0:2], order) << 16) | int.from_bytes(header[2:4], order)
    if tag != _PIXEL_DATA:
        return
    if len(header) < (8 if implicit else 12):
        raise NotAnInstance("truncated: the file ends inside the Pixel Data element header")
    length = int.from_bytes(header[4:8] if implicit else header[8:12], order)
    if length != _UNDEFINED_LENGTH:
        if start + len(header) + length > size:
            raise NotAnInstance(
                f"truncated: Pixel Data needs {length} bytes, the file has "
                f"{size - start - len(header)}"
            )
        return
    handle.seek(max(start, size - _DELIMITER_SEARCH))
    if _SEQUENCE_DELIMITER not in handle.read():
        raise NotAnInstance("truncated: encapsulated Pixel Data has no sequence delimiter")
