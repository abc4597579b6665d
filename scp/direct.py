"""C-STORE and C-ECHO served straight from an association's DUL thread.

pynetdicom passes every request from the connection's DUL thread to its
association thread (state machine, DIMSE provider, queue, wake-up), decodes
the command set and encodes the response through pydicom Datasets: most of
the CPU a small instance costs, and two thread hand-overs under the GIL.

While the association is established (Sta6) this path reads the P-DATA-TF
PDUs first.  A request whose command set arrives whole in one PDV and reads
as a C-STORE-RQ (with a data set) or C-ECHO-RQ (without) on an accepted
presentation context is served here: the data set streams into an incoming
file as its fragments arrive, :func:`scp.handlers.store` makes it durable
exactly as it does for pynetdicom's path, and the response (built by
:mod:`dimse.commands`) goes out on the socket.  Anything else (another
command, a command set split over PDVs, an unknown context) is handed to
pynetdicom, re-framed in front of the socket's read buffer, and pynetdicom
keeps the association from then on, so a message is never split between the
two.  Release and abort PDUs always go to pynetdicom.  A PDU that breaks the
rules inside a data set (a command fragment, another context, a bad item
length) is an invalid PDU to pynetdicom's state machine (Evt19), which
aborts the association; a read that fails or times out is a closed
connection (Evt17), as in pynetdicom's own reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dimse import commands
from dimse import upper_layer as ul
from dimse.pynetdicom_boundary import report_closed, report_invalid_pdu
from scp.read_limits import LimitedReader
from spool.incoming import IncomingFile, MetaUids
from spool.text import one_line

log = logging.getLogger(__name__)

SUCCESS = 0x0000
ESTABLISHED = "Sta6"
# How long a request may wait for the association thread to finish marking
# the association established, before this path steps aside.
_ESTABLISH_WAIT = 1.0

Store = Callable[[Any, IncomingFile, str, str], int]
Opener = Callable[[Any], IncomingFile]


@dataclass
class _Receiving:
    """A C-STORE whose data set is arriving."""

    context_id: int
    request: commands.Request
    incoming: IncomingFile


class DirectPath:
    """Serves one association's C-STOREs and C-ECHOs until pynetdicom takes over."""

    def __init__(
        self, assoc: Any, reader: LimitedReader, open_incoming: Opener, store: Store
    ) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.reader = reader
        self.open_incoming = open_incoming
        self.store = store
        self.active = True
        self._syntaxes: dict[int, str] | None = None  # accepted context ID -> transfer syntax
        self._receiving: _Receiving | None = None
        self._waiting_since: float | None = None

    def serve(self) -> bool | None:
        """Handle the next PDU if it is this path's.

        True: the DUL turn is used up (a PDU served, or an event queued).
        False: nothing to read yet; pynetdicom must not read either.
        None: pynetdicom's turn (not established, handed over, or a PDU that is not P-DATA).
        """
        if not self.active or self.dul.state_machine.current_state != ESTABLISHED:
            return None
        if not self.assoc.is_established:
            return self._wait_for_establishment()
        sock = self.dul.socket
        if not sock.ready:
            return False
        try:
            header = sock.recv(ul.PDU_HEADER)
            if len(header) < ul.PDU_HEADER or header[0] != ul.P_DATA_TF:
                self.reader.unread(header)
                return None
            body = sock.recv(int.from_bytes(header[2:6], "big"))
        except OSError:
            return self._closed()  # the read limits log why
        if len(body) < int.from_bytes(header[2:6], "big"):
            return self._closed()
        try:
            self._take(ul.pdvs(body))
        except ValueError as exc:
            self._invalid(str(exc))
        except Exception:
            log.exception("direct C-STORE path failed: aborting the association")
            self._invalid("internal error")
        return True

    def _take(self, items: list[tuple[int, int, bytes]]) -> None:
        """Consume the PDVs of one P-DATA-TF, in order."""
        for index, (context_id, control, data) in enumerate(items):
            receiving = self._receiving
            if receiving is None:
                if not self._start(context_id, control, data):
                    self._hand_over(items[index:])
                    return
                continue
            if context_id != receiving.context_id or control & ul.COMMAND:
                raise ValueError("a data set fragment was expected on its own context")
            receiving.incoming.write(data)
            if control & ul.LAST:
                self._receiving = None
                self._finish(receiving)

    def _start(self, context_id: int, control: int, data: bytes) -> bool:
        """Begin serving the message this PDV starts; False if it is not one for this path."""
        syntax = self._accepted().get(context_id)
        if syntax is None or control != ul.COMMAND | ul.LAST:
            return False
        try:
            request = commands.parse_request(data)
        except ValueError:
            return False
        if request.command_field == commands.C_ECHO_RQ:
            if request.data_set_present:
                return False
            self._send(context_id, commands.c_echo_rsp(request.message_id, SUCCESS))
            return True
        if not request.data_set_present or not request.sop_instance_uid:
            return False
        incoming = self.open_incoming(self.assoc)
        uids = MetaUids(request.sop_class_uid, request.sop_instance_uid, syntax)
        incoming.write_header(uids)
        self._receiving = _Receiving(context_id, request, incoming)
        return True

    def _finish(self, receiving: _Receiving) -> None:
        request = receiving.request
        sop_instance_uid = request.sop_instance_uid or ""
        status = self.store(self.assoc, receiving.incoming, request.sop_class_uid, sop_instance_uid)
        receiving.incoming.close()
        response = commands.c_store_rsp(
            request.message_id, request.sop_class_uid, sop_instance_uid, status
        )
        self._send(receiving.context_id, response)

    def _accepted(self) -> dict[int, str]:
        if self._syntaxes is None:
            self._syntaxes = {
                int(context.context_id): str(context.transfer_syntax[0])  # accepted: numbered
                for context in self.assoc.accepted_contexts
            }
        return self._syntaxes

    def _send(self, context_id: int, command: bytes) -> None:
        self.dul.socket.send(ul.pdata(context_id, ul.COMMAND | ul.LAST, command))

    def _hand_over(self, items: list[tuple[int, int, bytes]]) -> None:
        """Give pynetdicom these PDVs, and every PDU after them."""
        self.active = False
        self.reader.unread(ul.pdata_many(items))
        peer = self.assoc.requestor
        log.info("association from %s:%s handed to pynetdicom", peer.address, peer.port)

    def _invalid(self, reason: str) -> None:
        peer = self.assoc.requestor
        log.warning(
            "aborting association from %s:%s: %s", peer.address, peer.port, one_line(reason)
        )
        if self._receiving is not None:
            self._receiving.incoming.discard()
            self._receiving = None
        self.active = False
        report_invalid_pdu(self.assoc)

    def _closed(self) -> bool:
        report_closed(self.assoc)
        return True

    def _wait_for_establishment(self) -> bool | None:
        """The AC is out but the association thread has not marked it established yet.

        Its bookkeeping (the association log's tally, EVT_ESTABLISHED) takes
        microseconds; a request waits for it rather than racing it.
        """
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since > _ESTABLISH_WAIT:
            self.active = False  # something is wrong with the association thread
            return None
        time.sleep(0.0005)
        return True
