"""Linux capabilities: the listener may bind port 104, nothing the adapter runs may.

systemd gives the service ``CAP_NET_BIND_SERVICE`` as an *ambient*
capability (``AmbientCapabilities=``), and an ambient capability passes to
every program the process executes: a processor command would be able to
bind privileged ports too.  The SCP process, which binds the ports, is
spawned first (:meth:`scp.process.ScpProcess.spawn`); then the adapter
clears its own ambient set, so commands it runs start with no capability.
"""

import ctypes
import logging

log = logging.getLogger(__name__)
_PR_CAP_AMBIENT = 47  # linux/prctl.h
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def clear_ambient_capabilities() -> None:
    """Programs this process runs from now on inherit no capability (prctl(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        log.warning("cannot clear ambient capabilities: errno %d", ctypes.get_errno())
