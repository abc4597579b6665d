"""What every command shares: ``--config``, loading it, opening the ledger, times.

A broken config prints one ``Error: ...`` line and exits 2 (so systemd's
``RestartPreventExitStatus=2`` stops a restart loop); any other failure is
a ``click.ClickException``: one ``Error: ...`` line and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from config import Config, default_config_path, load_config
from errors import EXIT_CONFIG, ConfigError
from ledger.db import make_engine
from ledger.migrate import SchemaError, require_head
from ledger.models import TIME_FORMAT
from ledger.store import Ledger


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config PATH``, on the top-level group, each group and each command."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file [default: $DICOM_ADAPTER_CONFIG, then ./config.ini].",
    )(command)


def group_config(config_path: Path | None) -> Path | None:
    """``--config`` given to a group (``jobs --config X retry 7``, ``--config X status``)
    counts for the commands below it; the nearest one wins."""
    context = click.get_current_context(silent=True)
    while config_path is None and context is not None and context.parent is not None:
        context = context.parent
        config_path = context.params.get("config_path")
    return config_path


def load(config_path: Path | None) -> Config:
    """The config a command was given (or the default one); exit 2 if it is broken."""
    try:
        return load_config(group_config(config_path) or default_config_path())
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def require_current_schema(config: Config, engine: Any) -> str:
    """The ledger's revision; an ``Error:`` line if it is not at head (``db upgrade``)."""
    try:
        return require_head(engine)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None


def open_ledger(config_path: Path | None) -> tuple[Ledger, Any]:
    """The config's ledger, at the current schema, and its engine for the caller to dispose of."""
    config = load(config_path)
    engine = make_engine(config.ledger.url)
    require_current_schema(config, engine)
    return Ledger(engine), engine


def iso(value: datetime | None) -> str | None:
    """A ledger time as the ledger writes it (ISO 8601 UTC), for JSON output."""
    return None if value is None else value.strftime(TIME_FORMAT)
