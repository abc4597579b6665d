"""Logging set-up for the service: one line per record on stderr.

Under systemd (``JOURNAL_STREAM`` set) journald adds the time itself, so the
line starts with the level; on a terminal it starts with a UTC timestamp.
"""

import logging
import os
import time


def configure_logging(level: str) -> None:
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    formatter = logging.Formatter(fmt)
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
