"""Intake: turn spool files into ledger rows, batched, off the network path.

One worker thread drains the doorbell queue in batches and records each
batch in one transaction.  Per file it decides: new instance (``received``,
with a warning event for whatever is odd about it), a duplicate under the
AE's ``duplicates`` policy (:mod:`watchers.duplicates`, each choice an
event), or not an instance at all (quarantine, ``rejected``).  Intake is idempotent: a
path already owned by a row is skipped, so the watcher and reconcile may
both report the same file.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

from ledger.records import InstanceRecord, NewInstance
from ledger.store import Ledger, LedgerTransaction
from ledger.wording import plural
from spool.layout import SpoolLayout
from spool.names import validate_ae_title
from spool.quarantine import quarantine
from spool.text import one_line
from watchers.duplicates import DEFAULT_POLICY, Duplicates, FileMoves
from watchers.inspect import STUDY_INSTANCE_UID, Header, Inspection, NotAnInstance, read_header

log = logging.getLogger(__name__)

BATCH_MAX = 500
# Paths waiting at most: beyond it a file waits on disk, unqueued, for the
# next reconcile pass (it is durable already), so a sender outrunning intake
# for hours costs disk, never memory.
MAX_QUEUED = 20_000
# How long a batch gathers arrivals: fewer, larger ledger commits (each one
# an fsync) leave the disk and the GIL to the SCP under load.
BATCH_WINDOW_SECONDS = 0.1
# A batch taking this long: intake is stuck, and health says so.
STALL_SECONDS = 60.0


class Intake:
    """Records files into the ledger; one call per batch."""

    def __init__(
        self,
        layout: SpoolLayout,
        ledger: Ledger,
        duplicates: Mapping[str, str],
        group_by: Mapping[str, int] | None = None,
        notify: Callable[[list[InstanceRecord]], None] | None = None,
        log_phi: bool = False,
    ) -> None:
        self.layout = layout
        self.ledger = ledger
        self.duplicates = duplicates  # called AE -> a policy of watchers.duplicates.POLICIES
        self.group_by = group_by or {}  # called AE -> tag whose value is the group key
        self.notify = notify  # told of each new received row, after commit
        self.log_phi = log_phi

    def process(self, paths: Iterable[Path]) -> int:
        """Record ``paths``; return how many files were decided on.

        A path a row already owns is skipped before its file is read or
        hashed: reconcile and the watcher may both report a file, and a
        report must cost a look-up, not a read of the whole file.
        """
        unique = list(dict.fromkeys(paths))
        known = self.ledger.recorded([str(path) for path in unique])
        inspected = [(path, self._inspect(path)) for path in unique if str(path) not in known]
        inspected = [(path, result) for path, result in inspected if result is not None]
        if not inspected:
            return 0
        moves = FileMoves()
        try:
            with self.ledger.transaction() as tx:
                known = tx.recorded([str(path) for path, _ in inspected])
                fresh = [(path, result) for path, result in inspected if str(path) not in known]
                self._record_batch(tx, fresh, moves)
        except BaseException:
            moves.roll_back()
            raise
        # Only once the decisions are committed: a crash before this point
        # leaves the files for the next pass to decide again.
        moves.carry_out()
        log.debug("intake recorded %d of %d files", len(fresh), len(inspected))
        if tx.received_ids and (self.notify is not None or log.isEnabledFor(logging.DEBUG)):
            records = self.ledger.instances_by_id(tx.received_ids)
            for record in records:
                self._log_received(record)
            if self.notify is not None:
                self.notify(records)
        return len(fresh)

    def _log_received(self, record: InstanceRecord) -> None:
        """One DEBUG line per instance; the patient only with ``[log] log_phi = true``."""
        patient = f" patient={record.patient_id!r}" if self.log_phi else ""
        log.debug(
            "received id=%d ae=%s calling=%r sop=%s study=%s%s",
            record.id,
            record.called_ae,
            record.calling_ae,
            record.sop_instance_uid,
            record.study_instance_uid,
            patient,
        )

    def _record_batch(
        self, tx: LedgerTransaction, fresh: list[tuple[Path, Inspection | str]], moves: FileMoves
    ) -> None:
        """New rows go in one insert; duplicates and rejections one by one."""
        inspections = [(path, r) for path, r in fresh if not isinstance(r, str)]
        copies = self._copies(tx, [self._new(path, r.header) for path, r in inspections])
        duplicates = Duplicates(self.layout, tx, moves)
        pending: list[tuple[NewInstance, tuple[str, ...]]] = []
        touched: set[tuple[str, str]] = set()  # keys this batch already changed
        for path, result in fresh:
            if isinstance(result, str):
                self._reject(tx, path, result)
                continue
            new = self._new(path, result.header)
            key = (new.called_ae, new.sop_instance_uid)
            if key in touched:  # a second copy in the same batch: look again
                self._add(tx, pending)
                pending = []
                copies[key] = tx.live_copies(key[0], [key[1]]).get(key[1], [])
            touched.add(key)
            if copies.get(key):
                policy = self.duplicates.get(new.called_ae, DEFAULT_POLICY)
                instance_id = duplicates.settle(new, copies[key], policy)
                if instance_id is not None:
                    _warn(tx, instance_id, new, result.warnings)
            else:
                pending.append((new, result.warnings))
        self._add(tx, pending)

    @staticmethod
    def _add(tx: LedgerTransaction, pending: list[tuple[NewInstance, tuple[str, ...]]]) -> None:
        """New ``received`` rows, in one insert."""
        ids = tx.add_many([(new, "received") for new, _ in pending])
        for instance_id, (new, warnings) in zip(ids, pending, strict=True):
            _warn(tx, instance_id, new, warnings)

    def _new(self, path: Path, header: Header) -> NewInstance:
        called_ae = self.layout.called_ae_of(path)
        assert called_ae is not None  # checked by _inspect
        return NewInstance(path=str(path), called_ae=called_ae, **asdict(header))

    @staticmethod
    def _copies(
        tx: LedgerTransaction, news: list[NewInstance]
    ) -> dict[tuple[str, str], list[InstanceRecord]]:
        """Rows already kept for the batch's (AE, SOP Instance UID) pairs."""
        wanted: dict[str, set[str]] = {}
        for new in news:
            wanted.setdefault(new.called_ae, set()).add(new.sop_instance_uid)
        return {
            (called_ae, sop): rows
            for called_ae, sops in wanted.items()
            for sop, rows in tx.live_copies(called_ae, sops).items()
        }

    def _inspect(self, path: Path) -> Inspection | str | None:
        """An inspection, a rejection reason, or None to skip (gone, not ours)."""
        if not self.layout.is_candidate(path):
            return None
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file (symlinks, FIFOs and devices are not followed)"
        called_ae = self.layout.called_ae_of(path)
        ok, reason = validate_ae_title(called_ae)
        if not ok:
            return f"folder is not an AE title: {reason}"
        try:
            return read_header(path, self.group_by.get(called_ae, STUDY_INSTANCE_UID))
        except NotAnInstance as exc:
            return str(exc)
        except FileNotFoundError:
            return None

    def _reject(self, tx: LedgerTransaction, path: Path, reason: str) -> None:
        """Quarantine ``path``; its reason becomes one line (it may quote the file)."""
        try:
            target = quarantine(self.layout, path, reason)
        except FileNotFoundError:
            return
        reason = one_line(reason)
        tx.add_rejected(str(target), self.layout.called_ae_of(path), reason)
        log.warning("quarantined %s as %s: %s", one_line(path), one_line(target.name), reason)


def _warn(
    tx: LedgerTransaction, instance_id: int, new: NewInstance, warnings: tuple[str, ...]
) -> None:
    """What is odd about a kept instance: an event each, one log line naming the sender."""
    for warning in warnings:
        tx.note(instance_id, f"warning: {warning}")
    if warnings:
        log.warning(
            "instance id=%d from %r kept with %s: %s",
            instance_id,
            new.calling_ae,
            "a warning" if len(warnings) == 1 else f"{len(warnings)} warnings",
            one_line("; ".join(warnings)),
        )


class IntakeWorker:
    """The thread that feeds :class:`Intake` from a queue, in batches."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._queue: queue.Queue[Path | None] = queue.Queue()
        # Paths queued and not yet taken: each is queued once, however often
        # the watcher and reconcile report it, so the queue is bounded by the
        # files waiting, not by how many passes saw them.
        self._queued: set[Path] = set()
        self._queued_lock = threading.Lock()
        self._full = False  # the last submit found no room (logged once per episode)
        self._failure: str | None = None  # why the last batch failed; None once one succeeds
        self._busy: tuple[float, int] | None = None  # (since, files) of the batch in hand
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def submit(self, paths: Iterable[Path]) -> None:
        """Queue the paths not queued yet, while there is room (see :data:`MAX_QUEUED`)."""
        with self._queued_lock:
            fresh = [p for p in dict.fromkeys(paths) if p not in self._queued]
            room = max(0, MAX_QUEUED - len(self._queued))
            if len(fresh) > room and not self._full:
                log.warning(
                    "intake's queue is full (%d files): the rest wait on disk for the next "
                    "reconcile",
                    MAX_QUEUED,
                )
            self._full = len(fresh) > room
            fresh = fresh[:room]
            self._queued.update(fresh)
        for path in fresh:
            self._queue.put(path)

    @property
    def room(self) -> int:
        """How many more paths the queue takes now."""
        with self._queued_lock:
            return max(0, MAX_QUEUED - len(self._queued))

    @property
    def queued(self) -> int:
        """Paths waiting for intake."""
        with self._queued_lock:
            return len(self._queued)

    def problem(self) -> str | None:
        """Why intake is not recording files now, for health; None when it is.

        Stopped; failing (the ledger refuses its writes: each batch waits
        for the next reconcile); or stuck, one batch taking longer than
        :data:`STALL_SECONDS` (a ledger locked by someone's open write
        transaction, a hung disk).
        """
        if not self.running:
            return "intake has stopped"
        if self._failure is not None:
            return f"intake cannot record files: {self._failure}"
        busy = self._busy
        if busy is not None and (took := time.monotonic() - busy[0]) > STALL_SECONDS:
            return f"intake is stuck: a batch of {plural(busy[1], 'file')} has taken {took:.0f}s"
        return None

    def wait_idle(self) -> None:
        """Block until everything submitted so far is recorded."""
        self._queue.join()

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            window_ends = time.monotonic() + BATCH_WINDOW_SECONDS
            while len(batch) < BATCH_MAX and batch[-1] is not None:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, window_ends - time.monotonic())))
                except queue.Empty:
                    break
            stop = None in batch
            with self._queued_lock:
                self._queued.difference_update(batch)  # type: ignore[arg-type]
            self._busy = (time.monotonic(), len(batch) - stop)
            try:
                self.intake.process(p for p in batch if p is not None)
                self._failure = None
            except Exception as exc:
                self._failure = one_line(f"{type(exc).__name__}: {exc}".splitlines()[0])
                log.exception("intake failed for a batch of %d; reconcile will retry", len(batch))
            finally:
                self._busy = None
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return
