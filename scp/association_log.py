"""One log line per association: who, to which AE, how much, how long, how it ended.

The line an admin greps for when a modality says "I sent it": peer
address, calling and called AE, instances stored and refused, bytes,
duration, and whether the association was released, aborted or rejected.
Peer strings are logged with ``%r`` so a CR/LF from the network cannot forge
a log line.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field

from pynetdicom import events as evt
from pynetdicom.pdu_primitives import A_RELEASE

from scp.admission import REJECTION_NAMES, is_health_check

log = logging.getLogger("scp.associations")


@dataclass
class _Tally:
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    refused: int = 0
    bytes: int = 0
    released: bool = False  # we answered the peer's A-RELEASE-RQ


class AssociationLog:
    """Counts per association, logged when its connection closes."""

    def __init__(self) -> None:
        self._tallies: weakref.WeakKeyDictionary[object, _Tally] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # Totals since start, for metrics: called AE -> count / bytes; reason -> count.
        self.received: Counter[str] = Counter()
        self.received_bytes: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def totals(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        """Copies of (received, received_bytes, rejected), consistent with each other."""
        with self._lock:
            return Counter(self.received), Counter(self.received_bytes), Counter(self.rejected)

    def rejection(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def refused_by_pynetdicom(self, event: evt.Event) -> None:
        """EVT_REJECTED: pynetdicom's own rejections (max_associations: local_limit)."""
        reply = event.assoc.acceptor.primitive
        triple = (reply.result, reply.result_source, reply.diagnostic)
        self.rejection(REJECTION_NAMES.get(triple, "{}/{}/{}".format(*triple)))

    def opened(self, event: evt.Event) -> None:
        """EVT_ESTABLISHED (the direct path may have stored its first instance already)."""
        with self._lock:
            self._tallies.setdefault(event.assoc, _Tally())

    def stored(self, assoc: object, called_ae: str, size: int) -> None:
        with self._lock:
            self.received[called_ae] += 1
            self.received_bytes[called_ae] += size
            tally = self._tallies.setdefault(assoc, _Tally())
            tally.stored += 1
            tally.bytes += size

    def acse_sent(self, event: evt.Event) -> None:
        """EVT_ACSE_SENT: an A-RELEASE-RP on its way marks the association released.

        pynetdicom sets ``is_released`` only after queueing the response; the
        peer may get it and close the connection (EVT_CONN_CLOSE, on the DUL
        thread) before the association thread gets that far.
        """
        primitive = event.primitive
        if isinstance(primitive, A_RELEASE) and primitive.result == "affirmative":
            with self._lock:
                tally = self._tallies.get(event.assoc)
                if tally is not None:
                    tally.released = True

    def refused(self, assoc: object) -> None:
        with self._lock:
            self._tallies.setdefault(assoc, _Tally()).refused += 1

    def closed(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: the one line, for associations that were established."""
        assoc = event.assoc
        with self._lock:
            tally = self._tallies.pop(assoc, None)
        if tally is None:
            return  # rejected or never associated: logged by admission
        request = assoc.requestor.primitive
        released = assoc.is_released or tally.released
        result = "released" if released else "aborted" if assoc.is_aborted else "closed"
        calling = str(request.calling_ae_title).strip()
        quiet = is_health_check(calling, assoc.requestor.address) and not tally.stored
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "association %s peer=%s:%s calling=%r called=%r stored=%d refused=%d bytes=%d "
            "seconds=%.2f",
            result,
            assoc.requestor.address,
            assoc.requestor.port,
            calling,
            str(request.called_ae_title).strip(),
            tally.stored,
            tally.refused,
            tally.bytes,
            time.monotonic() - tally.started,
        )
