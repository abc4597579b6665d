"""The file meta the SCP writes by hand is byte for byte what pydicom would write."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from spool.incoming import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    RECEIVED_LENGTH_UID,
    MetaUids,
    Provenance,
    meta_group,
)
from spool.part10 import PREAMBLE


def pydicom_header(meta: FileMetaDataset) -> bytes:
    buffer = BytesIO()
    buffer.write(b"\x00" * PREAMBLE + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "sop_instance, calling, called, address",
    [
        ("1.2.3.4", "CT01", "DICOMADAPTER", "127.0.0.1:5000"),  # even lengths
        ("1.2.3.45", "MR", "A", "10.0.0.12:104"),  # odd lengths: padding
        ("1.2.840.10008.99." + "9" * 46, "SIXTEEN_CHARS_AE", "X" * 16, "[::1]:11112"),
    ],
)
def test_meta_group_matches_pydicom(
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
    expected.PrivateInformationCreatorUID = RECEIVED_LENGTH_UID
    expected.PrivateInformation = bytes(8)  # the data set's length, filled in at sync

    provenance = Provenance(calling, called, address)
    ours = meta_group(MetaUids(sop_class, sop_instance, syntax), provenance)

    assert b"\x00" * PREAMBLE + b"DICM" + ours == pydicom_header(expected)
