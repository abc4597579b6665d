"""Intake: turn spool files into ledger rows, batched, off the network path.

One worker thread drains the doorbell queue in batches and records each
batch in one transaction.  Per file it decides: new instance (``received``),
a duplicate under the AE's ``duplicates`` policy (each choice an event), or
not an instance at all (quarantine, ``rejected``).  Intake is idempotent: a
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
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

from ledger.records import InstanceRecord, NewInstance
from ledger.states import State
from ledger.store import Ledger, LedgerTransaction
from spool.layout import SpoolLayout
from spool.names import validate_ae_title
from spool.quarantine import quarantine
from spool.text import one_line
from watchers.inspect import STUDY_INSTANCE_UID, Header, NotAnInstance, read_header

log = logging.getLogger(__name__)

BATCH_MAX = 500
# How long a batch gathers arrivals: fewer, larger ledger commits (each one
# an fsync) leave the disk and the GIL to the SCP under load.
BATCH_WINDOW_SECONDS = 0.1
DEFAULT_DUPLICATES = "replace"


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
        self.duplicates = duplicates  # called AE -> ignore | replace | keep
        self.group_by = group_by or {}  # called AE -> tag whose value is the group key
        self.notify = notify  # told of each new received row, after commit
        self.log_phi = log_phi

    def process(self, paths: Iterable[Path]) -> int:
        """Record ``paths``; return how many rows were written or changed.

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
        discard: list[Path] = []
        with self.ledger.transaction() as tx:
            known = tx.recorded([str(path) for path, _ in inspected])
            fresh = [(path, result) for path, result in inspected if str(path) not in known]
            self._record_batch(tx, fresh, discard)
        # Only once the decisions are committed: a crash before this point
        # leaves the files for the next pass to decide again.
        for path in discard:
            path.unlink(missing_ok=True)
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
        self, tx: LedgerTransaction, fresh: list[tuple[Path, Header | str]], discard: list[Path]
    ) -> None:
        """New rows go in one insert; duplicates and rejections one by one."""
        headers = [(path, r) for path, r in fresh if not isinstance(r, str)]
        copies = self._copies(tx, [self._new(path, header) for path, header in headers])
        pending: list[tuple[NewInstance, str]] = []
        touched: set[tuple[str, str]] = set()  # keys this batch already changed
        for path, result in fresh:
            if isinstance(result, str):
                self._reject(tx, path, result)
                continue
            new = self._new(path, result)
            key = (new.called_ae, new.sop_instance_uid)
            if key in touched:  # a second copy in the same batch: look again
                tx.add_many(pending)
                pending = []
                copies[key] = tx.live_copies(key[0], [key[1]]).get(key[1], [])
            touched.add(key)
            if copies.get(key):
                policy = self.duplicates.get(new.called_ae, DEFAULT_DUPLICATES)
                self._duplicate(tx, new, copies[key], policy, discard)
            else:
                pending.append((new, "received"))
        tx.add_many(pending)

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

    def _inspect(self, path: Path) -> Header | str | None:
        """A Header, a rejection reason, or None to skip (gone, not ours)."""
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

    def _duplicate(
        self,
        tx: LedgerTransaction,
        new: NewInstance,
        copies: list[InstanceRecord],
        policy: str,
        discard: list[Path],
    ) -> None:
        """Apply ``[ae:] duplicates``; every outcome leaves an event row.

        Files to delete go on ``discard`` (deleted after commit).  A replaced
        copy is first renamed into ``.tmp/``, which no scan ever adopts, so
        whether or not the transaction commits, no stale copy can come back.
        """
        gone = [c for c in copies if not os.path.lexists(c.path)]
        moved = next((c for c in gone if c.sha256 == new.sha256), None)
        if moved is not None:  # the same file at a new path (moved by hand)
            tx.relocate(moved.id, new.path, f"file found at a new path, was {moved.path}")
            return
        present = [c for c in copies if c not in gone]
        first = copies[0]
        ids = ", ".join(str(c.id) for c in copies)
        if policy == "keep":
            tx.add(new, f"duplicate of instance {ids}: kept as a new row (duplicates=keep)")
            return
        same = next((c for c in present if c.sha256 == new.sha256), None)
        if same is not None:
            discard.append(Path(new.path))
            tx.note(same.id, f"identical copy {new.path} discarded (duplicates={policy})")
            return
        if policy == "ignore" and present:
            discard.append(Path(new.path))
            tx.note(present[0].id, f"different copy {new.path} discarded (duplicates=ignore)")
            return
        # replace, or ignore whose kept copies' files are all gone: never discard the only file
        waiting = [c for c in copies if c.state == State.RECEIVED]
        if not waiting:
            tx.add(
                new,
                f"duplicate of instance {ids} already '{first.state}': "
                f"stored as a new row (duplicates={policy})",
            )
            return
        target = waiting[-1]
        replaced = self.layout.tmp / f"replaced-{uuid.uuid4().hex}.dcm"
        try:
            os.rename(target.path, replaced)
            discard.append(replaced)
        except FileNotFoundError:
            pass  # the old copy had already vanished
        tx.replace_content(
            target.id,
            new,
            f"replaced by a newer copy {new.path}, sha256 was {target.sha256} "
            f"(duplicates={policy})",
        )
        log.info("duplicate replaced id=%d sop=%s", target.id, new.sop_instance_uid)


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
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def submit(self, paths: Iterable[Path]) -> None:
        with self._queued_lock:
            fresh = [p for p in dict.fromkeys(paths) if p not in self._queued]
            self._queued.update(fresh)
        for path in fresh:
            self._queue.put(path)

    @property
    def queued(self) -> int:
        """Paths waiting for intake."""
        with self._queued_lock:
            return len(self._queued)

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
            try:
                self.intake.process(p for p in batch if p is not None)
            except Exception:
                log.exception("intake failed for a batch of %d; reconcile will retry", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return
