"""Is the adapter healthy?  Facts for ``dicom-adapter status`` and monitoring scripts.

Read from outside the service: the kernel's table of listening sockets
(no connection is made, so no association slot is taken), the ledger (what
the service last recorded about itself, failed jobs and exports) and the
spool's filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from config import Config
from ledger.exports import Exports
from ledger.processing import Processing
from ledger.states import ExportState, JobState
from ledger.store import Ledger

_LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening(port: int) -> bool:
    """True if some socket on this machine listens on TCP ``port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def health(config: Config, ledger: Ledger) -> dict[str, Any]:
    """The health facts, and ``healthy``: listening, room on disk, nothing failed or undelivered."""
    state = ledger.service_state()
    folder = config.storage.spool
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # not created yet: the filesystem it will be on
    try:
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        needed = config.storage.min_free.required_bytes(stats.f_blocks * stats.f_frsize)
    except OSError:
        free, needed = 0, 1
    failed_jobs = [job.id for job in Processing(ledger).jobs(JobState.FAILED)]
    exports = Exports(ledger)
    failed_exports = [task.id for task in exports.tasks(ExportState.FAILED)]
    # Export files refused or out of retries: kept on disk, waiting for
    # ``exports retry`` or ``exports discard``.
    undelivered = exports.undelivered()
    facts = {
        "listening": all(listening(port) for port in config.dicom.ports),
        "last_reconcile_at": state.get("last_reconcile_at"),
        "spool_free_bytes": free,
        "spool_min_free_bytes": needed,
        "failed_jobs": failed_jobs,
        "failed_exports": failed_exports,
        "undelivered_files": undelivered,
    }
    facts["healthy"] = (
        facts["listening"]
        and free >= needed
        and not failed_jobs
        and not failed_exports
        and not undelivered
    )
    return facts
