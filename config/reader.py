"""Read config.ini against the schema into a :class:`~config.model.Config`.

One pass: parse each key with its parser, apply the rules between keys,
then build the frozen dataclasses.  Every error names file, section and key
(``config.ini [dicom] port: must be 1-65535``).  ``load_config`` raises at
the first problem (the service, other commands); ``check_config`` collects
them all (``dicom-adapter config check``).  Relative paths are relative to
the config file's folder, so the shipped ``config.ini`` works from any
working directory.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
from pathlib import Path
from typing import Any

from config import dicom_values, rules
from config.model import (
    AeConfig,
    Config,
    DestinationConfig,
    DicomConfig,
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
from config.schema import LABELLED, REQUIRED, SCHEMA, UNLABELLED
from config.values import Parser, names
from errors import ConfigError

CONFIG_ENV = "DICOM_ADAPTER_CONFIG"


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

    def report_all(self, problems: list[rules.Problem]) -> None:
        for problem in problems:
            self.report(*problem)

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
        self.report_all(rules.listener_tls_problems(sections["dicom"]))
        if sections["dicom"].get("tls_port"):
            self.check_tls_loads("dicom", sections["dicom"], server_side=True)
        self.report_all(rules.http_problems(sections["http"]))
        if sections["http"].get("port") and sections["http"].get("certificate"):
            self.check_tls_loads("http", sections["http"], server_side=True)
        aes, sources, destinations = self.labelled(parser, sections["dicom"])
        if not any(section.startswith("ae:") for section in parser.sections()):
            self.report(None, None, "no [ae:NAME] section: the adapter would answer to no AE title")
        if self.problems:
            return None
        return Config(
            path=self.path.resolve(),
            node=NodeConfig(
                name=sections["node"]["name"] or socket.gethostname(),
                lease=sections["node"]["lease"],
            ),
            dicom=DicomConfig(**sections["dicom"]),
            http=HttpConfig(**sections["http"]),
            storage=StorageConfig(**sections["storage"]),
            ledger=LedgerConfig(**sections["ledger"]),
            watcher=WatcherConfig(**sections["watcher"]),
            tasks=TasksConfig(**sections["tasks"]),
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
                self.value(section, None, dicom_values.called_ae_title, label)
                self.report_all(rules.processor_problems(section, values))
                if not self.problems:
                    aes[label] = AeConfig(ae_title=label, **values)
            elif kind == "source":
                self.report_all(rules.source_tls_problems(section, values, dicom))
                if not self.problems:
                    sources.append(SourceConfig(name=label, **values))
            elif kind == "destination":
                if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", label):
                    self.report(
                        section,
                        None,
                        "a destination name may only use letters, digits, '_', '.', '-'",
                    )
                self.report_all(
                    rules.destination_problems(section, values, parser.options(section))
                )
                if rules.destination_secured(values):
                    self.report_all(rules.destination_tls_problems(section, values))
                    self.check_tls_loads(section, values, server_side=False)
                if values.get("outbox") is None:
                    values["outbox"] = (self.folder / "var" / "outbox" / label).resolve()
                # Two destinations on one outbox would stage into each other's
                # folders (and the second would delete the first's links).
                if (other := outboxes.setdefault(values["outbox"], label)) != label:
                    self.report(section, "outbox", f"is [destination:{other}]'s outbox too")
                if not self.problems:
                    destinations[label] = DestinationConfig(name=label, **values)
        self.check_destination_references(parser)
        return aes, sources, destinations

    def check_destination_references(self, parser: configparser.ConfigParser) -> None:
        """Each name in an ``[ae:NAME] destinations`` list has its ``[destination:NAME]``."""
        for section in parser.sections():
            kind, _, _ = section.partition(":")
            if kind != "ae" or not parser.has_option(section, "destinations"):
                continue
            try:
                referenced = names(parser.get(section, "destinations"), self.folder)
            except ValueError:
                continue  # reported with the section's keys
            for destination in referenced:
                if not parser.has_section(f"destination:{destination}"):
                    self.report(section, "destinations", f"no [destination:{destination}] section")

    def section(self, parser: configparser.ConfigParser, section: str, kind: str) -> dict[str, Any]:
        schema = SCHEMA[kind]
        given = dict(parser.items(section)) if parser.has_section(section) else {}
        for key in given:
            if key not in schema:
                self.report(section, key, "unknown key")
        parsed = {}
        for key, (parse, default) in schema.items():
            if key in given:
                parsed[key] = self.value(section, key, parse, given[key].strip())
            elif default is REQUIRED:
                self.report(section, key, "is required")
            else:
                parsed[key] = None if default is None else parse(default, self.folder)
        return parsed

    def check_tls_loads(self, section: str, values: dict[str, Any], server_side: bool) -> None:
        """Report why OpenSSL refuses the section's TLS settings, unless a key it is built
        from has a problem already (reported more precisely)."""
        if any(p.section == section and p.key in rules.TLS_CONTEXT_KEYS for p in self.problems):
            return
        if (problem := rules.tls_load_problem(section, values, server_side)) is not None:
            self.report(*problem)

    def value(self, section: str, key: str | None, parse: Parser, text: str) -> Any:
        try:
            return parse(text, self.folder)
        except ValueError as exc:
            self.report(section, key, str(exc))
            return None
