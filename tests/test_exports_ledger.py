"""The export ledger on a real SQLite file with an injected clock: per-file outcomes decide.

A file delivered stays delivered; one worth another attempt (a transient
status, an association lost, never attempted) stays ``pending``; one
refused is ``failed`` at once.  The task follows: ``succeeded`` only when
every file is delivered, never because "most" were.  Only delivered owned
files are ever reclaimable.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from errors import IllegalTransition
from exporters.base import Attempt
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.records import ItemOutcome, ItemRecord, ItemSpec
from ledger.states import TaskKind
from ledger.store import Ledger
from ledger.tasks import Tasks
from tasks.lanes import ExportLane, Retries

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
LATER = T0 + timedelta(seconds=30)


@pytest.fixture
def exports(ledger_url: str) -> Iterator[Exports]:
    engine = make_engine(ledger_url)
    upgrade(engine)
    yield Exports(Ledger(engine))
    engine.dispose()


def queue(exports: Exports, count: int, owned: bool = True) -> int:
    specs = [
        ItemSpec(
            path=f"/out/{i}.dcm",
            owned=owned,
            sop_instance_uid=f"1.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size=10,
        )
        for i in range(count)
    ]
    return exports.create("PACS", "outbox", specs, now=T0)


SENT = "sent"
AGAIN = "again"  # a transient failure: 0xA700
REFUSED = "refused"  # 0xC000
UNTRIED = "untried"  # the association was lost before it


def outcomes(exports: Exports, export_id: int, kinds: list[str]) -> list[ItemOutcome]:
    """One outcome per pending file of the task, of the kinds given in order."""
    made = {
        SENT: lambda i: ItemOutcome(i, 0, None),
        AGAIN: lambda i: ItemOutcome(i, 0xA700, "destination answered 0xA700", retry=True),
        REFUSED: lambda i: ItemOutcome(i, 0xC000, "destination answered 0xC000"),
        UNTRIED: lambda i: ItemOutcome(i, None, "not attempted: lost", True, attempted=False),
    }
    files = exports.items(export_id, "pending")
    return [made[kind](f.id) for f, kind in zip(files, kinds, strict=True)]


def attempt(exports: Exports, export_id: int, kinds: list[str], retry_at=LATER):
    """One attempt, started when the export is due (``T0`` at the earliest)."""
    due = Tasks(exports.ledger).get(export_id).next_attempt_at
    when = max(T0, due) if due is not None else T0
    Tasks(exports.ledger).start(export_id, when)
    return exports.settle(export_id, outcomes(exports, export_id, kinds), retry_at, when)


def file_states(exports: Exports, export_id: int) -> list[str]:
    return [f.state for f in exports.items(export_id)]


@pytest.mark.parametrize(
    "kinds, task_state, files",
    [
        ([SENT] * 4, "succeeded", [SENT] * 4),
        # one refused of four: not a success, and nothing to try again
        ([SENT, SENT, SENT, REFUSED], "failed", [SENT, SENT, SENT, "failed"]),
        # two stored, then the association aborted: the rest is tried again
        ([SENT, SENT, AGAIN, UNTRIED], "pending", [SENT, SENT, "pending", "pending"]),
        ([REFUSED, AGAIN, SENT, SENT], "pending", ["failed", "pending", SENT, SENT]),
        ([REFUSED] * 4, "failed", ["failed"] * 4),
    ],
    ids=["all-sent", "one-refused", "aborted-midway", "mixed", "all-refused"],
)
def test_each_file_outcome_decides(exports: Exports, kinds, task_state, files) -> None:
    export_id = queue(exports, 4)
    task = attempt(exports, export_id, kinds)
    assert task.state == task_state
    assert file_states(exports, export_id) == files
    assert task.failed_count == 4 - files.count(SENT)
    assert (task.next_attempt_at == LATER) is (task_state == "pending")


def test_a_retry_sends_only_what_is_pending_then_out_of_retries_fails_it(
    exports: Exports,
) -> None:
    export_id = queue(exports, 4)
    attempt(exports, export_id, [SENT, REFUSED, AGAIN, UNTRIED])
    assert [f.sop_instance_uid for f in exports.items(export_id, "pending")] == ["1.2", "1.3"]
    task = attempt(exports, export_id, [SENT, AGAIN], retry_at=None)
    assert (task.state, task.attempts, task.failed_count) == ("failed", 2, 2)
    assert file_states(exports, export_id) == [SENT, "failed", SENT, "failed"]
    assert task.last_error == "destination answered 0xA700"


def test_a_file_an_attempt_failed_on_goes_after_those_not_yet_tried(exports: Exports) -> None:
    """A destination that stalls on one file: the next attempt starts with the others."""
    export_id = queue(exports, 4)
    attempt(exports, export_id, [SENT, AGAIN, UNTRIED, UNTRIED])
    assert [f.sop_instance_uid for f in exports.to_send(export_id)] == ["1.2", "1.3", "1.1"]
    assert [f.failures for f in exports.items(export_id)] == [0, 1, 0, 0]


def test_retry_requeues_the_undelivered_files_and_discard_gives_them_up(
    exports: Exports,
) -> None:
    export_id = queue(exports, 3)
    attempt(exports, export_id, [SENT, REFUSED, REFUSED])
    assert Tasks(exports.ledger).start(export_id, T0) is None  # only a pending task starts
    assert Tasks(exports.ledger).get(export_id).state == "failed"
    again = Tasks(exports.ledger).retry(export_id, T0 + timedelta(seconds=5))
    assert (again.state, again.attempts) == ("pending", 0)
    assert file_states(exports, export_id) == [SENT, "pending", "pending"]
    assert Tasks(exports.ledger).due(T0 + timedelta(seconds=5)) == [again]
    attempt(exports, export_id, [REFUSED, REFUSED])
    assert Tasks(exports.ledger).discard(export_id, "destination decommissioned") == 2
    assert Tasks(exports.ledger).get(export_id).state == "discarded"
    assert file_states(exports, export_id) == [SENT, "discarded", "discarded"]
    with pytest.raises(IllegalTransition):
        Tasks(exports.ledger).retry(export_id)
    with exports.ledger.engine.connect() as connection:
        [reason] = connection.execute(
            text("SELECT reason FROM export_events WHERE to_state = 'discarded'")
        ).scalars()
    assert reason == "2 undelivered files given up: destination decommissioned"


def test_only_delivered_owned_files_are_reclaimable(exports: Exports) -> None:
    export_id = queue(exports, 3)
    attempt(exports, export_id, [SENT, REFUSED, AGAIN])
    assert exports.reclaimable_items("PACS", 60, T0 + timedelta(seconds=59)) == []
    [due] = exports.reclaimable_items("PACS", 60, T0 + timedelta(seconds=60))
    assert due.sop_instance_uid == "1.0"
    exports.mark_reclaimed([due.id], "deleted", T0 + timedelta(seconds=60))
    assert exports.reclaimable_items("PACS", 0, T0 + timedelta(days=1)) == []
    assert Tasks(exports.ledger).get(export_id).reclaimed_at is None, (
        "two owned files are still on disk"
    )
    assert [f.sop_instance_uid for f in exports.owned_items(["pending", "failed"])] == [
        "1.1",
        "1.2",
    ]
    not_owned = queue(exports, 1, owned=False)
    attempt(exports, not_owned, [SENT])
    assert exports.reclaimable_items("PACS", 0, T0 + timedelta(days=1)) == []


def test_a_task_is_reclaimed_once_its_last_owned_file_goes(exports: Exports) -> None:
    export_id = queue(exports, 2)
    attempt(exports, export_id, [SENT, SENT])
    files = exports.reclaimable_items("PACS", 0, T0)
    exports.mark_reclaimed([f.id for f in files], "deleted", T0)
    assert Tasks(exports.ledger).get(export_id).reclaimed_at == T0


def test_a_restart_sends_again_and_history_says_why(exports: Exports) -> None:
    export_id = queue(exports, 2)
    Tasks(exports.ledger).start(export_id, T0)
    assert Tasks(exports.ledger).recover(now=T0 + timedelta(seconds=1))[TaskKind.EXPORT] == 1
    assert Tasks(exports.ledger).get(export_id).state == "pending"
    with exports.ledger.engine.connect() as connection:
        reasons = list(
            connection.execute(
                text("SELECT reason FROM export_events WHERE export_id = :i ORDER BY id"),
                {"i": export_id},
            ).scalars()
        )
    assert reasons == [
        "2 files from outbox for PACS",
        "started",
        "interrupted by a restart: run again",
    ]


def test_migration_reopens_tasks_an_older_version_called_succeeded(tmp_path: Path) -> None:
    """Under the old more-than-half rule a task with refused files 'succeeded'."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine, to="0005")
    at = "2026-11-27T12:00:00.000000Z"
    with engine.begin() as connection:
        for export_id, state, failed in ((1, "succeeded", 1), (2, "succeeded", 0)):
            connection.execute(
                text(
                    "INSERT INTO exports (id, destination, origin, state, file_count, "
                    "failed_count, attempts, created_at, updated_at) VALUES "
                    "(:i, 'PACS', 'outbox', :s, 2, :f, 1, :at, :at)"
                ),
                {"i": export_id, "s": state, "f": failed, "at": at},
            )
            for number in range(2):
                connection.execute(
                    text(
                        "INSERT INTO export_files (export_id, path, owned, state) "
                        "VALUES (:i, :p, 1, :s)"
                    ),
                    {
                        "i": export_id,
                        "p": f"/o/{export_id}/{number}",
                        "s": "failed" if number < failed else "sent",
                    },
                )
    upgrade(engine)
    exports = Exports(Ledger(engine))
    assert [(t.id, t.state) for t in Tasks(exports.ledger).listing(TaskKind.EXPORT)] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    with engine.connect() as connection:
        reasons = connection.execute(
            text("SELECT reason FROM export_events WHERE export_id = 1 ORDER BY id")
        ).scalars()
        assert list(reasons) == [
            "reopened by ledger migration 0006: undelivered files: 1",
            "export 1 is task 1 since ledger migration 0007",
        ]
    engine.dispose()


def test_migration_links_existing_forward_files_to_their_instances(tmp_path: Path) -> None:
    """Forward files have always been named ``<instance id>.dcm``: after the upgrade each
    names its instance, so ``ledger check`` does not call forwarded instances lost."""
    from ledger import delivery

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine, to="0005")
    at = "2026-11-27T12:00:00.000000Z"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, processor, called_ae, group_key, instance_count, state, "
                "attempts, idempotency_key, created_at, updated_at, finished_at) VALUES "
                "(7, 'forward', 'AE', '1.2', 2, 'succeeded', 1, 'k', :at, :at, :at)"
            ),
            {"at": at},
        )
        for instance_id in (41, 42):
            connection.execute(
                text(
                    "INSERT INTO instances (id, state, path, called_ae, sop_instance_uid, "
                    "received_at, updated_at, job_id) VALUES "
                    "(:i, 'reclaimed', :p, 'AE', :s, :at, :at, 7)"
                ),
                {"i": instance_id, "p": f"/spool/{instance_id}", "s": f"1.{instance_id}", "at": at},
            )
        connection.execute(
            text(
                "INSERT INTO exports (id, destination, origin, job_id, state, file_count, "
                "failed_count, attempts, created_at, updated_at) VALUES "
                "(3, 'PACS', 'forward', 7, 'succeeded', 2, 0, 1, :at, :at)"
            ),
            {"at": at},
        )
        for instance_id in (41, 42):
            connection.execute(
                text(
                    "INSERT INTO export_files (export_id, path, owned, state, sop_instance_uid) "
                    "VALUES (3, :p, 1, 'sent', :s)"
                ),
                {"p": f"/outbox/PACS/.sending/job-7/{instance_id}.dcm", "s": f"1.{instance_id}"},
            )
    upgrade(engine)
    ledger = Ledger(engine)
    assert [f.instance_id for f in Exports(ledger).items(10)] == [41, 42]
    assert delivery.forwarded_not_delivered(ledger) == []
    engine.dispose()


class StowLike:
    """A sender named like the STOW-RS one that delivers every file it is given."""

    name = "stow"
    where = "https://pacs.example/dicom-web"

    def send(self, files: list[ItemRecord]) -> Attempt:
        return Attempt([ItemOutcome(f.id, 0, None) for f in files])

    def echo(self) -> str:
        return "QIDO-RS answered 200"


def test_an_export_queued_before_its_destination_changed_type_goes_the_new_way(
    exports: Exports,
) -> None:
    """A backlog for a DIMSE destination that is now DICOMweb is not stranded: its lane takes
    it, and the task's submitter and history say how it went."""
    export_id = queue(exports, 2)
    lane = ExportLane(exports, StowLike(), Retries(3, 30))
    task = Tasks(exports.ledger).start(export_id, T0)
    assert task is not None and task.submitter == "cstore" and lane.takes(task)
    lane.run(task)
    done = Tasks(exports.ledger).get(export_id)
    assert (done.state, done.submitter) == ("succeeded", "stow")
    assert file_states(exports, export_id) == ["sent", "sent"]
    with exports.ledger.engine.connect() as connection:
        reasons = connection.execute(
            text("SELECT reason FROM task_events WHERE task_id = :id ORDER BY id"),
            {"id": export_id},
        ).scalars()
        assert "its destination is now reached by stow, not cstore" in list(reasons)
