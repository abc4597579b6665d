"""Connections accepted but not yet associating: a bounded number at once.

pynetdicom starts a thread for every accepted connection and gives it the
ACSE timeout to send its A-ASSOCIATE-RQ.  A port scanner, or a peer opening
connections and sending nothing, would cost a thread each, without limit,
and hold ``max_associations`` slots while it lasts.  :class:`Unrequested`
counts the connections of a listener from their accept until their request
arrives (or they close), and the listener drops a new connection at once,
with one log line, while the count is at its cap.  The TLS listener caps
its handshakes the same way (:mod:`scp.tls`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any


class Unrequested:
    """How many accepted connections are still waiting to send their request."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._count = 0
        self._lock = threading.Lock()
        self._settled: weakref.WeakSet[Any] = weakref.WeakSet()  # associations done waiting

    def admit(self) -> bool:
        """Count one more accepted connection; False (not counted) when at the cap."""
        with self._lock:
            if self._count >= self.cap:
                return False
            self._count += 1
            return True

    def requested(self, assoc: Any) -> None:
        """The association sent its A-ASSOCIATE-RQ: no longer waiting."""
        self._settle(assoc)

    def closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: a connection that never requested is no longer waiting either."""
        self._settle(event.assoc)

    def _settle(self, assoc: Any) -> None:
        with self._lock:
            if assoc in self._settled:
                return
            self._settled.add(assoc)
            self._count = max(0, self._count - 1)
