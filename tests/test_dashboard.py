"""The status page's ledger queries, on SQLite and PostgreSQL (nodes share one ledger).

Each is checked on what it must count or list; bench/page_scale.py measures
them at a million instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from ledger.dashboard import Dashboard
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.models import utcnow
from ledger.processing import Processing
from ledger.states import ItemState, TaskState
from ledger.store import Ledger
from ledger.tasks import TASK_EVENTS, Tasks
from tests.test_exports_ledger import REFUSED, SENT, attempt, queue
from tests.test_processing_ledger import add


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    engine = make_engine(ledger_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def test_counts_per_ae_and_state_and_arrivals_per_minute(ledger: Ledger) -> None:
    processing = Processing(ledger)
    now = utcnow().replace(second=30, microsecond=0)
    for i in range(3):
        add(processing, f"1.{i}", "9.1", now, ae="CT")
    add(processing, "1.9", "9.2", now - timedelta(minutes=5), ae="MR")
    add(processing, "1.8", "9.3", now - timedelta(hours=2), ae="MR")  # before the hour
    with ledger.transaction() as tx:
        tx.add_rejected("/spool/quarantine/x-junk.txt", "CT", "not DICOM: no DICM prefix")
    dashboard = Dashboard(ledger)
    assert dashboard.counts_by_ae() == {
        "CT": {"received": 3, "rejected": 1},
        "MR": {"received": 2},
    }
    minutes = dashboard.received_per_minute(now)
    assert len(minutes) == 60
    assert minutes[-1] == 3  # this minute: the three CT (a quarantined file is no instance)
    assert minutes[-6] == 1
    assert sum(minutes) == 4
    [quarantined] = dashboard.quarantined()
    assert (quarantined.path, quarantined.reason) == (
        "/spool/quarantine/x-junk.txt",
        "not DICOM: no DICM prefix",
    )
    assert dashboard.study_sources("CT", "9.1") == ["CT"]


def test_undelivered_files_and_discarding_one_closes_its_export(ledger: Ledger) -> None:
    exports = Exports(ledger)
    export_id = queue(exports, 3)
    attempt(exports, export_id, [SENT, REFUSED, REFUSED])
    assert Tasks(ledger).get(export_id).state == TaskState.FAILED
    dashboard = Dashboard(ledger)
    assert [task.id for task in dashboard.failed_tasks()] == [export_id]
    undelivered = dashboard.undelivered()
    assert [(u.item.path, u.task.id, u.item.status) for u in undelivered] == [
        ("/out/2.dcm", export_id, 0xC000),
        ("/out/1.dcm", export_id, 0xC000),
    ]
    first, second = (u.item.id for u in undelivered)
    exports.discard_item(first, "discarded by alice on the status page")
    assert Tasks(ledger).get(export_id).state == TaskState.FAILED  # one file still waits
    with pytest.raises(LookupError, match="not undelivered"):
        exports.discard_item(first, "twice")
    exports.discard_item(second, "discarded by alice on the status page")
    assert Tasks(ledger).get(export_id).state == TaskState.DISCARDED
    assert dashboard.undelivered() == []
    assert [item.state for item in exports.items(export_id)] == [
        ItemState.SENT,
        ItemState.DISCARDED,
        ItemState.DISCARDED,
    ]
    reasons = _task_reasons(ledger, export_id)
    assert "file /out/2.dcm discarded: discarded by alice on the status page" in reasons
    assert any(
        r.startswith("every undelivered file discarded: discarded by alice") for r in reasons
    )


def test_a_study_with_its_job_exports_and_timeline(ledger: Ledger) -> None:
    processing = Processing(ledger)
    now = utcnow()
    for i in range(2):
        add(processing, f"2.{i}", "7.7", now, ae="CT")
    add(processing, "2.9", "7.8", now, ae="CT")  # another study
    claimed = processing.claim_group("CT", "7.7", "command", "group complete", now=now)
    assert claimed is not None
    detail = Dashboard(ledger).study(["CT", "MR"], "7.7")
    assert [row.sop_instance_uid for row in detail.instances] == ["2.0", "2.1"]
    assert [task.noun for task in detail.tasks] == ["job"]
    moves = [(story.subject, story.to_state) for story in detail.timeline]
    assert ("instance 1", "received") in moves and ("instance 1", "claimed") in moves
    assert any(subject.startswith("job ") for subject, _ in moves)
    assert Dashboard(ledger).study(["CT"], "0.0").instances == []


def _task_reasons(ledger: Ledger, task_id: int) -> list[str]:
    rows = ledger.read(select(TASK_EVENTS.c.reason).where(TASK_EVENTS.c.task_id == task_id))
    return [reason for (reason,) in rows]
