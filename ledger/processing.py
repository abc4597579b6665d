"""The ledger's side of processing: groups, claims, what a job does to its instances, reclaiming.

Everything the grouper, a job's lane and the reclaimer decide is read from
and written to here, one ``BEGIN IMMEDIATE`` transaction per decision with
its history rows, so a restart finds every group, job and file where it was.
A job is a task of kind ``process`` (:mod:`ledger.tasks`), whose items are
the instances it claimed.
"""

import hashlib
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, not_, or_, select, true

from ledger import tasks
from ledger.models import utcnow
from ledger.records import GroupState, InstanceRecord, TaskRecord
from ledger.states import State, TaskKind
from ledger.store import INSTANCES, Ledger, LedgerTransaction, chunked, to_record
from ledger.tasks import TASKS, Tally, Tasks


def wanted(ignored: Collection[str], allowed: Collection[str]) -> ColumnElement[bool]:
    """SQL: the instance's SOP class is one its processor takes."""
    if allowed:
        return INSTANCES.c.sop_class_uid.in_(list(allowed))
    if ignored:
        return or_(
            INSTANCES.c.sop_class_uid.is_(None), INSTANCES.c.sop_class_uid.not_in(list(ignored))
        )
    return true()


def group_lock(called_ae: str, group_key: str) -> int:
    """The 64-bit lock key of one group's claim (a hash: two groups sharing one only
    make one of them wait for the next tick)."""
    digest = hashlib.sha256(f"{called_ae}\0{group_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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
    ) -> TaskRecord | None:
        """Claim every wanted ``received`` instance of a group into a new ``pending`` job.

        None when there is none, or when another node is claiming this group
        this moment: the group is skipped, not waited for (its lock is taken
        without waiting, ``Ledger.group_lock``), and never split between two
        jobs (row locks skipped one by one would split it).  Its members are
        then locked as they are read.
        """
        with self.ledger.transaction(now, shared=True) as tx:
            if not tx.try_lock(group_lock(called_ae, group_key)):
                return None
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
                    .with_for_update()
                )
            )
            if not members:
                return None
            key = idempotency_key(processor, called_ae, group_key, [sop for _, sop in members])
            job_id = tasks.add(
                tx,
                TaskKind.PROCESS,
                called_ae,
                processor,
                "group",
                len(members),
                f"{len(members)} instances of group {group_key!r}: {why}",
                group_key=group_key,
                idempotency_key=key,
            )
            ids = [id_ for id_, _ in members]
            tx.move_many(
                ids, State.RECEIVED, State.CLAIMED, f"claimed by job {job_id}: {why}", job_id=job_id
            )
        # The claim's own line (Ledger.move_many) says it; not the group key, which
        # with group_by = PatientID is PHI (it is in the ledger).
        return Tasks(self.ledger).get(job_id)

    # -- jobs -----------------------------------------------------------------

    def job_instances(self, job_id: int) -> list[InstanceRecord]:
        query = select(INSTANCES).where(INSTANCES.c.job_id == job_id).order_by(INSTANCES.c.id)
        return [to_record(row) for row in self.ledger.read(query)]

    def settle(
        self,
        job_id: int,
        error: str | None,
        retry_at: datetime | None,
        now: datetime | None = None,
        *,
        attempt: int | None = None,
    ) -> None:
        """One attempt's end: handed over (``error`` None), or to retry at ``retry_at``.

        A job's items are all-or-nothing: a processor takes the whole group
        or none of it.  Handed over, its instances go claimed -> submitted;
        with no retry left (``retry_at`` None) the job is ``failed``.
        """
        with self.ledger.transaction(now, shared=True) as tx:
            tasks.hold(tx, job_id, attempt)  # LeaseLost: another node has it
            count = tx.connection.execute(
                select(TASKS.c.item_count).where(TASKS.c.id == job_id)
            ).scalar_one()
            tally = Tally(count, 0, 0) if error is None else Tally(0, count, 0)
            tasks.conclude(tx, job_id, tally, error, retry_at)
            if error is None:
                ids = self._claimed(tx, job_id)
                tx.move_many(ids, State.CLAIMED, State.SUBMITTED, f"submitted by job {job_id}")

    @staticmethod
    def _claimed(tx: LedgerTransaction, job_id: int) -> list[int]:
        query = select(INSTANCES.c.id).where(
            INSTANCES.c.job_id == job_id, INSTANCES.c.state == State.CLAIMED
        )
        return [i for (i,) in tx.connection.execute(query)]

    def release_files(self, job_id: int, reason: str, now: datetime | None = None) -> int:
        """A discarded job's instances go to the reclaimer: ``tasks discard --delete-files``."""
        with self.ledger.transaction(now) as tx:
            claimed = self._claimed(tx, job_id)
            tx.move_many(
                claimed, State.CLAIMED, State.RECLAIMABLE, f"job {job_id} discarded: {reason}"
            )
        return len(claimed)

    def release_orphan_claims(self, now: datetime | None = None) -> int:
        """After a restart: claims whose job was never written go back to their group."""
        with self.ledger.transaction(now) as tx:
            orphans = [
                i
                for (i,) in tx.connection.execute(
                    select(INSTANCES.c.id)
                    .outerjoin(TASKS, TASKS.c.id == INSTANCES.c.job_id)
                    .where(INSTANCES.c.state == State.CLAIMED, TASKS.c.id.is_(None))
                )
            ]
            tx.move_many(
                orphans,
                State.CLAIMED,
                State.RECEIVED,
                "claim released: its job never started",
                job_id=None,
            )
        return len(orphans)

    # -- reclaiming -------------------------------------------------------------

    def release_submitted(
        self, called_ae: str, retention_seconds: float, now: datetime | None = None
    ) -> int:
        """submitted -> reclaimable once their job finished ``retention`` seconds ago."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=retention_seconds)
        query = (
            select(INSTANCES.c.id)
            .join(TASKS, TASKS.c.id == INSTANCES.c.job_id)
            .where(
                INSTANCES.c.called_ae == called_ae,
                INSTANCES.c.state == State.SUBMITTED,
                and_(TASKS.c.finished_at.is_not(None), TASKS.c.finished_at <= cutoff),
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

    def jobs_done_with_files(self, job_ids: Collection[int]) -> set[int]:
        """Those of ``job_ids`` that are jobs none of whose instances still has its file in
        the spool: their job folders, on whichever node, are no longer needed."""
        done: set[int] = set()
        for chunk in chunked(list(job_ids)):
            in_spool = (
                select(INSTANCES.c.id)
                .where(INSTANCES.c.job_id == TASKS.c.id, INSTANCES.c.state != State.RECLAIMED)
                .exists()
            )
            query = select(TASKS.c.id).where(
                TASKS.c.id.in_(chunk), TASKS.c.kind == TaskKind.PROCESS, not_(in_spool)
            )
            done.update(job_id for (job_id,) in self.ledger.read(query))
        return done

    # -- overview ---------------------------------------------------------------

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
