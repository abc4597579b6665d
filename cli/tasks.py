"""``dicom-adapter jobs`` and ``dicom-adapter exports``: list, retry and discard.

Moved unchanged from the single-file CLI: both groups are to become one
task model, and this module is to be replaced by it whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import NoResultFound

from cli.common import config_option, iso, open_processing
from errors import IllegalTransition
from ledger.exports import Exports
from ledger.records import ExportRecord, JobRecord
from ledger.states import ExportState, FileState, JobState
from ledger.wording import plural


@click.group(invoke_without_command=True)
@config_option
@click.option("--state", type=click.Choice([str(s) for s in JobState]), help="Only this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def jobs(ctx: click.Context, config_path: Path | None, state: str | None, as_json: bool) -> None:
    """List processing jobs, oldest first.

    \b
    Example:
      dicom-adapter jobs --state failed
    """
    if ctx.invoked_subcommand is not None:
        return
    processing, engine = open_processing(config_path)
    listed = processing.jobs(JobState(state) if state else None)
    engine.dispose()
    if as_json:
        click.echo(json.dumps([_record_json(job) for job in listed], indent=2))
        return
    click.echo(
        f"{'ID':>6}  {'STATE':<9}  {'AE':<16}  {'INSTANCES':>9}  {'ATTEMPTS':>8}  "
        "GROUP / LAST ERROR"
    )
    for job in listed:
        error = f"  {job.last_error.splitlines()[0][:80]}" if job.last_error else ""
        click.echo(
            f"{job.id:>6}  {job.state:<9}  {job.called_ae:<16}  "
            f"{job.instance_count:>9}  {job.attempts:>8}  {job.group_key}{error}"
        )


def _record_json(record: JobRecord | ExportRecord) -> dict[str, Any]:
    document = asdict(record)
    for name, value in document.items():
        if isinstance(value, datetime):
            document[name] = iso(value)
    return document


@jobs.command("retry")
@click.argument("job_id", type=int)
@config_option
def jobs_retry(job_id: int, config_path: Path | None) -> None:
    """Put a failed job back in the queue, with a fresh set of retries.

    \b
    Example:
      dicom-adapter jobs retry 42
    """
    processing, engine = open_processing(config_path)
    try:
        job = processing.retry(job_id)
    except NoResultFound:
        raise click.ClickException(f"no job {job_id}") from None
    except IllegalTransition as exc:
        raise click.ClickException(f"job {job_id}: {exc}") from None
    finally:
        engine.dispose()
    click.echo(f"job {job.id} is pending again ({plural(job.instance_count, 'instance')})")


@jobs.command("discard")
@click.argument("job_id", type=int)
@click.option(
    "--delete-files",
    is_flag=True,
    help="Also let the reclaimer delete its instances' spool files (default: keep them).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
def jobs_discard(job_id: int, delete_files: bool, yes: bool, config_path: Path | None) -> None:
    """Close a failed job: it is never submitted again, and no longer unhealthy.

    Its instances stay in the spool, claimed by the discarded job, unless
    --delete-files is given (also later, on a job already discarded): then
    the service's next reclaim pass deletes their files.  The decision is
    an event in job_events, and instance_events with --delete-files.

    \b
    Example:
      dicom-adapter jobs discard 42 --yes
    """
    processing, engine = open_processing(config_path)
    try:
        try:
            job = processing.job(job_id)
        except ValueError:
            raise click.ClickException(f"no job {job_id}") from None
        fate = "deleted by the reclaimer" if delete_files else "kept in the spool"
        if job.state == JobState.FAILED and not yes:
            click.confirm(
                f"Discard job {job_id} of {job.called_ae}: "
                f"{plural(job.instance_count, 'instance')} will not be processed "
                f"(their files {fate})?",
                abort=True,
            )
        given_up = processing.discard(
            job_id, delete_files, f"dicom-adapter jobs discard (files {fate})"
        )
    except IllegalTransition as exc:
        raise click.ClickException(f"job {job_id}: {exc}") from None
    finally:
        engine.dispose()
    click.echo(f"job {job_id} discarded ({plural(given_up, 'instance')}, files {fate})")



@click.group(invoke_without_command=True)
@config_option
@click.option("--state", type=click.Choice([str(s) for s in ExportState]), help="Only this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def exports(ctx: click.Context, config_path: Path | None, state: str | None, as_json: bool) -> None:
    """List export tasks, oldest first.

    \b
    Example:
      dicom-adapter exports --state failed
    """
    if ctx.invoked_subcommand is not None:
        return
    processing, engine = open_processing(config_path)
    listed = Exports(processing.ledger).tasks(ExportState(state) if state else None)
    engine.dispose()
    if as_json:
        click.echo(json.dumps([_record_json(task) for task in listed], indent=2))
        return
    click.echo(
        f"{'ID':>6}  {'STATE':<9}  {'DESTINATION':<16}  {'FILES':>6}  {'FAILED':>6}  "
        f"{'ATTEMPTS':>8}  LAST ERROR"
    )
    for task in listed:
        error = task.last_error.splitlines()[0][:80] if task.last_error else ""
        click.echo(
            f"{task.id:>6}  {task.state:<9}  {task.destination:<16}  "
            f"{task.file_count:>6}  {task.failed_count:>6}  {task.attempts:>8}  {error}"
        )


@exports.command("retry")
@click.argument("export_id", type=int)
@config_option
def exports_retry(export_id: int, config_path: Path | None) -> None:
    """Queue a failed export again, with a fresh set of retries.

    \b
    Example:
      dicom-adapter exports retry 12
    """
    processing, engine = open_processing(config_path)
    try:
        task = Exports(processing.ledger).retry(export_id)
    except NoResultFound:
        raise click.ClickException(f"no export {export_id}") from None
    except IllegalTransition as exc:
        raise click.ClickException(f"export {export_id}: {exc}") from None
    finally:
        engine.dispose()
    click.echo(f"export {task.id} is pending again ({plural(task.file_count, 'file')})")


@exports.command("discard")
@click.argument("export_id", type=int)
@click.option(
    "--delete-files",
    is_flag=True,
    help="Also delete its undelivered outbox and forward files (default: keep them).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
def exports_discard(
    export_id: int, delete_files: bool, yes: bool, config_path: Path | None
) -> None:
    """Close a failed export: its undelivered files are given up, and no longer unhealthy.

    The files stay where they are unless --delete-files is given (files
    named on a 'send' command line are never deleted); the decision is an
    event in export_events.

    \b
    Example:
      dicom-adapter exports discard 12 --yes
    """
    processing, engine = open_processing(config_path)
    exports = Exports(processing.ledger)
    try:
        try:
            task = exports.get(export_id)
        except ValueError:
            raise click.ClickException(f"no export {export_id}") from None
        undelivered = exports.files(export_id, FileState.FAILED)
        fate = "deleted" if delete_files else "kept on disk"
        if task.state == ExportState.FAILED and not yes:
            click.confirm(
                f"Discard export {export_id} to {task.destination}: "
                f"{plural(len(undelivered), 'undelivered file')} will not be sent "
                f"(their files {fate})?",
                abort=True,
            )
        task = exports.discard(export_id, f"dicom-adapter exports discard (files {fate})")
        if delete_files:
            deleted = _delete_discarded(exports, export_id)
            click.echo(f"deleted {plural(deleted, 'file')}")
    except IllegalTransition as exc:
        raise click.ClickException(f"export {export_id}: {exc}") from None
    finally:
        engine.dispose()
    click.echo(f"export {task.id} discarded ({plural(len(undelivered), 'undelivered file')})")


def _delete_discarded(exports: Exports, export_id: int) -> int:
    """Delete a discarded task's owned, undelivered files, inside their staging folders only."""
    from processors.export_reclaimer import delete_staged
    from processors.outbox import STAGING

    deleted = []
    for file in exports.owned_files([FileState.DISCARDED], export_id):
        path = Path(file.path)
        root = next((p for p in path.parents if p.name == STAGING), None)
        if root is None:
            click.echo(f"kept {path}: not in an outbox's {STAGING}/ folder", err=True)
            continue
        if delete_staged(path, root):
            deleted.append(file.id)
    if deleted:
        exports.mark_reclaimed(deleted, "its undelivered files were deleted (exports discard)")
    return len(deleted)

