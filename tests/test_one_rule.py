"""What the SCP acknowledges, intake records: one rule for the wire and the ledger.

The seed answered Success to a complete CT image without Pixel Data, then
quarantined it as "truncated": the sender believed it delivered.  And a
legacy device whose UIDs have a leading zero in a component could not send
at all (0xC210).  Now the SCP refuses only what is unsafe or unusable, on
the wire, and intake records everything the SCP acknowledged, with a
warning event for what is odd.  A file received over the network carries
its data set length in our file meta, so it is never called truncated; a
file dropped in by hand is still checked for the signs of a cut copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from spool.header import read_values
from tests.conftest import RunningAdapter, tmp_files, wait_for
from tests.dicom import make_instance
from tests.peers.send import send_files

# pydicom warns about the non-conformant values these tests write on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
]
AE = "DICOMADAPTER"
LEGACY = {"study_uid": "1.2.04.5", "series_uid": "1.2.04.5.6", "sop_instance_uid": "1.2.04.5.6.7"}


def events(adapter: RunningAdapter, instance_id: int) -> list[str]:
    with adapter.ledger.engine.connect() as connection:
        return [
            reason
            for (reason,) in connection.exec_driver_sql(
                "SELECT reason FROM events WHERE instance_id = ? ORDER BY id", (instance_id,)
            )
        ]


def rewrite(path: Path, change) -> Path:
    """Load ``path`` with pydicom, change it, write it back as changed; ``path``."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)  # not enforce_file_format, which would rebuild the file meta
    return path


def image_without_pixels(path: Path) -> Path:
    """A whole CT image data set, Rows and all, that simply has no Pixel Data."""
    return rewrite(make_instance(path), lambda ds: ds.__delitem__("PixelData"))


def send(adapter: RunningAdapter, path: Path) -> int | None:
    [(_, status)] = send_files("127.0.0.1", adapter.port, [path], called_ae=AE)
    return status


def drop(adapter: RunningAdapter, path: Path, name: str) -> None:
    """A hand copy into the AE's folder (taken once its writer closes it)."""
    shutil.copyfile(path, adapter.spool / AE / "dropped" / name)


@pytest.fixture
def dropped(adapter: RunningAdapter) -> Path:
    folder = adapter.spool / AE / "dropped"
    folder.mkdir()
    return folder


def test_an_image_without_pixel_data_sent_over_the_network_is_recorded_with_a_warning(
    adapter: RunningAdapter, tmp_path: Path, dropped: Path
) -> None:
    sent = image_without_pixels(tmp_path / "no-pixels.dcm")
    assert send(adapter, sent) == 0x0000
    [row] = adapter.wait_rows(1)
    assert row.state == "received" and Path(row.path).is_file()
    assert events(adapter, row.id) == [
        "received",
        "warning: an image without Pixel Data, as the sender sent it",
    ]
    # The same bytes dropped in by hand are a copy that may have stopped early.
    drop(adapter, sent, "no-pixels.dcm")
    [rejected] = adapter.wait_rows(1, "rejected")
    assert rejected.reason == "truncated: an image without Pixel Data"


def test_a_received_file_cut_short_and_dropped_back_in_is_truncated(
    adapter: RunningAdapter, tmp_path: Path, dropped: Path
) -> None:
    """The recorded length tells a whole received file from a cut copy of one."""
    assert send(adapter, make_instance(tmp_path / "ct.dcm")) == 0x0000
    [row] = adapter.wait_rows(1)
    data = Path(row.path).read_bytes()
    with open(row.path, "rb") as handle:
        structure = read_values(handle, len(data), ()).structure
    assert structure.pixel_offset  # cut just before Pixel Data: a valid-looking shorter file
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: structure.pixel_offset])
    drop(adapter, cut, "cut.dcm")
    [rejected] = adapter.wait_rows(1, "rejected")
    assert rejected.reason == "truncated: an image without Pixel Data"


def test_a_legacy_device_with_leading_zeros_in_its_uids_can_send(
    adapter: RunningAdapter, tmp_path: Path, dropped: Path
) -> None:
    sent = make_instance(tmp_path / "legacy.dcm", **LEGACY)
    assert send(adapter, sent) == 0x0000
    [row] = adapter.wait_rows(1, "received")
    assert row.path.endswith("/1.2.04.5/1.2.04.5.6/1.2.04.5.6.7.dcm")
    warnings = [reason for reason in events(adapter, row.id) if reason.startswith("warning")]
    assert warnings == [
        f"warning: {keyword}: UID {uid!r} has a component with a leading zero ('04') (PS3.5 9.1)"
        for keyword, uid in (
            ("SOPInstanceUID", LEGACY["sop_instance_uid"]),
            ("StudyInstanceUID", LEGACY["study_uid"]),
            ("SeriesInstanceUID", LEGACY["series_uid"]),
        )
    ]
    # Dropped in by hand: the same rule.
    other = make_instance(tmp_path / "legacy2.dcm", study_uid="1.2.3.abc", series_uid="1.2.3.4")
    drop(adapter, other, "legacy2.dcm")
    rows = adapter.wait_rows(2, "received")
    assert rows[1].study_instance_uid == "1.2.3.abc"
    assert "is not digits and dots" in events(adapter, rows[1].id)[1]


def test_a_data_set_whose_uid_differs_from_the_request_is_stored_under_its_own(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """The request (from the file meta) says one SOP Instance UID, the data set another."""
    sent = make_instance(tmp_path / "odd.dcm", sop_instance_uid="1.2.3.4.5.6.7")
    rewrite(sent, lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3.9"))
    assert send(adapter, sent) == 0x0000
    [row] = adapter.wait_rows(1, "received")
    assert (row.sop_instance_uid, Path(row.path).name) == ("1.2.3.4.5.6.7", "1.2.3.4.5.6.7.dcm")
    assert (
        "warning: the data set's SOP Instance UID '1.2.3.4.5.6.7' differs from the request's"
        in events(adapter, row.id)
    )


def test_an_instance_without_a_series_uid_is_kept_in_its_study_folder(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    sent = rewrite(
        make_instance(tmp_path / "no-series.dcm", study_uid="1.2.3.4", sop_instance_uid="1.2.3.5"),
        lambda ds: ds.__delitem__("SeriesInstanceUID"),
    )
    assert send(adapter, sent) == 0x0000
    [row] = adapter.wait_rows(1, "received")
    assert row.path == str(adapter.spool / AE / "1.2.3.4" / "1.2.3.5.dcm")
    assert row.series_instance_uid is None
    assert "warning: no SeriesInstanceUID: kept in its study's folder" in events(adapter, row.id)


def test_what_the_scp_refuses_is_refused_on_the_wire_and_leaves_nothing(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    sent = make_instance(tmp_path / "bad.dcm", study_uid="1.2.3/../../x")
    assert send(adapter, sent) == 0xC210
    adapter.settle()
    wait_for(lambda: not tmp_files(adapter.spool))
    assert adapter.rows() == []


def test_values_longer_than_their_ledger_column_are_cut_with_a_warning(
    adapter: RunningAdapter, tmp_path: Path, dropped: Path
) -> None:
    """PostgreSQL enforces column widths: one over-long Patient ID or calling AE title in a
    hand-dropped file must not fail the insert of the whole intake batch."""
    odd = rewrite(
        make_instance(tmp_path / "long.dcm"),
        lambda ds: (
            setattr(ds, "PatientID", "P" * 80),
            setattr(ds.file_meta, "SourceApplicationEntityTitle", "A" * 20),
        ),
    )
    drop(adapter, odd, "long.dcm")
    [row] = adapter.wait_rows(1, "received")
    assert (row.patient_id, row.calling_ae) == ("P" * 64, "A" * 16)
    assert events(adapter, row.id)[1:] == [
        "warning: patient_id longer than 64 characters: recorded cut to 64",
        "warning: calling_ae longer than 16 characters: recorded cut to 16",
    ]
