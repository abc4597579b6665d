"""Two nodes on one ledger and one spool record each hand-dropped file exactly once.

Each "node" here is its own engine (its own connections) and its own
intake, as two adapters' would be; both are handed every file of the spool
at once, from two threads, again and again.  On PostgreSQL the ledger's one
writer lock (an advisory lock) serializes their decisions as SQLite's
``BEGIN IMMEDIATE`` does; the unique index on live paths is the last guard.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ledger.db import make_engine
from ledger.migrate import upgrade
from ledger.store import Ledger
from spool.layout import SpoolLayout
from tests.dicom import make_study
from watchers.intake import Intake

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
