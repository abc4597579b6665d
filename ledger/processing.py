"""The ledger's side of processing: groups, claims, jobs and reclaiming.

Everything the grouper, the dispatcher and the reclaimer decide is read from
and written to here, one ``BEGIN IMMEDIATE`` transaction per decision with
its history rows, so a restart finds every group, job and file where it was.
"""

import hashlib
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, not_, or_, select, true

from ledger.lifecycle import Lifecycle
from ledger.models import Job, JobEvent, utcnow
from ledger.records import GroupState, InstanceRecord, JobRecord
from ledger.states import JobState, State, check_job_move
from ledger.store import INSTANCES, Ledger, to_record

JOBS = Job.__table__
JOB_EVENTS = JobEvent.__table__
_JOB_FIELDS = [column.name for column in JOBS.columns]
JOB = Lifecycle(JOBS, JOB_EVENTS, "job_id", JobState, check_job_move, "job")


def to_job(row: Any) -> JobRecord:
    mapping = row._mapping
    return JobRecord(**{name: mapping[name] for name in _JOB_FIELDS})


def wanted(ignored: Collection[str], allowed: Collection[str]) -> ColumnElement[bool]:
    """SQL: the instance's SOP class is one its processor takes."""
    if allowed:
        return INSTANCES.c.sop_class_uid.in_(list(allowed))
    if ignored:
        return or_(
            INSTANCES.c.sop_class_uid.is_(None), INSTANCES.c.sop_class_uid.not_in(list(ignored))
        )
    return true()


def idempotency_key(
    processor: str, called_ae: str, group_key: str, sop_instance_uids: Collection[str]
) -> str:
    """Same processor, AE, group and instances: same key, whatever the retry or restart."""
    digest = hashlib.sha256()
    for part in (processor, called_ae, group_key, *sorted(sop_instance_uids)):
        digest.update(part.encode() + b"\x00")
    return digest.hexdigest()[:32]


class Processing:
    """Processing reads and writes over the ledger's engine."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- groups ---------------------------------------------------------------

    def open_groups(self, called_ae: str) -> list[GroupState]:
        """Groups of ``received`` instances not yet claimed, with their timer ends."""
        query = (
            select(
                INSTANCES.c.group_key,
                func.count(),
                func.min(INSTANCES.c.received_at),
                func.max(INSTANCES.c.received_at),
            )
            .where(
                INSTANCES.c.called_ae == called_ae,
                INSTANCES.c.state == State.RECEIVED,
                INSTANCES.c.group_key.is_not(None),
            )
            .group_by(INSTANCES.c.group_key)
        )
        return [
            GroupState(called_ae, key, count, first, last)
            for key, count, first, last in self.ledger.read(query)
        ]

    def unwanted(
        self, called_ae: str, ignored: Collection[str], allowed: Collection[str]
    ) -> list[InstanceRecord]:
        """``received`` instances of a SOP class the AE's processor declines."""
        query = select(INSTANCES).where(
            INSTANCES.c.called_ae == called_ae,
            INSTANCES.c.state == State.RECEIVED,
            not_(wanted(ignored, allowed)),
        )
        return [to_record(row) for row in self.ledger.read(query)]

    def decline(self, instance_ids: Collection[int], reason: str) -> None:
        """A processor does not want these: straight to the reclaimer (if still received)."""
        with self.ledger.transaction() as tx:
            waiting = [
                i
                for (i,) in tx.connection.execute(
                    select(INSTANCES.c.id).where(
                        INSTANCES.c.id.in_(list(instance_ids)), INSTANCES.c.state == State.RECEIVED
                    )
                )
            ]
            tx.move_many(waiting, State.RECEIVED, State.RECLAIMABLE, reason)

    def note(self, instance_id: int, reason: str) -> None:
        with self.ledger.transaction() as tx:
            tx.note(instance_id, reason)

    def note_late(self, instance: InstanceRecord) -> None:
        """Record that ``instance`` came after its group was claimed: it starts a new group."""
        with self.ledger.transaction() as tx:
            still_waiting = tx.connection.execute(
                select(INSTANCES.c.id).where(
                    INSTANCES.c.id == instance.id,
                    INSTANCES.c.state == State.RECEIVED,
                    INSTANCES.c.job_id.is_(None),
                )
            ).first()
            earlier = tx.connection.execute(
                select(INSTANCES.c.job_id)
                .where(
                    INSTANCES.c.called_ae == instance.called_ae,
                    INSTANCES.c.group_key == instance.group_key,
                    INSTANCES.c.job_id.is_not(None),
                )
                .order_by(INSTANCES.c.job_id.desc())
                .limit(1)
            ).first()
            if still_waiting and earlier:
                tx.note(
                    instance.id,
                    f"late arrival: job {earlier[0]} already took this group; starts a new group",
                )

    def claim_group(
        self,
        called_ae: str,
        group_key: str,
        processor: str,
        why: str,
        now: datetime | None = None,
        *,
        ignored: Collection[str] = (),
        allowed: Collection[str] = (),
    ) -> JobRecord | None:
        """Claim every wanted ``received`` instance of a group into a new ``pending`` job."""
        with self.ledger.transaction(now) as tx:
            connection = tx.connection
            members = list(
                connection.execute(
                    select(INSTANCES.c.id, INSTANCES.c.sop_instance_uid)
                    .where(
                        INSTANCES.c.called_ae == called_ae,
                        INSTANCES.c.group_key == group_key,
                        INSTANCES.c.state == State.RECEIVED,
                        wanted(ignored, allowed),
                    )
                    .order_by(INSTANCES.c.id)
                )
            )
            if not members:
                return None
            check_job_move(None, JobState.PENDING)
            key = idempotency_key(processor, called_ae, group_key, [sop for _, sop in members])
            job_id = connection.execute(
                insert(JOBS)
                .values(
                    processor=processor,
                    called_ae=called_ae,
                    group_key=group_key,
                    instance_count=len(members),
                    state=JobState.PENDING,
                    attempts=0,
                    next_attempt_at=tx.now,
                    idempotency_key=key,
                    created_at=tx.now,
                    updated_at=tx.now,
                )
                .returning(JOBS.c.id)
            ).scalar_one()
            ids = [id_ for id_, _ in members]
            tx.move_many(
                ids, State.RECEIVED, State.CLAIMED, f"claimed by job {job_id}: {why}", job_id=job_id
            )
            JOB.note(
                tx,
                job_id,
                None,
                JobState.PENDING,
                f"{len(ids)} instances of group {group_key!r}: {why}",
            )
        # The claim's own line (Ledger.move_many) says it; not the group key, which
        # with group_by = PatientID is PHI (it is in the ledger).
        return self.job(job_id)

    # -- jobs -----------------------------------------------------------------

    def job(self, job_id: int) -> JobRecord:
        [row] = self.ledger.read(select(JOBS).where(JOBS.c.id == job_id))
        return to_job(row)

    def jobs(self, state: JobState | None = None) -> list[JobRecord]:
        query = select(JOBS).order_by(JOBS.c.id)
        if state is not None:
            query = query.where(JOBS.c.state == state)
        return [to_job(row) for row in self.ledger.read(query)]

    def due_jobs(self, now: datetime) -> list[JobRecord]:
        query = (
            select(JOBS)
            .where(JOBS.c.state == JobState.PENDING, JOBS.c.next_attempt_at <= now)
            .order_by(JOBS.c.next_attempt_at, JOBS.c.id)
        )
        return [to_job(row) for row in self.ledger.read(query)]

    def job_instances(self, job_id: int) -> list[InstanceRecord]:
        query = select(INSTANCES).where(INSTANCES.c.job_id == job_id).order_by(INSTANCES.c.id)
        return [to_record(row) for row in self.ledger.read(query)]

    def start(self, job_id: int, now: datetime | None = None) -> JobRecord:
        """pending -> running, one more attempt."""
        with self.ledger.transaction(now) as tx:
            attempts = JOB.move(tx, job_id, JobState.RUNNING, "started")
            JOB.update(tx, job_id, attempts=attempts + 1)
        return self.job(job_id)

    def succeed(self, job_id: int, now: datetime | None = None) -> None:
        """running -> succeeded; its instances claimed -> submitted."""
        with self.ledger.transaction(now) as tx:
            JOB.move(tx, job_id, JobState.SUCCEEDED, "submitted")
            JOB.update(tx, job_id, finished_at=tx.now, last_error=None, next_attempt_at=None)
            ids = [
                i
                for (i,) in tx.connection.execute(
                    select(INSTANCES.c.id).where(
                        INSTANCES.c.job_id == job_id, INSTANCES.c.state == State.CLAIMED
                    )
                )
            ]
            tx.move_many(ids, State.CLAIMED, State.SUBMITTED, f"submitted by job {job_id}")

    def fail(
        self, job_id: int, error: str, retry_at: datetime | None, now: datetime | None = None
    ) -> None:
        """running -> pending (retry at ``retry_at``) or, with no retry left, failed."""
        with self.ledger.transaction(now) as tx:
            if retry_at is None:
                JOB.move(tx, job_id, JobState.FAILED, f"failed, no retries left: {error}")
                JOB.update(tx, job_id, last_error=error, finished_at=tx.now, next_attempt_at=None)
            else:
                JOB.move(
                    tx,
                    job_id,
                    JobState.PENDING,
                    f"failed, retry at {retry_at:%Y-%m-%dT%H:%M:%SZ}: {error}",
                )
                JOB.update(tx, job_id, last_error=error, next_attempt_at=retry_at)

    def retry(self, job_id: int, now: datetime | None = None) -> JobRecord:
        """failed -> pending now, with a fresh set of attempts (``jobs retry``)."""
        with self.ledger.transaction(now) as tx:
            JOB.move(tx, job_id, JobState.PENDING, "retry requested")
            JOB.update(tx, job_id, attempts=0, next_attempt_at=tx.now, finished_at=None)
        return self.job(job_id)

    def discard(
        self, job_id: int, delete_files: bool, reason: str, now: datetime | None = None
    ) -> int:
        """failed -> discarded: nobody will submit it again; returns its instances given up.

        Its instances stay ``claimed`` by it, their files kept in the spool,
        unless ``delete_files``: then they become ``reclaimable`` and the
        reclaimer deletes them.  A job already discarded may still have its
        files given up that way.
        """
        with self.ledger.transaction(now) as tx:
            state = tx.connection.execute(
                select(JOBS.c.state).where(JOBS.c.id == job_id)
            ).scalar_one_or_none()
            if state is None:
                raise ValueError(f"no job {job_id}")
            if state != JobState.DISCARDED or not delete_files:
                JOB.move(tx, job_id, JobState.DISCARDED, reason)
                JOB.update(tx, job_id, next_attempt_at=None)
            claimed = [
                i
                for (i,) in tx.connection.execute(
                    select(INSTANCES.c.id).where(
                        INSTANCES.c.job_id == job_id, INSTANCES.c.state == State.CLAIMED
                    )
                )
            ]
            if delete_files:
                tx.move_many(
                    claimed, State.CLAIMED, State.RECLAIMABLE, f"job {job_id} discarded: {reason}"
                )
        return len(claimed)

    def recover(self, now: datetime | None = None) -> tuple[int, int]:
        """After a restart: running jobs run again; claims without a job go back.

        Returns (jobs requeued, instances released).
        """
        with self.ledger.transaction(now) as tx:
            running = [
                i
                for (i,) in tx.connection.execute(
                    select(JOBS.c.id).where(JOBS.c.state == JobState.RUNNING)
                )
            ]
            for job_id in running:
                JOB.move(tx, job_id, JobState.PENDING, "interrupted by a restart: run again")
                JOB.update(tx, job_id, next_attempt_at=tx.now)
            orphans = [
                i
                for (i,) in tx.connection.execute(
                    select(INSTANCES.c.id)
                    .outerjoin(JOBS, JOBS.c.id == INSTANCES.c.job_id)
                    .where(INSTANCES.c.state == State.CLAIMED, JOBS.c.id.is_(None))
                )
            ]
            tx.move_many(
                orphans,
                State.CLAIMED,
                State.RECEIVED,
                "claim released: its job never started",
                job_id=None,
            )
        return len(running), len(orphans)

    # -- reclaiming -------------------------------------------------------------

    def release_submitted(
        self, called_ae: str, retention_seconds: float, now: datetime | None = None
    ) -> int:
        """submitted -> reclaimable once their job finished ``retention`` seconds ago."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=retention_seconds)
        query = (
            select(INSTANCES.c.id)
            .join(JOBS, JOBS.c.id == INSTANCES.c.job_id)
            .where(
                INSTANCES.c.called_ae == called_ae,
                INSTANCES.c.state == State.SUBMITTED,
                and_(JOBS.c.finished_at.is_not(None), JOBS.c.finished_at <= cutoff),
            )
        )
        ids = [i for (i,) in self.ledger.read(query)]
        if ids:
            with self.ledger.transaction(now) as tx:
                tx.move_many(
                    ids,
                    State.SUBMITTED,
                    State.RECLAIMABLE,
                    f"retention of {retention_seconds:g}s after submission is over",
                )
        return len(ids)

    def reclaimable(self, limit: int = 1000) -> list[InstanceRecord]:
        query = select(INSTANCES).where(INSTANCES.c.state == State.RECLAIMABLE).limit(limit)
        return [to_record(row) for row in self.ledger.read(query)]

    def mark_reclaimed(self, ids: Collection[int], reason: str) -> None:
        with self.ledger.transaction() as tx:
            tx.move_many(ids, State.RECLAIMABLE, State.RECLAIMED, reason)

    def superseded_before(self, cutoff: datetime, limit: int = 1000) -> list[InstanceRecord]:
        """Superseded copies set aside before ``cutoff``."""
        query = (
            select(INSTANCES)
            .where(INSTANCES.c.state == State.SUPERSEDED, INSTANCES.c.updated_at <= cutoff)
            .limit(limit)
        )
        return [to_record(row) for row in self.ledger.read(query)]

    def reclaim_superseded(self, ids: Collection[int], reason: str) -> None:
        with self.ledger.transaction() as tx:
            tx.move_many(ids, State.SUPERSEDED, State.RECLAIMED, reason)

    def job_done_with_files(self, job_id: int) -> bool:
        """True when no instance of the job still has its file in the spool."""
        query = select(func.count()).where(
            INSTANCES.c.job_id == job_id, INSTANCES.c.state != State.RECLAIMED
        )
        return self.ledger.read(query)[0][0] == 0

    # -- overview ---------------------------------------------------------------

    def job_counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in JobState}
        query = select(JOBS.c.state, func.count()).group_by(JOBS.c.state)
        counts.update({state: count for state, count in self.ledger.read(query)})
        return counts

    def oldest_open_group(self, called_aes: Collection[str]) -> GroupState | None:
        """The group of ``received`` instances, of these AEs, that has waited longest."""
        query = (
            select(
                INSTANCES.c.called_ae,
                INSTANCES.c.group_key,
                func.count(),
                func.min(INSTANCES.c.received_at),
                func.max(INSTANCES.c.received_at),
            )
            .where(
                INSTANCES.c.state == State.RECEIVED,
                INSTANCES.c.group_key.is_not(None),
                INSTANCES.c.called_ae.in_(list(called_aes)),
            )
            .group_by(INSTANCES.c.called_ae, INSTANCES.c.group_key)
            .order_by(func.min(INSTANCES.c.received_at))
            .limit(1)
        )
        rows = self.ledger.read(query)
        if not rows:
            return None
        ae, key, count, first, last = rows[0]
        return GroupState(ae, key, count, first, last)
