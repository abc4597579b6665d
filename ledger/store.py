"""The ledger API: every read and write of instance state goes through here.

Each write happens in one ``BEGIN IMMEDIATE`` transaction that also appends
the matching ``events`` rows, so the history can never disagree with the
state.  Moves are checked against :data:`ledger.states.TRANSITIONS`.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from ledger.models import Event, Instance, utcnow
from ledger.records import InstanceRecord, NewInstance
from ledger.states import ON_DISK, State, check_move

log = logging.getLogger(__name__)
_RECORD_FIELDS = [f.name for f in fields(InstanceRecord)]
_LIVE = [str(state) for state in ON_DISK]


def to_record(row: Instance) -> InstanceRecord:
    return InstanceRecord(**{name: getattr(row, name) for name in _RECORD_FIELDS})


class LedgerTransaction:
    """The writes intake and reconcile make, inside one transaction."""

    def __init__(self, session: Session, now: datetime) -> None:
        self._session = session
        self.now = now

    def is_recorded(self, path: str) -> bool:
        """True if a row that still owns ``path`` exists."""
        query = select(Instance.id).where(Instance.path == path, Instance.state != State.RECLAIMED)
        return self._session.scalar(query.limit(1)) is not None

    def live_copies(self, called_ae: str, sop_instance_uid: str) -> list[InstanceRecord]:
        """Rows of the same SOP instance for the same AE whose file is kept."""
        query = select(Instance).where(
            Instance.called_ae == called_ae,
            Instance.sop_instance_uid == sop_instance_uid,
            Instance.state.in_(_LIVE),
        )
        return [to_record(row) for row in self._session.scalars(query.order_by(Instance.id))]

    def add(self, new: NewInstance, reason: str) -> int:
        """Insert a ``received`` row for a new file."""
        row = Instance(
            **asdict(new), state=State.RECEIVED, received_at=self.now, updated_at=self.now
        )
        return self._insert(row, reason)

    def add_rejected(self, path: str, called_ae: str | None, reason: str) -> int:
        """Insert a ``rejected`` row for a quarantined file."""
        row = Instance(
            path=path,
            called_ae=called_ae,
            state=State.REJECTED,
            reason=reason,
            received_at=self.now,
            updated_at=self.now,
        )
        return self._insert(row, reason)

    def replace_content(self, instance_id: int, new: NewInstance, reason: str) -> None:
        """A newer copy of a still-``received`` instance took the old one's place."""
        row = self._session.get_one(Instance, instance_id)
        for name, value in asdict(new).items():
            setattr(row, name, value)
        row.received_at = row.updated_at = self.now
        row.missing_since = None
        self._event(row, reason, row.state, row.state)

    def note(self, instance_id: int, reason: str) -> None:
        """Record a decision about an instance that does not change its state."""
        row = self._session.get_one(Instance, instance_id)
        self._event(row, reason, row.state, row.state)

    def move(self, instance_id: int, target: State, reason: str) -> InstanceRecord:
        """Move one instance to ``target``; raise IllegalTransition if not allowed."""
        row = self._session.get_one(Instance, instance_id)
        current = State(row.state)
        check_move(current, target)
        row.state = target
        row.updated_at = self.now
        self._event(row, reason, current, target)
        log.info("%s -> %s id=%d sop=%s", current, target, row.id, row.sop_instance_uid)
        return to_record(row)

    def set_missing(self, instance_id: int, missing: bool) -> None:
        """Flag (or clear) a row whose file vanished from the spool."""
        row = self._session.get_one(Instance, instance_id)
        row.missing_since = self.now if missing else None
        reason = "file missing from spool" if missing else "file found again"
        self._event(row, reason, row.state, row.state)

    def _insert(self, row: Instance, reason: str) -> int:
        check_move(None, State(row.state))
        self._session.add(row)
        self._session.flush()
        self._event(row, reason, None, row.state)
        return row.id

    def _event(self, row: Instance, reason: str, from_state: str | None, to_state: str) -> None:
        self._session.add(
            Event(
                instance_id=row.id,
                from_state=from_state,
                to_state=to_state,
                at=self.now,
                reason=reason,
            )
        )


class Ledger:
    """Reads and transactions over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def transaction(self, now: datetime | None = None) -> Iterator[LedgerTransaction]:
        """One write transaction; commits on success, rolls back on error."""
        with self._sessions() as session:
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            yield LedgerTransaction(session, now or utcnow())
            session.commit()

    def get(self, instance_id: int) -> InstanceRecord:
        with self._sessions() as session:
            return to_record(session.get_one(Instance, instance_id))

    def instances(self, *, state: State | None = None) -> list[InstanceRecord]:
        query = select(Instance).order_by(Instance.id)
        if state is not None:
            query = query.where(Instance.state == state)
        with self._sessions() as session:
            return [to_record(row) for row in session.scalars(query)]

    def live_files(self) -> dict[str, tuple[int, bool]]:
        """path -> (id, flagged missing) for every row whose file should be on disk."""
        query = select(Instance.path, Instance.id, Instance.missing_since).where(
            Instance.state.in_(_LIVE)
        )
        with self._sessions() as session:
            return {
                path: (id_, missing is not None) for path, id_, missing in session.execute(query)
            }

    def recorded_paths(self) -> set[str]:
        """Every path a row still owns (live or quarantined)."""
        query = select(Instance.path).where(Instance.state != State.RECLAIMED)
        with self._sessions() as session:
            return set(session.scalars(query))

    def counts_by_state(self) -> dict[str, int]:
        query = select(Instance.state, func.count()).group_by(Instance.state)
        with self._sessions() as session:
            counts = {str(state): 0 for state in State}
            counts.update({state: count for state, count in session.execute(query)})
            return counts

    def recent_studies(self, limit: int = 10) -> list[dict[str, object]]:
        """Rows of the ``studies`` view, most recently received first."""
        query = text("SELECT * FROM studies ORDER BY last_received_at DESC LIMIT :limit")
        with self._sessions() as session:
            return [dict(row._mapping) for row in session.execute(query, {"limit": limit})]

    def event_count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Event)) or 0
