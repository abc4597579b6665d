"""The SCP end to end against real peers: DCMTK and a pynetdicom client over 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest

from tests.conftest import RunningAdapter, tmp_files, wait_for, write_config
from tests.dcmtk import echoscu, storescu
from tests.dicom import (
    dataset_bytes,
    make_instance,
    make_mixed_set,
    make_odd_deflated,
    make_study,
)
from tests.peers.send import AssociationRejected, echo, send_files


def spool_files(adapter: RunningAdapter) -> list[Path]:
    return sorted(p for p in adapter.spool.rglob("*") if p.is_file())


def test_echo(adapter: RunningAdapter) -> None:
    result = echoscu(adapter.port)
    assert result.returncode == 0, result.stderr


def test_storescu_study_lands_in_spool_and_ledger(adapter: RunningAdapter, tmp_path: Path) -> None:
    sent = make_study(tmp_path / "study", 10)
    result = storescu(adapter.port, sent)
    assert result.returncode == 0, result.stderr
    rows = adapter.wait_rows(10, "received")
    by_sop = {row.sop_instance_uid: row for row in rows}
    for original in sent:
        ds = pydicom.dcmread(original, stop_before_pixels=True)
        row = by_sop[ds.SOPInstanceUID]
        expected = (
            adapter.spool
            / "DICOMADAPTER"
            / ds.StudyInstanceUID
            / ds.SeriesInstanceUID
            / f"{ds.SOPInstanceUID}.dcm"
        )
        assert Path(row.path) == expected
        assert dataset_bytes(expected) == dataset_bytes(original)
        assert (row.calling_ae, row.called_ae) == ("STORESCU", "DICOMADAPTER")
        assert row.peer_address.startswith("127.0.0.1:")
        assert row.study_instance_uid == ds.StudyInstanceUID
        assert row.series_instance_uid == ds.SeriesInstanceUID
        assert row.sop_class_uid == ds.SOPClassUID
        assert row.patient_id == ds.PatientID
        assert row.size == expected.stat().st_size
        assert row.sha256 == hashlib.sha256(dataset_bytes(original)).hexdigest()
        meta = pydicom.dcmread(expected, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "STORESCU"
        assert meta.ReceivingApplicationEntityTitle == "DICOMADAPTER"
    assert not tmp_files(adapter.spool)
    assert adapter.ledger.event_count() == 10


def test_mixed_transfer_syntaxes_stored_byte_identical(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    sent = make_mixed_set(tmp_path / "mixed")
    results = send_files("127.0.0.1", adapter.port, sent, called_ae="DICOMADAPTER")
    assert [status for _, status in results] == [0x0000] * len(sent)
    rows = {row.sop_instance_uid: row for row in adapter.wait_rows(len(sent), "received")}
    for original in sent:
        ds = pydicom.dcmread(original, stop_before_pixels=True)
        row = rows[ds.SOPInstanceUID]
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert Path(row.path).read_bytes().endswith(dataset_bytes(original))


def test_an_odd_length_deflated_data_set_is_stored_as_received(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """The receive side of the odd-fragment case: a sender that does not pad a
    deflated stream (PS3.5 A.5) sends an odd last fragment; it is stored as is,
    recorded, and not quarantined."""
    sent = make_odd_deflated(tmp_path / "odd.dcm")
    assert len(dataset_bytes(sent)) % 2 == 1
    [(_, status)] = send_files("127.0.0.1", adapter.port, [sent], called_ae="DICOMADAPTER")
    assert status == 0x0000
    [row] = adapter.wait_rows(1, "received")
    assert Path(row.path).read_bytes().endswith(dataset_bytes(sent))
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"


def test_unknown_called_ae_is_rejected(
    adapter: RunningAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    result = echoscu(adapter.port, called="NOTME")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    with pytest.raises(AssociationRejected) as caught:
        echo("127.0.0.1", adapter.port, called_ae="NOTME")
    assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 7)
    assert "called AE 'NOTME' is not configured" in caplog.text


def test_known_sources_only(start_adapter, tmp_path: Path, port: int) -> None:
    config = write_config(
        tmp_path,
        port,
        dicom="reject_unknown_sources = true",
        extra="[source:CT01]\nae_title = CT01\nhost = 127.0.0.0/8\n"
        "[source:FAR]\nae_title = FAR\nhost = 10.1.2.0/24\n"
        "[source:ANY]\nae_title = ANYHOST\n",
    )
    running = start_adapter(config)
    assert echo("127.0.0.1", running.port, called_ae="DICOMADAPTER", calling_ae="CT01") == 0
    assert echo("127.0.0.1", running.port, called_ae="DICOMADAPTER", calling_ae="ANYHOST") == 0
    for calling in ("OTHER", "FAR"):
        with pytest.raises(AssociationRejected) as caught:
            echo("127.0.0.1", running.port, called_ae="DICOMADAPTER", calling_ae=calling)
        assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 3)
    result = echoscu(running.port, calling="OTHER")
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr


def test_verification_can_be_switched_off(start_adapter, tmp_path: Path, port: int) -> None:
    running = start_adapter(write_config(tmp_path, port, dicom="verification = false"))
    result = echoscu(running.port)
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stdout + result.stderr


def test_max_associations_rejects_beyond_limit(start_adapter, tmp_path: Path, port: int) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    running = start_adapter(write_config(tmp_path, port, dicom="max_associations = 2"))
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", running.port, ae_title="DICOMADAPTER") for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        with pytest.raises(AssociationRejected) as caught:
            echo("127.0.0.1", running.port, called_ae="DICOMADAPTER")
        assert (caught.value.result, caught.value.source, caught.value.reason) == (2, 3, 2)
    finally:
        for assoc in held:
            assoc.release()

    def slot_free() -> bool:
        # A slot is free once the server sees the connection close, a few
        # milliseconds after release() returns here on the A-RELEASE-RP.
        try:
            return echo("127.0.0.1", running.port, called_ae="DICOMADAPTER") == 0
        except AssociationRejected:
            return False

    wait_for(slot_free, timeout=5, interval=0.05)


UNSAFE = ["../../../../tmp/evil", "1.2.3/../../x", ".1.2.3", "1" * 70]
# pynetdicom as a sender will not put a UID over 64 characters in a command set.
UNSAFE_CASES = [
    (field, bad)
    for field in ("study_uid", "series_uid", "sop_instance_uid")
    for bad in UNSAFE
    if not (field == "sop_instance_uid" and len(bad) > 64)
]


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")  # the test writes bad UIDs
@pytest.mark.parametrize("field, bad", UNSAFE_CASES)
def test_unsafe_uids_refused_and_nothing_written(
    adapter: RunningAdapter, tmp_path: Path, field: str, bad: str
) -> None:
    path = make_instance(tmp_path / "bad.dcm", **{field: bad})
    [(_, status)] = send_files("127.0.0.1", adapter.port, [path], called_ae="DICOMADAPTER")
    assert status == 0xC210
    assert spool_files(adapter) == []
    assert not (tmp_path / "tmp" / "evil").exists()
    adapter.settle()
    assert adapter.rows() == []


def _echo_rejection(port: int) -> tuple[int, int, int] | None:
    try:
        echo("127.0.0.1", port, called_ae="DICOMADAPTER")
    except AssociationRejected as exc:
        return (exc.result, exc.source, exc.reason)
    return None


def test_low_disk_answers_a700_and_recovers(
    adapter: RunningAdapter, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """min_free raised and lowered again by a reload (SIGHUP) while an association runs."""
    from pynetdicom import AE

    files = make_study(tmp_path / "s", 3)
    ae = AE(ae_title="PYSCU")
    ds = pydicom.dcmread(files[0])
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", adapter.port, ae_title="DICOMADAPTER")
    assert assoc.is_established
    original = config_path.read_text()
    try:
        assert assoc.send_c_store(files[0]).Status == 0x0000
        config_path.write_text(original.replace("min_free = 0", "min_free = 99.999%"))
        assert adapter.adapter.reload()
        # A new association while the disk is short: transient 2/3/2.
        wait_for(lambda: _echo_rejection(adapter.port) == (2, 3, 2), timeout=5)
        assert assoc.send_c_store(files[1]).Status == 0xA700
        config_path.write_text(original)
        assert adapter.adapter.reload()
        wait_for(lambda: _echo_rejection(adapter.port) is None, timeout=5)
        assert assoc.send_c_store(files[1]).Status == 0x0000
    finally:
        assoc.release()
    adapter.wait_rows(2, "received")
    assert len(spool_files(adapter)) == 2
    assert "C-STORE refused 0xA700" in caplog.text


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")  # the test writes a bad UID
def test_one_log_line_per_association(
    start_adapter, config_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    # The SCP process takes its log level when it starts, as it does from [log] level.
    caplog.set_level(logging.INFO)
    adapter = start_adapter(config_path)
    good = make_study(tmp_path / "s", 3)
    bad = make_instance(tmp_path / "bad.dcm", study_uid="1.2/3")
    results = send_files(
        "127.0.0.1", adapter.port, [*good, bad], called_ae="DICOMADAPTER", calling_ae="CT01"
    )
    assert [status for _, status in results] == [0, 0, 0, 0xC210]
    wait_for(lambda: "association released" in caplog.text)
    [line] = [r.getMessage() for r in caplog.records if r.name == "scp.associations"]
    size = sum(p.stat().st_size for p in spool_files(adapter))
    assert line.startswith("association released peer=127.0.0.1:")
    assert f"calling='CT01' called='DICOMADAPTER' stored=3 refused=1 bytes={size} " in line
