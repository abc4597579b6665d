"""The schema comes from Alembic alone, matches the models, and is transactional."""

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from ledger.db import make_engine
from ledger.migrate import current_revision, head_revision, upgrade
from ledger.models import Base
from tests.conftest import new_instance


def test_upgrade_from_empty_then_noop(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}")
    assert current_revision(engine) is None
    assert upgrade(engine) == (None, head_revision())
    assert upgrade(engine) == (head_revision(), head_revision())


def test_models_match_migrations(ledger_url: str) -> None:
    """On SQLite and PostgreSQL alike: every migration runs, and the result is the models."""
    engine = make_engine(ledger_url)
    assert upgrade(engine) == (None, head_revision())
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_sqlite_pragmas_and_admin_readable_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()
    # An admin's plain sqlite3 sees the tables and the view.
    names = {
        row[0]
        for row in sqlite3.connect(tmp_path / "ledger.db").execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
        )
    }
    assert {"instances", "events", "studies", "alembic_version"} <= names


def test_0007_makes_jobs_and_exports_tasks_losing_nothing(tmp_path: Path) -> None:
    """Jobs keep their ids; exports follow the last job and say so; the old names stay views."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine, to="0006")
    at = "2026-12-01T12:00:00.000000Z"
    job = (
        "INSERT INTO jobs (id, processor, called_ae, group_key, instance_count, state, "
        "attempts, idempotency_key, created_at, updated_at) "
        "VALUES (?, 'forward', 'AE', ?, 2, ?, 1, 'k', ?, ?)"
    )
    export = (
        "INSERT INTO exports (id, destination, origin, job_id, state, file_count, failed_count, "
        "attempts, created_at, updated_at) VALUES (?, 'PACS', ?, ?, ?, 1, 0, 1, ?, ?)"
    )
    with engine.begin() as connection:
        run = connection.exec_driver_sql
        run(job, (4, "1.1", "succeeded", at, at))
        run(job, (7, "1.2", "failed", at, at))
        run(
            "INSERT INTO job_events (job_id, to_state, at, reason) VALUES (7, 'failed', ?, 'x')",
            (at,),
        )
        run(export, (1, "forward", 4, "sending", at, at))
        run(export, (2, "outbox", None, "failed", at, at))
        run(
            "INSERT INTO export_files (export_id, path, owned, state, instance_id) "
            "VALUES (2, '/o/f.dcm', 1, 'failed', NULL)"
        )
        run(
            "INSERT INTO export_events (export_id, from_state, to_state, at, reason) "
            "VALUES (1, 'pending', 'sending', ?, 'sending')",
            (at,),
        )
    upgrade(engine)
    engine.dispose()
    db = sqlite3.connect(tmp_path / "ledger.db")
    assert db.execute(
        "SELECT id, kind, target, submitter, state FROM tasks ORDER BY id"
    ).fetchall() == [
        (4, "process", "AE", "forward", "succeeded"),
        (7, "process", "AE", "forward", "failed"),
        (8, "export", "PACS", "cstore", "running"),  # export 1 after job 7; sending is running
        (9, "export", "PACS", "cstore", "failed"),
    ]
    assert db.execute("SELECT parent_id FROM tasks WHERE id = 8").fetchone() == (4,)
    assert db.execute("SELECT task_id, path, state FROM task_items").fetchall() == [
        (9, "/o/f.dcm", "failed")
    ]
    assert db.execute(
        "SELECT task_id, from_state, to_state FROM task_events WHERE reason IN ('x', 'sending')"
    ).fetchall() == [(7, None, "failed"), (8, "pending", "running")]
    renumbered = db.execute(
        "SELECT reason FROM task_events WHERE reason LIKE 'export % is task %' ORDER BY id"
    ).fetchall()
    assert renumbered == [
        ("export 1 is task 8 since ledger migration 0007",),
        ("export 2 is task 9 since ledger migration 0007",),
    ]
    # An admin's saved queries over the old tables still answer, with the old column names.
    assert db.execute("SELECT id, called_ae, instance_count FROM jobs ORDER BY id").fetchall() == [
        (4, "AE", 2),
        (7, "AE", 2),
    ]
    assert db.execute("SELECT id, destination, job_id FROM exports ORDER BY id").fetchall() == [
        (8, "PACS", 4),
        (9, "PACS", None),
    ]
    assert db.execute("SELECT export_id, state FROM export_files").fetchall() == [(9, "failed")]
    assert db.execute("SELECT count(*) FROM job_events").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM export_events").fetchone() == (3,)
    db.close()


def test_a_path_is_unique_among_live_rows_only(ledger_url: str) -> None:
    """A file received again at a reclaimed one's path is recorded; two live rows never share
    a path (migration 0008 gives PostgreSQL the partial index SQLite had)."""
    from sqlalchemy.exc import IntegrityError

    from ledger.states import State
    from ledger.store import Ledger

    engine = make_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine)
    new = new_instance("/spool/AE/1.2.3/1.2.3.4/1.2.3.4.5.dcm", "AE", "1.2.3.4.5", "1.2.3")
    with ledger.transaction() as tx:
        first = tx.add(new, "received")
    with ledger.transaction() as tx:
        tx.move_many([first], State.RECEIVED, State.RECLAIMABLE, "test")
        tx.move_many([first], State.RECLAIMABLE, State.RECLAIMED, "test")
    with ledger.transaction() as tx:
        tx.add(new, "received")  # the same path again, its first row reclaimed
    with pytest.raises(IntegrityError), ledger.transaction() as tx:
        tx.add(new, "received")  # a second live row at one path
    engine.dispose()


def test_0011_leaves_no_stale_heartbeat_in_service_state(ledger_url: str) -> None:
    """The heartbeat moved to ``nodes``: the old rows would read as a service long dead."""
    engine = make_engine(ledger_url)
    upgrade(engine, to="0010")
    old = ("pid", "listening", "problems", "heartbeat_at", "last_reconcile_at")
    with engine.begin() as connection:
        for name in old:
            connection.execute(
                text("INSERT INTO service_state (name, value, updated_at) VALUES (:n, '1', :at)"),
                {"n": name, "at": "2026-12-01T12:00:00.000000Z"},
            )
    upgrade(engine)
    with engine.connect() as connection:
        left = connection.execute(text("SELECT name FROM service_state")).scalars().all()
    engine.dispose()
    assert left == ["last_reconcile_at"]
