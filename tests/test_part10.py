"""The file meta the SCP writes by hand is byte for byte what pydicom would write."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from spool.incoming import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    Provenance,
    file_header,
)
from spool.part10 import PREAMBLE, encode_meta, meta_values


def pydicom_header(meta: FileMetaDataset) -> bytes:
    buffer = BytesIO()
    buffer.write(b"\x00" * PREAMBLE + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def theirs(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """A file meta as pynetdicom writes it for a chunked receive."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.3.0.4"
    meta.ImplementationVersionName = "PYNETDICOM_304"
    return pydicom_header(meta)


@pytest.mark.parametrize(
    "sop_instance, calling, called, address",
    [
        ("1.2.3.4", "CT01", "DICOMADAPTER", "127.0.0.1:5000"),  # even lengths
        ("1.2.3.45", "MR", "A", "10.0.0.12:104"),  # odd lengths: padding
        ("1.2.840.10008.99." + "9" * 46, "SIXTEEN_CHARS_AE", "X" * 16, "[::1]:11112"),
    ],
)
def test_file_header_matches_pydicom(
    sop_instance: str, calling: str, called: str, address: str
) -> None:
    sop_class, syntax = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    expected = FileMetaDataset()
    expected.FileMetaInformationVersion = b"\x00\x01"
    expected.MediaStorageSOPClassUID = sop_class
    expected.MediaStorageSOPInstanceUID = sop_instance
    expected.TransferSyntaxUID = syntax
    expected.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    expected.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    expected.SourceApplicationEntityTitle = calling
    expected.SendingApplicationEntityTitle = calling
    expected.ReceivingApplicationEntityTitle = called
    expected.SendingPresentationAddress = f"dicom://{address}"

    provenance = Provenance(calling, called, address)
    ours = file_header(theirs(sop_class, sop_instance, syntax), provenance)

    assert ours == pydicom_header(expected)


def test_meta_values_reads_the_group_and_stops_at_the_dataset() -> None:
    head = theirs("1.2.3", "1.2.3.4", "1.2.840.10008.1.2")
    values = meta_values(head + b"\x08\x00\x16\x00UI\x04\x001.2\x00")
    assert values[0x00020003] == b"1.2.3.4\x00"
    assert values[0x00020010].rstrip(b"\x00") == b"1.2.840.10008.1.2"
    assert all(tag >> 16 == 2 for tag in values)


def test_cut_short_or_missing_meta_is_a_value_error() -> None:
    head = theirs("1.2.3", "1.2.3.4", "1.2.840.10008.1.2")
    with pytest.raises(ValueError, match="cut short"):
        meta_values(head[:-3])
    bare = encode_meta([(0x00020002, b"UI", b"1.2.3")])
    with pytest.raises(ValueError, match="no Media Storage SOP Instance UID, Transfer Syntax UID"):
        file_header(bare, Provenance("A", "B", "127.0.0.1:1"))
