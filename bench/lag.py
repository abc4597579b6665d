"""Ledger lag per instance: from the adapter's C-STORE answer to its ``received`` row.

The adapter renames each spooled file into place just before it answers the
C-STORE (then fsyncs the folder and answers), so the file's ``st_ctime`` marks
the answer. Intake writes the instance's ``received`` event (``events.at``,
the same value as ``instances.received_at``) with the time its write
transaction began, as ISO-8601 UTC text with microseconds. Both are wall
clock, so their difference is the lag. See bench/README.md for the limits.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # ledger.models.TIME_FORMAT
QUERY = """
    SELECT instances.path, events.at FROM events
    JOIN instances ON instances.id = events.instance_id
    WHERE events.from_state IS NULL AND events.to_state = 'received'
"""


def _epoch(text: str) -> float:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def reader(url: str) -> Engine:
    """An engine that reads the adapter's ledger at ``url`` while it runs, either backend.

    A SQLite file is opened read-only, so the bench can neither take the
    write lock nor touch the journal mode; PostgreSQL is read as it is.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(database=f"file:{parsed.database}", query={"mode": "ro", "uri": "true"})
    return create_engine(parsed)


def instance_lags(ledger: Engine, base: Path) -> list[float]:
    """Seconds from each file's rename (ctime) to its ``received`` event.

    ``base`` resolves relative paths (the adapter's working folder).
    """
    with ledger.connect() as connection:
        rows = connection.execute(text(QUERY)).all()
    lags = []
    for path, at in rows:
        stamp = os.stat(base / path).st_ctime_ns / 1e9
        lags.append(_epoch(at) - stamp)
    return lags


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that occurred, defined for any non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
