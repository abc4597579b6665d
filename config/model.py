"""The parsed configuration: one frozen dataclass per config.ini section.

Built once by :mod:`config.reader` and handed out whole or by section (each
component gets only its own), so nothing re-reads or changes the config
while running; a reload builds a new :class:`Config` and swaps it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from config.tls import DEFAULT_TLS_CIPHERS, TlsSettings

UID_GROUPINGS = frozenset({0x0020000D, 0x0020000E})  # StudyInstanceUID, SeriesInstanceUID


@dataclass(frozen=True)
class FreeSpaceRule:
    """Refuse stores while free space is under any of these limits."""

    percent: float = 0.0
    bytes: int = 0

    def required_bytes(self, total_bytes: int) -> int:
        """Free bytes needed on a filesystem of ``total_bytes``."""
        return max(self.bytes, int(total_bytes * self.percent / 100))


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
class HttpConfig:
    """``[http]``: the one HTTP listener (DICOMweb STOW-RS; ``port`` 0: none)."""

    host: str
    port: int
    public_url: str | None = None  # the base of the URLs the responses give
    certificate: Path | None = None  # with private_key: HTTPS
    private_key: Path | None = None
    ca_certificates: Path | None = None  # set: a client certificate it signed is required
    tls_minimum_version: str = "1.2"
    tls_ciphers: str = DEFAULT_TLS_CIPHERS
    users: Path | None = None  # name:role:scrypt hash lines (``dicom-adapter http add-user``)
    tokens: Path | None = None  # name:role:sha256 lines (``dicom-adapter http add-token``)
    max_request_size: int = 8 * 2**30  # bytes of one request body; 0: no limit
    max_parts: int = 10_000  # instances in one STOW-RS request
    timeout: float = 60.0  # seconds a request body may stall before it is cut off
    anonymous_pages: str = "loopback"  # who may read the status pages unsigned (ANONYMOUS_PAGES)
    show_phi: bool = False  # Patient IDs on the pages, to signed-in users only

    @property
    def tls(self) -> TlsSettings | None:
        """HTTPS settings; None without a certificate.  With ``ca_certificates``, clients
        must show a certificate those CAs signed."""
        if self.certificate is None:
            return None
        return TlsSettings(
            self.certificate,
            self.private_key,
            self.ca_certificates,
            self.tls_minimum_version,
            self.tls_ciphers,
            require_client_certificate=self.ca_certificates is not None,
        )

    @property
    def base_url(self) -> str:
        """Where clients reach the listener: ``public_url``, or what host and port say."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str  # this adapter's name in the ledger (``nodes``) and the metrics
    lease: float  # seconds a running task stays this node's without a renewal


@dataclass(frozen=True)
class TasksConfig:
    workers: int  # jobs and exports of different AEs and destinations running at once


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

    @property
    def group_key_names_no_patient(self) -> bool:
        """Groups by Study or Series Instance UID name no patient; by Patient ID they do,
        so such a group key is patient data (shown only where patient data may be)."""
        return self.group_by in UID_GROUPINGS


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[destination:NAME]``: a peer the adapter sends to, over DICOM or DICOMweb."""

    name: str
    outbox: Path
    retries: int
    retry_delay: float
    retention: float
    type: str = "dicom"  # dicom: C-STORE; dicomweb: STOW-RS
    # type = dicom (ae_title, host and port are set then)
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    calling_ae: str | None = None  # None: the adapter's own [dicom] ae_title
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    tls: bool = False
    # TLS, both types (type = dicomweb: when url is https)
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    verify_hostname: bool = True
    tls_minimum_version: str = "1.2"
    tls_ciphers: str = DEFAULT_TLS_CIPHERS
    # type = dicomweb (url is set then)
    url: str | None = None  # the service's base URL: STOW-RS posts to {url}/studies
    username: str | None = None  # with password_file: HTTP Basic
    password_file: Path | None = None  # read at each attempt, never kept in config.ini
    token_file: Path | None = None  # a bearer token, read at each attempt
    timeout: float = 60.0  # seconds to connect, and that a read or write may wait
    max_request_size: int = 512 * 2**20  # bytes of files in one STOW-RS request; 0: no limit
    max_parts: int = 100  # files in one STOW-RS request

    @property
    def secured(self) -> bool:
        """Reached over TLS: ``tls = true``, or an https ``url``."""
        if self.type == "dicomweb":
            return (self.url or "").startswith("https://")
        return self.tls

    @property
    def signs_in(self) -> bool:
        """Sends a password or a token (``type = dicomweb``)."""
        return self.password_file is not None or self.token_file is not None

    @property
    def tls_settings(self) -> TlsSettings | None:
        """How to secure the connection; None when it is not over TLS."""
        if not self.secured:
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
    node: NodeConfig
    dicom: DicomConfig
    http: HttpConfig
    storage: StorageConfig
    ledger: LedgerConfig
    watcher: WatcherConfig
    tasks: TasksConfig
    log: LogConfig
    metrics: MetricsConfig
    aes: dict[str, AeConfig] = field(default_factory=dict)
    sources: tuple[SourceConfig, ...] = ()
    destinations: dict[str, DestinationConfig] = field(default_factory=dict)

    @property
    def processed_aes(self) -> dict[str, AeConfig]:
        """The ``[ae:NAME]`` sections with a processor: the ones groups and jobs are for."""
        return {name: ae for name, ae in self.aes.items() if ae.processor != "none"}
