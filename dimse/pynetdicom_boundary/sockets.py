"""Hook ``read_through``: an accepted association reads its PDUs through our reader.

pynetdicom 3.0 reads each PDU with blocking ``recv`` calls on the accepted
socket, with no deadline and no length cap (see :mod:`scp.read_limits` for
what the reader adds).  It offers no way to plug in a reader, so
:func:`read_through` swaps the association's ``AssociationSocket`` for a
subclass whose ``ready`` and ``recv`` ask the reader first.  It touches the
socket's class, its ``ready`` property and ``recv(nr_bytes)`` (overridden),
and the private ``_is_connected`` flag (passed to the reader).
"""

from __future__ import annotations

from typing import Any, Protocol

from pynetdicom.transport import AssociationSocket

from dimse.pynetdicom_boundary.registry import register
from private_api import Requirement

_SOCKET = "pynetdicom.transport:AssociationSocket"

_read_through = register(
    "read_through",
    "reads with a deadline, a length cap and a buffer",
    Requirement(f"{_SOCKET}.ready", params=("self",)),
    Requirement(f"{_SOCKET}.ready", uses="_is_connected"),
    Requirement(f"{_SOCKET}.recv", params=("self", "nr_bytes")),
    Requirement(f"{_SOCKET}.__init__", uses="_is_connected"),
    Requirement("pynetdicom.dul:DULServiceProvider._read_pdu_data", uses="recv"),
    Requirement("pynetdicom.dul:DULServiceProvider._is_transport_event", uses="ready"),
)


class Reader(Protocol):
    """What an association's socket asks before pynetdicom reads."""

    def ready(self, connected: bool) -> bool | None:
        """Whether a read would find data; None: let pynetdicom's own check decide."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes`` bytes; fewer only if the peer closed."""


class _ReadThrough(AssociationSocket):
    """An AssociationSocket whose reads are its reader's."""

    reader: Reader

    @property
    def ready(self) -> bool:
        answer = self.reader.ready(bool(self._is_connected))
        return super().ready if answer is None else answer

    def recv(self, nr_bytes: int) -> bytearray:
        return self.reader.recv(nr_bytes)


def read_through(assoc: Any, reader: Reader) -> None:
    """Route a not yet started acceptor association's reads through ``reader``."""
    sock = assoc.dul.socket
    sock.__class__ = _ReadThrough
    sock.reader = reader
    _read_through()
