"""fsync helpers: a rename or a new link is only durable once its directory is synced.

And a rename that never replaces: :func:`rename_no_replace`.
"""

import ctypes
import errno
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # linux/fs.h
_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)  # glibc 2.28+


def fsync_dir(folder: str | Path) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(folder: Path, stop_at: Path) -> None:
    """``mkdir -p`` that also syncs the parent of every folder it creates."""
    missing = []
    while not folder.exists() and folder != stop_at:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_dir(created.parent)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target``, or copy it where a link cannot be made.

    A link shares the source's data, already durable; a copy (another
    filesystem) is fsynced here.  Either way the new name is durable only
    once the caller fsyncs ``target``'s folder.
    """
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
        fsync_file(target)


def move_no_replace(source: Path, target: Path) -> bool:
    """Move ``source`` to ``target`` unless something is there already; durably.

    ``os.rename`` silently replaces its target, which could destroy a kept
    copy of an instance; a hard link refuses (EEXIST) instead.  The link
    and the unlink are fsynced in both folders before this returns, so a
    power cut cannot undo the move after a ledger commit that records it.
    Both paths must be on one filesystem (in the spool).

    Returns False, moving nothing, when ``target`` exists.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    os.unlink(source)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)
    return True


def rename_no_replace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists: FileExistsError then.

    ``os.rename`` replaces a file already there, and checking first leaves a
    gap: another writer (the SCP and the HTTP listener, or two nodes on a
    shared spool) publishing the same instance at the same moment would
    silently replace an acknowledged copy.  Linux's ``renameat2`` with
    ``RENAME_NOREPLACE`` decides in the kernel; a filesystem without it
    (NFS) gets a hard link, which fails on an existing name too, then the
    source's removal.
    """
    if _RENAMEAT2 is not None:
        done = _RENAMEAT2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if done == 0:
            return
        error = ctypes.get_errno()
        if error == errno.EEXIST:
            raise FileExistsError(error, os.strerror(error), str(target))
        if error not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(error, os.strerror(error), str(source))
    link_then_unlink(source, target)


def link_then_unlink(source: Path, target: Path) -> None:
    """:func:`rename_no_replace` where the filesystem cannot rename without replacing."""
    os.link(source, target)
    os.unlink(source)
