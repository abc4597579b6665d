"""Ledger lag per instance: from the adapter's C-STORE answer to its ``received`` row.

The adapter renames each spooled file into place just before it answers the
C-STORE (then fsyncs the folder and answers), so the file's ``st_ctime`` marks
the answer. Intake writes the instance's ``received`` event (``events.at``,
the same value as ``instances.received_at``) with the time its write
transaction began, as ISO-8601 UTC text with microseconds. Both are wall
clock, so their difference is the lag. See bench/README.md for the limits.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # ledger.models.TIME_FORMAT
QUERY = """
    SELECT instances.path, events.at FROM events
    JOIN instances ON instances.id = events.instance_id
    WHERE events.from_state IS NULL AND events.to_state = 'received'
"""


def _epoch(text: str) -> float:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def _rows(ledger: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        return db.execute(QUERY).fetchall()


def instance_lags(ledger: Path, base: Path) -> list[float]:
    """Seconds from each file's rename (ctime) to its ``received`` event.

    ``base`` resolves relative paths (the adapter's working folder).
    """
    lags = []
    for path, at in _rows(ledger):
        stamp = os.stat(base / path).st_ctime_ns / 1e9
        lags.append(_epoch(at) - stamp)
    return lags


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that occurred, defined for any non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
