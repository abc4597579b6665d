"""The ``dicom-adapter`` command: a thin click layer over the library.

Failures print one ``Error: ...`` line; a broken config exits 2 (so systemd's
``RestartPreventExitStatus=2`` stops a restart loop), other failures exit 1.
The service, the DICOM network and ``fsck`` are imported by the commands
that use them: ``status`` is run by monitoring scripts and should answer in
well under a second, not wait for pynetdicom, watchdog and APScheduler.
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

from config import Config, check_config, config_warnings, default_config_path, load_config
from errors import EXIT_CONFIG, EXIT_FAILURE, AdapterError, ConfigError, IllegalTransition
from health import health
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import SchemaError, head_revision, require_head, upgrade
from ledger.models import TIME_FORMAT, utcnow
from ledger.processing import Processing
from ledger.records import ExportRecord, JobRecord
from ledger.states import ExportState, FileState, JobState
from ledger.store import Ledger
from ledger.wording import plural

SIGNAL_POLL_SECONDS = 0.5
PHI_COLUMNS = frozenset({"patient_id"})  # of the studies view: only with status --phi
UID_GROUPINGS = frozenset({0x0020000D, 0x0020000E})  # StudyInstanceUID, SeriesInstanceUID


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
        return load_config(_group_config(config_path) or default_config_path())
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@click.version_option(
    package_name="dicom-adapter", prog_name="dicom-adapter", message="%(prog)s %(version)s"
)
def main(config_path: Path | None) -> None:
    """DICOM edge adapter: receive, record, process, export, reclaim.

    \b
    Example:
      dicom-adapter run --config /etc/dicom-adapter/config.ini
    """


@main.command()
@_config_option
def run(config_path: Path | None) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT; SIGHUP reloads.

    SIGHUP re-reads the config (AE titles with their processors, sources,
    destinations, a few keys; see docs/configuration.md)
    without dropping running associations; a broken config is refused with
    one log line and the running one stays.

    \b
    Example:
      dicom-adapter run --config config.ini
    """
    from arenas import limit_malloc_arenas
    from logs import configure_logging

    try:
        from adapter import Adapter
        from scp.server import ensure_bindable
    except ImportError as exc:  # e.g. the pynetdicom boundary's version check: one line
        if exc.name != "pynetdicom":
            raise
        raise click.ClickException(str(exc)) from None

    limit_malloc_arenas()
    config = _load(config_path)
    configure_logging(config.log.level)
    # The handlers only record the signal; the main thread looks every half
    # second, so a signal that arrives while starting up is acted on once
    # started, and one that lands while the main thread waits is never
    # missed.  (Blocking the signals instead would be inherited by every
    # command the adapter runs.)
    received: list[int] = []
    reloads: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, _frame: received.append(n))
    signal.signal(signal.SIGHUP, lambda n, _frame: reloads.append(n))
    try:
        ensure_bindable(config.dicom)
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from None
    adapter = Adapter(config)
    try:
        adapter.start()
    except OSError as exc:
        adapter.stop()
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None
    while not received:
        time.sleep(SIGNAL_POLL_SECONDS)
        if reloads:
            reloads.clear()
            adapter.reload()
    adapter.stop(reason=signal.Signals(received[0]).name)
    sys.exit(130 if received[0] == signal.SIGINT else 0)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--studies", default=10, show_default=True, help="How many recent studies to list.")
@click.option("--phi", is_flag=True, help="Include patient identifiers (Patient ID, group keys).")
def status(config_path: Path | None, as_json: bool, studies: int, phi: bool) -> None:
    """Show health, instance counts by state and the most recent studies.

    Exits 1 when unhealthy (not listening, disk under min_free, or a failed
    job or export), for monitoring scripts.  Patient identifiers (Patient
    ID, a group key taken from a patient-level attribute) are left out
    unless --phi is given: the output ends up in tickets and monitoring.

    \b
    Example:
      dicom-adapter status --json
    """
    config = _load(config_path)
    engine = make_engine(config.ledger.url)
    revision = _require_current_schema(config, engine)
    ledger = Ledger(engine)
    processing = Processing(ledger)
    oldest = processing.oldest_open_group(list(config.processed_aes))
    report = {
        "ledger": config.ledger.url,
        "revision": revision,
        "spool": str(config.storage.spool),
        "counts": ledger.counts_by_state(),
        "jobs": processing.job_counts(),
        "exports": Exports(ledger).counts(),
        "export_files": Exports(ledger).file_counts(),
        "health": health(config, ledger),
        "oldest_open_group": None
        if oldest is None
        else {
            "called_ae": oldest.called_ae,
            "group_key": oldest.group_key
            if phi or _group_key_is_a_uid(config, oldest.called_ae)
            else None,
            "instances": oldest.instances,
            "first_received_at": _iso(oldest.first_received_at),
            "waiting_seconds": round((utcnow() - oldest.first_received_at).total_seconds(), 1),
        },
        "studies": [
            study if phi else {k: v for k, v in study.items() if k not in PHI_COLUMNS}
            for study in ledger.recent_studies(studies)
        ],
    }
    engine.dispose()
    click.echo(json.dumps(report, indent=2) if as_json else _status_text(report))
    if not report["health"]["healthy"]:
        sys.exit(EXIT_FAILURE)


def _group_key_is_a_uid(config: Config, called_ae: str) -> bool:
    """Groups by Study or Series Instance UID name no patient; by Patient ID they do."""
    ae = config.aes.get(called_ae)
    return ae is not None and ae.group_by in UID_GROUPINGS


def _status_text(report: dict[str, Any]) -> str:
    facts = report["health"]
    problems = [
        problem
        for problem, present in (
            ("not listening", not facts["listening"]),
            (
                "spool free space under min_free",
                facts["spool_free_bytes"] < facts["spool_min_free_bytes"],
            ),
            (
                f"failed jobs {facts['failed_jobs']} (dicom-adapter jobs retry JOB_ID)",
                facts["failed_jobs"],
            ),
            (
                f"failed exports {facts['failed_exports']} "
                "(dicom-adapter exports retry ID, or exports discard ID)",
                facts["failed_exports"],
            ),
            (
                f"{facts['undelivered_files']} undelivered export files, kept on disk "
                "(dicom-adapter exports --state failed)",
                facts["undelivered_files"],
            ),
        )
        if present
    ] + facts["problems"]
    lines = [
        "Health: " + ("healthy" if facts["healthy"] else "UNHEALTHY: " + "; ".join(problems)),
        f"Ledger: {report['ledger']} (revision {report['revision']})",
        f"Spool:  {report['spool']} ({facts['spool_free_bytes'] / 2**30:.1f} GiB free)",
        f"Last reconcile: {facts['last_reconcile_at'] or 'never'}",
        "",
        "Instances by state:",
    ]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["counts"].items()]
    lines += ["", "Jobs by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["jobs"].items()]
    lines += ["", "Exports by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["exports"].items()]
    lines += ["", "Export files by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["export_files"].items()]
    group = report["oldest_open_group"]
    lines += [
        "",
        "Oldest open group: "
        + (
            "(none)"
            if group is None
            else (
                f"{group['called_ae']} {group['group_key'] or '(group key: --phi)'}, "
                f"{plural(group['instances'], 'instance')}, "
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
            + (f", patient {study['patient_id']}" if "patient_id" in study else "")
        )
    return "\n".join(lines)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime(TIME_FORMAT)


def _open_processing(config_path: Path | None) -> tuple[Processing, Any]:
    config = _load(config_path)
    engine = make_engine(config.ledger.url)
    _require_current_schema(config, engine)
    return Processing(Ledger(engine)), engine


def _group_config(config_path: Path | None) -> Path | None:
    """``--config`` given to a group (``jobs --config X retry 7``, ``--config X status``)
    counts for the commands below it; the nearest one wins."""
    context = click.get_current_context(silent=True)
    while config_path is None and context is not None and context.parent is not None:
        context = context.parent
        config_path = context.params.get("config_path")
    return config_path


def _require_current_schema(config: Config, engine: Any) -> str:
    try:
        return require_head(engine, config.ledger.url)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None


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
            document[name] = _iso(value)
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
    click.echo(f"job {job.id} is pending again ({plural(job.instance_count, 'instance')})")


@jobs.command("discard")
@click.argument("job_id", type=int)
@click.option(
    "--delete-files",
    is_flag=True,
    help="Also let the reclaimer delete its instances' spool files (default: keep them).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_config_option
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
    processing, engine = _open_processing(config_path)
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


@main.command("echo")
@click.argument("name")
@_config_option
def echo_command(name: str, config_path: Path | None) -> None:
    """C-ECHO a configured destination; one line, exit 0 if it answered Success.

    \b
    Example:
      dicom-adapter echo PACS
    """
    from adapter import peer_for
    from exporters import cstore
    from exporters.cstore import ExportError

    config = _load(config_path)
    if name not in config.destinations:
        raise click.ClickException(f"no [destination:{name}] in {config.path}")
    peer = peer_for(config, name)
    where = f"{name} ({peer.ae_title}@{peer.host}:{peer.port})"
    started = time.monotonic()
    try:
        status = cstore.echo(peer)
    except ExportError as exc:
        raise click.ClickException(f"{where}: {exc}") from None
    took = (time.monotonic() - started) * 1000
    if status != 0:
        raise click.ClickException(f"{where}: C-ECHO answered {status!r}")
    click.echo(f"{where}: C-ECHO Success in {took:.0f} ms")


@main.command("send")
@click.option("--dest", "destination", required=True, help="A [destination:NAME] from the config.")
@click.option("--wait", is_flag=True, help="Wait for the export; exit 1 if it failed.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_config_option
def send_command(
    destination: str, wait: bool, timeout: float, paths: tuple[Path, ...], config_path: Path | None
) -> None:
    """Queue DICOM files (or folders, recursively) for a destination.

    The running service sends them; the files stay where they are.

    \b
    Example:
      dicom-adapter send --dest PACS --wait results/
    """
    from exporters.files import NotDicom, spec_for

    config = _load(config_path)
    if destination not in config.destinations:
        raise click.ClickException(f"no [destination:{destination}] in {config.path}")
    files = sorted(
        {f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}
    )
    if not files:
        raise click.ClickException("no files to send")
    specs = []
    with click.progressbar(
        files, label="Reading", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as progress:
        for path in progress:
            try:
                specs.append(spec_for(path, owned=False))
            except NotDicom as exc:
                raise click.ClickException(str(exc)) from None
    engine = make_engine(config.ledger.url)
    upgrade(engine)
    exports = Exports(Ledger(engine))
    export_id = exports.create(destination, "send", specs)
    click.echo(f"queued {plural(len(specs), 'file')} as export {export_id} for {destination}")
    if wait:
        task = _wait_for_export(exports, export_id, timeout)
        click.echo(
            f"export {export_id} {task.state}: "
            f"{task.file_count - task.failed_count} of {task.file_count} files sent"
        )
        engine.dispose()
        if task.state != ExportState.SUCCEEDED:
            raise click.ClickException(f"export {export_id}: {task.last_error}")
    engine.dispose()


def _wait_for_export(exports: Exports, export_id: int, timeout: float) -> ExportRecord:
    deadline = time.monotonic() + timeout
    while (task := exports.get(export_id)).state not in (ExportState.SUCCEEDED, ExportState.FAILED):
        if time.monotonic() > deadline:
            raise click.ClickException(f"export {export_id} still {task.state} after {timeout:g}s")
        time.sleep(0.2)
    return task


@main.group(invoke_without_command=True)
@_config_option
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
    processing, engine = _open_processing(config_path)
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
@_config_option
def exports_retry(export_id: int, config_path: Path | None) -> None:
    """Queue a failed export again, with a fresh set of retries.

    \b
    Example:
      dicom-adapter exports retry 12
    """
    processing, engine = _open_processing(config_path)
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
@_config_option
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
    processing, engine = _open_processing(config_path)
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


@main.command("sample")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--studies", default=1, show_default=True, type=click.IntRange(min=1), help="Studies to write."
)
@click.option(
    "--instances",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="CT images per study (each study also gets one Secondary Capture).",
)
def sample(folder: Path, studies: int, instances: int) -> None:
    """Write small synthetic studies to try the adapter with (fake patients, new UIDs).

    Each study is a CT series and one Secondary Capture image, valid DICOM
    files in FOLDER/study-N/ct/ and FOLDER/study-N/sc/.  FOLDER is created
    if missing; nothing in it is overwritten (each study takes a new study-N).

    \b
    Example:
      dicom-adapter sample study
      storescu -aec DICOMADAPTER localhost 11112 study/*/*/*.dcm
    """
    from samples import write_samples

    try:
        written = write_samples(folder, studies, instances)
    except OSError as exc:
        where = exc.filename or folder
        raise click.ClickException(f"cannot write {where}: {exc.strerror or exc}") from None
    click.echo(
        f"wrote {plural(len(written.files), 'instance')} of "
        f"{plural(len(written.studies), 'study', 'studies')} to {folder}"
    )


@main.group("config")
def config_group() -> None:
    """Configuration file tools.

    \b
    Example:
      dicom-adapter config check
    """


@config_group.command("check")
@_config_option
def config_check(config_path: Path | None) -> None:
    """Validate the whole config; every problem on its own line, exit 2 if any.

    \b
    Example:
      dicom-adapter config check --config /etc/dicom-adapter/config.ini
    """
    path = _group_config(config_path) or default_config_path()
    problems = check_config(path)
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)
    config = load_config(path)
    for warning in config_warnings(config):
        click.echo(f"Warning: {path} {warning}", err=True)
    click.echo(
        f"{path}: OK, {plural(len(config.aes), 'AE title')} "
        f"({len(config.processed_aes)} with a processor), "
        f"{plural(len(config.sources), 'source')}, "
        f"{plural(len(config.destinations), 'destination')}"
    )


@main.group("ledger")
def ledger_group() -> None:
    """Ledger consistency tools (run them with the service stopped).

    \b
    Example:
      dicom-adapter ledger check --repair
    """


@ledger_group.command("check")
@click.option("--repair", is_flag=True, help="Apply the reconcile the service runs at start.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_config_option
def ledger_check(repair: bool, as_json: bool, config_path: Path | None) -> None:
    """Compare spool and ledger: orphans, missing files, stuck states; exit 1 on findings.

    \b
    Example:
      sudo systemctl stop dicom-adapter && dicom-adapter ledger check
    """
    import fsck

    config = _load(config_path)
    try:
        report = fsck.repair(config) if repair else fsck.check(config)
    except AdapterError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        for finding in report.findings:
            click.echo(f"{finding.kind}: {finding.detail}")
        click.echo(
            ("repaired; " if report.repaired else "")
            + ("ledger and spool agree" if report.ok else plural(len(report.findings), "finding"))
        )
    if not report.ok:
        sys.exit(EXIT_FAILURE)


@main.group()
def db() -> None:
    """Ledger database maintenance.

    \b
    Example:
      dicom-adapter db upgrade
    """


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
