"""Read a spool file's header into what the ledger records about it.

Header only (``stop_before_pixels``), never ``force=True``: pydicom returns
an empty dataset for text or PNG files when forced, and such files belong in
quarantine, not the ledger.  The checksum streams the file.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from spool.names import validate_uid

_HASH_CHUNK = 2**20


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


class NotAnInstance(ValueError):
    """The file is not a DICOM instance the adapter can keep."""


def sha256_of(path: Path) -> tuple[int, str]:
    """(size, hex digest), reading in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_header(path: Path) -> Header:
    """Parse ``path``'s header.

    Raises
    ------
    NotAnInstance
        With a one-line reason, for anything that is not a usable instance.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        values = {
            keyword: _text(ds.get(keyword))
            for keyword in (
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPClassUID",
                "PatientID",
            )
        }
    except Exception as exc:  # pydicom raises many types on bad input
        raise NotAnInstance(f"not readable as DICOM: {type(exc).__name__}: {exc}") from None
    for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
        ok, reason = validate_uid(values[keyword])
        if not ok:
            raise NotAnInstance(f"{keyword}: {reason}")
    size, digest = sha256_of(path)
    address = _text(meta.get("SendingPresentationAddress"))
    return Header(
        size=size,
        sha256=digest,
        sop_instance_uid=values["SOPInstanceUID"],  # type: ignore[arg-type]
        study_instance_uid=values["StudyInstanceUID"],  # type: ignore[arg-type]
        series_instance_uid=values["SeriesInstanceUID"],
        sop_class_uid=values["SOPClassUID"] or _text(meta.get("MediaStorageSOPClassUID")),
        transfer_syntax_uid=_text(meta.get("TransferSyntaxUID")),
        patient_id=values["PatientID"],
        calling_ae=_text(meta.get("SourceApplicationEntityTitle")),
        peer_address=address.removeprefix("dicom://") if address else None,
    )


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip("\x00 ")
    return text or None
