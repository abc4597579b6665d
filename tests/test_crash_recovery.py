"""Crash recovery end to end: SIGKILL the adapter while DCMTK storescu is sending.

The promise under test: an instance the peer saw acknowledged survives any
crash.  A real ``dicom-adapter run`` subprocess is sent the same 300 instances
several times and killed with SIGKILL at a different point of each transfer,
normally with the next C-STORE in flight.  storescu's ``-v`` log tells which
files got a Success response.  After one more start (reconcile, no traffic)
every acknowledged instance must be in the ledger and in the spool, its
dataset byte-identical to the original, with no partial file outside
``spool/.tmp/`` and nothing left inside it.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.conftest import AdapterProcess, tmp_files, wait_for, write_config
from tests.dcmtk import storescu_popen
from tests.dicom import dataset_bytes, make_study

COUNT = 300
ROWS = COLUMNS = 64  # 8 KiB of pixels each: 300 take about 3 s over loopback
# Kill once this share of the round's files has been acknowledged; storescu
# sends the next one at once, so the adapter dies in the middle of a C-STORE.
KILL_AFTER = (0.10, 0.50, 0.90, 0.30)
SENDING = "I: Sending file: "
SUCCESS = "I: Received Store Response (Success)"
RESPONSE = "I: Received Store Response"


@pytest.fixture
def config_path(tmp_path: Path, port: int, ledger_url: str) -> Path:
    """The adapter's config, on each ledger: SQLite, and PostgreSQL as nodes share it."""
    return write_config(tmp_path, port, ledger=ledger_url)


@dataclass(frozen=True)
class Round:
    kill_after: int  # acknowledgements seen when the kill was sent
    acknowledged: frozenset[Path]  # files with a Success response, from the whole log
    in_flight: bool  # storescu was sending a file that got no response
    returncode: int  # storescu's


def parse_storescu(log: str) -> tuple[set[Path], bool]:
    """Files whose ``Sending file`` line is followed by a Success response, and
    whether the last file sent got no response at all (the kill caught it in flight)."""
    acknowledged: set[Path] = set()
    current: Path | None = None
    for line in log.splitlines():
        if line.startswith(SENDING):
            current = Path(line.removeprefix(SENDING).strip())
        elif line.startswith(RESPONSE):
            if line.startswith(SUCCESS) and current is not None:
                acknowledged.add(current)
            current = None
    return acknowledged, current is not None


def send_and_kill(adapter: AdapterProcess, files: list[Path], kill_after: int, log: Path) -> Round:
    """Start the adapter and storescu; SIGKILL the adapter after ``kill_after`` Successes."""
    adapter.start()
    with log.open("wb") as stderr:
        sender = storescu_popen(adapter.port, files, stderr=stderr)
    try:
        wait_for(
            lambda: log.read_text().count(SUCCESS) >= kill_after or sender.poll() is not None,
            timeout=30,
            interval=0.005,
        )
        seen = log.read_text().count(SUCCESS)
        adapter.kill()
        assert seen >= kill_after, f"storescu ended early:\n{log.read_text()[-3000:]}"
        returncode = sender.wait(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    acknowledged, in_flight = parse_storescu(log.read_text())
    return Round(seen, frozenset(acknowledged), in_flight, returncode)


def spool_instances(spool: Path) -> list[Path]:
    """Every ``*.dcm`` file in the spool outside ``.tmp/``."""
    return sorted(p for p in spool.rglob("*.dcm") if ".tmp" not in p.relative_to(spool).parts)


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(
    adapter_process: AdapterProcess, tmp_path: Path
) -> None:
    began = time.monotonic()
    files = make_study(tmp_path / "study", COUNT, rows=ROWS, columns=COLUMNS)
    sop_of = {
        path: str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files
    }
    original_of = {sop: path for path, sop in sop_of.items()}
    assert len(original_of) == COUNT
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    series_folder = ("DICOMADAPTER", first.StudyInstanceUID, first.SeriesInstanceUID)

    rounds = []
    for number, share in enumerate(KILL_AFTER, start=1):
        log = tmp_path / f"storescu-{number}.log"
        rounds.append(send_and_kill(adapter_process, files, round(COUNT * share), log))
    acknowledged = set().union(*(r.acknowledged for r in rounds))
    print(
        "rounds (kill after, acknowledged, in flight, storescu rc):",
        [(r.kill_after, len(r.acknowledged), r.in_flight, r.returncode) for r in rounds],
        f"total acknowledged {len(acknowledged)}, sending took {time.monotonic() - began:.1f}s",
    )
    assert acknowledged, "storescu saw no Success response in any round"
    assert acknowledged <= set(files)
    assert any(r.returncode != 0 and len(r.acknowledged) < COUNT for r in rounds), rounds
    assert any(r.in_flight for r in rounds), "no kill caught a C-STORE in flight"

    # Restart with no traffic: reconcile runs before the port opens.
    adapter_process.start()
    ledger = adapter_process.ledger()
    wanted = {sop_of[path] for path in acknowledged}

    def received_sops() -> set[str]:
        return {r.sop_instance_uid for r in ledger.instances() if r.state == "received"}

    try:
        deadline = time.monotonic() + 15
        while (missing := wanted - received_sops()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not missing, (
            f"{len(missing)} acknowledged instances have no received row after restart, "
            f"e.g. {sorted(original_of[sop].name for sop in missing)[:5]}"
        )
    finally:
        assert adapter_process.signal(signal.SIGTERM) == 0
        ledger.engine.dispose()

    spool = tmp_path / "spool"
    final = adapter_process.ledger()
    rows = final.instances()
    final.engine.dispose()
    log_text = (tmp_path / "adapter.log").read_text()
    assert "Traceback" not in log_text, log_text[-5000:]

    # Every acknowledged instance: one received row, its file present and identical.
    by_sop: dict[str, list] = {}
    for row in rows:
        by_sop.setdefault(row.sop_instance_uid, []).append(row)
    for path in sorted(acknowledged):
        [row] = by_sop[sop_of[path]]
        assert row.state == "received", row
        stored = Path(row.path)
        assert stored.is_file(), row
        assert stored.parent.relative_to(spool).parts == series_folder, stored
        assert dataset_bytes(stored) == dataset_bytes(path), f"{stored} differs from {path}"

    # Outside .tmp/ only whole instances: complete copies of an original, owned by a row.
    on_disk = spool_instances(spool)
    others = [p for p in spool.rglob("*") if p.is_file() and p not in on_disk]
    assert all(spool / ".tmp" in p.parents for p in others), others
    assert {Path(row.path) for row in rows} == set(on_disk)
    assert all(row.state == "received" for row in rows), [r for r in rows if r.state != "received"]
    assert len(by_sop) == len(rows), "a SOP instance has more than one row"
    for stored in on_disk:
        ds = pydicom.dcmread(stored)
        assert (ds.Rows, ds.Columns) == (ROWS, COLUMNS)
        assert len(ds.PixelData) == ROWS * COLUMNS * 2, stored
        original = original_of[str(ds.SOPInstanceUID)]
        assert dataset_bytes(stored) == dataset_bytes(original), stored

    assert tmp_files(spool) == []
    assert list((spool / "quarantine").iterdir()) == []
    assert time.monotonic() - began < 90
