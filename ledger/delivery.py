"""The promise, as queries: an acknowledged instance is delivered, or still on disk.

An instance's spool file may go only when its job succeeded (it was handed
over), or, for a ``forward`` job, the copy the export owns takes its place
until every destination confirms delivery.  These queries find the rows
where that chain could be broken; ``ledger check`` (:mod:`fsck`) looks at
the files they name and reports what is really gone as ``lost``.  Declined
instances (an ignored SOP class) and superseded copies past their retention
leave by an admin's rule, with an event saying so, and are not listed.
"""

from dataclasses import dataclass

from sqlalchemy import and_, or_, select

from ledger.states import ItemState, State, TaskKind, TaskState
from ledger.store import INSTANCES, Ledger
from ledger.tasks import TASK_ITEMS, TASKS

_UNDELIVERED = [ItemState.PENDING, ItemState.FAILED]
JOBS = TASKS.alias("job")
EXPORTS = TASKS.alias("export")


@dataclass(frozen=True)
class Undelivered:
    """A destination still owed an instance, and the file that is to carry it there.

    ``path`` is None when no export file stands for the instance at all.
    """

    instance_id: int | None
    export_id: int | None  # the export task
    destination: str | None
    path: str | None


def reclaimed_without_a_finished_job(ledger: Ledger) -> list[int]:
    """Reclaimed instances whose job did not succeed (or no longer exists); a job an
    admin discarded with ``--delete-files`` let its files go by decision, with an event."""
    query = (
        select(INSTANCES.c.id)
        .outerjoin(JOBS, JOBS.c.id == INSTANCES.c.job_id)
        .where(
            INSTANCES.c.state == State.RECLAIMED,
            INSTANCES.c.job_id.is_not(None),
            or_(
                JOBS.c.id.is_(None),
                JOBS.c.state.not_in([TaskState.SUCCEEDED, TaskState.DISCARDED]),
            ),
        )
        .order_by(INSTANCES.c.id)
    )
    return [instance_id for (instance_id,) in ledger.read(query)]


def forwarded_not_delivered(ledger: Ledger) -> list[Undelivered]:
    """Reclaimed instances of forward jobs that some destination has not confirmed.

    Each is fine while its owned export file is on disk (the caller checks),
    lost otherwise.
    """
    query = (
        select(
            INSTANCES.c.id,
            EXPORTS.c.id,
            EXPORTS.c.target,
            TASK_ITEMS.c.path,
        )
        .join(JOBS, JOBS.c.id == INSTANCES.c.job_id)
        .join(EXPORTS, EXPORTS.c.parent_id == JOBS.c.id)
        .outerjoin(
            TASK_ITEMS,
            and_(
                TASK_ITEMS.c.task_id == EXPORTS.c.id,
                TASK_ITEMS.c.instance_id == INSTANCES.c.id,
            ),
        )
        .where(
            INSTANCES.c.state == State.RECLAIMED,
            JOBS.c.kind == TaskKind.PROCESS,
            JOBS.c.submitter == "forward",
            or_(TASK_ITEMS.c.id.is_(None), TASK_ITEMS.c.state.in_(_UNDELIVERED)),
        )
        .order_by(INSTANCES.c.id, EXPORTS.c.id)
    )
    return [Undelivered(*row) for row in ledger.read(query)]


def owned_not_delivered(ledger: Ledger) -> list[Undelivered]:
    """Every owned export file not delivered and not given up: each must be on disk."""
    query = (
        select(
            TASK_ITEMS.c.instance_id,
            TASKS.c.id,
            TASKS.c.target,
            TASK_ITEMS.c.path,
        )
        .join(TASKS, TASKS.c.id == TASK_ITEMS.c.task_id)
        .where(
            TASK_ITEMS.c.owned,
            TASK_ITEMS.c.state.in_(_UNDELIVERED),
            TASK_ITEMS.c.reclaimed_at.is_(None),
        )
        .order_by(TASK_ITEMS.c.id)
    )
    return [Undelivered(*row) for row in ledger.read(query)]
