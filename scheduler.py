"""APScheduler wiring only: periodic ticks that drive work from ledger state.

Jobs live in memory (the ledger is the truth), each with a stable id,
``coalesce`` and ``max_instances=1`` so a slow tick is skipped rather than
stacked; ticks are idempotent, so a skipped run loses nothing.  APScheduler
logs and swallows job exceptions; the listener makes each one a log line
with the job id.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


def make_scheduler(jobs: int) -> BackgroundScheduler:
    """A scheduler with a thread for each of ``jobs`` jobs.

    Each job runs one instance at a time, so with a thread each, a job that
    blocks (a destination that never answers) never starves another; the
    default pool of 10 would, with ten dead destinations.
    """
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max(1, jobs))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    scheduler.add_listener(_report, EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)
    return scheduler


def every(
    scheduler: BackgroundScheduler, job_id: str, seconds: float, tick: Callable[[], object]
) -> None:
    """Run ``tick`` every ``seconds``; a job already doing just that is left on its pace
    (a reload every 30 s must not keep pushing a 60 s reconcile back)."""
    job = scheduler.get_job(job_id)
    if job is not None and job.func == tick and job.trigger.interval == timedelta(seconds=seconds):
        return
    scheduler.add_job(tick, "interval", seconds=seconds, id=job_id, replace_existing=True)


def _report(event: JobEvent) -> None:
    if event.code == EVENT_JOB_ERROR:
        exception = event.exception  # type: ignore[attr-defined]
        log.error("job %s failed: %s: %s", event.job_id, type(exception).__name__, exception)
    else:  # a tick still running at its next run time: coalesced, nothing lost
        log.debug("job %s still running at its next run time: skipped", event.job_id)
