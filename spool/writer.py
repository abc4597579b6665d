"""Publishing a received instance into the spool, atomically and durably.

The C-STORE dataset has already streamed into an :class:`IncomingFile` in
``.tmp/``.  Publishing fsyncs it, renames it into its final place and fsyncs
the folder, then announces the path to intake; only after that may the SCP
answer Success (cf. Orthanc ``SyncStorageArea``, dcm4che's ``.part`` files).
A failure removes the temporary file, so a refused store leaves nothing
behind.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from spool.durable import fsync_dir, make_dirs_durable, rename_no_replace
from spool.incoming import IncomingFile, Provenance
from spool.layout import SpoolLayout

if TYPE_CHECKING:
    from config import FreeSpaceRule


class SpoolFull(OSError):
    """No room: the disk is full or free space is under ``min_free``."""


class SpoolWriter:
    """Opens incoming files in ``.tmp/`` and publishes them into place."""

    def __init__(
        self,
        layout: SpoolLayout,
        min_free: FreeSpaceRule,
        max_instance_size: int = 0,
        announce: Callable[[Path], None] | None = None,
    ) -> None:
        self.layout = layout
        self.min_free = min_free
        self.max_instance_size = max_instance_size  # bytes of data set; 0: no limit
        # Told each published path at once, so intake need not wait for the watcher:
        # a file renamed into a series folder made a moment before its inotify watch
        # comes to the watcher only as "created", which waits settle_seconds.
        self.announce = announce
        self._naming = threading.Lock()

    def has_room(self, more: int = 0) -> bool:
        """False while free space on the spool, less ``more`` bytes, is under ``min_free``."""
        stats = os.statvfs(self.layout.root)
        free = stats.f_bavail * stats.f_frsize - more
        return free >= self.min_free.required_bytes(stats.f_blocks * stats.f_frsize)

    def open_incoming(self, provenance: Provenance) -> IncomingFile:
        """A new temporary file for one C-STORE or STOW-RS part.

        It asks :meth:`has_room` before each write it makes (a small data set
        is written once, at the end), so a data set arriving when there was
        room stops before it takes free space under ``min_free``.
        """
        return IncomingFile(
            self.layout.tmp, provenance, room=self.has_room, max_size=self.max_instance_size
        )

    def publish(
        self, incoming: IncomingFile, study_uid: str, series_uid: str | None, sop_instance_uid: str
    ) -> Path:
        """Make ``incoming`` durable in its final place and return that path.

        Raises
        ------
        SpoolFull
            Out of space (ENOSPC/EDQUOT); the temporary file is removed.
        UnsafeName
            A UID or AE title fails validation; the temporary file is removed.
        """
        try:
            if incoming.failed is not None:
                raise incoming.failed
            folder = self.layout.series_dir(incoming.provenance.called_ae, study_uid, series_uid)
            self.layout.instance_name(sop_instance_uid)  # validate before any change
            incoming.sync()
            # Closed before the rename: the close event then fires in .tmp/,
            # which the watcher ignores, not on the published file, which
            # would ring intake a second time for the same instance.
            incoming.close()
            try:
                final = self._rename_into(incoming.name, folder, sop_instance_uid)
            except FileNotFoundError:  # a new series: its folders first (no stat per instance)
                make_dirs_durable(Path(folder), self.layout.root)
                final = self._rename_into(incoming.name, folder, sop_instance_uid)
            incoming.published = True
            fsync_dir(folder)
        except BaseException as exc:
            if not incoming.published:
                incoming.path.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(exc.errno, exc.strerror or str(exc)) from exc
            raise
        published = Path(final)
        if self.announce is not None:
            self.announce(published)
        return published

    def _rename_into(self, temporary: str, folder: str, sop_instance_uid: str) -> str:
        """Rename without ever replacing a copy already there, whoever wrote it (another
        writer, another node): the next free copy name.  The lock spares our own threads
        a race for the same names."""
        with self._naming:
            copy = 0
            while True:
                final = f"{folder}/{self.layout.instance_name(sop_instance_uid, copy)}"
                try:
                    rename_no_replace(temporary, final)
                except FileExistsError:
                    copy += 1
                    continue
                return final
