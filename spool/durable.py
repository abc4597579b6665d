"""fsync helpers: a rename is only durable once its directory is synced."""

import os
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
