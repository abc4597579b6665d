"""``dicom-adapter sample``: the files a new user tries the adapter with are valid
DICOM (pydicom strictly, DCMTK, dciodvfy when installed), the adapter takes
every one, and README's "Try it" lines work as written."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import validate_file_meta
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from spool.incoming import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.conftest import ROOT, RunningAdapter, require_tool
from tests.dcmtk import dcmtk, storescu
from tests.test_cli import cli

SUCCESS = "I: Received Store Response (Success)"


def sample(folder: Path, *args: str) -> list[Path]:
    """Run ``dicom-adapter sample`` and return the files it wrote (all .dcm under folder)."""
    before = set(folder.rglob("*.dcm"))
    result = cli("sample", str(folder), *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return sorted(set(folder.rglob("*.dcm")) - before)


def test_sample_writes_valid_part10_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "new" / "samples"  # created, parents too
    result = cli("sample", str(folder), "--studies", "2", "--instances", "3")
    assert result.returncode == 0
    assert result.stdout == f"wrote 8 instances of 2 studies to {folder}\n"
    files = sorted(folder.rglob("*.dcm"))
    assert [f.relative_to(folder).as_posix() for f in files] == [
        f"study-{study}/{series}/{n}.dcm"
        for study in (1, 2)
        for series, n in [("ct", "001"), ("ct", "002"), ("ct", "003"), ("sc", "001")]
    ]

    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    datasets = []
    for path in files:
        ds = dcmread(path)  # a Part 10 file: preamble, DICM, file meta (no force=True)
        validate_file_meta(ds.file_meta, enforce_standard=True)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert ds.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert all(element.VR for element in ds.iterall())  # each value read, checked
        assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
        datasets.append(ds)

    assert Counter(ds.SOPClassUID for ds in datasets) == {
        CTImageStorage: 6,
        SecondaryCaptureImageStorage: 2,
    }
    assert len({ds.SOPInstanceUID for ds in datasets}) == 8
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 4
    assert {(ds.StudyID, str(ds.PatientName), ds.PatientID) for ds in datasets} == {
        ("1", "SAMPLE^PATIENT^1", "SAMPLE-0001"),
        ("2", "SAMPLE^PATIENT^2", "SAMPLE-0002"),
    }
    ct = [ds for ds in datasets if ds.SOPClassUID == CTImageStorage]
    assert {(ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation) for ds in ct} == {
        (16, 12, "MONOCHROME2")
    }
    assert len({ds.PixelData for ds in ct[:3]}) == 3  # each slice differs
    sc = [ds for ds in datasets if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert {(ds.BitsAllocated, ds.PhotometricInterpretation) for ds in sc} == {(8, "MONOCHROME2")}

    for path in files:
        dumped = dcmtk("dcmdump", str(path))
        assert dumped.returncode == 0, dumped.stderr
        assert "E:" not in dumped.stdout + dumped.stderr
        assert "W:" not in dumped.stdout + dumped.stderr
    if shutil.which("dciodvfy"):  # dicom3tools: checks every module of the IOD
        for path in files:
            checked = subprocess.run(
                ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60
            )
            assert checked.stdout + checked.stderr in ("CTImage\n", "SCImage\n"), (
                f"{path}: {checked.stdout}{checked.stderr}"
            )


def test_sample_again_adds_studies_and_overwrites_nothing(tmp_path: Path) -> None:
    first = sample(tmp_path)
    contents = {path: path.read_bytes() for path in first}
    (tmp_path / "study-2").mkdir()  # a name already taken is skipped
    second = sample(tmp_path, "--instances", "1")
    assert {path.parent.parent.name for path in first} == {"study-1"}
    assert [path.relative_to(tmp_path).as_posix() for path in second] == [
        "study-3/ct/001.dcm",
        "study-3/sc/001.dcm",
    ]
    assert {path: path.read_bytes() for path in first} == contents


def test_sample_refuses_a_file_as_the_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = cli("sample", str(tmp_path / "file"))
    assert result.returncode == 2 and "is a file" in result.stderr


def test_the_adapter_takes_every_sample(adapter: RunningAdapter, tmp_path: Path) -> None:
    require_tool("storescu")
    files = sample(tmp_path / "samples", "--studies", "2", "--instances", "3")
    assert len(files) == 8
    sent = storescu(adapter.port, files)
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count(SUCCESS) == 8
    rows = adapter.wait_rows(8, "received")
    assert {row.sop_instance_uid for row in rows} == {dcmread(f).SOPInstanceUID for f in files}
    assert len({row.study_instance_uid for row in rows}) == 2
    assert sorted(s["instances"] for s in adapter.ledger.recent_studies()) == [4, 4]


def try_it_block() -> list[str]:
    """README's "Try it" shell lines, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines()]


def test_the_readme_storescu_glob_matches_the_samples(tmp_path: Path) -> None:
    lines = try_it_block()
    (make,) = [words for words in lines if "sample" in words]
    assert make[:2] == [".venv/bin/dicom-adapter", "sample"]  # there after `make run`
    written = sample(tmp_path / make[2], *make[3:])  # as run in the checkout
    (send,) = [words for words in lines if "storescu" in words]
    assert send[0] == "TCP_NODELAY=1"
    pattern = send[-1]
    assert sorted(tmp_path.glob(pattern)) == written
    assert len(written) == 6
