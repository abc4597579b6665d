"""Exceptions and process exit codes shared by every part of the adapter.

Errors are sorted by audience: the wire gets a DICOM status, the CLI one
``Error: ...`` line, the log one line.  The exit codes follow the CLI
convention of click and watchmedo: 0 success, 1 failure, 2 usage or
configuration error (systemd's ``RestartPreventExitStatus=2`` relies on it).
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class AdapterError(Exception):
    """Base class of the adapter's own, expected failures."""


class ConfigError(AdapterError):
    """The configuration file cannot be used.

    The message names file, section and key, e.g.
    ``config.ini [dicom] port: must be 1-65535``.
    """

    def __init__(self, file: str, section: str | None, key: str | None, problem: str) -> None:
        where = file
        if section is not None:
            where += f" [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.section = section
        self.key = key
        self.problem = problem


class IllegalTransition(AdapterError):
    """An instance was asked to move between states the lifecycle forbids."""
