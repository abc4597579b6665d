"""config.ini -> frozen, validated dataclasses, parsed once.

The package's parts, each with one job: :mod:`config.model` (the dataclasses),
:mod:`config.values` and :mod:`config.dicom_values` (one parser per kind of
value), :mod:`config.schema` (sections, keys, defaults), :mod:`config.rules`
(checks between keys, warnings), :mod:`config.reader` (the file -> a
``Config``) and :mod:`config.tls` (the SSLContext built from TLS keys).
The rest of the adapter imports from here: ``from config import Config``.
"""

from config.model import (
    AeConfig,
    Config,
    DestinationConfig,
    DicomConfig,
    FreeSpaceRule,
    HttpConfig,
    LedgerConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    SourceConfig,
    StorageConfig,
    TasksConfig,
    WatcherConfig,
)
from config.reader import CONFIG_ENV, check_config, default_config_path, load_config
from config.rules import config_warnings
from config.schema import SCHEMA
from config.tls import TlsSettings

__all__ = [
    "CONFIG_ENV",
    "SCHEMA",
    "AeConfig",
    "Config",
    "DestinationConfig",
    "DicomConfig",
    "FreeSpaceRule",
    "HttpConfig",
    "LedgerConfig",
    "LogConfig",
    "MetricsConfig",
    "NodeConfig",
    "SourceConfig",
    "StorageConfig",
    "TasksConfig",
    "TlsSettings",
    "WatcherConfig",
    "check_config",
    "config_warnings",
    "default_config_path",
    "load_config",
]
