"""Is somebody still writing this file?  The question every hand-dropped file raises."""

import errno
import fcntl
import os
from pathlib import Path


def is_open_for_writing(path: Path) -> bool:
    """True if some process has ``path`` open for writing (Linux read lease).

    A read lease is refused with EAGAIN while any writer has the file open,
    which tells a stalled hand copy from a finished one better than a quiet
    size.  Where a lease cannot be taken (another owner without CAP_LEASE, a
    filesystem without leases), the answer is False and the settle time rules.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    finally:
        os.close(fd)
