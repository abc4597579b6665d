"""The ledger's processing operations on a real SQLite file, with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from ledger.db import make_engine
from ledger.migrate import upgrade
from ledger.processing import Processing, idempotency_key
from ledger.records import NewInstance
from ledger.states import TaskState
from ledger.store import INSTANCES, Ledger
from ledger.tasks import TASKS as JOBS
from ledger.tasks import Tasks
from tasks.lanes import Retries

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def processing(ledger_url: str) -> Iterator[Processing]:
    engine = make_engine(ledger_url)
    upgrade(engine)
    yield Processing(Ledger(engine))
    engine.dispose()


def add(
    processing: Processing,
    sop: str,
    group: str,
    at: datetime,
    ae: str = "AE1",
    name: str | None = None,
) -> int:
    new = NewInstance(
        path=f"/spool/{ae}/{name or sop}.dcm",
        called_ae=ae,
        size=1,
        sha256="0" * 64,
        sop_instance_uid=sop,
        study_instance_uid=group,
        series_instance_uid="1.9",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=None,
        calling_ae="CT",
        peer_address=None,
        group_key=group,
    )
    with processing.ledger.transaction(at) as tx:
        return tx.add(new, "received")


def test_open_groups_carry_their_timers(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0)
    add(processing, "1.2", "9.1", T0 + timedelta(seconds=3))
    add(processing, "1.3", "9.2", T0 + timedelta(seconds=1))
    groups = {g.group_key: g for g in processing.open_groups("AE1")}
    assert (
        groups["9.1"].instances,
        groups["9.1"].first_received_at,
        groups["9.1"].last_received_at,
    ) == (2, T0, T0 + timedelta(seconds=3))
    assert groups["9.2"].instances == 1
    assert processing.open_groups("OTHER") == []


def test_claim_makes_one_pending_job_with_a_content_key(processing: Processing) -> None:
    ids = [add(processing, sop, "9.1", T0) for sop in ("1.1", "1.2")]
    job = processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    assert job is not None
    assert (job.state, job.attempts, job.item_count) == ("pending", 0, 2)
    assert job.idempotency_key == idempotency_key("command", "AE1", "9.1", ["1.2", "1.1"])
    assert [i.state for i in processing.job_instances(job.id)] == ["claimed", "claimed"]
    assert [i.job_id for i in processing.ledger.instances_by_id(ids)] == [job.id, job.id]
    assert processing.claim_group("AE1", "9.1", "command", "again", T0) is None
    assert Tasks(processing.ledger).due(T0) == [job]
    assert Tasks(processing.ledger).due(T0 - timedelta(seconds=1)) == []


def test_job_lifecycle_and_its_history(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0)
    job = processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    assert Tasks(processing.ledger).start(job.id, T0).attempts == 1
    processing.settle(job.id, "exit 3", T0 + timedelta(seconds=10), T0)
    assert Tasks(processing.ledger).get(job.id).state == "pending"
    assert Tasks(processing.ledger).due(T0 + timedelta(seconds=5)) == []
    assert Tasks(processing.ledger).start(job.id, T0 + timedelta(seconds=5)) is None  # not due
    Tasks(processing.ledger).start(job.id, T0 + timedelta(seconds=10))
    processing.settle(job.id, "exit 3 again", None, T0)
    failed = Tasks(processing.ledger).get(job.id)
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 2, "exit 3 again")
    assert Tasks(processing.ledger).start(job.id, T0) is None  # only a pending task starts
    assert Tasks(processing.ledger).get(job.id).state == "failed"
    assert Tasks(processing.ledger).retry(job.id, T0).attempts == 0
    Tasks(processing.ledger).start(job.id, T0)
    processing.settle(job.id, None, None, T0)
    assert [i.state for i in processing.job_instances(job.id)] == ["submitted"]
    rows = processing.ledger.read(JOBS.select().with_only_columns(JOBS.c.state, JOBS.c.finished_at))
    assert rows[0][0] == "succeeded" and rows[0][1] == T0


def test_retention_then_reclaim(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0)
    job = processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    Tasks(processing.ledger).start(job.id, T0)
    processing.settle(job.id, None, None, T0)
    assert processing.release_submitted("AE1", 60, T0 + timedelta(seconds=59)) == 0
    assert processing.release_submitted("AE1", 60, T0 + timedelta(seconds=60)) == 1
    [instance] = processing.reclaimable()
    processing.mark_reclaimed([instance.id], "file deleted by the reclaimer")
    assert processing.jobs_done_with_files([job.id, job.id + 1]) == {job.id}  # + 1: no job


def test_recover_after_a_restart(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0)
    orphan = add(processing, "1.2", "9.2", T0)
    job = processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    Tasks(processing.ledger).start(job.id, T0)
    with processing.ledger.transaction(T0) as tx:  # a claim whose job row is gone
        tx.connection.execute(
            update(INSTANCES).where(INSTANCES.c.id == orphan).values(state="claimed", job_id=999)
        )
    later = T0 + timedelta(seconds=5)
    assert Tasks(processing.ledger).recover(now=later) == {"process": 1, "export": 0}
    assert processing.release_orphan_claims(later) == 1
    again = Tasks(processing.ledger).get(job.id)
    assert again.state == TaskState.PENDING and again.attempts == 1
    assert again.next_attempt_at == T0 + timedelta(seconds=5)
    assert processing.ledger.get(orphan).state == "received"
    assert processing.ledger.get(orphan).job_id is None


@pytest.mark.parametrize("attempts, delay", [(1, 10), (2, 20), (3, 40), (4, None)])
def test_backoff_doubles_until_out_of_retries(attempts: int, delay: float | None) -> None:
    rules = Retries(retries=3, retry_delay_seconds=10)
    expected = None if delay is None else T0 + timedelta(seconds=delay)
    assert rules.retry_at(attempts, T0) == expected


def test_backoff_is_capped_at_an_hour() -> None:
    rules = Retries(retries=50, retry_delay_seconds=10)
    assert rules.retry_at(30, T0) == T0 + timedelta(hours=1)


def test_a_study_sent_again_after_its_job_is_a_new_job_with_the_same_key(
    processing: Processing,
) -> None:
    add(processing, "1.1", "9.1", T0)
    first = processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    Tasks(processing.ledger).start(first.id, T0)
    processing.settle(first.id, None, None, T0)
    add(processing, "1.1", "9.1", T0 + timedelta(seconds=60), name="1.1~1")  # sent again
    again = processing.claim_group("AE1", "9.1", "command", "quiet", T0 + timedelta(seconds=70))
    assert again is not None and again.id != first.id
    assert again.idempotency_key == first.idempotency_key


def test_a_claim_leaves_declined_classes_out(processing: Processing) -> None:
    ct = add(processing, "1.1", "9.1", T0)
    mr = add(processing, "1.2", "9.1", T0)
    with processing.ledger.transaction(T0) as tx:
        tx.connection.execute(
            update(INSTANCES)
            .where(INSTANCES.c.id == mr)
            .values(sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
        )
    job = processing.claim_group(
        "AE1", "9.1", "command", "quiet", T0, ignored={"1.2.840.10008.5.1.4.1.1.4"}
    )
    assert [i.id for i in processing.job_instances(job.id)] == [ct]
    assert [i.id for i in processing.unwanted("AE1", {"1.2.840.10008.5.1.4.1.1.4"}, ())] == [mr]
    assert processing.unwanted("AE1", (), {"1.2.840.10008.5.1.4.1.1.4"}) == []


def test_late_arrival_is_noted_only_while_it_waits(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0)
    processing.claim_group("AE1", "9.1", "command", "quiet", T0)
    late = add(processing, "1.2", "9.1", T0 + timedelta(seconds=1))
    processing.note_late(processing.ledger.get(late))
    second = processing.claim_group("AE1", "9.1", "command", "quiet", T0 + timedelta(seconds=9))
    processing.note_late(processing.ledger.get(late))  # claimed meanwhile: nothing to note
    with processing.ledger.engine.connect() as connection:
        query = text("SELECT reason FROM events WHERE instance_id = :i ORDER BY id")
        reasons = list(connection.execute(query, {"i": late}).scalars())
    assert reasons[1] == "late arrival: job 1 already took this group; starts a new group"
    assert reasons[2].startswith(f"claimed by job {second.id}") and len(reasons) == 3


def test_oldest_open_group_counts_only_processed_aes(processing: Processing) -> None:
    add(processing, "1.1", "9.1", T0, ae="PLAIN")
    add(processing, "1.2", "9.2", T0 + timedelta(seconds=5), ae="AE1")
    assert processing.oldest_open_group(["AE1"]).group_key == "9.2"
    assert processing.oldest_open_group([]) is None


def test_an_ignored_class_committed_after_the_decline_pass_stays_out_of_the_job(
    tmp_path: Path,
) -> None:
    """The grouper's race: the decline pass ran, then an instance of an ignored
    class committed, then the group was claimed.  The claim must filter too."""
    from processors.grouper import Grouper, GroupRules

    mr_class = "1.2.840.10008.5.1.4.1.1.4"

    class RacingProcessing(Processing):
        def open_groups(self, called_ae: str) -> list:
            if not self.ledger.instances():
                add(self, "1.1", "9.1", T0)
                mr = add(self, "1.2", "9.1", T0)  # commits after the decline pass
                with self.ledger.transaction(T0) as tx:
                    tx.connection.execute(
                        update(INSTANCES).where(INSTANCES.c.id == mr).values(sop_class_uid=mr_class)
                    )
            return super().open_groups(called_ae)

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    racing = RacingProcessing(Ledger(engine))
    rules = GroupRules("AE1", "command", 5, 3600, ignored_sop_classes=frozenset({mr_class}))
    assert Grouper(rules, racing).tick(T0 + timedelta(seconds=10)) == 1
    [job] = Tasks(racing.ledger).listing()
    assert [i.sop_instance_uid for i in racing.job_instances(job.id)] == ["1.1"]
    [mr] = [i for i in racing.ledger.instances() if i.sop_instance_uid == "1.2"]
    assert (mr.state, mr.job_id) == ("received", None)
