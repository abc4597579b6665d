"""``dicom-adapter ledger check`` and ``dicom-adapter db upgrade``: ledger upkeep.

``ledger check`` compares spool and ledger (``fsck``, imported when it runs);
``db upgrade`` applies the Alembic migrations.  Both are for an operator,
mostly with the service stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from cli.common import config_option, load
from errors import EXIT_FAILURE, AdapterError
from ledger.db import make_engine
from ledger.migrate import head_revision, upgrade
from ledger.wording import plural


@click.group("ledger")
def ledger_group() -> None:
    """Ledger consistency tools (run them with the service stopped).

    \b
    Example:
      dicom-adapter ledger check --repair
    """


@ledger_group.command("check")
@click.option("--repair", is_flag=True, help="Apply the reconcile the service runs at start.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@config_option
def ledger_check(repair: bool, as_json: bool, config_path: Path | None) -> None:
    """Compare spool and ledger: orphans, missing files, stuck states; exit 1 on findings.

    \b
    Example:
      sudo systemctl stop dicom-adapter && dicom-adapter ledger check
    """
    import fsck

    config = load(config_path)
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


@ledger_group.command("copy")
@click.option(
    "--to",
    "target_url",
    required=True,
    help="An empty ledger: postgresql+psycopg://user@host/database (or another sqlite:///).",
)
@config_option
def ledger_copy(target_url: str, config_path: Path | None) -> None:
    """Copy this ledger, service stopped, into an empty one; check every table's count.

    Nothing is changed in this ledger.  Then set [ledger] url to the new
    one and start the service.

    \b
    Example:
      dicom-adapter ledger copy --to postgresql+psycopg://adapter@db.example/ledger
    """
    import fsck
    from ledger.copy import copy_ledger

    config = load(config_path)
    try:
        fsck.refuse_while_running(config)
        source, target = make_engine(config.ledger.url), make_engine(target_url)
        try:
            copied = copy_ledger(source, target)
        finally:
            source.dispose()
            target.dispose()
    except AdapterError as exc:
        raise click.ClickException(str(exc)) from None
    for table, count in copied.items():
        click.echo(f"  {table:<14} {count:>10}")
    click.echo(f"copied into {target_url}, every count checked: set [ledger] url to it")


@click.group()
def db() -> None:
    """Ledger database maintenance.

    \b
    Example:
      dicom-adapter db upgrade
    """


@db.command("upgrade")
@config_option
def db_upgrade(config_path: Path | None) -> None:
    """Apply pending migrations to the ledger.

    \b
    Example:
      dicom-adapter db upgrade --config config.ini
    """
    config = load(config_path)
    engine = make_engine(config.ledger.url)
    before, after = upgrade(engine)
    engine.dispose()
    if before == after:
        click.echo(f"ledger already at {after}")
    else:
        click.echo(f"ledger upgraded from {before or 'empty'} to {after} (head {head_revision()})")
