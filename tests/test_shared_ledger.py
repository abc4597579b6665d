"""Two nodes on one ledger and one spool record each hand-dropped file exactly once.

Each "node" here is its own engine (its own connections) and its own
intake, as two adapters' would be; both are handed every file of the spool
at once, from two threads, again and again.  On PostgreSQL the ledger's one
writer lock (an advisory lock) serializes their decisions as SQLite's
``BEGIN IMMEDIATE`` does; the unique index on live paths is the last guard.
Claims and task pick-ups lock their own rows instead (``SKIP LOCKED``):
several claimers at once never share an instance or a task, and on
PostgreSQL none waits for a row another holds.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from ledger.db import make_engine
from ledger.migrate import upgrade
from ledger.models import utcnow
from ledger.processing import Processing, group_lock
from ledger.store import INSTANCES, RECONCILER, WRITER, Ledger
from ledger.tasks import TASKS, LeaseLost, Tasks
from spool.layout import SpoolLayout
from tests.conftest import new_instance, side_by_side
from tests.dicom import make_study
from tests.postgres import Cluster
from watchers.intake import Intake
from watchers.reconcile import Reconciler

AE = "DICOMADAPTER"


def test_two_nodes_record_each_dropped_file_once(ledger_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    files = [path for study in range(4) for path in make_study(spool / AE / f"dropped-{study}", 10)]
    engines = [make_engine(ledger_url) for _ in ("edge-1", "edge-2")]
    upgrade(engines[0])
    intakes = [
        Intake(SpoolLayout(spool, node), Ledger(engine), {AE: "keep"})
        for node, engine in zip(("edge-1", "edge-2"), engines, strict=True)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def record(intake: Intake) -> None:
        try:
            start.wait()
            for batch in range(0, len(files), 7):
                intake.process(files[batch : batch + 7])
            intake.process(files)  # and once more: nothing new
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(intake,)) for intake in intakes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = Ledger(engines[0]).instances()
    assert sorted(row.path for row in rows) == sorted(str(path) for path in files)
    assert {row.state for row in rows} == {"received"}
    for engine in engines:
        engine.dispose()


def test_a_lapsed_lease_gives_the_task_to_another_node_and_the_first_records_nothing(
    ledger_url: str,
) -> None:
    engine = make_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    processing, tasks = Processing(ledger), Tasks(ledger)
    new = new_instance("/spool/AE/1.dcm", AE, "1.1", "9.1")
    with ledger.transaction() as tx:
        tx.add(new, "received")
    job = processing.claim_group(AE, "9.1", "command", "quiet")
    assert job is not None
    t0 = utcnow()
    first = tasks.start(job.id, t0, node="edge-1", lease_seconds=30)
    assert (first.node, first.lease_until) == ("edge-1", t0 + timedelta(seconds=30))
    assert tasks.renew([job.id], "edge-2", 30, t0 + timedelta(seconds=10)) == 0  # not its own
    assert tasks.renew([job.id], "edge-1", 30, t0 + timedelta(seconds=10)) == 1
    assert tasks.requeue_lapsed(t0 + timedelta(seconds=39)) == 0  # renewed until t0 + 40
    assert tasks.recover("edge-2", t0 + timedelta(seconds=39)) == {"process": 0, "export": 0}
    # edge-1 stops renewing (killed): after the lease, any node puts the task back.
    assert tasks.requeue_lapsed(t0 + timedelta(seconds=41)) == 1
    back = tasks.get(job.id)
    assert (back.state, back.lease_until) == ("pending", None)
    second = tasks.start(job.id, t0 + timedelta(seconds=42), node="edge-2", lease_seconds=30)
    assert (second.node, second.attempts) == ("edge-2", 2)
    # edge-1 comes back and would finish its attempt: refused, nothing recorded.
    with pytest.raises(LeaseLost):
        processing.settle(job.id, None, None, attempt=first.attempts)
    assert tasks.get(job.id).state == "running"
    assert {i.state for i in processing.job_instances(job.id)} == {"claimed"}
    processing.settle(job.id, None, None, attempt=second.attempts)
    assert tasks.get(job.id).state == "succeeded"
    assert {i.state for i in processing.job_instances(job.id)} == {"submitted"}
    engine.dispose()


def test_one_node_at_a_time_reconciles_the_shared_spool(ledger_url: str, tmp_path: Path) -> None:
    """PostgreSQL: while another node's pass holds the reconcile lock, a pass scans nothing
    (its own temporary files are still cleared); SQLite: one box, every pass scans."""
    engine, other = make_engine(ledger_url), make_engine(ledger_url)
    upgrade(engine)
    [dropped] = make_study(tmp_path / "spool" / AE / "by-hand", 1)
    submitted: list[Path] = []
    layout = SpoolLayout(tmp_path / "spool", "edge-a")
    layout.ensure([AE])
    reconciler = Reconciler(layout, Ledger(engine), submitted.extend, 0.0, stale_tmp_seconds=600)
    with Ledger(other).alone(RECONCILER) as held:  # edge-b is reconciling
        assert held
        adopted = reconciler.tick(startup=True).adopted
        assert adopted == (0 if engine.dialect.name == "postgresql" else 1)
    assert reconciler.tick(startup=True).adopted == 1  # edge-b done: this pass scans
    assert dropped in submitted
    engine.dispose()
    other.dispose()


def _ledger_of_groups(ledger_url: str, groups: int, per_group: int) -> Ledger:
    engine = make_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    with ledger.transaction() as tx:
        tx.add_many(
            [
                (new_instance(f"/spool/{AE}/{g}/{n}.dcm", AE, f"1.{g}.{n}", f"9.{g}"), "received")
                for g in range(groups)
                for n in range(per_group)
            ]
        )
    return ledger


def test_four_claimers_at_once_claim_each_instance_and_start_each_task_once(
    ledger_url: str,
) -> None:
    ledger = _ledger_of_groups(ledger_url, groups=40, per_group=5)
    engines = [make_engine(ledger_url) for _ in range(4)]
    claimers = [Processing(Ledger(engine)) for engine in engines]
    started: list[list[int]] = [[] for _ in engines]

    def claim_and_start(number: int) -> None:
        processing, tasks = claimers[number], Tasks(claimers[number].ledger)
        order = range(40) if number % 2 == 0 else reversed(range(40))
        for group in order:
            job = processing.claim_group(AE, f"9.{group}", "command", "quiet")
            for task in tasks.due(utcnow()):
                if tasks.start(task.id, node=f"edge-{number}", lease_seconds=30):
                    started[number].append(task.id)
            del job

    side_by_side(4, claim_and_start)
    rows = ledger.instances()
    assert len(rows) == 200 and {row.state for row in rows} == {"claimed"}
    jobs = Tasks(ledger).listing()
    assert len(jobs) == 40  # one job per group, none empty, none sharing an instance
    for job in jobs:
        members = [row for row in rows if row.job_id == job.id]
        assert job.item_count == 5 and {row.group_key for row in members} == {job.group_key}
        assert len(members) == 5
    everyone = sorted(task_id for mine in started for task_id in mine)
    assert everyone == sorted(job.id for job in jobs)  # each started once, by one claimer
    assert {job.attempts for job in Tasks(ledger).listing()} == {1}
    for engine in [*engines, ledger.engine]:
        engine.dispose()


def test_on_postgresql_a_claim_skips_what_another_holds_and_waits_for_nothing(
    postgres_cluster: Cluster,
) -> None:
    """(SQLite has one writer: there a second claim waits for the first, by design.)"""
    ledger_url = postgres_cluster.database()
    ledger = _ledger_of_groups(ledger_url, groups=2, per_group=3)
    processing, tasks = Processing(ledger), Tasks(ledger)
    other = make_engine(ledger_url)
    with other.connect() as held, held.begin():
        # Another node's claim of group 9.0, half done: its shared writer lock
        # (as Ledger.transaction(shared=True) takes), its group's lock, its rows.
        held.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": WRITER})
        held.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": group_lock(AE, "9.0")})
        locked = held.execute(
            select(INSTANCES.c.id).where(INSTANCES.c.group_key == "9.0").with_for_update()
        ).all()
        assert len(locked) == 3
        assert processing.claim_group(AE, "9.0", "command", "quiet") is None  # skipped, at once
        job = processing.claim_group(AE, "9.1", "command", "quiet")  # beside it, not after
        assert job is not None and job.item_count == 3
        held.execute(select(TASKS.c.id).where(TASKS.c.id == job.id).with_for_update())
        assert tasks.start(job.id, node="edge-2", lease_seconds=30) is None  # being taken
    started = tasks.start(job.id, node="edge-2", lease_seconds=30)
    assert started is not None and started.state == "running"
    assert tasks.start(job.id, node="edge-3", lease_seconds=30) is None  # no longer pending
    again = processing.claim_group(AE, "9.0", "command", "quiet")
    assert again is not None and again.item_count == 3  # the other claim never committed
    other.dispose()
    ledger.engine.dispose()


def test_two_nodes_closing_one_big_group_at_once_never_split_it(ledger_url: str) -> None:
    """Both nodes' groupers close the same group on the same timer: one job takes it all.

    (Row locks skipped one by one split such groups: each claim took the rows
    the other had not locked yet.)
    """
    ledger = _ledger_of_groups(ledger_url, groups=8, per_group=2000)
    engines = [make_engine(ledger_url) for _ in range(2)]
    claimers = [Processing(Ledger(engine)) for engine in engines]
    barrier = threading.Barrier(2)

    def claim(number: int) -> None:
        for group in range(8):
            barrier.wait()
            claimers[number].claim_group(AE, f"9.{group}", "command", "quiet")

    side_by_side(2, claim)
    jobs = Tasks(ledger).listing()
    assert sorted(job.item_count for job in jobs) == [2000] * 8
    assert {row.state for row in ledger.instances()} == {"claimed"}
    for engine in [*engines, ledger.engine]:
        engine.dispose()
