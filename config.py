"""config.ini -> frozen, validated dataclasses, parsed once.

Every key has a parser and a default here, in one table per section kind, so
an unknown key or section is an error rather than silently ignored, and every
error names file, section and key (``config.ini [dicom] port: must be
1-65535``).  Relative paths are relative to the config file's folder, so the
shipped ``config.ini`` works from any working directory.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID, AllTransferSyntaxes
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from errors import ConfigError
from spool.names import validate_ae_folder, validate_ae_title, validate_uid
from watchers.duplicates import DEFAULT_POLICY as DEFAULT_DUPLICATE_POLICY
from watchers.duplicates import POLICIES as DUPLICATE_POLICIES

CONFIG_ENV = "DICOM_ADAPTER_CONFIG"
PROCESSORS = ("none", "command", "folder", "webhook", "forward")
# The key each processor cannot work without.
PROCESSOR_NEEDS = {
    "command": "command",
    "folder": "output",
    "webhook": "url",
    "forward": "destinations",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites (TLS 1.3 ones are all AEAD and not affected): forward secrecy
# and AEAD only, as BCP 195 (RFC 9325 4.2) recommends and DCMTK's default
# "non-downgrading BCP 195" profile offers.
DEFAULT_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"


@dataclass(frozen=True)
class FreeSpaceRule:
    """Refuse stores while free space is under any of these limits."""

    percent: float = 0.0
    bytes: int = 0

    def required_bytes(self, total_bytes: int) -> int:
        """Free bytes needed on a filesystem of ``total_bytes``."""
        return max(self.bytes, int(total_bytes * self.percent / 100))


@dataclass(frozen=True)
class TlsSettings:
    """One end of a TLS connection (PS3.15 B.1 / BCP 195): builds the SSLContext.

    The context is built from here both by ``config check`` and by whoever
    connects, so a key that does not match its certificate or a cipher
    string OpenSSL cannot use is found before the service starts.
    """

    certificate: Path | None
    private_key: Path | None
    ca_certificates: Path | None  # None: no client verification (server), system CAs (client)
    minimum_version: str = "1.2"
    ciphers: str = DEFAULT_TLS_CIPHERS
    require_client_certificate: bool = False  # server side only
    verify_hostname: bool = True  # client side only

    def server_context(self) -> ssl.SSLContext:
        """For the listener: a client certificate is verified when sent, required if asked."""
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        if self.require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
        elif self.ca_certificates is not None:
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """For exports: the destination's certificate is always verified."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = self.verify_hostname
        if self.ca_certificates is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = TLS_VERSIONS[self.minimum_version]
        context.set_ciphers(self.ciphers)
        if self.certificate is not None:
            # An encrypted key would make OpenSSL prompt on the terminal: refuse instead.
            context.load_cert_chain(self.certificate, self.private_key, password=_no_password)
        if self.ca_certificates is not None:
            context.load_verify_locations(cafile=self.ca_certificates)
        return context


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's short reason (``KEY_VALUES_MISMATCH``) rather than its whole tuple."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library or 'SSL'})"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str
    host: str
    port: int
    max_associations: int
    reject_unknown_sources: bool
    verification: bool
    transfer_syntaxes: tuple[str, ...]
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    maximum_pdu_size: int
    shutdown_grace: float
    max_instance_size: int = 0  # bytes of one C-STORE data set; 0: no limit
    max_associations_per_host: int | None = None  # None: half of max_associations, at least 2
    tls_port: int = 0  # 0: no TLS listener
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    tls_minimum_version: str = "1.2"
    tls_ciphers: str = DEFAULT_TLS_CIPHERS
    tls_reject_unknown_sources: bool | None = None  # None: as reject_unknown_sources

    @property
    def ports(self) -> tuple[int, ...]:
        """The ports configured to listen: the plain one, the TLS one, or both."""
        return tuple(port for port in (self.port, self.tls_port) if port)

    @property
    def reject_unknown_over_tls(self) -> bool:
        """The TLS listener's own policy for calling AEs no ``[source:NAME]`` names."""
        if self.tls_reject_unknown_sources is None:
            return self.reject_unknown_sources
        return self.tls_reject_unknown_sources

    @property
    def per_host_limit(self) -> int:
        """Associations one host may hold at once (``max_associations_per_host``)."""
        if self.max_associations_per_host is not None:
            return self.max_associations_per_host
        return max(2, self.max_associations // 2)

    @property
    def tls(self) -> TlsSettings | None:
        """The TLS listener's settings; None when ``tls_port`` is 0."""
        if not self.tls_port:
            return None
        return TlsSettings(
            self.certificate,
            self.private_key,
            self.ca_certificates,
            self.tls_minimum_version,
            self.tls_ciphers,
            require_client_certificate=self.require_client_certificate,
        )


@dataclass(frozen=True)
class StorageConfig:
    spool: Path
    jobs: Path
    min_free: FreeSpaceRule
    reclaim_interval: float
    superseded_retention: float | None = None  # None: superseded copies are kept for good


@dataclass(frozen=True)
class LedgerConfig:
    url: str


@dataclass(frozen=True)
class WatcherConfig:
    reconcile_interval: float
    settle_seconds: float


@dataclass(frozen=True)
class LogConfig:
    level: str
    log_phi: bool  # patient identifiers in log lines


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int  # 0: no metrics endpoint


@dataclass(frozen=True)
class AeConfig:
    """One ``[ae:NAME]``: a called AE title and what happens to what it receives."""

    ae_title: str
    duplicates: str
    processor: str
    group_by: int  # a DICOM tag, e.g. 0x0020000D
    timeout: float
    max_wait: float
    ignored_sop_classes: frozenset[str]
    allowed_sop_classes: frozenset[str]
    command: str | None
    command_timeout: float
    output: Path | None
    url: str | None
    webhook_timeout: float
    retries: int
    retry_delay: float
    retention: float
    destinations: tuple[str, ...] | None


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[destination:NAME]``: a DICOM peer the adapter sends to."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str | None  # None: the adapter's own [dicom] ae_title
    outbox: Path
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    retries: int
    retry_delay: float
    retention: float
    tls: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    verify_hostname: bool = True
    tls_minimum_version: str = "1.2"
    tls_ciphers: str = DEFAULT_TLS_CIPHERS

    @property
    def tls_settings(self) -> TlsSettings | None:
        """How to secure the connection; None without ``tls = true``."""
        if not self.tls:
            return None
        return TlsSettings(
            self.certificate,
            self.private_key,
            self.ca_certificates,
            self.tls_minimum_version,
            self.tls_ciphers,
            verify_hostname=self.verify_hostname,
        )


@dataclass(frozen=True)
class SourceConfig:
    name: str
    ae_title: str
    host: str | None
    certificate_name: str | None = None  # set: only over TLS with a certificate naming it


@dataclass(frozen=True)
class Config:
    path: Path
    dicom: DicomConfig
    storage: StorageConfig
    ledger: LedgerConfig
    watcher: WatcherConfig
    log: LogConfig
    metrics: MetricsConfig
    aes: dict[str, AeConfig] = field(default_factory=dict)
    sources: tuple[SourceConfig, ...] = ()
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)

    @property
    def processed_aes(self) -> dict[str, AeConfig]:
        """The ``[ae:NAME]`` sections with a processor: the ones groups and jobs are for."""
        return {name: ae for name, ae in self.aes.items() if ae.processor != "none"}


# -- value parsers: each takes the raw text and the config folder ----------

Parser = Callable[[str, Path], Any]


def _integer(low: int, high: int) -> Parser:
    def parse(text: str, _: Path) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be {low}-{high}")
        return value

    return parse


def _seconds(text: str, _: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not 0 < value <= 86400:
        raise ValueError("must be more than 0 and at most 86400 seconds")
    return value


def _retention(text: str, folder: Path) -> float:
    """Seconds, where 0 (none) is allowed."""
    return 0.0 if text.strip() in ("0", "0.0") else _seconds(text, folder)


def _retention_or_never(text: str, _: Path) -> float | None:
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


def _tag(text: str, _: Path) -> int:
    """``0020,000D``, ``(0020,000D)``, ``0020000D`` or a keyword (``StudyInstanceUID``)."""
    compact = text.strip("() ").replace(",", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", compact):
        return int(compact, 16)
    tag = tag_for_keyword(text.strip())
    if tag is None:
        raise ValueError(f"must be a tag like 0020,000D or a DICOM keyword, not {text!r}")
    return tag


def _uid_list(text: str, _: Path) -> frozenset[str]:
    uids = frozenset(item.strip() for item in text.split(",") if item.strip())
    for uid in uids:
        ok, reason = validate_uid(uid)
        if not ok:
            raise ValueError(reason)
    return uids


COMMAND_PLACEHOLDERS = (
    "job_id",
    "job_dir",
    "manifest",
    "study_instance_uid",
    "group_key",
    "called_ae",
    "idempotency_key",
)


def _command(text: str, _: Path) -> str:
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


def _names(text: str, _: Path) -> tuple[str, ...]:
    names = tuple(item.strip() for item in text.split(",") if item.strip())
    if not names:
        raise ValueError("must name at least one destination")
    return names


def _url(text: str, _: Path) -> str:
    if not re.fullmatch(r"https?://[^\s]+", text):
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _boolean(text: str, _: Path) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if text.lower() not in states:
        raise ValueError(f"must be true or false, not {text!r}")
    return states[text.lower()]


def _choice(options: tuple[str, ...], upper: bool = False) -> Parser:
    def parse(text: str, _: Path) -> str:
        value = text.upper() if upper else text.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {text!r}")
        return value

    return parse


def _ae_title(text: str, _: Path) -> str:
    ok, reason = validate_ae_folder(text)
    if not ok:
        raise ValueError(reason)
    return text


def _calling_ae_title(text: str, _: Path) -> str:
    ok, reason = validate_ae_title(text)
    if not ok:
        raise ValueError(reason)
    return text.strip()


def _host(text: str, _: Path) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _source_host(text: str, _: Path) -> str:
    """An IP address, a CIDR network or a hostname."""
    try:
        ipaddress.ip_network(text, strict=False)
        return text
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError(f"must be an IP address, a CIDR network or a hostname, not {text!r}")
    return text


PORT_RANGE = "must be 1-65535 (0 turns the plain port off: set tls_port)"


def _listen_port(text: str, folder: Path) -> int:
    """The plain DICOM port; 0, with ``tls_port`` set, listens on TLS alone."""
    try:
        return _integer(0, 65535)(text, folder)
    except ValueError as exc:
        raise ValueError(PORT_RANGE if "must be 0-65535" in str(exc) else str(exc)) from None


def _certificate_name(text: str, _: Path) -> str:
    """A subject (``CN=ct1.example,O=Hospital``), a common name, or a subjectAltName value."""
    if not text or not text.isprintable():
        raise ValueError("must be printable text: a subject, common name or subjectAltName")
    return text


def _path(text: str, folder: Path) -> Path:
    if not text:
        raise ValueError("must not be empty")
    return (folder / Path(text).expanduser()).resolve()


def _readable_file(text: str, folder: Path) -> Path:
    """A path to a file that exists and that we can read (certificates, keys)."""
    path = _path(text, folder)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot be read: {path}")
    return path


def _tls_ciphers(text: str, _: Path) -> str:
    """An OpenSSL cipher string that selects at least one suite."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL selects no cipher suite from {text!r}") from None
    return text


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def _size_bytes(text: str) -> int | None:
    """``2GiB``, ``500MB``, ``1048576``: bytes; None if it is not a size."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text.strip())
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _size(text: str, _: Path) -> int:
    """A size (``2GiB``, ``500MB``, bytes); ``0`` for none."""
    size = _size_bytes(text)
    if size is None:
        raise ValueError(f"must be a size (2GiB, 500MB) or 0, not {text!r}")
    return size


def _free_space(text: str, _: Path) -> FreeSpaceRule:
    """``5%``, ``2GiB``, ``0``, or both: ``5%, 1GiB``."""
    percent, size = 0.0, 0
    for part in (p.strip() for p in text.split(",")):
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", part):
            percent = float(match.group(1))
            if percent >= 100:
                raise ValueError("percentage must be under 100%")
        elif (bytes_ := _size_bytes(part)) is not None:
            size = bytes_
        else:
            raise ValueError(f"must be a percentage (5%) or a size (2GiB), not {part!r}")
    return FreeSpaceRule(percent=percent, bytes=size)


def _ledger_url(text: str, folder: Path) -> str:
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError(f"is not a database URL: {text!r}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database)
        if not database.is_absolute():
            url = url.set(database=str((folder / database).resolve()))
    return url.render_as_string(hide_password=False)


def _transfer_syntaxes(text: str, _: Path) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        return tuple(str(uid) for uid in AllTransferSyntaxes)
    chosen = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        if item not in AllTransferSyntaxes:
            raise ValueError(f"{item!r} is not a standard transfer syntax UID")
        chosen.append(str(UID(item)))
    if not chosen:
        raise ValueError("must name at least one transfer syntax UID, or 'all'")
    return tuple(chosen)


# -- the schema: section -> key -> (parser, default or REQUIRED) -----------

REQUIRED = object()
# Keys of both TLS ends: [dicom] (the listener) and [destination:NAME].
TLS_KEYS: dict[str, tuple[Parser, Any]] = {
    "certificate": (_readable_file, None),
    "private_key": (_readable_file, None),
    "ca_certificates": (_readable_file, None),
    "tls_minimum_version": (_choice(tuple(TLS_VERSIONS)), "1.2"),
    "tls_ciphers": (_tls_ciphers, DEFAULT_TLS_CIPHERS),
}
LABELLED = ("ae", "source", "destination")
UNLABELLED = (
    "dicom",
    "storage",
    "ledger",
    "watcher",
    "log",
    "metrics",
)  # sections that carry a name: [kind:NAME]

SCHEMA: dict[str, dict[str, tuple[Parser, Any]]] = {
    "dicom": {
        "ae_title": (_ae_title, "DICOMADAPTER"),
        "host": (_host, "0.0.0.0"),
        "port": (_listen_port, "11112"),
        "max_associations": (_integer(1, 1000), "16"),
        "max_associations_per_host": (_integer(1, 1000), None),
        "reject_unknown_sources": (_boolean, "false"),
        "verification": (_boolean, "true"),
        "transfer_syntaxes": (_transfer_syntaxes, "all"),
        "acse_timeout": (_seconds, "30"),
        "dimse_timeout": (_seconds, "30"),
        "network_timeout": (_seconds, "60"),
        "maximum_pdu_size": (_integer(4096, 2**24), "262144"),
        "shutdown_grace": (_retention, "30"),
        "max_instance_size": (_size, "0"),
        "tls_port": (_integer(0, 65535), "0"),
        **TLS_KEYS,
        "require_client_certificate": (_boolean, "false"),
        "tls_reject_unknown_sources": (_boolean, None),  # None: as reject_unknown_sources
    },
    "storage": {
        "spool": (_path, "var/spool"),
        "jobs": (_path, "var/jobs"),
        "min_free": (_free_space, "5%, 1GiB"),
        "reclaim_interval": (_seconds, "30"),
        "superseded_retention": (_retention_or_never, "never"),
    },
    "ledger": {"url": (_ledger_url, "sqlite:///var/ledger.db")},
    "watcher": {
        "reconcile_interval": (_seconds, "60"),
        "settle_seconds": (_seconds, "2"),
    },
    "log": {"level": (_choice(LOG_LEVELS, upper=True), "INFO"), "log_phi": (_boolean, "false")},
    "metrics": {"host": (_host, "127.0.0.1"), "port": (_integer(0, 65535), "0")},
    "ae": {
        "duplicates": (_choice(DUPLICATE_POLICIES), DEFAULT_DUPLICATE_POLICY),
        "processor": (_choice(PROCESSORS), "none"),
        "group_by": (_tag, "0020,000D"),
        "timeout": (_seconds, "5"),
        "max_wait": (_seconds, "3600"),
        "ignored_sop_classes": (_uid_list, ""),
        "allowed_sop_classes": (_uid_list, ""),
        "command": (_command, None),
        "command_timeout": (_seconds, "600"),
        "output": (_path, None),
        "url": (_url, None),
        "webhook_timeout": (_seconds, "30"),
        "retries": (_integer(0, 100), "3"),
        "retry_delay": (_seconds, "10"),
        "retention": (_retention, "0"),
        "destinations": (_names, None),
    },
    "destination": {
        "ae_title": (_calling_ae_title, REQUIRED),
        "host": (_host, REQUIRED),
        "port": (_integer(1, 65535), REQUIRED),
        "calling_ae": (_calling_ae_title, None),
        "outbox": (_path, None),  # default var/outbox/<NAME>
        "acse_timeout": (_seconds, "30"),
        "dimse_timeout": (_seconds, "60"),
        "network_timeout": (_seconds, "60"),
        "retries": (_integer(0, 100), "3"),
        "retry_delay": (_seconds, "30"),
        "retention": (_retention, "0"),
        "tls": (_boolean, "false"),
        **TLS_KEYS,
        "verify_hostname": (_boolean, "true"),
    },
    "source": {
        "ae_title": (_calling_ae_title, REQUIRED),
        "host": (_source_host, None),
        "certificate_name": (_certificate_name, None),
    },
}


def default_config_path() -> Path:
    """``$DICOM_ADAPTER_CONFIG``, else ``./config.ini``."""
    return Path(os.environ.get(CONFIG_ENV) or "config.ini")


def load_config(path: Path) -> Config:
    """Read and validate ``path``.

    Raises
    ------
    ConfigError
        Naming file, section and key of the first problem found.
    """
    config = _Reader(path, collect=False).read()
    assert config is not None  # without collecting, any problem has raised
    return config


def check_config(path: Path) -> list[ConfigError]:
    """Every problem in ``path``, not only the first (``dicom-adapter config check``)."""
    reader = _Reader(path, collect=True)
    reader.read()
    return reader.problems


class _Reader:
    """One pass over a config file; raises at the first problem, or collects them all."""

    def __init__(self, path: Path, collect: bool) -> None:
        self.path = path
        self.name = str(path)
        self.folder = path.resolve().parent
        self.collect = collect
        self.problems: list[ConfigError] = []

    def report(self, section: str | None, key: str | None, problem: str) -> None:
        error = ConfigError(self.name, section, key, problem)
        if not self.collect:
            raise error
        self.problems.append(error)

    def read(self) -> Config | None:
        parser = configparser.ConfigParser(
            interpolation=None,
            inline_comment_prefixes=(";", "#"),
            strict=True,
            default_section="\x00none",
        )
        try:
            with open(self.path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except FileNotFoundError:
            self.report(None, None, "no such file")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.report(None, None, f"cannot be read: {exc}")
            return None
        except configparser.Error as exc:
            self.report(None, None, str(exc).splitlines()[0])
            return None
        sections = {kind: self.section(parser, kind, kind) for kind in UNLABELLED}
        self.check_listener_tls(sections["dicom"])
        aes, sources, destinations = self.labelled(parser, sections["dicom"])
        if not any(section.startswith("ae:") for section in parser.sections()):
            self.report(None, None, "no [ae:NAME] section: the adapter would answer to no AE title")
        if self.problems:
            return None
        return Config(
            path=self.path.resolve(),
            dicom=DicomConfig(**sections["dicom"]),
            storage=StorageConfig(**sections["storage"]),
            ledger=LedgerConfig(**sections["ledger"]),
            watcher=WatcherConfig(**sections["watcher"]),
            log=LogConfig(**sections["log"]),
            metrics=MetricsConfig(**sections["metrics"]),
            aes=aes,
            sources=tuple(sources),
            destinations=destinations,
        )

    def labelled(
        self, parser: configparser.ConfigParser, dicom: dict[str, Any]
    ) -> tuple[dict[str, AeConfig], list[SourceConfig], dict[str, DestinationConfig]]:
        """The ``[kind:NAME]`` sections (``dicom``: the ``[dicom]`` values they refer to)."""
        aes: dict[str, AeConfig] = {}
        sources: list[SourceConfig] = []
        destinations: dict[str, DestinationConfig] = {}
        outboxes: dict[Path, str] = {}  # an outbox -> the destination that has it
        for section in parser.sections():
            kind, _, label = section.partition(":")
            if kind not in SCHEMA or (kind in LABELLED) != bool(label):
                self.report(section, None, "unknown section")
                continue
            if kind in UNLABELLED:
                continue
            values = self.section(parser, section, kind)
            if kind == "ae":
                self.value(section, None, _ae_title, label)
                self.check_processor(section, values)
                if not self.problems:
                    aes[label] = AeConfig(ae_title=label, **values)
            elif kind == "source":
                self.check_source_tls(section, values, dicom)
                if not self.problems:
                    sources.append(SourceConfig(name=label, **values))
            elif kind == "destination":
                if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", label):
                    self.report(
                        section,
                        None,
                        "a destination name may only use letters, digits, '_', '.', '-'",
                    )
                self.check_destination_tls(section, values)
                if values.get("outbox") is None:
                    values["outbox"] = (self.folder / "var" / "outbox" / label).resolve()
                # Two destinations on one outbox would stage into each other's
                # folders (and the second would delete the first's links).
                if (other := outboxes.setdefault(values["outbox"], label)) != label:
                    self.report(section, "outbox", f"is [destination:{other}]'s outbox too")
                if not self.problems:
                    destinations[label] = DestinationConfig(name=label, **values)
        for section in parser.sections():
            kind, _, label = section.partition(":")
            if kind != "ae" or not parser.has_option(section, "destinations"):
                continue
            try:
                referenced = _names(parser.get(section, "destinations"), self.folder)
            except ValueError:
                continue  # reported with the section's keys
            for destination in referenced:
                if not parser.has_section(f"destination:{destination}"):
                    self.report(section, "destinations", f"no [destination:{destination}] section")
        return aes, sources, destinations

    def section(self, parser: configparser.ConfigParser, section: str, kind: str) -> dict[str, Any]:
        schema = SCHEMA[kind]
        given = dict(parser.items(section)) if parser.has_section(section) else {}
        for key in given:
            if key not in schema:
                self.report(section, key, "unknown key")
        values = {}
        for key, (parse, default) in schema.items():
            if key in given:
                values[key] = self.value(section, key, parse, given[key].strip())
            elif default is REQUIRED:
                self.report(section, key, "is required")
            else:
                values[key] = None if default is None else parse(default, self.folder)
        return values

    def check_processor(self, section: str, values: dict[str, Any]) -> None:
        """Keys that only make sense together."""
        needed = PROCESSOR_NEEDS.get(values.get("processor") or "")
        if needed and values.get(needed) is None:
            self.report(section, needed, f"is required with processor = {values['processor']}")
        if values.get("ignored_sop_classes") and values.get("allowed_sop_classes"):
            self.report(
                section,
                "allowed_sop_classes",
                "give ignored_sop_classes or allowed_sop_classes, not both",
            )

    def check_listener_tls(self, values: dict[str, Any]) -> None:
        """``tls_port`` needs a certificate and key that load, and a port of its own;
        ``port = 0`` (no plain listener) needs ``tls_port``."""
        if values.get("port") == 0 and not values.get("tls_port"):
            self.report(
                "dicom", "port", "must be 1-65535 (0 turns the plain port off: set tls_port)"
            )
        if not values.get("tls_port"):
            return
        if values["tls_port"] == values.get("port"):
            self.report("dicom", "tls_port", "must differ from port")
        for key in ("certificate", "private_key"):
            if values.get(key) is None:
                self.report("dicom", key, "is required with tls_port")
        if values.get("require_client_certificate") and values.get("ca_certificates") is None:
            self.report("dicom", "ca_certificates", "is required with require_client_certificate")
        self.check_tls_loads("dicom", values, server_side=True)

    def check_source_tls(self, section: str, values: dict[str, Any], dicom: dict[str, Any]) -> None:
        """``certificate_name`` needs a TLS listener that verifies client certificates."""
        if values.get("certificate_name") is None:
            return
        if not dicom.get("tls_port"):
            self.report(section, "certificate_name", "needs [dicom] tls_port")
        elif dicom.get("ca_certificates") is None:
            self.report(
                section,
                "certificate_name",
                "needs [dicom] ca_certificates to verify the certificate",
            )

    def check_destination_tls(self, section: str, values: dict[str, Any]) -> None:
        """A client certificate comes with its key; everything given must load."""
        if not values.get("tls"):
            return
        if (values.get("certificate") is None) != (values.get("private_key") is None):
            self.report(section, "private_key", "give certificate and private_key together")
        self.check_tls_loads(section, values, server_side=False)

    def check_tls_loads(self, section: str, values: dict[str, Any], server_side: bool) -> None:
        """Build the SSLContext the service would build; report why OpenSSL refuses it."""
        keys = ("certificate", "private_key", "ca_certificates", "tls_minimum_version")
        if any(f"[{section}] {key}:" in str(p) for p in self.problems for key in keys):
            return  # already reported, more precisely
        if values.get("tls_ciphers") is None or (values.get("certificate") is None and server_side):
            return
        settings = TlsSettings(
            values["certificate"],
            values["private_key"],
            values["ca_certificates"],
            values["tls_minimum_version"],
            values["tls_ciphers"],
        )
        try:
            settings.server_context() if server_side else settings.client_context()
        except (ssl.SSLError, ValueError, OSError) as exc:
            self.report(section, "certificate", f"TLS settings do not load: {_ssl_reason(exc)}")

    def value(self, section: str, key: str | None, parse: Parser, text: str) -> Any:
        try:
            return parse(text, self.folder)
        except ValueError as exc:
            self.report(section, key, str(exc))
            return None


def config_warnings(config: Config) -> list[str]:
    """What loads but is likely not what the admin meant, one line each.

    ``config check`` prints them and the service logs them at start; neither
    refuses to run, since a site may want exactly that.
    """
    warnings = []
    dicom = config.dicom
    if dicom.tls_port and dicom.port and not _is_loopback(dicom.host):
        warnings.append(
            f"[dicom] port: {dicom.port} is open without TLS on {dicom.host} while tls_port "
            "is set, so a peer can bypass the TLS listener's checks there "
            "(port = 0 listens on TLS alone)"
        )
    if dicom.ae_title not in config.aes:
        warnings.append(
            f"[dicom] ae_title: {dicom.ae_title} is our calling AE title for exports, and is "
            f"not answered: peers must call {', '.join(sorted(config.aes))} "
            f"(add [ae:{dicom.ae_title}] to answer it too)"
        )
    return warnings


def _is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve anywhere
