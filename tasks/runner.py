"""Run due tasks: one lane per AE and per destination, a bounded number of lanes at once.

A lane runs its own tasks one after another, in the order they fell due,
so a destination sees one association of ours at a time and a processor
one job of an AE at a time.  Different lanes run side by side, on at most
``workers`` threads: one AE's 40 s command or one destination that never
answers holds up only its own lane.  ``tick`` only hands work out and
returns; a lane already busy is left alone (its next due task waits for
it).  The ledger is the truth: a task a lane never got to stays
``pending``, and one interrupted by a restart is ``running`` until
:meth:`ledger.tasks.Tasks.recover` puts it back.

Several nodes may share one ledger.  A node starts a task under a lease
(``[node] lease``) that each tick renews while the task runs; a task
another node started first is skipped; a task whose node stopped renewing
goes back to the queue for any node (:meth:`Tasks.requeue_lapsed`), and
the node that lost it records nothing of its attempt (``LeaseLost``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from ledger.models import utcnow
from ledger.records import TaskRecord
from ledger.tasks import LeaseLost, Tasks
from tasks.lanes import Lane

log = logging.getLogger(__name__)
LaneKey = tuple[str, str]  # (kind, target): ("process", "AE") or ("export", "PACS")


class TaskRunner:
    def __init__(
        self, tasks: Tasks, workers: int, node: str | None = None, lease_seconds: float = 30.0
    ) -> None:
        self.tasks = tasks
        self.node = node
        self.lease_seconds = lease_seconds
        self.lanes: Mapping[LaneKey, Lane] = {}  # replaced whole on a reload
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="task")
        self._busy: set[LaneKey] = set()
        self._running: set[int] = set()  # task ids this node's lanes run now
        self._renewed = 0.0  # time.monotonic() of the last renewal
        self._lock = threading.Lock()

    def tick(self, now: datetime | None = None) -> int:
        """Renew this node's leases, take back lapsed ones, then hand each idle lane its
        due tasks; return how many tasks were handed out."""
        now = now or utcnow()
        self._renew()
        self.tasks.requeue_lapsed(now)
        waiting: dict[LaneKey, list[TaskRecord]] = {}
        for task in self.tasks.due(now):
            lane = self.lanes.get((task.kind, task.target))
            if lane is None or not lane.takes(task):
                continue  # its AE or destination is no longer configured so: left pending
            waiting.setdefault((task.kind, task.target), []).append(task)
        handed = 0
        with self._lock:
            idle = {key: due for key, due in waiting.items() if key not in self._busy}
            self._busy.update(idle)
        for key, due in idle.items():
            self._pool.submit(self._drain, key, self.lanes[key], [task.id for task in due])
            handed += len(due)
        return handed

    def busy(self) -> set[LaneKey]:
        """Lanes running a task now."""
        with self._lock:
            return set(self._busy)

    def _renew(self) -> None:
        """Every third of a lease, hold this node's running tasks a lease longer."""
        if self.node is None or time.monotonic() - self._renewed < self.lease_seconds / 3:
            return
        with self._lock:
            running = set(self._running)
        self.tasks.renew(running, self.node, self.lease_seconds)
        self._renewed = time.monotonic()

    def _drain(self, key: LaneKey, lane: Lane, task_ids: list[int]) -> None:
        try:
            for task_id in task_ids:
                self._run(lane, task_id)
        except Exception:  # the ledger itself failed: the task stays as it was recorded
            log.exception("%s %s: running its tasks failed", *key)
        finally:
            with self._lock:
                self._busy.discard(key)

    def _run(self, lane: Lane, task_id: int) -> None:
        task = self.tasks.start(task_id, node=self.node, lease_seconds=self.lease_seconds)
        if task is None:
            log.debug("task %d: no longer pending (another node took it)", task_id)
            return
        with self._lock:
            self._running.add(task_id)
        try:
            lane.run(task)
        except LeaseLost:
            log.warning(
                "%s %d: its lease lapsed and another node took it: attempt %d not recorded",
                task.noun,
                task.id,
                task.attempts,
            )
        finally:
            with self._lock:
                self._running.discard(task_id)

    def shutdown(self) -> None:
        """Wait for the tasks running now; nothing new starts."""
        self._pool.shutdown(wait=True, cancel_futures=True)
