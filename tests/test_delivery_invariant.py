"""The promise, end to end: every acknowledged instance is delivered, or kept with a reason.

A real ``dicom-adapter run`` forwards two studies (CT and MR) to three
destinations, each a pynetdicom SCP in a process of its own
(``python -m tests.peers.flaky_scp``) playing a behaviour picked at random
from what destinations do in the wild: accept everything, accept no context
for MR, abort the association after a few stores, answer 0xA700 to some
stores, refuse some with 0xC000, or stall some past the adapter's DIMSE
timeout.  The adapter is killed with SIGKILL at a random moment after each
study and started again.  Once everything has settled:

* for every instance the sender saw acknowledged and every destination,
  either the destination stored it (byte for byte) or the ledger has its
  export file ``failed``, with a reason, and the file is still on disk;
* ``dicom-adapter ledger check`` finds nothing ``lost``.

The seed is fixed for ``make test`` (so CI is repeatable); set
``INVARIANT_SEED`` to try another, or run ``make invariant`` for many.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from ledger.exports import Exports
from ledger.states import TaskKind
from ledger.store import Ledger
from ledger.tasks import Tasks
from tests.conftest import ROOT, AdapterProcess, free_port, wait_for, write_config
from tests.dicom import dataset_bytes, make_study
from tests.peers.flaky_scp import read_records

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BEHAVIOURS: dict[str, list[str]] = {
    "accept": [],
    "refuse-mr": ["--refuse-class", MR_IMAGE],
    "abort-after-4": ["--abort-after", "4"],
    "a700-some": ["--fail-share", "0.3", "--failure-status", "0xA700"],
    "refuse-some": ["--fail-share", "0.25", "--failure-status", "0xC000"],
    "stall-some": ["--stall-share", "0.2", "--stall-seconds", "2.5"],
}
DELIVERED = {0x0000, 0xB000, 0xB006, 0xB007}
DEFAULT_SEED = 20261203


@dataclass
class Destination:
    name: str
    behaviour: str
    process: subprocess.Popen[str]
    port: int
    record: Path

    def delivered(self) -> dict[str, str]:
        """SOP Instance UID -> SHA-256 of what it stored (answered with a success status)."""
        return {
            str(r["sop_instance_uid"]): str(r["sha256"])
            for r in read_records(self.record)
            if r["status"] in DELIVERED
        }


def start_destination(name: str, behaviour: str, folder: Path) -> Destination:
    record = folder / f"{name}.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.peers.flaky_scp",
            "--ae-title",
            name,
            "--record",
            str(record),
            *BEHAVIOURS[behaviour],
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.match(r"listening on 127\.0\.0\.1:(\d+) as ", first)
    assert match, first
    return Destination(name, behaviour, process, int(match.group(1)), record)


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("INVARIANT_SEED", DEFAULT_SEED))


@pytest.fixture
def destinations(tmp_path: Path, seed: int) -> Iterator[list[Destination]]:
    rng = random.Random(seed)
    behaviours = rng.sample(sorted(BEHAVIOURS), 3)
    started = [start_destination(f"D{n}", b, tmp_path) for n, b in enumerate(behaviours)]
    yield started
    for destination in started:
        destination.process.send_signal(signal.SIGINT)
    for destination in started:
        try:
            destination.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            destination.process.kill()
            destination.process.wait(timeout=10)


def config_for(tmp_path: Path, port: int, destinations: list[Destination]) -> Path:
    sections = "".join(
        f"[destination:{d.name}]\nae_title = {d.name}\nhost = 127.0.0.1\nport = {d.port}\n"
        "acse_timeout = 2\ndimse_timeout = 1\nnetwork_timeout = 2\n"
        "retries = 3\nretry_delay = 0.2\n"
        for d in destinations
    )
    forward = (
        "[ae:DICOMADAPTER]\nprocessor = forward\n"
        f"destinations = {', '.join(d.name for d in destinations)}\n"
        "timeout = 0.5\nretention = 0\n"
    )
    return write_config(
        tmp_path,
        port,
        sections,
        aes=forward,
        storage="min_free = 0\nreclaim_interval = 0.2",
    )


def send(port: int, folder: Path) -> dict[str, Path]:
    """Send a folder with the pynetdicom peer in its own process; the acknowledged files."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.peers.send",
            "--port",
            str(port),
            "--called",
            "DICOMADAPTER",
            str(folder),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    acknowledged = {}
    for line in done.stdout.splitlines():
        status, path = line.split(" ", 1)
        if status == "0x0000":
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            acknowledged[uid] = Path(path)
    return acknowledged


def settled(ledger: Ledger) -> bool:
    """Nothing is waiting: no instance, job or export task will move by itself again."""
    counts = ledger.counts_by_state()
    jobs = Tasks(ledger).counts(TaskKind.PROCESS)
    exports = Tasks(ledger).counts(TaskKind.EXPORT)
    return (
        counts["received"] == counts["claimed"] == 0
        and jobs["pending"] == jobs["running"] == 0
        and exports["pending"] == exports["running"] == 0
    )


def test_every_acknowledged_instance_is_delivered_or_kept_with_a_reason(
    tmp_path: Path, destinations: list[Destination], seed: int
) -> None:
    began = time.monotonic()
    rng = random.Random(seed)
    port = free_port()
    config = config_for(tmp_path, port, destinations)
    adapter = AdapterProcess(config, port, tmp_path / "adapter.log")
    studies = []
    for name, ct, mr in (("a", 6, 3), ("b", 5, 2)):
        folder = tmp_path / "studies" / name
        study_uid = pydicom.uid.generate_uid()
        make_study(folder, ct, study_uid=study_uid)
        mr_files = make_study(folder / "mr", mr, study_uid=study_uid, sop_class_uid=MR_IMAGE)
        assert mr_files
        studies.append(folder)

    acknowledged: dict[str, Path] = {}
    kills = []
    try:
        adapter.start()
        for folder in studies:
            acknowledged |= send(port, folder)
            pause = rng.uniform(0.2, 2.5)
            time.sleep(pause)
            adapter.kill()
            kills.append(round(pause, 2))
            adapter.start()
        ledger = adapter.ledger()
        try:
            wait_for(lambda: settled(ledger), timeout=45, interval=0.2)
            rows = ledger.instances()
            exports = Exports(ledger)
            tasks = {
                (t.parent_id, t.target): t for t in Tasks(exports.ledger).listing(TaskKind.EXPORT)
            }
            files = {t.id: exports.items(t.id) for t in tasks.values()}
        finally:
            ledger.engine.dispose()
        assert adapter.signal(signal.SIGTERM) == 0
    finally:
        if adapter.process is not None and adapter.process.poll() is None:
            adapter.kill()

    assert len(acknowledged) == 16, "the sender must see every instance acknowledged"
    by_sop = {row.sop_instance_uid: row for row in rows if row.state != "rejected"}
    assert set(by_sop) == set(acknowledged)
    summary = {}
    for destination in destinations:
        delivered = destination.delivered()
        kept = 0
        for sop, original in acknowledged.items():
            expected = hashlib.sha256(dataset_bytes(original)).hexdigest()
            if sop in delivered:
                assert delivered[sop] == expected, (destination.name, sop)
                continue
            row = by_sop[sop]
            task = tasks.get((row.job_id, destination.name))
            assert task is not None, (destination.behaviour, sop, "no export task")
            [file] = [f for f in files[task.id] if f.instance_id == row.id]
            assert file.state == "failed" and file.error, (destination.behaviour, file)
            assert Path(file.path).is_file(), (destination.behaviour, file, "lost")
            kept += 1
        summary[f"{destination.name} {destination.behaviour}"] = (
            f"{len(acknowledged) - kept} delivered, {kept} kept"
        )

    check = subprocess.run(
        [sys.executable, str(ROOT / "adapter.py"), "ledger", "check", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DICOM_ADAPTER_CONFIG": str(config)},
    )
    findings = json.loads(check.stdout)["findings"]
    assert [f for f in findings if f["kind"] == "lost"] == [], findings
    assert "Traceback" not in (tmp_path / "adapter.log").read_text()
    print(f"seed {seed}: killed after {kills} s; {summary}; took {time.monotonic() - began:.1f} s")
