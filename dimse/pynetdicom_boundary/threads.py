"""Hooks on an accepted association's two threads.

pynetdicom 3.0 runs each association as two polling loops: the DUL thread
sleeps 1 ms whenever a turn found nothing to do, and the association thread
looks for a decoded DIMSE message once per turn of a loop that sleeps 1 ms
on every turn.  A C-STORE round trip crosses both loops twice, so on
loopback about 1.5 ms of every instance was spent asleep with work waiting.

:func:`wake_on_events` (hook ``wake_on_events``) changes one association,
at EVT_CONN_OPEN (before its threads start): the DUL thread blocks in
``select()`` on the socket and on an eventfd written whenever the
association queues a primitive or asks the DUL to stop; the association
thread, when no message is ready, waits on an Event the DUL sets when it
hands over a message.  Both wake at least every :data:`IDLE_WAIT` seconds
so pynetdicom's timers are checked.  The DUL also asks the caller's
``serve`` first on every turn: the direct C-STORE path (:mod:`scp.direct`).
It touches: the DUL and DIMSE classes (swapped), ``_is_transport_event``
(overridden), ``_kill_thread`` (made a property that wakes the DUL),
``_run_loop_delay`` (0), the ``to_provider_queue``, ``to_user_queue`` and
``msg_queue`` (replaced by queues that signal), and ``Thread._target``
(wrapped, so the eventfd closes with the thread).

One 1 ms sleep per served message remains, hard-coded in
``Association._run_reactor``; it overlaps with the response going out.

With ``_run_loop_delay`` 0 the DUL loop still calls ``time.sleep(0)`` after
every turn that queued no event, about four times per small instance: a
system call that hands the GIL to another association's thread each time,
under load a context switch and several futex calls.  Hook
``no_zero_sleep`` gives ``pynetdicom.dul`` a ``time`` whose ``sleep(0)``
returns at once on a woken DUL's own thread (which blocks in ``select()``
when idle); anywhere else it sleeps as before.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import dul as dul_module
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from dimse.pynetdicom_boundary.registry import register
from private_api import Requirement

# Longest a thread blocks with nothing to do before re-checking its timers.
IDLE_WAIT = 0.01
_DUL = "pynetdicom.dul:DULServiceProvider"
_DIMSE = "pynetdicom.dimse:DIMSEServiceProvider"

Serve = Callable[[], "bool | None"]

_woken = register(
    "wake_on_events",
    "no 1 ms polls: the DUL and DIMSE threads wake on events",
    Requirement(f"{_DUL}._is_transport_event", params=("self",)),
    Requirement(f"{_DUL}.run_reactor", uses="_kill_thread"),
    Requirement(f"{_DUL}.run_reactor", uses="_run_loop_delay"),
    Requirement(f"{_DUL}.run_reactor", uses="_is_transport_event"),
    Requirement(f"{_DUL}.__init__", uses="to_provider_queue"),
    Requirement(f"{_DUL}.__init__", uses="to_user_queue"),
    Requirement(f"{_DIMSE}.__init__", uses="msg_queue"),
    Requirement(f"{_DIMSE}.get_msg", params=("self", "block")),
    Requirement("threading:Thread.__init__", uses="_target"),
    Requirement("threading:Thread.run", uses="_target"),
)
_no_zero_sleep = register(
    "no_zero_sleep",
    "a woken DUL's loop does not call sleep(0) (a GIL hand-over) after each turn",
    Requirement(f"{_DUL}.run_reactor", uses="time"),
    Requirement(f"{_DUL}.run_reactor", uses="sleep"),
    Requirement("pynetdicom.dul:time"),
)
_fsm_events = register(
    "fsm_events",
    "the direct path tells the state machine a read failed (Evt17) or a PDU broke (Evt19)",
    Requirement(f"{_DUL}.__init__", uses="event_queue"),
    Requirement(f"{_DUL}.run_reactor", uses="event_queue"),
    Requirement("pynetdicom.fsm:TRANSITION_TABLE"),
)
_closed_left_open = register(
    "close_left_open",
    "a DUL thread that ends without EVT_CONN_CLOSE (a state machine crash, a kill after a "
    "rejection) leaves its connection open: close it and signal",
    Requirement("pynetdicom.events:trigger", params=("assoc", "event", "attrs")),
    Requirement("pynetdicom.fsm:StateMachine.do_action", uses="InvalidEventError"),
)
_unblocked = register(
    "stop_waiting_for_request",
    "a connection gone before its A-ASSOCIATE-RQ frees its slot at once, not after 30 s",
    Requirement("pynetdicom.association:Association.run_reactor", uses="receive_pdu"),
    Requirement(f"{_DUL}.receive_pdu", uses="to_user_queue"),
)


_on_woken_dul = threading.local()  # .active: this thread runs a woken DUL's reactor


class _DulTime:
    """``pynetdicom.dul``'s ``time`` module, but ``sleep(0)`` on a woken DUL's thread
    returns without a system call."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == 0 and getattr(_on_woken_dul, "active", False):
            _no_zero_sleep()
            return
        time.sleep(seconds)


_DUL_TIME = _DulTime()


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal()`` after every put."""

    def __init__(self, signal: Callable[[], Any]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class _WakefulDUL(DULServiceProvider):
    """A DUL whose idle turns block in select() instead of sleeping."""

    _wake_fd: int
    _wake_lock: threading.Lock
    _serve: Serve | None

    @property  # type: ignore[override]
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_kill_thread_flag", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_thread_flag"] = value
        if value:
            self.wake()

    def wake(self) -> None:
        # Under the lock: a write racing the close could land in a reused fd.
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def close_wake_fd(self) -> None:
        with self._wake_lock:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _is_transport_event(self) -> bool:
        served = self._serve() if self._serve is not None else None
        if served:
            return True
        if served is None and super()._is_transport_event():
            return True
        if self.event_queue.empty() and self.to_provider_queue.empty():
            self._wait_for_io()
        return False

    def _wait_for_io(self) -> None:
        if self.state_machine.current_state == "Sta1":
            _stop_waiting_for_request(self)  # the connection ended before a request
        sock = self.socket.socket if self.socket is not None else None
        watched: list[Any] = [self._wake_fd]
        if sock is not None and sock.fileno() >= 0:
            watched.append(sock)
        try:
            readable, _, _ = select.select(watched, [], [], IDLE_WAIT)
        except (OSError, ValueError):  # the socket closed under us: the next turn sees it
            return
        if self._wake_fd in readable:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)


class _WakefulDIMSE(DIMSEServiceProvider):
    """A DIMSE provider whose non-blocking get waits briefly for the DUL's signal."""

    _attention: threading.Event

    def get_msg(self, block: bool = False) -> Any:
        if not block and self.msg_queue.empty():
            self._attention.wait(IDLE_WAIT)
            self._attention.clear()
        return super().get_msg(block)


def wake_on_events(assoc: Any, serve: Serve | None = None) -> None:
    """Switch a not yet started acceptor association to event-driven wake-ups.

    ``serve`` runs first on each DUL turn: True, the turn is used up; False,
    nothing to read yet and pynetdicom must not read either; None,
    pynetdicom's turn.
    """
    dul, dimse = assoc.dul, assoc.dimse
    attention = threading.Event()
    dul.__class__ = _WakefulDUL
    dul._serve = serve
    dul._wake_lock = threading.Lock()
    dul._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    dul._run_loop_delay = 0
    dul.to_provider_queue = _SignallingQueue(dul.wake)
    # The DUL thread's target was bound at construction, so wrap it rather
    # than override run_reactor: the eventfd goes when the thread ends.
    reactor = dul._target
    signalled: list[bool] = []  # pynetdicom triggered EVT_CONN_CLOSE (it does on normal ends)
    assoc.bind(evt.EVT_CONN_CLOSE, lambda _event: signalled.append(True))

    def run_then_close() -> None:
        _on_woken_dul.active = True
        try:
            reactor()
        finally:
            dul.close_wake_fd()
            if not signalled:
                _close_left_open(dul)
            _stop_waiting_for_request(dul)

    dul._target = run_then_close
    dul_module.time = _DUL_TIME  # type: ignore[assignment]  # idempotent: one shared instance
    dul.to_user_queue = _SignallingQueue(attention.set)
    dimse.__class__ = _WakefulDIMSE
    dimse._attention = attention
    dimse.msg_queue = _SignallingQueue(attention.set)
    _woken()


def report_closed(assoc: Any) -> None:
    """Evt17 (transport closed) to the association's state machine, as pynetdicom's reader does."""
    assoc.dul.event_queue.put("Evt17")
    _fsm_events()


def report_invalid_pdu(assoc: Any) -> None:
    """Evt19 (invalid PDU) to the state machine: it aborts the association (PS3.8 9.2)."""
    assoc.dul.event_queue.put("Evt19")
    _fsm_events()


def _close_left_open(dul: Any) -> None:
    """Close the connection of a DUL thread that ended without EVT_CONN_CLOSE.

    pynetdicom's state machine raises (and its thread ends) on some invalid
    event sequences a hostile peer can cause (found by the fuzz test, e.g.
    Evt9 in Sta13), and a DUL killed after a rejection also just stops:
    neither closes the socket nor signals EVT_CONN_CLOSE, on which the
    connection's descriptor, slot and unfinished files are released.
    """
    sock = dul.socket
    if sock is not None and sock.socket is not None:
        sock.close()
    address = dul.assoc.requestor.address_info.as_tuple
    evt.trigger(dul.assoc, evt.EVT_CONN_CLOSE, {"address": address})
    _closed_left_open()


def _stop_waiting_for_request(dul: Any) -> None:
    """Free the slot of a connection that ended before its A-ASSOCIATE-RQ.

    pynetdicom's acceptor waits ``acse_timeout`` (30 s) for the request
    even when the connection is already gone, holding one of
    ``max_associations`` all that time: 16 connect-and-close probes from a
    port scanner would lock every modality out.  An empty hand-over ends
    that wait at once (pynetdicom treats it as the timeout).
    """
    if dul.assoc.requestor.primitive is None and not getattr(dul, "_gave_up", False):
        dul._gave_up = True
        dul.to_user_queue.put(None)
        _unblocked()
