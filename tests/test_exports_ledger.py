"""The export ledger on a real SQLite file with an injected clock: the 50% rule and its history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from errors import IllegalTransition
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.records import ExportFileSpec
from ledger.states import ExportState
from ledger.store import Ledger

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def exports(tmp_path: Path) -> Exports:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    return Exports(Ledger(engine))


def queue(exports: Exports, count: int, owned: bool = True) -> int:
    specs = [
        ExportFileSpec(
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


def outcomes(exports: Exports, export_id: int, failing: int) -> list:
    files = exports.files(export_id)
    return [
        (f.id, 0xA700, "destination answered 0xA700") if i < failing else (f.id, 0, None)
        for i, f in enumerate(files)
    ]


@pytest.mark.parametrize(
    "failing, state, retried",
    [
        (0, "succeeded", False),
        (2, "succeeded", False),
        (5, "succeeded", False),
        (6, "pending", True),
        (10, "pending", True),
    ],
)
def test_more_than_half_failed_is_a_retry(
    exports: Exports, failing: int, state: str, retried: bool
) -> None:
    export_id = queue(exports, 10)
    exports.start(export_id, T0)
    task = exports.settle(
        export_id, outcomes(exports, export_id, failing), T0 + timedelta(seconds=30), T0
    )
    assert (task.state, task.failed_count) == (state, failing)
    assert (task.next_attempt_at is not None) is retried
    statuses = [(f.state, f.status) for f in exports.files(export_id)]
    assert statuses.count(("failed", 0xA700)) == failing
    assert statuses.count(("sent", 0)) == 10 - failing


def test_out_of_retries_fails_and_retry_requeues(exports: Exports) -> None:
    export_id = queue(exports, 4)
    exports.start(export_id, T0)
    task = exports.settle(export_id, outcomes(exports, export_id, 4), None, T0)
    assert (task.state, task.last_error) == ("failed", "destination answered 0xA700")
    assert [t.id for t in exports.tasks(ExportState.FAILED)] == [export_id]
    with pytest.raises(IllegalTransition, match="an export in state 'failed' to 'sending'"):
        exports.start(export_id, T0)
    again = exports.retry(export_id, T0 + timedelta(seconds=5))
    assert (again.state, again.attempts) == ("pending", 0)
    assert exports.due("PACS", T0 + timedelta(seconds=5)) == [again]


def test_a_restart_sends_again_and_history_says_why(exports: Exports) -> None:
    export_id = queue(exports, 2)
    exports.start(export_id, T0)
    assert exports.recover(T0 + timedelta(seconds=1)) == 1
    assert exports.get(export_id).state == "pending"
    with exports.ledger.engine.connect() as connection:
        reasons = [
            r
            for (r,) in connection.exec_driver_sql(
                "SELECT reason FROM export_events WHERE export_id = ? ORDER BY id", (export_id,)
            )
        ]
    assert reasons == [
        "2 files from outbox for PACS",
        "sending",
        "interrupted by a restart: send again",
    ]


def test_reclaimable_after_retention(exports: Exports) -> None:
    export_id = queue(exports, 1)
    exports.start(export_id, T0)
    exports.settle(export_id, outcomes(exports, export_id, 0), None, T0)
    assert exports.reclaimable("PACS", 60, T0 + timedelta(seconds=59)) == []
    [task] = exports.reclaimable("PACS", 60, T0 + timedelta(seconds=60))
    exports.mark_reclaimed(task.id, T0 + timedelta(seconds=60))
    assert exports.get(export_id).reclaimed_at == T0 + timedelta(seconds=60)
    assert exports.reclaimable("PACS", 0, T0 + timedelta(days=1)) == []
