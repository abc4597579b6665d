"""The doorbell: a watchdog observer that reports complete files in the spool.

Completeness is the rule (watchdog#313: created events fire before a writer
finishes).  The adapter's own writers (the SCP, STOW-RS) announce each file
they publish straight to intake (``SpoolWriter.announce``), so their renames
out of ``.tmp/`` are not rung again here.  Any other rename into place
(``on_moved``) or a close after writing (``on_closed``, a hand copy) rings
at once.  A bare
``on_created`` (a file moved in from outside the spool, or a directory tree
copied in) rings once the file's size and mtime have held still for
``settle_seconds`` and no process has it open for writing.  Events are
dropped silently on inotify overflow (watchdog#654), so reconcile rescans at
start and periodically.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from spool.layout import SpoolLayout
from spool.settle import is_open_for_writing

log = logging.getLogger(__name__)

SETTLE_POLL_SECONDS = 0.25
# Only what rings the doorbell: watchdog then asks inotify for nothing else,
# so the SCP's writes and intake's reads raise no events at all.
DOORBELL_EVENTS = [
    FileMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]


class _Doorbell(FileSystemEventHandler):
    def __init__(self, watcher: SpoolWatcher) -> None:
        self.watcher = watcher

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        if event.is_directory or self.watcher.layout.is_temporary(
            Path(os.fsdecode(event.src_path))
        ):
            return  # published from .tmp/: its writer announced it to intake already
        self.watcher.ring([Path(os.fsdecode(event.dest_path))])

    def on_closed(self, event: FileClosedEvent) -> None:
        self.watcher.ring([Path(os.fsdecode(event.src_path))])

    def on_created(self, event: DirCreatedEvent | FileCreatedEvent) -> None:
        if not event.is_directory:
            self.watcher.settle(Path(os.fsdecode(event.src_path)))


class SpoolWatcher:
    """Runs the observer and the settle timer; calls ``deliver`` with complete files."""

    def __init__(
        self, layout: SpoolLayout, deliver: Callable[[Iterable[Path]], None], settle_seconds: float
    ) -> None:
        self.layout = layout
        self.deliver = deliver
        self.settle_seconds = settle_seconds
        self._pending: dict[Path, tuple[tuple[int, int], float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._observer = Observer()
        self._settler = threading.Thread(target=self._settle_loop, name="settle", daemon=True)

    def ring(self, paths: list[Path]) -> None:
        wanted = [p for p in paths if self.layout.is_candidate(p)]
        if not wanted:
            return
        with self._lock:
            for path in wanted:
                self._pending.pop(path, None)
        self.deliver(wanted)

    def settle(self, path: Path) -> None:
        if self.layout.is_candidate(path):
            with self._lock:
                self._pending.setdefault(path, ((-1, -1), time.monotonic()))

    def start(self) -> None:
        # watchdog 7 re-adds a watch for each directory created under a
        # recursive watch and warns with a multi-kilobyte line each time;
        # events are unaffected.
        warnings.filterwarnings(
            "ignore", "Callback with id .* already exists for watch", RuntimeWarning
        )
        self._start_observer()
        self._settler.start()

    @property
    def running(self) -> bool:
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)

    def ensure_alive(self) -> bool:
        """Restart the observer if its inotify thread died; False if it had.

        watchdog's observer thread outlives a crashed emitter thread (seen:
        a KeyError in watchdog 7.1's ``_remove_watch_internally``), after
        which no event arrives.  Reconcile calls this before each scan, so
        the gap is closed by that scan and the doorbell rings again after.
        """
        if self._stopping.is_set() or all(e.is_alive() for e in self._observer.emitters):
            return True
        log.error("spool watcher stopped receiving events: restarting it")
        self._observer.stop()
        self._observer.join()
        self._observer = Observer()
        self._start_observer()
        return False

    def _start_observer(self) -> None:
        self._observer.schedule(
            _Doorbell(self), str(self.layout.root), recursive=True, event_filter=DOORBELL_EVENTS
        )
        self._observer.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join()
        if self._settler.is_alive():
            self._settler.join()

    def _settle_loop(self) -> None:
        while not self._stopping.wait(SETTLE_POLL_SECONDS):
            ready = self._settled(time.monotonic())
            if ready:
                self.deliver(ready)

    def _settled(self, now: float) -> list[Path]:
        """Paths whose (size, mtime) held still for ``settle_seconds``."""
        ready = []
        with self._lock:
            for path, (last, since) in list(self._pending.items()):
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                current = (info.st_size, info.st_mtime_ns)
                if current != last:
                    self._pending[path] = (current, now)
                elif now - since >= self.settle_seconds and not is_open_for_writing(path):
                    del self._pending[path]
                    ready.append(path)
        return ready
