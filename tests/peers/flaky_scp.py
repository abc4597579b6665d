"""A pynetdicom Storage SCP that plays a misbehaving destination in export tests.

It runs in the test process (``start()`` serves from pynetdicom's own
threads, ``block=False``) on 127.0.0.1 and a port the kernel picks, accepts
every storage SOP class in every transfer syntax pynetdicom knows, and keeps
a record of each C-STORE it answers: SOP Instance UID, which attempt for that
UID it was, the status it answered and the dataset bytes exactly as they
arrived (and their SHA-256).

Which stores fail is decided per SOP Instance UID, deterministically:

* ``fail``: a set of UIDs that get the failure status (0xA700, Refused: Out
  of Resources, unless told otherwise) every time they are sent;
* ``fail_share``: a share of all UIDs picked by hashing ``phase`` and the
  UID, so the same UIDs fail for as long as the phase stays the same and a
  new phase picks a different (but again fixed) subset.

Both can be changed while the server runs (:meth:`FlakyStorageSCP.set_phase`),
as can ``delay``, seconds each store waits before answering, which makes it
easy to kill a sender in the middle of a transfer.  The misbehaviours a
destination shows in the wild can be played too:

* ``refuse_classes``: SOP classes it accepts no presentation context for;
* ``abort_after``: in each association, the store after this many answered
  ones gets an A-ABORT instead of an answer (the sender's remaining files
  are never attempted);
* ``stall_share``: a share of UIDs (chosen like ``fail_share``) whose store
  waits ``stall_seconds`` before answering, past a sender's DIMSE timeout.

With ``record``, every answered store is also appended to that file as one
JSON line, so a test can read what arrived from a peer in another process.

When a dicom-adapter runs in the same process, its SCP turns on pynetdicom's
process-wide chunked receive (``STORE_RECV_CHUNKED_DATASET``) and hooks where
the chunks are written; the datasets this peer receives then arrive as files
and are read back from there. Either way the bytes recorded are the dataset
after any file meta, as they were on the wire.

Run by hand as ``python -m tests.peers.flaky_scp --fail-share 0.5 --delay 0.1``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0xC211
# Preamble (128), "DICM" (4), then (0002,0000) UL: tag 4, VR 2, length 2, value 4.
_GROUP_LENGTH_VALUE = slice(140, 144)
_META_START = 144


@dataclass(frozen=True)
class Store:
    """One C-STORE as this peer saw and answered it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    attempt: int  # 1 the first time this SOP Instance UID arrives, then 2, 3, ...
    phase: str
    status: int  # the status answered
    data: bytes  # the dataset bytes as received, without file meta
    sha256: str
    association: int  # 1 for the first association this peer accepted, then 2, ...
    calling_ae: str
    at: float  # time.monotonic() when the dataset had arrived


class FlakyStorageSCP:
    """A Storage SCP that answers a chosen, deterministic subset of C-STOREs with a failure.

    Parameters
    ----------
    ae_title : str
        Its own AE title; any called AE title is accepted.
    fail : iterable of str
        SOP Instance UIDs that always fail (until changed).
    fail_share : float
        Share (0..1) of all other UIDs that fail, chosen by hashing
        ``phase`` with the UID.
    phase : str
        Name of the current phase; recorded with each store.
    delay : float
        Seconds each C-STORE waits, after its dataset arrived, before the
        answer is sent.
    failure_status : int
        The status failing stores get.
    """

    def __init__(
        self,
        ae_title: str = "FLAKYSCP",
        *,
        fail: Iterable[str] = (),
        fail_share: float = 0.0,
        phase: str = "",
        delay: float = 0.0,
        failure_status: int = OUT_OF_RESOURCES,
        refuse_classes: Iterable[str] = (),
        abort_after: int = 0,
        stall_share: float = 0.0,
        stall_seconds: float = 0.0,
        record: Path | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.failure_status = failure_status
        self.refuse_classes = frozenset(refuse_classes)
        self.record = record
        self._lock = threading.Lock()
        self._fail = frozenset(fail)
        self._fail_share = fail_share
        self._phase = phase
        self._delay = delay
        self._abort_after = abort_after
        self._stall_share = stall_share
        self._stall_seconds = stall_seconds
        self._answered: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self.aborts = 0
        self._stores: list[Store] = []
        self._associations: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._association_count = 0
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    # -- running ------------------------------------------------------------

    def start(self) -> FlakyStorageSCP:
        """Listen on 127.0.0.1 on a free port; return self."""
        assert self._server is None, "already started"
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = False
        ae.maximum_associations = 8
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax not in self.refuse_classes:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, lambda _event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._ae = ae
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        """Abort open associations and close the listening socket."""
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None

    def __enter__(self) -> FlakyStorageSCP:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    # -- behaviour ----------------------------------------------------------

    def set_phase(
        self,
        phase: str,
        *,
        fail: Iterable[str] | None = None,
        fail_share: float | None = None,
        delay: float | None = None,
        abort_after: int | None = None,
        stall_share: float | None = None,
    ) -> None:
        """Start a new phase; what is not given stays as it was."""
        with self._lock:
            self._phase = phase
            if fail is not None:
                self._fail = frozenset(fail)
            if fail_share is not None:
                self._fail_share = fail_share
            if delay is not None:
                self._delay = delay
            if abort_after is not None:
                self._abort_after = abort_after
            if stall_share is not None:
                self._stall_share = stall_share

    def fails(self, sop_instance_uid: str) -> bool:
        """Whether a store of this UID fails in the current phase."""
        with self._lock:
            return self._fails(sop_instance_uid)

    def _fails(self, sop_instance_uid: str) -> bool:
        if sop_instance_uid in self._fail:
            return True
        return self._picked("", self._fail_share, sop_instance_uid)

    def _picked(self, what: str, share: float, sop_instance_uid: str) -> bool:
        """Whether ``sop_instance_uid`` is in ``share`` of all UIDs, for this phase and purpose."""
        if share <= 0:
            return False
        seed = f"{self._phase}\0{what}{sop_instance_uid}".encode()
        return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") / 2**64 < share

    # -- what happened ------------------------------------------------------

    def stores(self) -> list[Store]:
        """Every C-STORE answered (or about to be), in arrival order."""
        with self._lock:
            return list(self._stores)

    def counts(self) -> Counter[str]:
        """How many times each SOP Instance UID arrived."""
        return Counter(store.sop_instance_uid for store in self.stores())

    def received(self) -> set[str]:
        """The SOP Instance UIDs that arrived at least once."""
        return {store.sop_instance_uid for store in self.stores()}

    @property
    def association_count(self) -> int:
        with self._lock:
            return self._association_count

    # -- handlers -----------------------------------------------------------

    def _on_connection(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN: number the association; no Nagle on our small answers."""
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._association_count += 1
            self._associations[event.assoc] = self._association_count

    def _on_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: record the store, decide its status, wait ``delay``, answer."""
        try:
            request = event.request
            sop_instance_uid = str(request.AffectedSOPInstanceUID)
            data = _received_dataset(event)
            with self._lock:
                answered = self._answered.get(event.assoc, 0)
                if self._abort_after and answered >= self._abort_after:
                    self.aborts += 1
                    event.assoc.abort()  # from a handler: queued, the store never answered
                    return PROCESSING_FAILURE
                self._answered[event.assoc] = answered + 1
                attempt = 1 + sum(s.sop_instance_uid == sop_instance_uid for s in self._stores)
                status = self.failure_status if self._fails(sop_instance_uid) else SUCCESS
                delay = self._delay
                if self._picked("stall\0", self._stall_share, sop_instance_uid):
                    delay = max(delay, self._stall_seconds)
                self._stores.append(
                    Store(
                        sop_instance_uid=sop_instance_uid,
                        sop_class_uid=str(request.AffectedSOPClassUID),
                        transfer_syntax_uid=str(event.context.transfer_syntax),
                        attempt=attempt,
                        phase=self._phase,
                        status=status,
                        data=data,
                        sha256=hashlib.sha256(data).hexdigest(),
                        association=self._associations.get(event.assoc, 0),
                        calling_ae=str(event.assoc.requestor.ae_title).strip(),
                        at=time.monotonic(),
                    )
                )
                if self.record is not None:
                    self._write_record(self._stores[-1])
        except Exception:  # a test peer that raises would only abort; say why instead
            log.exception("flaky SCP: C-STORE handler failed")
            return PROCESSING_FAILURE
        if delay > 0:
            time.sleep(delay)
        return status

    def _write_record(self, store: Store) -> None:
        """One JSON line per answered store (the lock is held), flushed at once."""
        line = {
            "sop_instance_uid": store.sop_instance_uid,
            "sop_class_uid": store.sop_class_uid,
            "status": store.status,
            "attempt": store.attempt,
            "sha256": store.sha256,
            "association": store.association,
        }
        assert self.record is not None
        with open(self.record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def read_records(path: Path) -> list[dict[str, object]]:
    """The stores a peer in another process recorded with ``--record``."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def _received_dataset(event: evt.Event) -> bytes:
    """The dataset bytes of a C-STORE, as sent, whether or not chunked receive is on."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if path is None:
        return event.encoded_dataset(include_meta=False)
    raw = Path(path).read_bytes()
    if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path}: no file meta group length where expected")
    return raw[_META_START + int.from_bytes(raw[_GROUP_LENGTH_VALUE], "little") :]


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted, printing each store (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.peers.flaky_scp")
    parser.add_argument("--ae-title", default="FLAKYSCP")
    parser.add_argument("--fail-share", type=float, default=0.0)
    parser.add_argument("--failure-status", type=lambda text: int(text, 0), default=0xA700)
    parser.add_argument("--phase", default="")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--refuse-class", action="append", default=[], metavar="SOP_CLASS_UID")
    parser.add_argument("--abort-after", type=int, default=0)
    parser.add_argument("--stall-share", type=float, default=0.0)
    parser.add_argument("--stall-seconds", type=float, default=0.0)
    parser.add_argument("--record", type=Path, help="append each answered store as JSON")
    args = parser.parse_args(argv)
    scp = FlakyStorageSCP(
        args.ae_title,
        fail_share=args.fail_share,
        failure_status=args.failure_status,
        phase=args.phase,
        delay=args.delay,
        refuse_classes=args.refuse_class,
        abort_after=args.abort_after,
        stall_share=args.stall_share,
        stall_seconds=args.stall_seconds,
        record=args.record,
    ).start()
    print(f"listening on 127.0.0.1:{scp.port} as {args.ae_title}", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            stores = scp.stores()
            for store in stores[seen:]:
                print(
                    f"0x{store.status:04X} attempt {store.attempt} {store.sop_instance_uid} "
                    f"({len(store.data)} bytes)",
                    flush=True,
                )
            seen = len(stores)
    except KeyboardInterrupt:
        return 0
    finally:
        scp.stop()


if __name__ == "__main__":
    raise SystemExit(main())
