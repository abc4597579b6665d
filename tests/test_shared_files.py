"""Two nodes on one PostgreSQL ledger delete each spool file once and queue each outbox file once.

Each "node" here is its own engine, reclaimer or outbox scanner and its own
job folder, over one shared spool and one shared outbox, as two adapters'
would be.  One node at a time deletes reclaimable files and scans the
outboxes (ledger locks); every node clears its own job folders once none of
the job's instances is left in the spool.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import text

from exporters.outbox import STAGING, OutboxScanner
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.processing import Processing
from ledger.store import OUTBOX, RECLAIMER, Ledger
from ledger.tasks import Tasks
from reclaim.spool_files import Reclaimer
from spool.layout import SpoolLayout
from tests.conftest import new_instance, side_by_side
from tests.dicom import make_study
from tests.postgres import Cluster

AE = "DICOMADAPTER"
NODES = ("edge-a", "edge-b")


def _submitted_jobs(ledger: Ledger, spool: Path, studies: int, per_study: int) -> list[int]:
    """``studies`` groups in the shared spool, each claimed by a job that handed it over."""
    processing, tasks = Processing(ledger), Tasks(ledger)
    jobs = []
    for study in range(studies):
        with ledger.transaction() as tx:
            for n in range(per_study):
                path = spool / AE / f"9.{study}" / f"{n}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"DICM")
                tx.add(new_instance(str(path), AE, f"1.{study}.{n}", f"9.{study}"), "received")
        job = processing.claim_group(AE, f"9.{study}", "command", "quiet")
        assert job is not None and tasks.start(job.id) is not None
        processing.settle(job.id, None, None)
        jobs.append(job.id)
    return jobs


def test_two_nodes_delete_each_file_once_and_each_clears_its_own_job_folders(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    url = postgres_cluster.database()
    spool = tmp_path / "spool"
    engines = [make_engine(url) for _ in NODES]
    upgrade(engines[0])
    ledger = Ledger(engines[0])
    jobs = _submitted_jobs(ledger, spool, studies=6, per_study=5)
    # Job folders on each node: edge-b ran the middle jobs again after a lease lapsed.
    roots = [tmp_path / node / "jobs" for node in NODES]
    for root, ran in zip(roots, (jobs[:4], jobs[2:]), strict=True):
        for job_id in ran:
            (root / str(job_id)).mkdir(parents=True)
            (root / str(job_id) / "0.dcm").write_bytes(b"DICM")
    reclaimers = [
        Reclaimer(Processing(Ledger(engine)), SpoolLayout(spool, node), root, {AE: 0})
        for engine, node, root in zip(engines, NODES, roots, strict=True)
    ]

    with engines[1].connect() as held:  # another node deleting: this one waits its turn
        held.execute(text("SELECT pg_advisory_lock(:key)"), {"key": RECLAIMER})
        assert reclaimers[0].tick() == 0
        held.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RECLAIMER})
    assert len(list(spool.rglob("*.dcm"))) == 30  # nothing deleted
    assert all((roots[0] / str(job_id)).is_dir() for job_id in jobs[:4])  # still needed

    deleted = [0, 0]

    def reclaim(number: int) -> None:
        for _ in range(20):
            deleted[number] += reclaimers[number].tick()

    side_by_side(2, reclaim)
    assert sum(deleted) == 30  # each file deleted by one node, once
    assert list(spool.rglob("*.dcm")) == []
    with engines[0].connect() as connection:
        events = connection.execute(
            text("SELECT instance_id, count(*) FROM events WHERE to_state = 'reclaimed' GROUP BY 1")
        ).all()
    assert len(events) == 30 and {count for _, count in events} == {1}
    for reclaimer in reclaimers:  # the node that deleted nothing clears its folders too
        reclaimer.tick()
    assert [sorted(root.iterdir()) for root in roots] == [[], []]
    for engine in engines:
        engine.dispose()


def test_two_nodes_on_one_outbox_queue_each_file_once(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    url = postgres_cluster.database()
    outbox = tmp_path / "outbox" / "PACS"
    engines = [make_engine(url) for _ in NODES]
    upgrade(engines[0])
    scanners = [OutboxScanner(Exports(Ledger(engine)), {"PACS": outbox}, 0) for engine in engines]
    scanners[0].ensure()
    files = [p for n in range(8) for p in make_study(outbox / f"results-{n}", 5)]
    later = time.time() + 1  # every file settled by then

    with engines[1].connect() as held:  # another node scanning: this one leaves it all
        held.execute(text("SELECT pg_advisory_lock(:key)"), {"key": OUTBOX})
        assert scanners[0].tick(later) == 0
        held.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": OUTBOX})
    assert all(path.exists() for path in files)

    def scan(number: int) -> None:
        for n in range(8):
            scanners[number].tick(later)
            if n < 7:  # more results dropped while both scan (whole: written, then moved in)
                folder = outbox / f"more-{number}-{n}"
                folder.mkdir()
                for path in make_study(tmp_path / "drafts" / folder.name, 2):
                    os.rename(path, folder / path.name)

    side_by_side(2, scan)
    # A tick that met the other node scanning skipped its turn (by design): the
    # next tick, on either node, takes what was dropped meanwhile.
    scanners[1].tick(later)
    with engines[0].connect() as connection:
        items = connection.execute(text("SELECT task_id, path FROM task_items")).all()
    paths = [path for _, path in items]
    assert len(paths) == len(set(paths)) == 40 + 2 * 7 * 2  # each file in one task, once
    assert [p for p in outbox.rglob("*.dcm") if STAGING not in p.parts] == []
    for engine in engines:
        engine.dispose()


def test_a_staging_folder_a_crash_left_is_queued_by_the_next_scan(
    ledger_url: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox" / "PACS"
    engine = make_engine(ledger_url)
    upgrade(engine)
    exports = Exports(Ledger(engine))
    scanner = OutboxScanner(exports, {"PACS": outbox}, 0)
    scanner.ensure()
    left = make_study(outbox / STAGING / "o-crashed" / "results", 3)  # moved, never queued
    assert scanner.tick() == 1
    [task] = Tasks(exports.ledger).listing()
    assert sorted(item.path for item in exports.items(task.id)) == sorted(map(str, left))
    assert scanner.tick() == 0  # queued once
    engine.dispose()
