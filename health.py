"""Is the adapter healthy?  Facts for ``dicom-adapter status`` and monitoring scripts.

Read from outside the service, on its own box.  "Listening" means *this*
adapter answers: the process its row in ``nodes`` (``[node] name``) names
is alive and a C-ECHO to one of its AE titles gets an answer from it (one
association slot, for a moment; a socket that merely listens could be
anything).  The ledger must take a write (one, rolled back), and the node's
heartbeat in it must be recent and name no problem (intake stopped or
stuck, the watcher or SCP process gone).  Then failed jobs and exports
(the ledger's, whichever node ran them), and the spool's filesystem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config import Config
from ledger.exports import Exports
from ledger.models import utcnow
from ledger.nodes import NodeRecord, Nodes
from ledger.states import TaskKind, TaskState
from ledger.store import Ledger
from ledger.tasks import Tasks
from scp.admission import HEALTH_CHECK_AE

ECHO_TIMEOUT = 5.0  # seconds for the self C-ECHO's association and answer
HEARTBEAT_SECONDS = 5.0  # how often the service writes its heartbeat (adapter.py)
HEARTBEAT_STALE_SECONDS = 6 * HEARTBEAT_SECONDS  # a busy ledger may delay a few

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


def service_running(node: NodeRecord | None) -> bool:
    """True if the process the node's row last named is alive (on this box)."""
    return node is not None and Path(f"/proc/{node.pid}").exists()


def answers(config: Config, timeout: float = ECHO_TIMEOUT) -> bool:
    """True if a DICOM SCP on our port answers one of our AE titles as this adapter would.

    Accepted (C-ECHO or not: Verification may be switched off), or rejected
    1/1/3 by its source allow-list: either way our admission rules answered.
    Over TLS alone (``port = 0``) no echo is tried (it may need a client
    certificate): the TLS port listening is taken as the answer.
    """
    if not config.dicom.port:
        return listening(config.dicom.tls_port)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.dicom.host, config.dicom.host)
    ae = AE(ae_title=HEALTH_CHECK_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    quiet = logging.getLogger("pynetdicom")
    level, quiet.level = quiet.level, logging.CRITICAL  # a refusal is an answer here
    try:
        assoc = ae.associate(host, config.dicom.port, ae_title=sorted(config.aes)[0])
        if assoc.is_established:
            assoc.release()
            return True
        rejection = assoc.acceptor.primitive if assoc.is_rejected else None
        return rejection is not None and (rejection.result_source, rejection.diagnostic) == (1, 3)
    except (OSError, ValueError):
        return False
    finally:
        quiet.level = level


def health(config: Config, ledger: Ledger) -> dict[str, Any]:
    """The health facts, and ``healthy``: this adapter answers and works, room on disk,
    nothing failed or undelivered."""
    state = ledger.service_state()
    node = Nodes(ledger).get(config.node.name)
    running = service_running(node)
    folder = config.storage.spool
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # not created yet: the filesystem it will be on
    try:
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        needed = config.storage.min_free.required_bytes(stats.f_blocks * stats.f_frsize)
    except OSError:
        free, needed = 0, 1
    failed = Tasks(ledger).listing(state=TaskState.FAILED)
    failed_jobs = [task.id for task in failed if task.kind == TaskKind.PROCESS]
    failed_exports = [task.id for task in failed if task.kind == TaskKind.EXPORT]
    # Export files refused or out of retries: kept on disk, waiting for
    # ``tasks retry`` or ``tasks discard``.
    undelivered = Exports(ledger).undelivered()
    heartbeat = None if node is None else (utcnow() - node.heartbeat_at).total_seconds()
    problems = list(node.problems) if node is not None and running else []
    if running and (heartbeat is None or heartbeat > HEARTBEAT_STALE_SECONDS):
        problems.append(
            "the service has not written the ledger for "
            + ("ever" if heartbeat is None else f"{heartbeat:.0f}s")
        )
    write_problem = ledger.write_problem()
    if write_problem is not None:
        problems.append(f"the ledger cannot be written: {write_problem}")
    facts = {
        "listening": running and answers(config),
        "problems": problems,
        "heartbeat_age_seconds": None if heartbeat is None else round(heartbeat, 1),
        "last_reconcile_at": state.get("last_reconcile_at"),  # whichever node it was
        "spool_free_bytes": free,
        "spool_min_free_bytes": needed,
        "failed_jobs": failed_jobs,
        "failed_exports": failed_exports,
        "undelivered_files": undelivered,
    }
    facts["healthy"] = (
        facts["listening"]
        and not problems
        and free >= needed
        and not failed_jobs
        and not failed_exports
        and not undelivered
    )
    return facts
