"""The walk's header values read exactly as pydicom reads them, in every encoding.

The SCP and intake no longer hand files to pydicom (``spool.header``); these
values become ledger columns and ``group_by`` keys, so a difference from
pydicom would split a study or mislabel a patient after an upgrade.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from spool.header import read_values
from spool.part10 import element_text
from tests.dicom import make_instance

COMPARED = {
    0x00080018: "SOP Instance UID (UI)",
    0x0020000D: "Study Instance UID (UI)",
    0x00100020: "Patient ID (LO, in the character set)",
    0x00100010: "Patient's Name (PN)",
    0x00080050: "Accession Number (SH, two values)",
    0x00280010: "Rows (US, binary)",
    0x00200013: "Instance Number (IS)",
    0x00080020: "Study Date (DA)",
    0x00181150: "Exposure Time (IS) absent",
}
CHARACTER_SETS = [
    ("ISO_IR 100", "Müller-Ærø", "Müller^Jürgen"),
    ("ISO_IR 192", "患者-Ωμέγα", "Wang^XiaoDong=王^小東"),
    ("\\ISO 2022 IR 87", "YAMADA", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
]


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
@pytest.mark.parametrize("charset, patient_id, patient_name", CHARACTER_SETS)
def test_values_match_pydicom(
    tmp_path: Path, syntax: str, charset: str, patient_id: str, patient_name: str
) -> None:
    path = make_instance(tmp_path / "plain.dcm", transfer_syntax_uid=syntax)
    ds = dcmread(path)
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = ["ACC1", "ACC2"]
    ds.StudyDate = "20261128"
    ds.save_as(path, enforce_file_format=True)

    expected = dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as handle:
        values = read_values(handle, path.stat().st_size, COMPARED)
    for tag, what in COMPARED.items():
        element = expected.get(tag)
        want = None if element is None else element_text(element.value)
        assert values.text(tag) == want, what
    assert values.has(0x00280010) and not values.has(0x00181150)
    assert values.text(0x00020010) == syntax
    assert values.structure.stopped_at == 0x7FE00010
    # The SCP walks from the data set on, past the meta it wrote: the same values.
    start = (values.structure.dataset_offset, syntax)
    with open(path, "rb") as handle:
        from_data = read_values(handle, path.stat().st_size, COMPARED, start)
    assert {tag: from_data.text(tag) for tag in COMPARED} == {
        tag: values.text(tag) for tag in COMPARED
    }
    assert not from_data.has(0x00020010) and from_data.structure.stopped_at == 0x7FE00010


def test_only_top_level_elements_are_kept(tmp_path: Path) -> None:
    """A Patient ID inside a sequence item is not the instance's Patient ID."""
    path = make_instance(tmp_path / "nested.dcm")
    ds = dcmread(path)
    del ds.PatientID
    item = Dataset()
    item.PatientID = "OTHER"
    ds.OtherPatientIDsSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as handle:
        values = read_values(handle, path.stat().st_size, [0x00100020])
    assert values.text(0x00100020) is None
