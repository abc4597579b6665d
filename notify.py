"""The systemd notify protocol (sd_notify(3)), without libsystemd.

``READY=1`` once the adapter has reconciled and listens, ``WATCHDOG=1``
from a check that the service really works, ``STOPPING=1`` when it winds
down.  Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one state line to systemd; True if there was a socket to send to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", message.split("=")[0], exc)
        return False
    return True


def watchdog_seconds() -> float | None:
    """How often systemd wants a ping (half ``WATCHDOG_USEC``), None if it does not."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
