"""``dicom-adapter ledger check``: compare spool and ledger while the service is stopped.

The service reconciles on every start, but an operator who finds the adapter
stopped (after a crash, a full disk, a restore from backup) wants to know
where things stand before starting it, and to fix what can be fixed without
also accepting new associations.  :func:`check` reports, and changes nothing;
:func:`repair` runs the very recovery the service runs at start (the same
objects, not a copy of their rules), then checks again.  Both refuse while
the service runs: its watcher, intake and scheduler move files and rows
underneath any scan, so a report would be stale and a repair would race it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from config import Config
from errors import AdapterError
from health import listening
from ledger import delivery
from ledger.db import make_engine
from ledger.migrate import require_head, upgrade
from ledger.models import utcnow
from ledger.processing import Processing
from ledger.records import InstanceRecord, TaskRecord
from ledger.states import State, TaskKind, TaskState
from ledger.store import Ledger, chunked
from ledger.tasks import Tasks
from ledger.wording import plural
from processors.command import kill_leftovers
from spool.layout import SpoolLayout
from watchers.intake import Intake
from watchers.reconcile import Reconciler


@dataclass(frozen=True)
class Finding:
    """One disagreement or stuck state.

    ``kind`` is a stable word (``orphan``, ``missing``, ``temporary``,
    ``lost``, ``stuck-claim``, ``interrupted-job``, ``interrupted-export``,
    ``failed-job``, ``failed-export``) for scripts; ``detail`` is one line
    for a human, naming the path or the row and its state.  ``lost`` is the
    one that must never appear: an acknowledged instance whose file is gone
    though no destination confirmed it (:mod:`ledger.delivery`).
    """

    kind: str
    detail: str


@dataclass(frozen=True)
class Report:
    """What a check found, and whether a repair ran before it."""

    findings: tuple[Finding, ...]
    repaired: bool

    @property
    def ok(self) -> bool:
        """True when spool and ledger agree and nothing is stuck or failed."""
        return not self.findings


def check(config: Config) -> Report:
    """Report every disagreement between spool and ledger, changing nothing.

    Like every command, opening a SQLite ledger that does not exist yet
    creates an empty file (and its folder); that is all it writes.

    Raises
    ------
    AdapterError
        If the adapter is running, or the ledger has no schema (or an old
        one): the queries need the newest tables, and creating them is a
        change a read-only check must not make.
    """
    refuse_while_running(config)
    with _open_ledger(config) as ledger:
        require_head(ledger.engine)
        findings = _spool_findings(SpoolLayout(config.storage.spool, config.node.name), ledger)
        findings += _lost_findings(ledger)
        findings += _task_findings(Tasks(ledger), config.node.name)
    return Report(tuple(findings), repaired=False)


def repair(config: Config) -> Report:
    """Apply the start-up recovery of the service, then check again.

    The ledger is brought to the newest schema first, as ``run`` does.
    Failed jobs and exports remain findings: retrying them is a human's
    decision (``tasks retry``).

    Raises
    ------
    AdapterError
        If the adapter is running.
    """
    refuse_while_running(config)
    with _open_ledger(config) as ledger:
        upgrade(ledger.engine)
        _recover(config, ledger)
    return replace(check(config), repaired=True)


class ServiceRunning(AdapterError):
    """The service runs: a check would race it, a repair would fight it."""


def refuse_while_running(config: Config) -> None:
    """Raise if a DICOM port listens: the service would race every scan and fix."""
    for port in config.dicom.ports:  # the plain one, the TLS one, or both
        if listening(port):
            raise ServiceRunning(f"the adapter is running (port {port} listens): stop it first")


@contextmanager
def _open_ledger(config: Config) -> Iterator[Ledger]:
    """The config's ledger, its engine disposed afterwards so no file stays open."""
    engine = make_engine(config.ledger.url)
    try:
        yield Ledger(engine)
    finally:
        engine.dispose()


def _recover(config: Config, ledger: Ledger) -> None:
    """What ``Adapter.start`` does before it listens, in the same order.

    Intake runs synchronously inside the reconcile, so every orphan is
    recorded (or quarantined) by the time this returns.
    """
    layout = SpoolLayout(config.storage.spool, config.node.name)
    layout.ensure(config.aes)
    intake = Intake(
        layout,
        ledger,
        {name: ae.duplicates for name, ae in config.aes.items()},
        group_by={name: ae.group_by for name, ae in config.aes.items()},
    )
    # With startup=True every temporary file goes, whatever its age.
    reconciler = Reconciler(
        layout, ledger, intake.process, config.watcher.settle_seconds, stale_tmp_seconds=0.0
    )
    while reconciler.tick(startup=True).more:
        pass  # intake ran inside each pass: the next one finds the files after these
    kill_leftovers(config.storage.jobs)
    Tasks(ledger).recover(config.node.name)
    Tasks(ledger).requeue_lapsed()  # a dead node's, as any live node's runner would
    Processing(ledger).release_orphan_claims()


def _spool_findings(layout: SpoolLayout, ledger: Ledger) -> list[Finding]:
    """Temporary files, files with no row, rows with no file, claims with no job."""
    findings = [
        Finding("temporary", f"{path}: temporary file, never acknowledged")
        for path in _temporary_files(layout)
    ]
    for chunk in chunked(sorted(layout.candidate_paths())):
        recorded = ledger.recorded(chunk)
        findings += [
            Finding("orphan", f"{path}: in the spool, not in the ledger")
            for path in chunk
            if str(path) not in recorded
        ]
    # A row already flagged missing is known to the ledger: reconcile has
    # nothing left to do for it, so only unflagged rows disagree.
    findings += [
        Finding("missing", f"instance {instance_id}: {path} is gone")
        for path, instance_id, flagged in sorted(ledger.live_files())
        if not flagged and not os.path.lexists(path)
    ]
    return findings + _claim_findings(ledger)


def _lost_findings(ledger: Ledger) -> list[Finding]:
    """Instances gone from disk without having been handed over or delivered."""
    findings = [
        Finding("lost", f"instance {instance_id}: reclaimed, but its job did not succeed")
        for instance_id in delivery.reclaimed_without_a_finished_job(ledger)
    ]
    owed = delivery.forwarded_not_delivered(ledger) + delivery.owned_not_delivered(ledger)
    seen: set[tuple[int | None, int | None, str | None]] = set()
    for item in owed:
        if (item.instance_id, item.export_id, item.path) in seen:
            continue
        seen.add((item.instance_id, item.export_id, item.path))
        if item.path is not None and os.path.lexists(item.path):
            continue  # undelivered, but kept: a failed-export finding covers it
        subject = "a file" if item.instance_id is None else f"instance {item.instance_id}"
        carrier = "no file" if item.path is None else f"{item.path} is gone"
        findings.append(
            Finding(
                "lost",
                f"{subject}: not delivered to {item.destination} (export {item.export_id}), "
                f"and {carrier}",
            )
        )
    return findings


def _temporary_files(layout: SpoolLayout) -> list[Path]:
    """What this node's start-up reconcile would delete (it leaves folders)."""
    found = []
    for folder in layout.tmp_folders():
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        found += [Path(e.path) for e in entries if not e.is_dir(follow_symlinks=False)]
    return sorted(found)


def _claim_findings(ledger: Ledger) -> list[Finding]:
    """Claimed instances whose job does not exist: the claim can never finish."""
    jobs = {job.id for job in Tasks(ledger).listing(TaskKind.PROCESS)}
    return [
        _stuck_claim(record)
        for record in ledger.instances(state=State.CLAIMED)
        if record.job_id not in jobs
    ]


def _stuck_claim(record: InstanceRecord) -> Finding:
    """Say which job is absent: none recorded, or one whose row is gone."""
    holder = "no job" if record.job_id is None else f"job {record.job_id}, which does not exist"
    return Finding("stuck-claim", f"instance {record.id}: claimed by {holder}: {record.path}")


def _task_findings(tasks: Tasks, node: str) -> list[Finding]:
    """Tasks marked running that nothing runs (this node's: it is stopped; another
    node's whose lease lapsed), and tasks that need a human.  Another node's task
    under a live lease is that node's work, not a finding."""
    now = utcnow()
    findings = []
    for task in tasks.listing(state=TaskState.RUNNING):
        where = f"{_what(task)}, attempt {task.attempts}"
        if task.node in (None, node):
            detail = f"{_named(task)}: running ({where})"
        elif task.lease_until is not None and task.lease_until < now:
            lapsed = f"{task.lease_until:%Y-%m-%d %H:%M:%S}"
            detail = f"{_named(task)}: running on node {task.node}, lease lapsed {lapsed} ({where})"
        else:
            continue
        findings.append(Finding(f"interrupted-{task.noun}", detail))
    return findings + [
        Finding(
            f"failed-{task.noun}",
            f"{_named(task)}: failed after {plural(task.attempts, 'attempt')} "
            f"({_what(task)}): {_first_line(task.last_error)} "
            f"(dicom-adapter tasks retry {task.id})",
        )
        for task in tasks.listing(state=TaskState.FAILED)
    ]


def _named(task: TaskRecord) -> str:
    return f"{task.noun} {task.id}"


def _what(task: TaskRecord) -> str:
    if task.kind == TaskKind.PROCESS:
        return f"AE {task.target}, group {task.group_key}"
    return f"{plural(task.item_count, 'file')} to {task.target}"


def _first_line(error: str | None) -> str:
    """A stored error can be a command's whole stderr tail; a finding is one line."""
    return next(iter((error or "").splitlines()), "no error recorded")
