"""Duplicates: what intake decides when a copy arrives again, on each ledger.

Each decision reads the ledger, then writes it (is this SOP Instance UID
recorded? by whom? still unclaimed?), so each runs on SQLite and on
PostgreSQL, as nodes share it.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.states import State
from tests.conftest import RunningAdapter, wait_for, write_config
from tests.dicom import dataset_bytes, make_instance
from tests.test_intake import AE, events_of, send


@pytest.fixture
def config_path(tmp_path: Path, port: int, ledger_url: str) -> Path:
    return write_config(tmp_path, port, ledger=ledger_url)


VERSION_UIDS = {
    "study_uid": "1.2.3.4",
    "series_uid": "1.2.3.4.5",
    "sop_instance_uid": "1.2.3.4.5.6",
}


def two_versions(tmp_path: Path) -> tuple[Path, Path]:
    return (
        make_instance(tmp_path / "v1.dcm", patient_id="FIRST", **VERSION_UIDS),
        make_instance(tmp_path / "v2.dcm", patient_id="SECOND", **VERSION_UIDS),
    )


def sop_files(adapter: RunningAdapter) -> list[Path]:
    return sorted((adapter.spool / AE / "1.2.3.4" / "1.2.3.4.5").iterdir())


def aside(adapter: RunningAdapter) -> list[Path]:
    """What the duplicates policy has set aside."""
    folder = adapter.spool / "superseded" / AE
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_newer_copy_from_the_same_source_replaces_the_first_which_is_set_aside(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    first, second = two_versions(tmp_path)
    assert send(adapter, first) == 0
    [old] = adapter.wait_rows(1)
    assert send(adapter, second) == 0
    old_row, new_row = adapter.wait_rows(2)
    assert (old_row.id, old_row.state, old_row.patient_id) == (old.id, "superseded", "FIRST")
    assert (new_row.state, new_row.patient_id) == ("received", "SECOND")
    assert Path(new_row.path).name == "1.2.3.4.5.6~1.dcm"  # the newer copy's own file
    assert aside(adapter) == [Path(old_row.path)]
    assert Path(old_row.path).name == f"{old.id}-1.2.3.4.5.6.dcm"
    assert Path(old_row.path).read_bytes().endswith(dataset_bytes(first))  # kept as it was
    assert sop_files(adapter) == [Path(new_row.path)]
    moves = [(a, b) for a, b, _ in events_of(adapter, old.id)]
    assert moves == [(None, "received"), ("received", "superseded")]
    assert "superseded by a newer copy" in events_of(adapter, old.id)[1][2]
    [reason] = [r for _, _, r in events_of(adapter, new_row.id)]
    assert reason == f"newer copy: replaces instance {old.id} (duplicates=replace)"


def test_a_differing_copy_from_another_source_never_replaces(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """With the default ``duplicates = replace``, any peer resending a UID used to
    delete the first copy.  Now the first stays live and the other is set aside."""
    first, second = two_versions(tmp_path)
    assert send(adapter, first, calling_ae="CT01") == 0
    [old] = adapter.wait_rows(1)
    assert send(adapter, second, calling_ae="INTRUDER") == 0
    kept, other = adapter.wait_rows(2)
    assert (kept.id, kept.state, kept.patient_id) == (old.id, "received", "FIRST")
    assert kept.path == old.path
    assert (other.state, other.patient_id) == ("superseded", "SECOND")
    assert other.calling_ae == "INTRUDER"
    wait_for(lambda: aside(adapter) == [Path(other.path)])  # moved after the commit
    assert sop_files(adapter) == [Path(old.path)]
    [reason, moved] = [r for _, _, r in events_of(adapter, other.id)]
    assert reason.startswith(f"differs from instance {old.id} and comes from INTRUDER@127.0.0.1")
    assert "replaces only from the same source" in reason
    assert moved == f"moved aside to {other.path}"


def test_replace_any_replaces_from_any_source(
    start_adapter, tmp_path: Path, port: int, ledger_url: str
) -> None:
    aes = f"[ae:{AE}]\nduplicates = replace-any"
    running = start_adapter(write_config(tmp_path, port, aes=aes, ledger=ledger_url))
    first, second = two_versions(tmp_path)
    assert send(running, first, calling_ae="CT01") == 0
    running.wait_rows(1)
    assert send(running, second, calling_ae="OTHER") == 0
    rows = running.wait_rows(2)
    assert [(r.state, r.patient_id) for r in rows] == [
        ("superseded", "FIRST"),
        ("received", "SECOND"),
    ]


def test_identical_resend_is_idempotent(adapter: RunningAdapter, tmp_path: Path) -> None:
    first, _ = two_versions(tmp_path)
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)
    assert send(adapter, first, calling_ae="ANYONE") == 0
    wait_for(lambda: len(events_of(adapter, row.id)) == 2)
    assert "identical copy" in events_of(adapter, row.id)[1][2]
    wait_for(lambda: sop_files(adapter) == [Path(row.path)])  # discards follow the commit
    assert aside(adapter) == []


def test_duplicate_replace_after_claim_stores_a_new_row(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    first, second = two_versions(tmp_path)
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)
    with adapter.ledger.transaction() as tx:
        tx.move(row.id, State.CLAIMED, "test: a job took it")
    assert send(adapter, second) == 0
    rows = adapter.wait_rows(2)
    assert [r.state for r in rows] == ["claimed", "received"]
    assert Path(rows[0].path).read_bytes() != Path(rows[1].path).read_bytes()
    assert "already 'claimed': stored as a new row" in events_of(adapter, rows[1].id)[0][2]


@pytest.mark.parametrize("policy", ["ignore", "keep"])
def test_duplicate_policies(
    start_adapter, tmp_path: Path, port: int, policy: str, ledger_url: str
) -> None:
    aes = f"[ae:{AE}]\nduplicates = {policy}"
    running = start_adapter(write_config(tmp_path, port, aes=aes, ledger=ledger_url))
    first, second = two_versions(tmp_path)
    assert send(running, first) == 0
    running.wait_rows(1)
    assert send(running, second) == 0
    rows = running.wait_rows(2)
    assert [r.patient_id for r in rows] == ["FIRST", "SECOND"]
    if policy == "ignore":  # the differing copy is set aside, never discarded
        assert [r.state for r in rows] == ["received", "superseded"]
        assert "kept aside (duplicates=ignore)" in events_of(running, rows[1].id)[0][2]
        wait_for(lambda: aside(running) == [Path(rows[1].path)])
        assert sop_files(running) == [Path(rows[0].path)]
    else:
        assert [r.state for r in rows] == ["received", "received"]
        assert [Path(r.path).name for r in rows] == ["1.2.3.4.5.6.dcm", "1.2.3.4.5.6~1.dcm"]
        assert "kept as a new row (duplicates=keep)" in events_of(running, rows[1].id)[0][2]


def test_a_replace_that_fails_before_its_commit_puts_the_first_copy_back(
    adapter: RunningAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction fails after the first copy moved aside: it moves back, and
    the next pass (the restart's reconcile) decides again."""
    from ledger.store import LedgerTransaction
    from watchers.inspect import dataset_sha256

    first, second = two_versions(tmp_path)
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)

    def power_cut(*_args: object) -> None:
        raise RuntimeError("power cut before commit")

    with monkeypatch.context() as patch:
        patch.setattr(LedgerTransaction, "supersede", power_cut)
        assert send(adapter, second) == 0
        wait_for(lambda: len(sop_files(adapter)) == 2)
        adapter.settle()
    assert adapter.rows() == [adapter.ledger.get(row.id)]
    assert Path(row.path).is_file() and aside(adapter) == []  # moved back
    adapter.adapter.reconciler.tick(startup=True)  # what the restart does
    adapter.settle()
    old, new = adapter.rows()
    assert (old.state, old.patient_id, new.state, new.patient_id) == (
        "superseded",
        "FIRST",
        "received",
        "SECOND",
    )
    for kept in (old, new):
        with open(kept.path, "rb") as handle:
            assert dataset_sha256(handle)[1] == kept.sha256


def test_a_first_copy_a_crashed_pass_had_set_aside_is_found_there(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    """A SIGKILL between moving the first copy aside and the commit: its row still
    names the old path, the file is already aside; the next pass finishes the move."""
    first, second = two_versions(tmp_path)
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)
    target = adapter.adapter.layout.superseded_path(AE, row.id, Path(row.path).name)
    target.parent.mkdir(parents=True)
    os.rename(row.path, target)  # what the killed pass did before dying
    copy = Path(row.path).with_name("1.2.3.4.5.6~1.dcm")
    os.rename(second, copy)  # and its newer copy, acknowledged, waits unrecorded
    adapter.adapter.reconciler.tick(startup=True)
    adapter.settle()
    old, new = adapter.rows()
    assert (old.id, old.state, old.path) == (row.id, "superseded", str(target))
    assert (new.state, new.path, new.patient_id) == ("received", str(copy), "SECOND")
    assert target.is_file() and copy.is_file()


def test_superseded_copies_go_only_by_their_retention(
    start_adapter, tmp_path: Path, port: int, ledger_url: str
) -> None:
    first, second = two_versions(tmp_path)
    storage = "min_free = 0\nsuperseded_retention = 60"
    config = write_config(tmp_path, port, storage=storage, ledger=ledger_url)
    running = start_adapter(config)
    assert send(running, first) == 0
    running.wait_rows(1)
    assert send(running, second) == 0
    old, _ = running.wait_rows(2)
    reclaimer = running.adapter.reclaimer
    assert reclaimer.tick(old.updated_at + timedelta(seconds=59)) == 0
    assert Path(old.path).is_file()
    assert reclaimer.tick(old.updated_at + timedelta(seconds=61)) == 1
    assert not Path(old.path).exists()
    assert running.ledger.get(old.id).state == "reclaimed"
    assert "superseded_retention of 60s is over" in events_of(running, old.id)[-1][2]


def test_a_failed_replace_never_moves_the_first_copy_over_a_newer_file(
    adapter: RunningAdapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first copy moved aside freed its name; the SCP publishes a third copy under
    it; then the transaction fails.  Moving the first copy back must not replace the
    third, acknowledged one (``os.rename`` would have)."""
    from watchers.duplicates import Duplicates

    first, second = two_versions(tmp_path)
    third = make_instance(
        tmp_path / "v3.dcm",
        patient_id="THIRD",
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        sop_instance_uid="1.2.3.4.5.6",
    )
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)

    def scp_publishes_then_power_cut(self, *_args: object) -> int:
        shutil.copyfile(third, row.path)  # the freed name taken by an acknowledged copy
        raise RuntimeError("power cut before commit")

    with monkeypatch.context() as patch:
        patch.setattr(Duplicates, "_add", scp_publishes_then_power_cut)
        assert send(adapter, second) == 0
        wait_for(lambda: len(aside(adapter)) == 1)
        adapter.settle()
    assert Path(row.path).read_bytes() == third.read_bytes(), "the third copy was overwritten"
    [kept] = aside(adapter)
    assert kept.read_bytes().endswith(dataset_bytes(first))


def test_a_first_copy_set_aside_by_a_crashed_pass_is_found_even_if_its_name_was_reused(
    adapter: RunningAdapter, tmp_path: Path
) -> None:
    first, second = two_versions(tmp_path)
    third = make_instance(
        tmp_path / "v3.dcm",
        patient_id="THIRD",
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        sop_instance_uid="1.2.3.4.5.6",
    )
    assert send(adapter, first) == 0
    [row] = adapter.wait_rows(1)
    target = adapter.adapter.layout.superseded_path(AE, row.id, Path(row.path).name)
    target.parent.mkdir(parents=True)
    os.rename(row.path, target)  # the killed pass had moved it aside
    shutil.copyfile(third, row.path)  # and the SCP published a third copy under the name
    os.rename(second, Path(row.path).with_name("1.2.3.4.5.6~1.dcm"))
    adapter.adapter.reconciler.tick(startup=True)
    adapter.settle()
    # The third copy's path was still the first row's during that pass: the next
    # pass (reconcile_interval) records it.
    adapter.adapter.reconciler.tick(startup=True)
    adapter.settle()
    rows = {r.patient_id: r for r in adapter.rows()}
    assert rows["FIRST"].state == "superseded" and rows["FIRST"].path == str(target)
    assert target.read_bytes().endswith(dataset_bytes(first))
    assert {p: rows[p].state for p in ("SECOND", "THIRD")} in (
        {"SECOND": "received", "THIRD": "superseded"},
        {"SECOND": "superseded", "THIRD": "received"},
    )
    assert all(Path(r.path).is_file() for r in rows.values())
