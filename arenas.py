"""glibc malloc arenas: at most two per process, so a busy service's memory levels off.

glibc gives each thread that meets contention an arena of its own, up to
eight per core, and memory freed in one arena is not reused by another.
The adapter's threads (intake, the watchdog observer, scheduler jobs,
SQLAlchemy connections) and the SCP's association threads allocate and free
briskly, so under sustained load the process kept growing in fresh arenas
while Python's own heap stayed flat (tracemalloc: 32 MB traced while RSS
went from 180 to 314 MB).  ``bench/soak.py``, 4 senders for 5 minutes:
+4 MB/min over the last half with glibc's default, flat with two arenas
(bench/README.md, "Soak").  Same as ``MALLOC_ARENA_MAX=2`` in the
environment, which only works when set before the interpreter starts.
"""

import ctypes
import logging

log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # malloc.h
MAX_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Call before starting threads; arenas made earlier stay (mallopt(3))."""
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(_M_ARENA_MAX, MAX_ARENAS)
    except (OSError, AttributeError):  # not glibc (musl has no arenas to limit)
        return
    if done != 1:
        log.warning("cannot limit malloc arenas to %d", MAX_ARENAS)
