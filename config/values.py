"""Value parsers for config.ini keys that are not DICOM-specific.

Each parser takes the raw text and the config file's folder (relative paths
are relative to it) and returns the typed value, or raises ``ValueError``
whose text is the problem as the admin reads it, after ``[section] key:``.
The reader decides on the exception's type alone, never on its text.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
import stat
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.model import FreeSpaceRule
from config.tls import selects_a_cipher

Parser = Callable[[str, Path], Any]
PORT_RANGE = "must be 1-65535 (0 turns the plain port off: set tls_port)"
COMMAND_PLACEHOLDERS = (
    "job_id",
    "job_dir",
    "manifest",
    "study_instance_uid",
    "group_key",
    "called_ae",
    "idempotency_key",
)
# Decimal (SI) and binary (IEC) multiples, as written after the number.
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS.update(kib=2**10, mib=2**20, gib=2**30, tib=2**40)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None


def integer(low: int, high: int) -> Parser:
    """A whole number from ``low`` to ``high``."""

    def parse(text: str, _: Path) -> int:
        value = _whole_number(text)
        if not low <= value <= high:
            raise ValueError(f"must be {low}-{high}")
        return value

    return parse


def listen_port(text: str, _: Path) -> int:
    """The plain DICOM port; 0, with ``tls_port`` set, listens on TLS alone."""
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise ValueError(PORT_RANGE)
    return value


def seconds(text: str, _: Path) -> float:
    """A duration: more than 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not 0 < value <= 86400:
        raise ValueError("must be more than 0 and at most 86400 seconds")
    return value


def retention(text: str, folder: Path) -> float:
    """Seconds, where 0 (none) is allowed."""
    return 0.0 if text.strip() in ("0", "0.0") else seconds(text, folder)


def retention_or_never(text: str, _: Path) -> float | None:
    """``never``, or seconds (0 and up, at most ten years)."""
    if text.strip().lower() == "never":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be 'never' or a number of seconds, not {text!r}") from None
    if not 0 <= value <= 10 * 365 * 86400:
        raise ValueError("must be 'never' or 0 to 315360000 seconds (ten years)")
    return value


def _size_bytes(text: str) -> int | None:
    """``2GiB``, ``500MB``, ``1048576``: bytes; None if it is not a size."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text.strip())
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def size(text: str, _: Path) -> int:
    """A size (``2GiB``, ``500MB``, bytes); ``0`` for none."""
    bytes_ = _size_bytes(text)
    if bytes_ is None:
        raise ValueError(f"must be a size (2GiB, 500MB) or 0, not {text!r}")
    return bytes_


def free_space(text: str, _: Path) -> FreeSpaceRule:
    """``5%``, ``2GiB``, ``0``, or both: ``5%, 1GiB``."""
    percent, bytes_ = 0.0, 0
    for part in (p.strip() for p in text.split(",")):
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", part):
            percent = float(match.group(1))
            if percent >= 100:
                raise ValueError("percentage must be under 100%")
        elif (given := _size_bytes(part)) is not None:
            bytes_ = given
        else:
            raise ValueError(f"must be a percentage (5%) or a size (2GiB), not {part!r}")
    return FreeSpaceRule(percent=percent, bytes=bytes_)


def boolean(text: str, _: Path) -> bool:
    """``true``/``false`` and configparser's other spellings (yes, on, 1, ...)."""
    states = configparser.ConfigParser.BOOLEAN_STATES
    if text.lower() not in states:
        raise ValueError(f"must be true or false, not {text!r}")
    return states[text.lower()]


def choice(options: tuple[str, ...], upper: bool = False) -> Parser:
    """One of ``options``, in any case (returned lower case, or upper with ``upper``)."""

    def parse(text: str, _: Path) -> str:
        value = text.upper() if upper else text.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {text!r}")
        return value

    return parse


def names(text: str, _: Path) -> tuple[str, ...]:
    """A comma-separated list of ``[destination:NAME]`` names, at least one."""
    listed = tuple(item.strip() for item in text.split(",") if item.strip())
    if not listed:
        raise ValueError("must name at least one destination")
    return listed


def node_name(text: str, _: Path) -> str:
    """A node's name in the ledger and the metrics: letters, digits, ``.``, ``_``, ``-``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-', not {text!r}")
    return text


def host(text: str, _: Path) -> str:
    """A host name or address to listen on or connect to."""
    if not text:
        raise ValueError("must not be empty")
    return text


def source_host(text: str, _: Path) -> str:
    """An IP address, a CIDR network or a hostname."""
    try:
        ipaddress.ip_network(text, strict=False)
        return text
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError(f"must be an IP address, a CIDR network or a hostname, not {text!r}")
    return text


def certificate_name(text: str, _: Path) -> str:
    """A subject (``CN=ct1.example,O=Hospital``), a common name, or a subjectAltName value."""
    if not text or not text.isprintable():
        raise ValueError("must be printable text: a subject, common name or subjectAltName")
    return text


def tls_ciphers(text: str, _: Path) -> str:
    """An OpenSSL cipher string that selects at least one suite."""
    if not selects_a_cipher(text):
        raise ValueError(f"OpenSSL selects no cipher suite from {text!r}")
    return text


def resolved_path(text: str, folder: Path) -> Path:
    """An absolute path; a relative one is taken from the config file's folder."""
    if not text:
        raise ValueError("must not be empty")
    return (folder / Path(text).expanduser()).resolve()


def readable_file(text: str, folder: Path) -> Path:
    """A path to a file that exists and that we can read (certificates, keys)."""
    path = resolved_path(text, folder)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot be read: {path}")
    return path


def secret_file(text: str, folder: Path) -> Path:
    """A readable file holding a secret (a password, a token), that not every user of the
    machine may read: the secret stays out of config.ini and out of other users' reach."""
    path = readable_file(text, folder)
    if path.stat().st_mode & stat.S_IROTH:
        raise ValueError(f"{path} is readable by every user of the machine: chmod o-r it")
    return path


def user_name(text: str, _: Path) -> str:
    """An HTTP Basic user name: not empty, no ``:`` (RFC 7617), no control characters."""
    if not text or ":" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"must be a user name without ':' or control characters, not {text!r}")
    return text


def service_url(text: str, _: Path) -> str:
    """A DICOMweb service's base URL, as ``http[s]://host[:port]/path``, without a trailing
    ``/``, a query or credentials (those go in ``username`` and ``password_file``)."""
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname or " " in text:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    if url.username is not None or url.password is not None:
        raise ValueError("must not hold a user name or password: give username and password_file")
    if url.query or url.fragment:
        raise ValueError(f"must be the service's base URL, without '?' or '#': {text!r}")
    return text.rstrip("/")


def http_url(text: str, _: Path) -> str:
    """An ``http://`` or ``https://`` URL (a webhook)."""
    if not re.fullmatch(r"https?://[^\s]+", text):
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def ledger_url(text: str, folder: Path) -> str:
    """A SQLAlchemy database URL; a relative SQLite file is taken from the config's folder."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError(f"is not a database URL: {text!r}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)
        if not database.is_absolute():
            url = url.set(database=str((folder / database).resolve()))
    return url.render_as_string(hide_password=False)


def command(text: str, _: Path) -> str:
    """A command line (no shell) whose ``{placeholders}`` are all known."""
    try:
        arguments = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments: {exc}") from None
    if not arguments:
        raise ValueError("must not be empty")
    known = dict.fromkeys(COMMAND_PLACEHOLDERS, "")
    for argument in arguments:
        try:
            argument.format_map(known)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(
                f"{argument!r} has an unknown placeholder {exc}; "
                f"known: {', '.join('{' + p + '}' for p in COMMAND_PLACEHOLDERS)}"
            ) from None
    return text
