"""``status``'s health: this adapter answers, its ledger takes writes, its parts run.

Real adapter, real ledger file made immutable with ``chattr +i`` (root on
ext4, as on an edge box where someone "protected" the file), a real socket
squatting on the port, and the service's own heartbeat.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from config import load_config
from health import health
from ledger import db as ledger_db
from ledger.db import make_engine
from ledger.models import utcnow
from ledger.nodes import NODES, Nodes
from ledger.store import Ledger
from tests.conftest import RunningAdapter, wait_for, write_config
from tests.dicom import make_instance
from tests.test_cli import cli
from watchers import intake as intake_module


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    chattr = shutil.which("chattr")
    if chattr is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chattr is not installed (Debian package e2fsprogs)")
        pytest.skip("chattr is not installed")
    subprocess.run([chattr, "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_running_adapter_is_healthy(adapter: RunningAdapter) -> None:
    facts = health(adapter.config, adapter.ledger)
    assert facts["listening"] is True and facts["problems"] == [] and facts["healthy"] is True
    assert facts["heartbeat_age_seconds"] < 10


def test_a_ledger_that_cannot_be_written_is_unhealthy(
    adapter: RunningAdapter, config_path: Path
) -> None:
    fresh = Ledger(make_engine(adapter.config.ledger.url))  # as status opens it
    with immutable(config_path.parent / "ledger.db"):
        facts = health(adapter.config, fresh)
        result = cli("status", "--config", str(config_path))
    fresh.engine.dispose()
    assert facts["healthy"] is False
    assert facts["problems"] == [
        "the ledger cannot be written: attempt to write a readonly database"
    ], facts
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "Health: UNHEALTHY: the ledger cannot be written: attempt to write a readonly database"
    )
    assert health(adapter.config, adapter.ledger)["healthy"] is True  # writable again


def test_a_stopped_watcher_or_intake_is_reported(adapter: RunningAdapter) -> None:
    adapter.adapter.watcher.stop()
    adapter.adapter._heartbeat_tick()  # as its scheduler job does every few seconds
    facts = health(adapter.config, adapter.ledger)
    assert facts["problems"] == ["the spool watcher has stopped"]
    adapter.adapter.intake.stop()
    adapter.adapter._heartbeat_tick()
    facts = health(adapter.config, adapter.ledger)
    assert facts["problems"] == ["intake has stopped", "the spool watcher has stopped"]
    assert facts["healthy"] is False


def test_a_stale_heartbeat_is_reported(adapter: RunningAdapter) -> None:
    adapter.adapter.scheduler.pause()  # the service hangs: nothing writes the ledger
    with adapter.ledger.transaction() as tx:
        tx.connection.execute(update(NODES).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    (problem,) = health(adapter.config, adapter.ledger)["problems"]
    assert problem.startswith("the service has not written the ledger for ")
    adapter.adapter.scheduler.resume()


def test_something_else_on_the_port_is_not_this_adapter(
    tmp_path: Path, port: int, config_path: Path
) -> None:
    assert cli("db", "upgrade", "--config", str(config_path)).returncode == 0
    ledger = Ledger(make_engine(f"sqlite:///{config_path.parent / 'ledger.db'}"))
    config = load_config(config_path)
    # A live process, not an adapter, in this node's row.
    Nodes(ledger).beat(config.node.name, os.getpid(), "", [], utcnow())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        facts = health(config, ledger)
    assert facts["listening"] is False and facts["healthy"] is False
    ledger.engine.dispose()


def test_a_refusing_allow_list_still_counts_as_answering(
    start_adapter, tmp_path: Path, port: int
) -> None:
    path = write_config(tmp_path, port, dicom="reject_unknown_sources = true")
    running = start_adapter(path)
    assert health(running.config, running.ledger)["listening"] is True


def test_the_health_check_echo_does_not_fill_the_log(
    start_adapter, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # before start: the SCP process takes this level
    adapter = start_adapter(config_path)
    assert health(adapter.config, adapter.ledger)["listening"] is True
    wait_for(lambda: [r for r in caplog.records if "'HEALTHCHECK'" in r.getMessage()])
    (record,) = [r for r in caplog.records if "'HEALTHCHECK'" in r.getMessage()]
    assert record.levelno == logging.DEBUG and "association released" in record.getMessage()


def test_intake_stuck_on_a_locked_ledger_then_failing_is_reported(
    start_adapter, config_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An admin's sqlite3 shell left in a write transaction: intake's batch waits on the
    lock (stuck), then gives up (failing); once the lock goes, intake recovers.  The
    waits are shortened: 1 s to stuck, a 3 s lock wait (the service's is 30 s)."""
    monkeypatch.setattr(intake_module, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_MS", 3000)
    adapter = start_adapter(config_path)
    shell = sqlite3.connect(str(adapter.ledger.engine.url.database), isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")
    try:
        shutil.copy(make_instance(tmp_path / "one.dcm"), adapter.spool / "DICOMADAPTER" / "in.dcm")
        wait_for(lambda: adapter.adapter.intake.problem() is not None, timeout=15)
        assert adapter.adapter.intake.problem() == (
            "intake is stuck: a batch of 1 file has taken "
            + adapter.adapter.intake.problem().rsplit(" ", 1)[-1]
        )
        wait_for(lambda: "cannot record" in (adapter.adapter.intake.problem() or ""), timeout=20)
        assert adapter.adapter.intake.problem() == (
            "intake cannot record files: OperationalError: (sqlite3.OperationalError) "
            "database is locked"
        )
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    adapter.adapter.reconciler.tick()  # the file waits for reconcile, as the log said
    wait_for(lambda: adapter.rows(), timeout=20)
    wait_for(lambda: adapter.adapter.intake.problem() is None, timeout=20)
