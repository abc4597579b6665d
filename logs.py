"""Logging set-up for the service: one line per record on stderr.

Under systemd (``JOURNAL_STREAM`` set) journald adds the time itself, so the
line starts with the level; on a terminal it starts with a UTC timestamp.
Every message is made one line before it is written: a value from the wire
or from a file (an AE title, a UID, a parser's message) that carries a CR or
LF cannot forge a log line, whichever call logged it.  Tracebacks keep their
lines.
"""

import logging
import os
import time

from spool.text import one_line


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message (not in an appended traceback)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    formatter = OneLineFormatter(fmt)
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These log routine steps at INFO (every PDU, every job added); their
    # warnings and errors are enough.
    for chatty in ("pynetdicom", "apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
