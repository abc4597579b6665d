"""The ``dicom-adapter`` command: a thin click layer over the library.

Failures print one ``Error: ...`` line; a broken config exits 2 (so systemd's
``RestartPreventExitStatus=2`` stops a restart loop), other failures exit 1.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import NoResultFound

from adapter import Adapter
from config import Config, default_config_path, load_config
from errors import EXIT_CONFIG, ConfigError, IllegalTransition
from ledger.db import make_engine
from ledger.migrate import current_revision, head_revision, upgrade
from ledger.models import TIME_FORMAT, utcnow
from ledger.processing import Processing
from ledger.records import JobRecord
from ledger.states import JobState
from ledger.store import Ledger
from logs import configure_logging

SIGNAL_POLL_SECONDS = 0.5


def _config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file [default: $DICOM_ADAPTER_CONFIG, then ./config.ini].",
    )(command)


def _load(config_path: Path | None) -> Config:
    try:
        return load_config(config_path or default_config_path())
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """DICOM edge adapter: receive, record, process, export, reclaim.

    \b
    Example:
      dicom-adapter run --config /etc/dicom-adapter/config.ini
    """


@main.command()
@_config_option
def run(config_path: Path | None) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT.

    \b
    Example:
      dicom-adapter run --config config.ini
    """
    config = _load(config_path)
    configure_logging(config.log.level)
    # The handlers only record the signal; the main thread looks every half
    # second, so a signal that arrives while starting up is acted on once
    # started, and one that lands while the main thread waits is never
    # missed.  (Blocking the signals instead would be inherited by every
    # command the adapter runs.)
    received: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, _frame: received.append(n))
    adapter = Adapter(config)
    try:
        adapter.start()
    except OSError as exc:
        adapter.stop()
        raise click.ClickException(f"cannot start: {exc}") from None
    while not received:
        time.sleep(SIGNAL_POLL_SECONDS)
    adapter.stop()
    sys.exit(130 if received[0] == signal.SIGINT else 0)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--studies", default=10, show_default=True, help="How many recent studies to list.")
def status(config_path: Path | None, as_json: bool, studies: int) -> None:
    """Show instance counts by state and the most recent studies.

    \b
    Example:
      dicom-adapter status --json
    """
    config = _load(config_path)
    engine = make_engine(config.ledger.url)
    revision = current_revision(engine)
    if revision is None:
        raise click.ClickException(
            f"ledger {config.ledger.url} has no schema yet: run 'dicom-adapter db upgrade'"
        )
    ledger = Ledger(engine)
    processing = Processing(ledger)
    oldest = processing.oldest_open_group(
        [name for name, ae in config.aes.items() if ae.processor != "none"]
    )
    report = {
        "ledger": config.ledger.url,
        "revision": revision,
        "spool": str(config.storage.spool),
        "counts": ledger.counts_by_state(),
        "jobs": processing.job_counts(),
        "failed_jobs": [job.id for job in processing.jobs(JobState.FAILED)],
        "oldest_open_group": None
        if oldest is None
        else {
            "called_ae": oldest.called_ae,
            "group_key": oldest.group_key,
            "instances": oldest.instances,
            "first_received_at": _iso(oldest.first_received_at),
            "waiting_seconds": round((utcnow() - oldest.first_received_at).total_seconds(), 1),
        },
        "studies": ledger.recent_studies(studies),
    }
    engine.dispose()
    click.echo(json.dumps(report, indent=2) if as_json else _status_text(report))


def _status_text(report: dict[str, Any]) -> str:
    lines = [
        f"Ledger: {report['ledger']} (revision {report['revision']})",
        f"Spool:  {report['spool']}",
        "",
        "Instances by state:",
    ]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["counts"].items()]
    lines += ["", "Jobs by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["jobs"].items()]
    if report["failed_jobs"]:
        failed = ", ".join(map(str, report["failed_jobs"]))
        lines.append(f"  failed jobs: {failed} (dicom-adapter jobs retry JOB_ID)")
    group = report["oldest_open_group"]
    lines += [
        "",
        "Oldest open group: "
        + (
            "(none)"
            if group is None
            else (
                f"{group['called_ae']} {group['group_key']}, {group['instances']} instances, "
                f"waiting {group['waiting_seconds']:g}s"
            )
        ),
    ]
    lines += ["", "Recent studies:"]
    if not report["studies"]:
        lines.append("  (none)")
    for study in report["studies"]:
        lines.append(
            f"  {study['called_ae']:<16} {study['study_instance_uid'] or '-':<64} "
            f"{study['instances']:>6} instances, {study['received']:>6} received, "
            f"last {study['last_received_at']}"
        )
    return "\n".join(lines)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime(TIME_FORMAT)


def _open_processing(config_path: Path | None) -> tuple[Processing, Any]:
    config = _load(config_path)
    engine = make_engine(config.ledger.url)
    if current_revision(engine) is None:
        raise click.ClickException(
            f"ledger {config.ledger.url} has no schema yet: run 'dicom-adapter db upgrade'"
        )
    return Processing(Ledger(engine)), engine


@main.group(invoke_without_command=True)
@_config_option
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
    processing, engine = _open_processing(config_path)
    listed = processing.jobs(JobState(state) if state else None)
    engine.dispose()
    if as_json:
        click.echo(json.dumps([_job_json(job) for job in listed], indent=2))
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


def _job_json(job: JobRecord) -> dict[str, Any]:
    document = asdict(job)
    for name in ("next_attempt_at", "created_at", "updated_at", "finished_at"):
        document[name] = _iso(document[name])
    return document


@jobs.command("retry")
@click.argument("job_id", type=int)
@_config_option
def jobs_retry(job_id: int, config_path: Path | None) -> None:
    """Put a failed job back in the queue, with a fresh set of retries.

    \b
    Example:
      dicom-adapter jobs retry 42
    """
    processing, engine = _open_processing(config_path)
    try:
        job = processing.retry(job_id)
    except NoResultFound:
        raise click.ClickException(f"no job {job_id}") from None
    except IllegalTransition as exc:
        raise click.ClickException(f"job {job_id}: {exc}") from None
    finally:
        engine.dispose()
    click.echo(f"job {job.id} is pending again ({job.instance_count} instances)")


@main.group()
def db() -> None:
    """Ledger database maintenance."""


@db.command("upgrade")
@_config_option
def db_upgrade(config_path: Path | None) -> None:
    """Apply pending migrations to the ledger.

    \b
    Example:
      dicom-adapter db upgrade --config config.ini
    """
    config = _load(config_path)
    engine = make_engine(config.ledger.url)
    before, after = upgrade(engine)
    engine.dispose()
    if before == after:
        click.echo(f"ledger already at {after}")
    else:
        click.echo(f"ledger upgraded from {before or 'empty'} to {after} (head {head_revision()})")


if __name__ == "__main__":
    main()
