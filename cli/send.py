"""``dicom-adapter send`` and ``dicom-adapter echo``: reach a configured destination.

``send`` queues files in the ledger for the running service to export;
``echo`` checks the destination answers (C-ECHO, or a QIDO-RS request for
a DICOMweb one).  The exporters are imported when the command runs, so the
other commands do not wait for them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cli.common import config_option, load
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.records import TaskRecord
from ledger.states import TaskState
from ledger.store import Ledger
from ledger.tasks import Tasks
from ledger.wording import plural


@click.command("echo")
@click.argument("name")
@config_option
def echo_command(name: str, config_path: Path | None) -> None:
    """Check a configured destination answers; one line, exit 0 if it did.

    C-ECHO for a DICOM destination, a QIDO-RS query for a DICOMweb one.

    \b
    Example:
      dicom-adapter echo PACS
    """
    from derived import sender_for
    from exporters.base import ExportError

    config = load(config_path)
    if name not in config.destinations:
        raise click.ClickException(f"no [destination:{name}] in {config.path}")
    sender = sender_for(config, name)
    where = f"{name} ({sender.where})"
    started = time.monotonic()
    try:
        answer = sender.echo()
    except ExportError as exc:
        raise click.ClickException(f"{where}: {exc}") from None
    took = (time.monotonic() - started) * 1000
    click.echo(f"{where}: {answer} in {took:.0f} ms")


@click.command("send")
@click.option("--dest", "destination", required=True, help="A [destination:NAME] from the config.")
@click.option("--wait", is_flag=True, help="Wait for the export; exit 1 if it failed.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds --wait waits.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@config_option
def send_command(
    destination: str, wait: bool, timeout: float, paths: tuple[Path, ...], config_path: Path | None
) -> None:
    """Queue DICOM files (or folders, recursively) for a destination.

    The running service sends them; the files stay where they are.

    \b
    Example:
      dicom-adapter send --dest PACS --wait results/
    """
    from derived import sender_for
    from exporters.files import NotDicom, spec_for

    config = load(config_path)
    if destination not in config.destinations:
        raise click.ClickException(f"no [destination:{destination}] in {config.path}")
    submitter = sender_for(config, destination).name
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
    export_id = exports.create(destination, "send", specs, submitter=submitter)
    click.echo(f"queued {plural(len(specs), 'file')} as export {export_id} for {destination}")
    if wait:
        task = _wait_for_export(Tasks(exports.ledger), export_id, timeout)
        click.echo(
            f"export {export_id} {task.state}: "
            f"{task.item_count - task.failed_count} of {task.item_count} files sent"
        )
        engine.dispose()
        if task.state != TaskState.SUCCEEDED:
            raise click.ClickException(f"export {export_id}: {task.last_error}")
    engine.dispose()


def _wait_for_export(tasks: Tasks, export_id: int, timeout: float) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while (task := tasks.get(export_id)).state not in (TaskState.SUCCEEDED, TaskState.FAILED):
        if time.monotonic() > deadline:
            raise click.ClickException(f"export {export_id} still {task.state} after {timeout:g}s")
        time.sleep(0.2)
    return task
