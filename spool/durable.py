"""fsync helpers: a rename or a new link is only durable once its directory is synced."""

import os
import shutil
from pathlib import Path


def fsync_dir(folder: Path) -> None:
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
