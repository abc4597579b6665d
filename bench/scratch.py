"""Where a benchmark builds its data: a folder asked for (kept), or a temporary one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def in_scratch(folder: Path | None, prefix: str, work: Callable[[Path], str]) -> str:
    """Run ``work`` in ``folder`` (which must not exist; it is kept, to look at), or in a
    temporary folder named ``prefix...`` that is removed afterwards; its result."""
    if folder is not None:
        folder.mkdir(parents=True)
        return work(folder)
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return work(scratch)
    finally:
        shutil.rmtree(scratch)
