"""``dicom-adapter config check``: every problem in a config, before a restart.

Unlike loading the config, which stops at the first problem, the check lists
them all, one ``Error:`` line each and exit 2, then the warnings (what loads
but is likely not what the admin meant) and a one-line summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import config_option, group_config
from config import check_config, config_warnings, default_config_path, load_config
from errors import EXIT_CONFIG
from ledger.wording import plural


@click.group("config")
def config_group() -> None:
    """Configuration file tools.

    \b
    Example:
      dicom-adapter config check
    """


@config_group.command("check")
@config_option
def config_check(config_path: Path | None) -> None:
    """Validate the whole config; every problem on its own line, exit 2 if any.

    \b
    Example:
      dicom-adapter config check --config /etc/dicom-adapter/config.ini
    """
    path = group_config(config_path) or default_config_path()
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
