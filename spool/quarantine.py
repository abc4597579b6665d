"""Move a file that cannot be an instance out of the way, never deleting it.

The file keeps its name behind a timestamp and a short random tag; a
``.reason`` sidecar says why it is there, for the admin who finds it: two
lines, the original path and the reason, each escaped to one line because
both may carry attacker text (a file name, a parser's message).
"""

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from spool.durable import fsync_dir
from spool.layout import SpoolLayout
from spool.text import one_line

_MAX_NAME = 120


def quarantine(layout: SpoolLayout, path: Path, reason: str) -> Path:
    """Rename ``path`` into ``spool/quarantine/`` with a ``.reason`` sidecar."""
    layout.quarantine.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = layout.quarantine / f"{stamp}-{uuid.uuid4().hex[:8]}-{path.name[-_MAX_NAME:]}"
    os.rename(path, target)
    sidecar = target.with_name(target.name + ".reason")
    sidecar.write_text(f"{one_line(path)}\n{one_line(reason)}\n", encoding="utf-8")
    fsync_dir(layout.quarantine)
    return target
