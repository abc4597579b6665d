"""The ``dicom-adapter`` command: a thin click layer over the library.

Failures print one ``Error: ...`` line; a broken config exits 2 (so systemd's
``RestartPreventExitStatus=2`` stops a restart loop), other failures exit 1.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from adapter import Adapter
from config import Config, default_config_path, load_config
from errors import EXIT_CONFIG, ConfigError
from ledger.db import make_engine
from ledger.migrate import current_revision, head_revision, upgrade
from ledger.store import Ledger
from logs import configure_logging


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
    # Block SIGTERM/SIGINT before any thread exists, so every thread inherits
    # the mask and the main thread takes them with sigwait: a signal that
    # arrives while starting up is handled once started, never lost.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    adapter = Adapter(config)
    try:
        adapter.start()
    except OSError as exc:
        adapter.stop()
        raise click.ClickException(f"cannot start: {exc}") from None
    received = signal.sigwait(stop_signals)
    adapter.stop()
    sys.exit(130 if received == signal.SIGINT else 0)


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
    report = {
        "ledger": config.ledger.url,
        "revision": revision,
        "spool": str(config.storage.spool),
        "counts": ledger.counts_by_state(),
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
