"""``dicom-adapter tasks`` (and ``jobs``, ``exports``): list, retry and discard outbound work.

Jobs and exports are one task queue (:mod:`ledger.tasks`), so one group of
commands serves both; ``jobs`` and ``exports`` are the same commands
limited to one kind, the names earlier versions had.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from cli.common import config_option, iso, open_ledger
from errors import IllegalTransition
from ledger.exports import Exports
from ledger.processing import Processing
from ledger.records import TaskRecord
from ledger.states import ItemState, TaskKind, TaskState
from ledger.tasks import NOUNS, Tasks
from ledger.wording import plural


def _task_group(name: str, kind: TaskKind | None, help_text: str) -> click.Group:
    """One command group over the one task queue: ``tasks``, or ``jobs`` and ``exports``
    (the same commands, of one kind: what earlier versions had)."""

    @click.group(
        name,
        invoke_without_command=True,
        help=f"{help_text}\n\n\b\nExample:\n  dicom-adapter {name} --state failed",
    )
    @config_option
    @click.option(
        "--state", type=click.Choice([str(s) for s in TaskState]), help="Only this state."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @click.pass_context
    def group(
        ctx: click.Context, config_path: Path | None, state: str | None, as_json: bool
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        tasks, engine = _open_tasks(config_path)
        listed = tasks.listing(kind, TaskState(state) if state else None)
        engine.dispose()
        if as_json:
            click.echo(json.dumps([_record_json(task) for task in listed], indent=2))
            return
        click.echo(_task_lines(listed))

    @group.command("retry")
    @click.argument("task_id", type=int)
    @config_option
    def retry(task_id: int, config_path: Path | None) -> None:
        """Put a failed job or export back in the queue, with a fresh set of retries."""
        tasks, engine = _open_tasks(config_path)
        try:
            task = _task_of(tasks, task_id, kind)
            task = tasks.retry(task.id)
        except IllegalTransition as exc:
            raise click.ClickException(f"{task.noun} {task_id}: {exc}") from None
        finally:
            engine.dispose()
        click.echo(f"{task.noun} {task.id} is pending again ({_items(task, task.item_count)})")

    @group.command("discard")
    @click.argument("task_id", type=int)
    @click.option(
        "--delete-files",
        is_flag=True,
        help="Also let its files go: a job's spool files, an export's outbox and forward "
        "copies (default: keep them).",
    )
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @config_option
    def discard(task_id: int, delete_files: bool, yes: bool, config_path: Path | None) -> None:
        """Close a failed job or export: never tried again, and no longer unhealthy.

        Its files stay where they are unless --delete-files is given (also
        later, on a task already discarded): a job's instances then go to the
        reclaimer; an export's undelivered outbox and forward copies are
        deleted (files named on a 'send' command line never are).  The
        decision is an event in task_events.
        """
        tasks, engine = _open_tasks(config_path)
        try:
            _discard(tasks, _task_of(tasks, task_id, kind), delete_files, yes)
        finally:
            engine.dispose()

    retry.help = (retry.help or "") + f"\n\n\b\nExample:\n  dicom-adapter {name} retry 42"
    discard.help = (
        discard.help or ""
    ) + f"\n\n\b\nExample:\n  dicom-adapter {name} discard 42 --yes"
    return group


def _open_tasks(config_path: Path | None) -> tuple[Tasks, Any]:
    ledger, engine = open_ledger(config_path)
    return Tasks(ledger), engine


def _task_of(tasks: Tasks, task_id: int, kind: TaskKind | None) -> TaskRecord:
    """The task, if it is of the group's kind; one error line otherwise."""
    noun = "task" if kind is None else NOUNS[kind]
    try:
        task = tasks.get(task_id)
    except LookupError:
        raise click.ClickException(f"no {noun} {task_id}") from None
    if kind is not None and task.kind != kind:
        raise click.ClickException(f"no {noun} {task_id} (task {task_id} is an {task.noun})")
    return task


def _items(task: TaskRecord, count: int, adjective: str = "") -> str:
    what = "instance" if task.kind == TaskKind.PROCESS else "file"
    return plural(count, f"{adjective} {what}".strip())


def _task_lines(listed: list[TaskRecord]) -> str:
    lines = [
        f"{'ID':>6}  {'KIND':<6}  {'STATE':<9}  {'TARGET':<16}  {'ITEMS':>6}  "
        f"{'FAILED':>6}  {'ATTEMPTS':>8}  GROUP / LAST ERROR"
    ]
    for task in listed:
        error = f"  {task.last_error.splitlines()[0][:80]}" if task.last_error else ""
        lines.append(
            f"{task.id:>6}  {task.noun:<6}  {task.state:<9}  {task.target:<16}  "
            f"{task.item_count:>6}  {task.failed_count:>6}  {task.attempts:>8}  "
            f"{task.group_key or ''}{error}".rstrip()
        )
    return "\n".join(lines)


# The keys earlier versions' ``jobs --json`` and ``exports --json`` printed, kept beside
# the task's own so scripts reading them go on working (as the ledger's views do in SQL).
LEGACY_KEYS = {
    TaskKind.PROCESS: {
        "processor": "submitter",
        "called_ae": "target",
        "instance_count": "item_count",
    },
    TaskKind.EXPORT: {"destination": "target", "job_id": "parent_id", "file_count": "item_count"},
}


def _record_json(record: TaskRecord) -> dict[str, Any]:
    document = {"noun": record.noun, **asdict(record)}
    for name, value in document.items():
        if isinstance(value, datetime):
            document[name] = iso(value)
    for legacy, key in LEGACY_KEYS[TaskKind(record.kind)].items():
        document[legacy] = document[key]
    return document


# What becomes of a discarded task's files: (kept, with --delete-files), by kind.
FATES = {
    TaskKind.PROCESS: ("kept in the spool", "deleted by the reclaimer"),
    TaskKind.EXPORT: ("kept on disk", "deleted"),
}


def _discard(tasks: Tasks, task: TaskRecord, delete_files: bool, yes: bool) -> None:
    exports = Exports(tasks.ledger)
    export = task.kind == TaskKind.EXPORT
    given_up = len(exports.items(task.id, ItemState.FAILED)) if export else task.item_count
    fate = FATES[TaskKind(task.kind)][delete_files]
    if task.state == TaskState.FAILED and not yes:
        click.confirm(
            f"Discard {task.noun} {task.id} {'to' if export else 'of'} {task.target}: "
            f"{_items(task, given_up, 'undelivered')} will not be "
            f"{'sent' if export else 'processed'} (their files {fate})?",
            abort=True,
        )
    command = click.get_current_context().parent.info_name  # tasks, jobs or exports
    reason = f"dicom-adapter {command} discard (files {fate})"
    try:
        if task.state != TaskState.DISCARDED or not delete_files:
            tasks.discard(task.id, reason)
    except IllegalTransition as exc:
        raise click.ClickException(f"{task.noun} {task.id}: {exc}") from None
    if delete_files and not export:
        Processing(tasks.ledger).release_files(task.id, reason)
    elif delete_files:
        click.echo(f"deleted {plural(_delete_discarded(exports, task.id), 'file')}")
    click.echo(
        f"{task.noun} {task.id} discarded ({_items(task, given_up, 'undelivered')}, files {fate})"
    )


def _delete_discarded(exports: Exports, task_id: int) -> int:
    """Delete a discarded export's owned, undelivered files, inside their staging folders only."""
    from exporters.outbox import STAGING
    from reclaim.outbox_files import delete_staged

    deleted = []
    for item in exports.owned_items([ItemState.DISCARDED], task_id):
        path = Path(item.path)
        root = next((p for p in path.parents if p.name == STAGING), None)
        if root is None:
            click.echo(f"kept {path}: not in an outbox's {STAGING}/ folder", err=True)
            continue
        if delete_staged(path, root):
            deleted.append(item.id)
    if deleted:
        exports.mark_reclaimed(deleted, "its undelivered files were deleted (exports discard)")
    return len(deleted)


tasks = _task_group("tasks", None, "List jobs and exports, oldest first.")
jobs = _task_group("jobs", TaskKind.PROCESS, "List processing jobs, oldest first.")
exports = _task_group("exports", TaskKind.EXPORT, "List export tasks, oldest first.")
