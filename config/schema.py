"""What config.ini may hold: section -> key -> (parser, default or REQUIRED).

One table for every section kind, so an unknown key or section is an error
rather than silently ignored, and ``tests/test_docs.py`` can check that the
shipped ``config.ini`` documents every key.  A default is raw text, parsed
like a given value, so it goes through the same checks.
"""

from __future__ import annotations

from typing import Any

from config import dicom_values, values
from config.tls import DEFAULT_TLS_CIPHERS, TLS_VERSIONS
from config.values import Parser
from watchers.duplicates import DEFAULT_POLICY as DEFAULT_DUPLICATE_POLICY
from watchers.duplicates import POLICIES as DUPLICATE_POLICIES

PROCESSORS = ("none", "command", "folder", "webhook", "forward")
# The key each processor cannot work without.
PROCESSOR_NEEDS = {
    "command": "command",
    "folder": "output",
    "webhook": "url",
    "forward": "destinations",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Who may read the HTTP listener's status pages without signing in.
ANONYMOUS_PAGES = ("loopback", "anywhere", "never")
DESTINATION_TYPES = ("dicom", "dicomweb")  # DIMSE C-STORE, DICOMweb STOW-RS
# Keys of one destination type only (the others, outbox, retries and TLS, are for both),
# and the keys a destination of that type cannot work without.
DESTINATION_KEYS = {
    "dicom": (
        "ae_title",
        "host",
        "port",
        "calling_ae",
        "acse_timeout",
        "dimse_timeout",
        "network_timeout",
        "tls",
    ),
    "dicomweb": (
        "url",
        "username",
        "password_file",
        "token_file",
        "timeout",
        "max_request_size",
        "max_parts",
    ),
}
DESTINATION_NEEDS = {"dicom": ("ae_title", "host", "port"), "dicomweb": ("url",)}
REQUIRED = object()
# Keys of both TLS ends: [dicom] (the listener) and [destination:NAME].
TLS_KEYS: dict[str, tuple[Parser, Any]] = {
    "certificate": (values.readable_file, None),
    "private_key": (values.readable_file, None),
    "ca_certificates": (values.readable_file, None),
    "tls_minimum_version": (values.choice(tuple(TLS_VERSIONS)), "1.2"),
    "tls_ciphers": (values.tls_ciphers, DEFAULT_TLS_CIPHERS),
}
LABELLED = ("ae", "source", "destination")  # sections that carry a name: [kind:NAME]
UNLABELLED = ("node", "dicom", "http", "storage", "ledger", "watcher", "tasks", "log", "metrics")

SCHEMA: dict[str, dict[str, tuple[Parser, Any]]] = {
    "node": {
        "name": (values.node_name, None),  # None: the host name
        "lease": (values.seconds, "30"),
    },
    "dicom": {
        "ae_title": (dicom_values.called_ae_title, "DICOMADAPTER"),
        "host": (values.host, "0.0.0.0"),
        "port": (values.listen_port, "11112"),
        "max_associations": (values.integer(1, 1000), "16"),
        "max_associations_per_host": (values.integer(1, 1000), None),
        "reject_unknown_sources": (values.boolean, "false"),
        "verification": (values.boolean, "true"),
        "transfer_syntaxes": (dicom_values.transfer_syntaxes, "all"),
        "acse_timeout": (values.seconds, "30"),
        "dimse_timeout": (values.seconds, "30"),
        "network_timeout": (values.seconds, "60"),
        "maximum_pdu_size": (values.integer(4096, 2**24), "262144"),
        "shutdown_grace": (values.retention, "30"),
        "max_instance_size": (values.size, "0"),
        "tls_port": (values.integer(0, 65535), "0"),
        **TLS_KEYS,
        "require_client_certificate": (values.boolean, "false"),
        "tls_reject_unknown_sources": (values.boolean, None),  # None: as reject_unknown_sources
    },
    "http": {
        "host": (values.host, "127.0.0.1"),
        "port": (values.integer(0, 65535), "0"),
        "public_url": (values.http_url, None),  # None: from host, port and TLS
        **TLS_KEYS,
        "users": (values.resolved_path, None),
        "tokens": (values.resolved_path, None),
        "max_request_size": (values.size, "8GiB"),
        "max_parts": (values.integer(1, 1_000_000), "10000"),
        "timeout": (values.seconds, "60"),
        "anonymous_pages": (values.choice(ANONYMOUS_PAGES), "loopback"),
        "show_phi": (values.boolean, "false"),
    },
    "storage": {
        "spool": (values.resolved_path, "var/spool"),
        "jobs": (values.resolved_path, "var/jobs"),
        "min_free": (values.free_space, "5%, 1GiB"),
        "reclaim_interval": (values.seconds, "30"),
        "superseded_retention": (values.retention_or_never, "never"),
    },
    "ledger": {"url": (values.ledger_url, "sqlite:///var/ledger.db")},
    "watcher": {
        "reconcile_interval": (values.seconds, "60"),
        "settle_seconds": (values.seconds, "2"),
    },
    "tasks": {"workers": (values.integer(1, 64), "4")},
    "log": {
        "level": (values.choice(LOG_LEVELS, upper=True), "INFO"),
        "log_phi": (values.boolean, "false"),
    },
    "metrics": {"host": (values.host, "127.0.0.1"), "port": (values.integer(0, 65535), "0")},
    "ae": {
        "duplicates": (values.choice(DUPLICATE_POLICIES), DEFAULT_DUPLICATE_POLICY),
        "processor": (values.choice(PROCESSORS), "none"),
        "group_by": (dicom_values.tag, "0020,000D"),
        "timeout": (values.seconds, "5"),
        "max_wait": (values.seconds, "3600"),
        "ignored_sop_classes": (dicom_values.uid_list, ""),
        "allowed_sop_classes": (dicom_values.uid_list, ""),
        "command": (values.command, None),
        "command_timeout": (values.seconds, "600"),
        "output": (values.resolved_path, None),
        "url": (values.http_url, None),
        "webhook_timeout": (values.seconds, "30"),
        "retries": (values.integer(0, 100), "3"),
        "retry_delay": (values.seconds, "10"),
        "retention": (values.retention, "0"),
        "destinations": (values.names, None),
    },
    "destination": {
        "type": (values.choice(DESTINATION_TYPES), "dicom"),
        # type = dicom; ae_title, host and port are required then (config.rules)
        "ae_title": (dicom_values.calling_ae_title, None),
        "host": (values.host, None),
        "port": (values.integer(1, 65535), None),
        "calling_ae": (dicom_values.calling_ae_title, None),
        "outbox": (values.resolved_path, None),  # default var/outbox/<NAME>
        "acse_timeout": (values.seconds, "30"),
        "dimse_timeout": (values.seconds, "60"),
        "network_timeout": (values.seconds, "60"),
        "retries": (values.integer(0, 100), "3"),
        "retry_delay": (values.seconds, "30"),
        "retention": (values.retention, "0"),
        "tls": (values.boolean, "false"),
        **TLS_KEYS,
        "verify_hostname": (values.boolean, "true"),
        # type = dicomweb; url is required then
        "url": (values.service_url, None),
        "username": (values.user_name, None),
        "password_file": (values.secret_file, None),
        "token_file": (values.secret_file, None),
        "timeout": (values.seconds, "60"),
        "max_request_size": (values.size, "512MiB"),
        "max_parts": (values.integer(1, 10_000), "100"),
    },
    "source": {
        "ae_title": (dicom_values.calling_ae_title, REQUIRED),
        "host": (values.source_host, None),
        "certificate_name": (values.certificate_name, None),
    },
}
