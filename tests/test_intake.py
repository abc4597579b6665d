"""Files reaching the spool by hand or by the SCP: intake and quarantine."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import RunningAdapter, wait_for, write_config
from tests.dicom import make_instance, make_study
from tests.peers.send import send_files

AE = "DICOMADAPTER"


def quarantined(adapter: RunningAdapter) -> list[Path]:
    return sorted(p for p in (adapter.spool / "quarantine").iterdir() if p.suffix != ".reason")


def events_of(adapter: RunningAdapter, instance_id: int) -> list[tuple]:
    with adapter.ledger.engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT from_state, to_state, reason FROM events"
                    " WHERE instance_id = :id ORDER BY id"
                ),
                {"id": instance_id},
            )
        )


def test_hand_copy_is_recorded_under_any_name(adapter: RunningAdapter, tmp_path: Path) -> None:
    original = make_instance(tmp_path / "outside" / "a.dcm")
    target = adapter.spool / AE / "dropped" / "deep" / "scan-0001.bin"
    target.parent.mkdir(parents=True)
    shutil.copyfile(original, target)
    [row] = adapter.wait_rows(1, "received")
    assert row.path == str(target) and row.called_ae == AE
    assert row.size == original.stat().st_size
    assert target.read_bytes() == original.read_bytes()


def test_file_moved_in_from_outside_is_recorded_once_settled(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    original = make_instance(tmp_path / "outside" / "b.dcm")
    target = adapter.spool / AE / "b.dcm"
    os.rename(original, target)
    [row] = adapter.wait_rows(1, "received")
    assert row.path == str(target)


def test_slow_hand_copy_is_never_taken_half_written(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    data = make_instance(tmp_path / "c.dcm", rows=128, columns=128).read_bytes()
    target = adapter.spool / AE / "slow.dcm"
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(4 * adapter.config.watcher.settle_seconds)  # a stalled copy
        adapter.adapter.reconciler.tick()  # a periodic scan meanwhile
        adapter.settle()
        assert adapter.rows() == []
        assert quarantined(adapter) == []
        handle.write(data[len(data) // 2 :])
    [row] = adapter.wait_rows(1, "received")
    assert row.size == len(data)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello, this is not DICOM\n", "not readable as DICOM"),
        (b"", "not readable as DICOM"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not readable as DICOM"),
    ],
)
def test_non_dicom_is_quarantined_not_deleted(
    adapter: RunningAdapter, content: bytes, reason: str
) -> None:
    target = adapter.spool / AE / "notes.txt"
    target.write_bytes(content)
    [row] = adapter.wait_rows(1, "rejected")
    assert reason in row.reason
    assert not target.exists()
    [kept] = quarantined(adapter)
    assert kept.read_bytes() == content and row.path == str(kept)
    assert kept.name.endswith("-notes.txt")
    sidecar = kept.with_name(kept.name + ".reason").read_text()
    assert str(target) in sidecar and reason in sidecar
    assert events_of(adapter, row.id) == [(None, "rejected", row.reason)]


def test_truncated_dicom_is_quarantined(adapter: RunningAdapter, tmp_path: Path) -> None:
    data = make_instance(tmp_path / "d.dcm", rows=64, columns=64).read_bytes()
    partial = tmp_path / "partial.dcm"
    partial.write_bytes(data[: len(data) - 1000])
    os.rename(partial, adapter.spool / AE / "partial.dcm")
    [row] = adapter.wait_rows(1, "rejected")
    assert row.reason.startswith("truncated: Pixel Data needs")


def test_symlink_is_quarantined_and_its_target_untouched(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.dcm"
    make_instance(secret)
    before = secret.read_bytes()
    (adapter.spool / AE / "link.dcm").symlink_to(secret)
    adapter.adapter.reconciler.tick(time.time() + 60)
    [row] = adapter.wait_rows(1, "rejected")
    assert "not a regular file" in row.reason
    assert secret.read_bytes() == before


def test_files_outside_an_ae_folder_are_left_alone(adapter: RunningAdapter, tmp_path: Path) -> None:
    stray = adapter.spool / "stray.dcm"
    shutil.copyfile(make_instance(tmp_path / "e.dcm"), stray)
    adapter.adapter.reconciler.tick(time.time() + 60)
    adapter.settle()
    assert adapter.rows() == [] and stray.exists()


def send(adapter: RunningAdapter, path: Path, calling_ae: str = "PYSCU") -> int | None:
    [(_, status)] = send_files(
        "127.0.0.1", adapter.port, [path], called_ae=AE, calling_ae=calling_ae
    )
    return status


def test_files_moved_by_hand_keep_their_rows(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    """Files found at a new path are the rows' files, not duplicates to discard."""
    running = start_adapter(config_path)
    files = make_study(tmp_path / "s", 3)
    assert [s for _, s in send_files("127.0.0.1", running.port, files, called_ae=AE)] == [0] * 3
    rows = running.wait_rows(3)
    running.adapter.stop()
    study = Path(rows[0].path).parent.parent
    (study.parent / "moved").mkdir()
    os.rename(study, study.parent / "moved" / study.name)  # an admin reorganises the folder
    running = start_adapter(config_path)
    after = running.rows()
    assert [r.id for r in after] == [r.id for r in rows]
    assert all(Path(r.path).exists() and "/moved/" in r.path for r in after)
    assert all(r.missing_since is None for r in after)
    assert "file found at a new path" in events_of(running, after[0].id)[-1][2]


@pytest.mark.parametrize("log_phi", [False, True])
def test_patient_ids_are_logged_only_with_log_phi(
    start_adapter, tmp_path: Path, port: int, log_phi: bool, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="watchers.intake")
    config = write_config(tmp_path, port, f"log_phi = {str(log_phi).lower()}\n")
    config.write_text(
        config.read_text()
        .replace("[log]\nlevel = DEBUG\n", "")
        .replace(
            f"log_phi = {str(log_phi).lower()}\n", f"[log]\nlevel = DEBUG\nlog_phi = {log_phi}\n"
        )
    )
    running = start_adapter(config)
    path = make_instance(tmp_path / "p.dcm", patient_id="SECRET-PATIENT-42")
    assert send(running, path) == 0
    running.wait_rows(1)
    wait_for(lambda: "received id=" in caplog.text)
    assert ("SECRET-PATIENT-42" in caplog.text) is log_phi


def test_stored_files_are_recorded_at_once_even_in_new_series_folders(
    start_adapter, tmp_path: Path, port: int
) -> None:
    """The SCP announces each file it publishes; intake does not wait for the watcher,
    which hears of a file renamed into a folder made a moment before only as "created"
    and lets it settle (here 30 s) first."""
    config = write_config(tmp_path, port)
    config.write_text(config.read_text().replace("settle_seconds = 0.5", "settle_seconds = 30"))
    running = start_adapter(config)
    began = time.monotonic()
    for series in range(3):  # three new series folders
        [file] = make_study(tmp_path / f"s{series}", 1, series_uid=f"1.2.3.{series}")
        assert send(running, file) == 0
    running.wait_rows(3, "received")
    assert time.monotonic() - began < 10
