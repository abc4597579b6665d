"""``dicom-adapter http add-user`` and ``add-token``: who may sign in to the HTTP listener.

The files are ``[http] users`` and ``[http] tokens`` (web.auth has their
format); each command adds one name or replaces its line.  A password is
read without echo (twice at a terminal) or from standard input, never from
the command line, where ``ps`` would show it.  A token is made here and
printed once: only its SHA-256 is kept.  The running service reads the
files as it starts: restart it for a change to count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import config_option, load
from web.auth import ROLES, AuthFileError, hash_password, new_token, write_entry


@click.group("http")
def http_group() -> None:
    """Users and tokens of the HTTP listener ([http]).

    \b
    Example:
      dicom-adapter http add-user alice --role admin
    """


def _file(config_path: Path | None, key: str) -> Path:
    path = getattr(load(config_path).http, key)
    if path is None:
        raise click.ClickException(f"set [http] {key} = PATH in the config first")
    return path


@http_group.command("add-user")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@config_option
def add_user(name: str, role: str, config_path: Path | None) -> None:
    """Add NAME to [http] users, or set a new password; the password is asked for.

    \b
    Example:
      dicom-adapter http add-user alice --role admin
      printf '%s\\n' "$PASSWORD" | dicom-adapter http add-user robot
    """
    path = _file(config_path, "users")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise click.ClickException("a password needs at least 8 characters")
    try:
        write_entry(path, name, role, hash_password(password))
    except AuthFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name} ({role}) can sign in: {path}")


@http_group.command("add-token")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@config_option
def add_token(name: str, role: str, config_path: Path | None) -> None:
    """Make a bearer token for NAME in [http] tokens and print it, once.

    \b
    Example:
      dicom-adapter http add-token pacs-01
    """
    path = _file(config_path, "tokens")
    token, secret = new_token()
    try:
        write_entry(path, name, role, secret)
    except AuthFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(f"(the token for {name} ({role}): only its hash is kept in {path})", err=True)
