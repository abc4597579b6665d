"""``ledger check`` (fsck) on a stopped adapter's real spool and ledger (SQLite, PostgreSQL).

Each problem is made the way it happens: files received over DICOM by an
in-process adapter that is then stopped, and afterwards a file copied in by
hand, a file deleted, a leftover in ``.tmp/``, a job and an export left
mid-flight in the ledger.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from pydicom.uid import generate_uid
from sqlalchemy import update

import fsck
from config import Config, load_config
from errors import AdapterError
from exporters.files import spec_for
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import MIGRATIONS, head_revision
from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import InstanceRecord, ItemOutcome
from ledger.states import State, TaskKind, TaskState
from ledger.store import Ledger
from ledger.tasks import TASKS, Tasks
from tests.conftest import (
    AdapterProcess,
    RunningAdapter,
    new_instance,
    wait_for,
    write_config,
)
from tests.dicom import make_study
from tests.peers.send import send_files
from tests.test_command_leftovers import alive

AE = "DICOMADAPTER"
DESTINATION = "PACS"
OUT_OF_RESOURCES = 0xA700  # what a full peer answers a C-STORE


@pytest.fixture
def config_path(tmp_path: Path, port: int, ledger_url: str) -> Path:
    """Every check on both ledgers: SQLite, and PostgreSQL as nodes share it."""
    return write_config(tmp_path, port, ledger=ledger_url)


def received_then_stopped(
    start_adapter: Callable[[Path], RunningAdapter], config_path: Path, files: list[Path]
) -> RunningAdapter:
    """Send ``files`` to a real adapter, wait until recorded, stop it: what fsck meets."""
    running = start_adapter(config_path)
    statuses = send_files("127.0.0.1", running.port, files, called_ae=AE)
    assert [status for _, status in statuses] == [0] * len(files)
    running.wait_rows(len(files), "received")
    running.adapter.stop()
    return running


def rows_of(running: RunningAdapter, study_uid: str) -> list[InstanceRecord]:
    return [row for row in running.rows() if row.study_instance_uid == study_uid]


def by_kind(report: fsck.Report) -> dict[str, str]:
    """kind -> detail; the tests make at most one finding of each kind."""
    details = {finding.kind: finding.detail for finding in report.findings}
    assert len(details) == len(report.findings)
    return details


def test_a_clean_spool_is_ok(start_adapter, config_path: Path, tmp_path: Path) -> None:
    running = received_then_stopped(start_adapter, config_path, make_study(tmp_path / "s", 3))
    report = fsck.check(running.config)
    assert report == fsck.Report(findings=(), repaired=False)
    assert report.ok


def test_files_reconcile_leaves_alone_are_no_orphans(config_path: Path, tmp_path: Path) -> None:
    """Outside AE folders, in dot folders, behind a symlinked folder: reconcile's rule."""
    config = load_config(config_path)
    assert fsck.repair(config).ok  # the schema and the spool's folders
    [original] = make_study(tmp_path / "s", 1)
    spool = config.storage.spool
    for target in (
        spool / "loose.dcm",
        spool / AE / ".hidden" / "x.dcm",
        spool / "quarantine" / "x.dcm",
    ):
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(original, target)
    (spool / AE / "linked").symlink_to(original.parent, target_is_directory=True)
    assert fsck.check(config).ok
    assert fsck.repair(config).ok
    engine = make_engine(config.ledger.url)
    assert Ledger(engine).instances() == []
    engine.dispose()


def test_check_reports_each_problem_and_repair_fixes_it(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    running_uid, claimed_uid, kept_uid = generate_uid(), generate_uid(), generate_uid()
    running = received_then_stopped(
        start_adapter,
        config_path,
        make_study(tmp_path / "a", 2, study_uid=running_uid)
        + make_study(tmp_path / "b", 1, study_uid=claimed_uid)
        + make_study(tmp_path / "c", 2, study_uid=kept_uid),
    )
    config, ledger = running.config, running.ledger
    processing, exports = Processing(ledger), Exports(ledger)
    # A job and an export the service was in the middle of when it stopped.
    job = processing.claim_group(AE, running_uid, "command", "quiet for 5s")
    assert job is not None
    Tasks(processing.ledger).start(job.id)
    [sent] = make_study(tmp_path / "out", 1)
    export_id = exports.create(DESTINATION, "send", [spec_for(sent, owned=False)])
    Tasks(exports.ledger).start(export_id)
    # A claim whose job never made it into the ledger.
    [stuck] = rows_of(running, claimed_uid)
    with ledger.transaction() as tx:
        tx.move(stuck.id, State.CLAIMED, "claimed by a job that was never written")
    # The spool, changed by hand while stopped.
    gone = rows_of(running, kept_uid)[0]
    Path(gone.path).unlink()
    [extra] = make_study(tmp_path / "extra", 1)
    orphan = config.storage.spool / AE / "offline" / "extra.dcm"
    orphan.parent.mkdir()
    shutil.copyfile(extra, orphan)
    temporary = config.storage.spool / ".tmp" / "0f0f.part"
    temporary.write_bytes(b"half an instance")
    events = ledger.event_count()

    report = fsck.check(config)

    found = by_kind(report)
    assert sorted(found) == [
        "interrupted-export",
        "interrupted-job",
        "missing",
        "orphan",
        "stuck-claim",
        "temporary",
    ]
    assert not report.ok and not report.repaired
    assert str(temporary) in found["temporary"]
    assert str(orphan) in found["orphan"]
    assert f"instance {gone.id}:" in found["missing"] and gone.path in found["missing"]
    assert f"instance {stuck.id}:" in found["stuck-claim"]
    assert found["interrupted-job"].startswith(f"job {job.id}: running")
    assert found["interrupted-export"].startswith(f"export {export_id}: running")
    # Read-only: nothing moved, nothing deleted, no history written.
    assert temporary.exists() and ledger.event_count() == events
    assert Tasks(processing.ledger).get(job.id).state == TaskState.RUNNING

    assert fsck.repair(config) == fsck.Report(findings=(), repaired=True)

    assert not temporary.exists()
    [adopted] = [row for row in running.rows() if row.path == str(orphan)]
    assert adopted.state == State.RECEIVED
    assert ledger.get(gone.id).missing_since is not None
    assert ledger.get(stuck.id).state == State.RECEIVED
    assert Tasks(processing.ledger).get(job.id).state == TaskState.PENDING
    assert Tasks(exports.ledger).get(export_id).state == TaskState.PENDING
    assert fsck.check(config).ok


def test_failed_jobs_and_exports_are_reported_and_left_for_a_human(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    files = make_study(tmp_path / "s", 2, study_uid=study_uid)
    running = received_then_stopped(start_adapter, config_path, files)
    processing, exports = Processing(running.ledger), Exports(running.ledger)
    job = processing.claim_group(AE, study_uid, "command", "quiet for 5s")
    assert job is not None
    Tasks(processing.ledger).start(job.id)
    processing.settle(job.id, "exit status 3\nTraceback (most recent call last):", None)
    export_id = exports.create(DESTINATION, "send", [spec_for(files[0], owned=False)])
    Tasks(exports.ledger).start(export_id)
    [file] = exports.items(export_id)
    outcome = ItemOutcome(file.id, OUT_OF_RESOURCES, "0xA700: out of resources", retry=True)
    exports.settle(export_id, [outcome], None)

    report = fsck.check(running.config)

    found = by_kind(report)
    assert sorted(found) == ["failed-export", "failed-job"]
    assert "exit status 3" in found["failed-job"] and "Traceback" not in found["failed-job"]
    assert f"dicom-adapter tasks retry {job.id}" in found["failed-job"]
    assert f"dicom-adapter tasks retry {export_id}" in found["failed-export"]
    repaired = fsck.repair(running.config)
    assert repaired == fsck.Report(findings=report.findings, repaired=True)
    assert Tasks(processing.ledger).get(job.id).state == TaskState.FAILED
    assert Tasks(exports.ledger).get(export_id).state == TaskState.FAILED


def test_repair_kills_the_command_a_killed_adapter_left_running(
    adapter_process: AdapterProcess, config_path: Path, port: int, tmp_path: Path, ledger_url: str
) -> None:
    """SIGKILL mid-job: the job stays ``running`` and its command (own session) lives on."""
    sleeper = shlex.join([sys.executable, "-c", "import time; time.sleep(60)"])
    keys = f"processor = command\ncommand = {sleeper}\ntimeout = 0.2\n"
    write_config(tmp_path, port, keys, ledger=ledger_url)
    config = load_config(config_path)
    adapter_process.start()
    # One instance: its row exists before its job can; with more, one acknowledged
    # but not yet recorded at the kill would rightly be an orphan too.
    statuses = send_files("127.0.0.1", port, make_study(tmp_path / "s", 1), called_ae=AE)
    assert [status for _, status in statuses] == [0]
    pid_files = config.storage.jobs
    wait_for(lambda: any(p.read_text().endswith("\n") for p in pid_files.glob("*.pid")))
    [pid_file] = pid_files.glob("*.pid")
    pid = int(pid_file.read_text().split()[0])
    adapter_process.kill()
    assert alive(pid)

    report = fsck.check(config)

    assert [finding.kind for finding in report.findings] == ["interrupted-job"]
    assert fsck.repair(config).ok
    wait_for(lambda: not alive(pid))
    assert not pid_file.exists()
    engine = make_engine(config.ledger.url)
    assert [job.state for job in Tasks(Ledger(engine)).listing(TaskKind.PROCESS)] == [
        TaskState.PENDING
    ]
    engine.dispose()


def test_check_and_repair_refuse_while_the_adapter_listens(adapter: RunningAdapter) -> None:
    message = re.escape(f"the adapter is running (port {adapter.port} listens): stop it first")
    with pytest.raises(AdapterError, match=message):
        fsck.check(adapter.config)
    with pytest.raises(AdapterError, match=message):
        fsck.repair(adapter.config)


def test_check_needs_a_schema_and_repair_creates_it(config_path: Path) -> None:
    config = load_config(config_path)
    with pytest.raises(AdapterError, match="has no schema yet: run 'dicom-adapter db upgrade'"):
        fsck.check(config)
    assert fsck.repair(config) == fsck.Report(findings=(), repaired=True)
    assert (config.storage.spool / AE).is_dir()
    assert fsck.check(config).ok


def test_check_refuses_an_old_schema(config_path: Path) -> None:
    config = load_config(config_path)
    upgrade_to(config, "0002")
    expected = (
        f"is at revision 0002, this version needs {head_revision()}: run 'dicom-adapter db upgrade'"
    )
    with pytest.raises(AdapterError, match=re.escape(expected)):
        fsck.check(config)
    assert fsck.repair(config).ok


def upgrade_to(config: Config, revision: str) -> None:
    """A ledger left at an older revision, as by an adapter that predates the newest."""
    engine = make_engine(config.ledger.url)
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, revision)
        connection.commit()
    engine.dispose()


def test_cli_ledger_check_and_repair(start_adapter, config_path: Path, tmp_path: Path) -> None:
    from tests.test_cli import cli

    running = start_adapter(config_path)
    running.adapter.stop()
    stray = running.spool / "DICOMADAPTER" / "stray.dcm"
    stray.write_bytes(make_study(tmp_path / "s", 1)[0].read_bytes())
    found = cli("ledger", "check", "--config", str(config_path))
    assert found.returncode == 1
    assert found.stdout == f"orphan: {stray}: in the spool, not in the ledger\n1 finding\n"
    fixed = cli("ledger", "check", "--repair", "--config", str(config_path))
    assert (fixed.returncode, fixed.stdout) == (0, "repaired; ledger and spool agree\n")


def test_an_acknowledged_instance_gone_without_delivery_is_lost(
    start_adapter, config_path: Path, tmp_path: Path
) -> None:
    """The invariant: a forwarded instance whose spool copy was reclaimed lives on in
    its outbox link until the destination confirms it.  If that link goes too
    (as the seed's reclaimer did to refused files), ``ledger check`` says
    ``lost``; a delivered one, or one whose link is still there, is not."""
    from processors.forward import ForwardSubmitter
    from processors.jobdir import prepare
    from reclaim.spool_files import Reclaimer
    from spool.layout import SpoolLayout

    study_uid = generate_uid()
    files = make_study(tmp_path / "s", 3, study_uid=study_uid)
    running = received_then_stopped(start_adapter, config_path, files)
    processing, exports = Processing(running.ledger), Exports(running.ledger)
    job = processing.claim_group(AE, study_uid, "forward", "quiet for 5s")
    assert job is not None
    job = Tasks(processing.ledger).start(job.id)
    instances = processing.job_instances(job.id)
    submission = prepare(tmp_path / "jobs", job, instances, 0x0020000D)
    ForwardSubmitter(exports, {DESTINATION: tmp_path / "outbox"}).submit(submission)
    processing.settle(job.id, None, None)
    layout = SpoolLayout(running.config.storage.spool)
    Reclaimer(processing, layout, tmp_path / "jobs", {AE: 0}).tick()
    assert {row.state for row in running.rows()} == {State.RECLAIMED}
    assert fsck.check(running.config).ok, "the links carry the instances"

    [task] = Tasks(exports.ledger).listing(TaskKind.EXPORT)
    delivered, refused, vanished = exports.items(task.id)
    Tasks(exports.ledger).start(task.id)
    exports.settle(
        task.id,
        [
            ItemOutcome(delivered.id, 0, None),
            ItemOutcome(refused.id, 0xC000, "destination answered 0xC000"),
            ItemOutcome(vanished.id, 0xA700, "destination answered 0xA700", retry=True),
        ],
        None,
    )
    Path(delivered.path).unlink()  # delivered: its link may go
    Path(vanished.path).unlink()  # not delivered: its link was the last copy
    report = fsck.check(running.config)
    lost = [f.detail for f in report.findings if f.kind == "lost"]
    assert lost == [
        f"instance {vanished.instance_id}: not delivered to {DESTINATION} "
        f"(export {task.id}), and {vanished.path} is gone"
    ]
    assert {f.kind for f in report.findings} == {"lost", "failed-export"}


def test_another_nodes_task_is_a_finding_only_once_its_lease_lapsed(config_path: Path) -> None:
    """On a shared ledger: a live node's running job is its work; a dead node's is repaired."""
    config = load_config(config_path)
    assert fsck.repair(config).ok
    engine = make_engine(config.ledger.url)
    ledger = Ledger(engine)
    processing, tasks = Processing(ledger), Tasks(ledger)
    with ledger.transaction() as tx:
        for n in (1, 2):
            path = str(config.storage.spool / "elsewhere" / f"{n}.dcm")
            tx.add(new_instance(path, AE, f"1.{n}", f"9.{n}"), "received")
    jobs = [processing.claim_group(AE, f"9.{n}", "command", "quiet") for n in (1, 2)]
    live, dead = (tasks.start(job.id, node="edge-live", lease_seconds=600) for job in jobs)
    with ledger.transaction() as tx:  # edge-dead was killed a minute ago
        lapsed = utcnow() - timedelta(seconds=60)
        tx.connection.execute(
            update(TASKS).where(TASKS.c.id == dead.id).values(node="edge-dead", lease_until=lapsed)
        )
    findings = [f for f in fsck.check(config).findings if f.kind.startswith("interrupted")]
    assert [f.detail for f in findings] == [
        f"job {dead.id}: running on node edge-dead, lease lapsed {lapsed:%Y-%m-%d %H:%M:%S} "
        f"(AE {AE}, group 9.2, attempt 1)"
    ]
    fsck.repair(config)
    assert [tasks.get(job.id).state for job in (live, dead)] == ["running", "pending"]
    engine.dispose()
