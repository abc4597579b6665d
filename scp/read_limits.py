"""Deadlines and a size cap on every PDU an accepted association reads.

pynetdicom 3.0 reads a PDU with blocking ``recv`` calls on the accepted
socket, which Python hands over with no timeout: a peer that sends half a
PDU and goes silent holds its thread and its ``max_associations`` slot for
ever, whatever the ACSE, DIMSE and network timeouts say.  It also reads
whatever length a PDU header declares, so a peer that claims hundreds of
megabytes and sends them makes the receiver buffer them all.

:func:`limit_reads` switches one association's socket to
:class:`_LimitedSocket` at EVT_CONN_OPEN, before anything is read:

- each read of a PDU header or body must complete within the network
  timeout, or the connection is dropped (pynetdicom treats the error as the
  transport closing: Evt17);
- a P-DATA-TF body may be no longer than the maximum PDU length we
  negotiated (PS3.8 D.1: the peer must not send more), any other PDU no
  longer than :data:`OTHER_PDU_LIMIT` (an A-ASSOCIATE-RQ with 128
  presentation contexts of 30 transfer syntaxes each is about 270 KB); a
  longer declaration drops the connection before its body is read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
OTHER_PDU_LIMIT = 1 << 20
_HEADER = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)


class _LimitedSocket(AssociationSocket):
    """An AssociationSocket whose reads have a deadline and a length cap."""

    _read_timeout: float
    _max_p_data: int
    _pdu_type: int | None

    def recv(self, nr_bytes: int) -> bytearray:
        pdu_type, self._pdu_type = self._pdu_type, None
        if pdu_type is not None:  # pynetdicom reads a PDU's body right after its header
            limit = self._max_p_data if pdu_type == P_DATA_TF else OTHER_PDU_LIMIT
            if nr_bytes > limit:
                raise self._refuse(
                    f"PDU type 0x{pdu_type:02X} declares {nr_bytes} bytes, over the {limit} allowed"
                )
        data = self._read(nr_bytes)
        if pdu_type is None and nr_bytes == _HEADER and len(data) == _HEADER:
            self._pdu_type = data[0]
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        deadline = time.monotonic() + self._read_timeout
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._refuse(
                        f"read {len(data)} of {nr_bytes} bytes in {self._read_timeout:g}s: "
                        "too slow"
                    )
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(min(nr_bytes - len(data), 65536))
                except TimeoutError:
                    continue  # the deadline check above decides
                if not chunk:
                    break  # closed: pynetdicom sees the short read
                data += chunk
        finally:
            sock.settimeout(self._read_timeout)  # what sends get: a peer that never reads
        return data

    def _refuse(self, reason: str) -> OSError:
        peer = self.assoc.requestor
        log.warning("dropping connection from %s:%s: %s", peer.address, peer.port, reason)
        return OSError(reason)


def limit_reads(assoc: Any, read_timeout: float, max_p_data: int) -> None:
    """Give a not yet started acceptor association's socket its read limits."""
    sock = assoc.dul.socket
    sock.__class__ = _LimitedSocket
    sock._read_timeout = read_timeout
    sock._max_p_data = max_p_data
    sock._pdu_type = None
