"""The ledger API: every read and write of instance state goes through here.

Each write happens in one ``BEGIN IMMEDIATE`` transaction that also appends
the matching ``events`` rows, so the history can never disagree with the
state.  Moves are checked against :data:`ledger.states.TRANSITIONS`.  Intake
records whole batches with a few set-based statements (SQLAlchemy Core, one
``executemany`` per table), so the ledger keeps up with the SCP
(``bench/ledger_scale.py`` measures it at a million rows).
"""

import logging
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, func, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from errors import IllegalTransition
from ledger.models import Event, Instance, ServiceState, utcnow
from ledger.records import InstanceRecord, NewInstance
from ledger.states import KEPT, ON_DISK, State, check_move

log = logging.getLogger(__name__)
INSTANCES = Instance.__table__
EVENTS = Event.__table__
SERVICE_STATE = ServiceState.__table__
_RECORD_FIELDS = [f.name for f in fields(InstanceRecord)]
_NEW_FIELDS = [f.name for f in fields(NewInstance)]
_KEPT = [str(state) for state in KEPT]
_ON_DISK = [str(state) for state in ON_DISK]
_CHUNK = 500  # bound parameters per IN (...) list
_WRITE_PROBE = "write_probe"  # a service_state name only ever written and rolled back
WRITER = 0x44434D41  # PostgreSQL advisory lock key of the one ledger writer ("DCMA")
RECONCILER = 0x44434D42  # ... and of the one node reconciling the shared spool ("DCMB")
RECLAIMER = 0x44434D43  # ... of the one node deleting reclaimable files ("DCMC")
OUTBOX = 0x44434D44  # ... of the one node taking files from the outboxes ("DCMD")
T = TypeVar("T")


def to_record(row: Any) -> InstanceRecord:
    mapping = row._mapping
    return InstanceRecord(**{name: mapping[name] for name in _RECORD_FIELDS})


def _columns(new: NewInstance) -> dict[str, Any]:
    """``asdict(new)`` without its deep copies (every field is immutable): a tenth of the time."""
    return {name: getattr(new, name) for name in _NEW_FIELDS}


def _recorded(connection: Connection, paths: Collection[str]) -> set[str]:
    """Those of ``paths`` a row still owns (``ux_instances_live_path`` finds each)."""
    found: set[str] = set()
    for chunk in chunked(paths):
        query = select(INSTANCES.c.path).where(
            INSTANCES.c.path.in_(chunk), INSTANCES.c.state != State.RECLAIMED
        )
        found.update(connection.scalars(query))
    return found


def chunked(values: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    """``values`` in lists of at most ``size``, taken lazily."""
    chunk: list[T] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class LedgerTransaction:
    """The writes intake and reconcile make, inside one transaction."""

    def __init__(self, connection: Connection, now: datetime) -> None:
        self.connection = connection
        self.now = now
        self.received_ids: list[int] = []  # rows born ``received`` here, for notification

    def upsert(self, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Set ``values`` on the row ``key`` names, creating it if there is none."""
        where = [table.c[name] == value for name, value in key.items()]
        if not self.connection.execute(update(table).where(*where).values(**values)).rowcount:
            self.connection.execute(insert(table).values(**key, **values))

    def recorded(self, paths: Collection[str]) -> set[str]:
        """Those of ``paths`` a row still owns."""
        return _recorded(self.connection, paths)

    def live_copies(
        self, called_ae: str, sop_instance_uids: Collection[str]
    ) -> dict[str, list[InstanceRecord]]:
        """Rows per SOP Instance UID, for one AE, whose file is kept; oldest first.

        The state is checked here, not in SQL: with ``state IN (...)`` there
        SQLite preferred ``ix_instances_group`` and read every live row of
        the AE per batch, where ``ix_instances_sop`` finds the few copies.
        """
        copies: dict[str, list[InstanceRecord]] = {}
        for chunk in chunked(sop_instance_uids):
            query = (
                select(INSTANCES)
                .where(
                    INSTANCES.c.called_ae == called_ae,
                    INSTANCES.c.sop_instance_uid.in_(chunk),
                )
                .order_by(INSTANCES.c.id)
            )
            for row in self.connection.execute(query):
                if row.state in _KEPT:
                    copies.setdefault(row.sop_instance_uid, []).append(to_record(row))
        return copies

    def add_many(
        self, items: list[tuple[NewInstance, str]], state: State = State.RECEIVED
    ) -> list[int]:
        """Insert rows (with their events) for new files: ``received``, or ``superseded``."""
        if not items:
            return []
        check_move(None, state)
        rows = [
            {**_columns(new), "state": state, "received_at": self.now, "updated_at": self.now}
            for new, _ in items
        ]
        ids = self._insert(rows)
        if state == State.RECEIVED:
            self.received_ids += ids
        self._events(
            [(id_, reason, None, state) for id_, (_, reason) in zip(ids, items, strict=True)]
        )
        return ids

    def add(self, new: NewInstance, reason: str, state: State = State.RECEIVED) -> int:
        return self.add_many([(new, reason)], state)[0]

    def add_rejected(self, path: str, called_ae: str | None, reason: str) -> int:
        """Insert a ``rejected`` row for a quarantined file."""
        check_move(None, State.REJECTED)
        [id_] = self._insert(
            [
                {
                    "path": path,
                    "called_ae": called_ae,
                    "state": State.REJECTED,
                    "reason": reason,
                    "received_at": self.now,
                    "updated_at": self.now,
                }
            ]
        )
        self._events([(id_, reason, None, State.REJECTED)])
        return id_

    def supersede(self, instance_id: int, path: str, reason: str) -> bool:
        """A ``received`` copy gave way to a newer one: ``superseded``, its file at ``path``.

        Guarded by the state in the UPDATE itself, so a claim that commits in
        between (PostgreSQL's READ COMMITTED) is never overwritten: False then.
        """
        check_move(State.RECEIVED, State.SUPERSEDED)
        changed = self.connection.execute(
            update(INSTANCES)
            .where(INSTANCES.c.id == instance_id, INSTANCES.c.state == State.RECEIVED)
            .values(state=State.SUPERSEDED, path=path, missing_since=None, updated_at=self.now)
        ).rowcount
        if changed:
            self._events([(instance_id, reason, State.RECEIVED, State.SUPERSEDED)])
        return bool(changed)

    def relocate(self, instance_id: int, path: str, reason: str) -> None:
        """The row's file is the same, at another path."""
        state = self._state(instance_id)
        self._update(instance_id, path=path, missing_since=None)
        self._events([(instance_id, reason, state, state)])

    def note(self, instance_id: int, reason: str) -> None:
        """Record a decision about an instance that does not change its state."""
        state = self._state(instance_id)
        self._events([(instance_id, reason, state, state)])

    def move_many(
        self, ids: Collection[int], source: State, target: State, reason: str, **values: Any
    ) -> None:
        """Move every instance in ``ids`` (all in ``source``) to ``target``, one event each.

        ``values`` are further columns to set (a claim sets ``job_id``).
        """
        ids = list(ids)
        if not ids:
            return
        check_move(source, target)
        for chunk in chunked(ids):
            moved = self.connection.execute(
                update(INSTANCES)
                .where(INSTANCES.c.id.in_(chunk), INSTANCES.c.state == source)
                .values(state=target, updated_at=self.now, **values)
            ).rowcount
            if moved != len(chunk):
                raise IllegalTransition(f"{len(chunk) - moved} instances were not '{source}'")
        self._events([(id_, reason, source, target) for id_ in ids])
        log.info("%s -> %s %d instances: %s", source, target, len(ids), reason)

    def move(self, instance_id: int, target: State, reason: str) -> None:
        """Move one instance to ``target``; raise IllegalTransition if not allowed."""
        current = State(self._state(instance_id))
        check_move(current, target)
        self._update(instance_id, state=target)
        self._events([(instance_id, reason, current, target)])
        log.info("%s -> %s id=%d", current, target, instance_id)

    def set_missing(self, instance_id: int, missing: bool) -> None:
        """Flag (or clear) a row whose file vanished from the spool."""
        state = self._state(instance_id)
        self._update(instance_id, missing_since=self.now if missing else None)
        reason = "file missing from spool" if missing else "file found again"
        self._events([(instance_id, reason, state, state)])

    def _state(self, instance_id: int) -> str:
        query = select(INSTANCES.c.state).where(INSTANCES.c.id == instance_id)
        return self.connection.execute(query).scalar_one()

    def _insert(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert ``rows``; their ids, in order."""
        if self.connection.dialect.name == "sqlite":
            return self._insert_sqlite(rows)
        statement = insert(INSTANCES).returning(INSTANCES.c.id, sort_by_parameter_order=True)
        return list(self.connection.scalars(statement, rows))

    def _insert_sqlite(self, rows: list[dict[str, Any]]) -> list[int]:
        """One ``executemany``; the ids follow the old largest one.

        SQLite has no sentinel for an ordered ``RETURNING``, so SQLAlchemy
        would send one INSERT per row (a third of intake's time).  Instead:
        we hold the write lock (``BEGIN IMMEDIATE``), and SQLite gives a row
        inserted without an id the largest id so far plus one, so the rows
        get consecutive ids after the old largest; the largest after says so.
        """
        largest = select(func.coalesce(func.max(INSTANCES.c.id), 0))
        before = self.connection.execute(largest).scalar_one()
        self.connection.execute(insert(INSTANCES), rows)
        after = self.connection.execute(largest).scalar_one()
        if after != before + len(rows):
            raise RuntimeError(f"ids {before + 1}..{after} for {len(rows)} new instance rows")
        return list(range(before + 1, after + 1))

    def _update(self, instance_id: int, **values: Any) -> None:
        statement = update(INSTANCES).where(INSTANCES.c.id == instance_id)
        self.connection.execute(statement.values(**values, updated_at=self.now))

    def try_lock(self, key: int) -> bool:
        """Take ``key``'s lock to the end of this transaction, without waiting: False if
        another transaction (another node's) holds it.  On PostgreSQL a transaction
        advisory lock; SQLite's one writer already excludes every other, so True."""
        if self.connection.dialect.name != "postgresql":
            return True
        query = text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool(self.connection.execute(query, {"key": key}).scalar_one())

    def _events(self, rows: list[tuple[int, str, str | None, str]]) -> None:
        self.connection.execute(
            insert(EVENTS),
            [
                {
                    "instance_id": id_,
                    "reason": reason,
                    "from_state": source,
                    "to_state": target,
                    "at": self.now,
                }
                for id_, reason, source, target in rows
            ],
        )


class Ledger:
    """Reads and transactions over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(
        self, now: datetime | None = None, *, shared: bool = False
    ) -> Iterator[LedgerTransaction]:
        """One write transaction; commits on success, rolls back on error.

        One writer at a time, whichever node: every decision reads and then
        writes (is this path recorded? is this group still received?), so the
        read must see every earlier commit.  SQLite takes its write lock at
        ``BEGIN IMMEDIATE``; PostgreSQL takes a transaction advisory lock,
        the same for every node on the ledger, released at commit.

        ``shared``: a transaction whose every decision is about rows it locks
        itself (``SELECT ... FOR UPDATE [SKIP LOCKED]``: a claim, a task's
        pick-up, an attempt's end).  On PostgreSQL it takes the writer lock
        in shared mode, so such transactions run side by side, on any node,
        while none runs beside an exclusive writer; SQLite has one writer
        either way.
        """
        with self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    lock = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
                    connection.execute(text(f"SELECT {lock}(:key)"), {"key": WRITER})
                yield LedgerTransaction(connection, now or utcnow())

    @contextmanager
    def alone(self, key: int) -> Iterator[bool]:
        """Whether this node may do ``key``'s work now, no other node doing it meanwhile.

        On PostgreSQL a session advisory lock, taken without waiting and held
        for the block; on SQLite (one box, one node) always.
        """
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as connection:
            query = text("SELECT pg_try_advisory_lock(:key)")
            acquired = bool(connection.execute(query, {"key": key}).scalar_one())
            connection.commit()
            try:
                yield acquired
            finally:
                if acquired:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()

    def read(self, query: Any, parameters: dict[str, Any] | None = None) -> list[Any]:
        """Run one read-only query; the rows as a list."""
        with self.engine.connect() as connection:
            return list(connection.execute(query, parameters or {}))

    def get(self, instance_id: int) -> InstanceRecord:
        [row] = self.read(select(INSTANCES).where(INSTANCES.c.id == instance_id))
        return to_record(row)

    def instances_by_id(self, ids: Collection[int]) -> list[InstanceRecord]:
        rows: list[Any] = []
        for chunk in chunked(list(ids)):
            rows += self.read(select(INSTANCES).where(INSTANCES.c.id.in_(chunk)))
        return sorted((to_record(row) for row in rows), key=lambda record: record.id)

    def instances(self, *, state: State | None = None) -> list[InstanceRecord]:
        query = select(INSTANCES).order_by(INSTANCES.c.id)
        if state is not None:
            query = query.where(INSTANCES.c.state == state)
        return [to_record(row) for row in self.read(query)]

    def live_files(self, page: int = 10_000) -> Iterator[tuple[str, int, bool]]:
        """``(path, id, flagged missing)`` of every row whose file should be on disk.

        Read a page at a time, by id, each page its own short read: memory
        stays flat at a million rows, and no read transaction stays open for
        the whole scan (a long WAL snapshot would hold back checkpoints).
        """
        last = 0
        while True:
            rows = self.read(
                select(INSTANCES.c.id, INSTANCES.c.path, INSTANCES.c.missing_since)
                .where(INSTANCES.c.state.in_(_ON_DISK), INSTANCES.c.id > last)
                .order_by(INSTANCES.c.id)
                .limit(page)
            )
            for id_, path, missing in rows:
                yield path, id_, missing is not None
            if len(rows) < page:
                return
            last = rows[-1][0]

    def recorded(self, paths: Collection[str]) -> set[str]:
        """Those of ``paths`` a row still owns (live or quarantined)."""
        with self.engine.connect() as connection:
            return _recorded(connection, paths)

    def counts_by_state(self) -> dict[str, int]:
        query = select(INSTANCES.c.state, func.count()).group_by(INSTANCES.c.state)
        counts = {str(state): 0 for state in State}
        counts.update({state: count for state, count in self.read(query)})
        return counts

    def recent_studies(self, limit: int = 10) -> list[dict[str, object]]:
        """Rows of the ``studies`` view, most recently received first.

        Ordering the whole view aggregates every row (seconds at a million).
        Instead the newest instances are walked (``ix_instances_received_at``)
        until ``limit`` studies have shown up, in the order of their latest
        instance, and the view is read for just those (an indexed look-up).
        """
        newest = (
            select(INSTANCES.c.called_ae, INSTANCES.c.study_instance_uid)
            .where(INSTANCES.c.state != State.REJECTED)
            .order_by(INSTANCES.c.received_at.desc())
        )
        one = text("SELECT * FROM studies WHERE called_ae = :ae AND study_instance_uid = :study")
        keys: dict[tuple[str, str], None] = {}  # insertion-ordered set
        with self.engine.connect() as connection:
            # Streamed: PostgreSQL would otherwise send every row before the first.
            walk = connection.execution_options(stream_results=True, yield_per=200)
            with walk.execute(newest) as rows:
                for called_ae, study in rows if limit > 0 else ():
                    keys[called_ae, study] = None
                    if len(keys) == limit:
                        break
            return [
                dict(connection.execute(one, {"ae": ae, "study": study}).one()._mapping)
                for ae, study in keys
            ]

    def set_service_state(self, name: str, value: str) -> None:
        """Record one fact about the running service (upsert)."""
        with self.transaction() as tx:
            tx.upsert(SERVICE_STATE, {"name": name}, {"value": value, "updated_at": tx.now})

    def service_state(self) -> dict[str, str]:
        return {
            name: value
            for name, value in self.read(select(SERVICE_STATE.c.name, SERVICE_STATE.c.value))
        }

    def write_problem(self) -> str | None:
        """Why this process cannot write the ledger now, or None: one write, rolled back.

        A ledger made read-only or immutable still answers every read, so
        only a write shows it (SQLite then says "attempt to write a readonly
        database").
        """
        try:
            with self.engine.connect() as connection, connection.begin() as transaction:
                connection.execute(
                    insert(SERVICE_STATE).values(name=_WRITE_PROBE, value="", updated_at=utcnow())
                )
                transaction.rollback()
        except SQLAlchemyError as exc:
            return (str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0]
        return None

    def event_count(self) -> int:
        return self.read(select(func.count()).select_from(EVENTS))[0][0]
