"""The SCP in a process of its own, driven from the adapter over a pipe.

Why a process: receiving is CPU-bound in pynetdicom's Python code, and in
one interpreter it queued behind intake, the ledger and the scheduler for
the one GIL; on a 2-core edge box that halved the receive rate.  The child
shares nothing with the adapter but the spool folder, which is the adapter's
one-way data flow anyway (network -> spool -> watcher -> ledger).

Over the pipe, adapter -> child: ``("policy", AdmissionPolicy)`` and
``("min_free", FreeSpaceRule)`` after a reload, ``("stop",)``.  Child ->
adapter: ``("listening", port, tls_port)`` or ``("failed", errno, text)`` once, then
``("log", LogRecord)`` for every log record (so the adapter's log stream and
level stay the only ones), ``("tally", Tally)`` whenever the counters
changed, and ``("stopped",)``.
The child ignores SIGTERM/SIGINT/SIGHUP, which systemd sends to the whole
cgroup: the adapter decides.  If the adapter dies,
the kernel kills the child at once (:func:`die_with`), freeing the port for
the restart (nothing it had not acknowledged is lost: the peer resends).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scp.server import StoreServer
from spool.text import one_line
from spool.writer import SpoolWriter

if TYPE_CHECKING:
    from collections.abc import Callable

    from config import DicomConfig, FreeSpaceRule
    from scp.admission import AdmissionPolicy
    from spool.layout import SpoolLayout

log = logging.getLogger(__name__)
START_TIMEOUT = 60.0
TALLY_SECONDS = 0.5
STOP_MARGIN = 15.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h  # beyond the shutdown grace, for the child's own wind-down


@dataclass
class Tally:
    """Totals since start, for metrics: called AE -> count / bytes; reason -> count."""

    received: Counter[str] = field(default_factory=Counter)
    received_bytes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    active_associations: int = 0


class ScpProcess:
    """Parent side: start, reconfigure, watch and stop the SCP child."""

    def __init__(
        self,
        dicom: DicomConfig,
        policy: AdmissionPolicy,
        layout: SpoolLayout,
        min_free: FreeSpaceRule,
        published: Callable[[list[Path]], None],
    ) -> None:
        self.dicom = dicom
        self._published = published  # intake's submit: each stored file, at once
        self._policy = policy
        self._layout = layout
        self._min_free = min_free
        self.tally = Tally()
        self._port: int | None = None
        self._tls_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._sending = threading.Lock()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        assert self._port is not None, "SCP not started"
        return self._port

    @property
    def tls_port(self) -> int:
        """The bound TLS port; 0 without ``[dicom] tls_port``."""
        return self._tls_port

    @property
    def policy(self) -> AdmissionPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: AdmissionPolicy) -> None:
        self._policy = policy
        self._send(("policy", policy))

    @property
    def min_free(self) -> FreeSpaceRule:
        return self._min_free

    @min_free.setter
    def min_free(self, rule: FreeSpaceRule) -> None:
        self._min_free = rule
        self._send(("min_free", rule))

    @property
    def active_associations(self) -> int:
        return self.tally.active_associations

    @property
    def running(self) -> bool:
        """True while the child serves and its messages are read."""
        return (
            self._process is not None
            and self._process.poll() is None
            and self._reader is not None
            and self._reader.is_alive()
        )

    def spawn(self) -> None:
        """Start the child, idle until :meth:`start`.

        Done first, before the adapter runs anything else: the child is what
        binds the ports, so it is the one process that inherits the ability
        to bind port 104 (see :mod:`privileges`).
        """
        if self._process is not None:
            return
        ours, theirs = socket.socketpair()
        # The child finds our modules where we found them, wherever it was started.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "scp.process", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())

    def start(self) -> None:
        """Have the child (spawned now if it was not yet) listen; wait until it does.

        Raises
        ------
        OSError
            When the child cannot listen (address in use, permission).
        """
        self.spawn()
        level = logging.getLogger().getEffectiveLevel()
        self._send(("serve", self.dicom, self._policy, self._layout, self._min_free, level))
        first = self._first_word()
        if first is None or first[0] != "listening":
            self._reap(5)
            if first is not None and first[0] == "failed":
                raise OSError(first[1], first[2])
            raise OSError("the SCP process exited while starting")
        self._port, self._tls_port = int(first[1]), int(first[2])
        self._reader = threading.Thread(target=self._read, name="scp-pipe", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Ask the child to stop (it waits out the shutdown grace) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        self._send(("stop",))
        try:
            process.wait(self.dicom.shutdown_grace + STOP_MARGIN)
        except subprocess.TimeoutExpired:
            log.error("the SCP process did not stop: killing it")
            process.kill()
            process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self._conn is not None:
            self._conn.close()

    def _reap(self, timeout: float) -> None:
        assert self._process is not None
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    def _first_word(self) -> tuple[Any, ...] | None:
        """The child's "listening" or "failed", passing on the log records (and any file
        stored from the listen backlog) before it."""
        deadline = time.monotonic() + START_TIMEOUT
        while self._conn.poll(max(0.0, deadline - time.monotonic())):  # type: ignore[union-attr]
            message = self._receive()
            if message is not None and message[0] == "published":  # stored from the backlog
                self._published([Path(message[1])])
                continue
            if message is None or message[0] != "log":
                return message
            self._log(message[1])
        raise OSError(f"the SCP process did not start within {START_TIMEOUT:.0f}s")

    @staticmethod
    def _log(record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._sending, contextlib.suppress(OSError, AttributeError):
            self._conn.send(message)  # type: ignore[union-attr]

    def _receive(self) -> tuple[Any, ...] | None:
        try:
            return self._conn.recv()  # type: ignore[union-attr]
        except (EOFError, OSError):
            return None

    def _read(self) -> None:
        while (message := self._receive()) is not None:
            kind = message[0]
            if kind == "log":
                self._log(message[1])
            elif kind == "published":
                self._published([Path(message[1])])
            elif kind == "tally":
                self.tally = message[1]
            elif kind == "stopped":
                break


class _PipeQueue:
    """What QueueHandler needs of a queue: records go down the pipe."""

    def __init__(self, send: Any) -> None:
        self._send = send

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._send(("log", record))


def die_with(parent_pid: int) -> None:
    """Be killed the moment the adapter dies (Linux PR_SET_PDEATHSIG), port and all.

    The kernel signals when the thread that started us ends: Adapter.start
    runs in the main thread.  Nothing acknowledged is lost by dying: every
    acknowledged instance is already durable in the spool.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(0)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """One log line, not a traceback on stderr, for a connection thread pynetdicom lost.

    Its state machine raises on some invalid sequences a peer can send (e.g.
    data before the association is accepted); a traceback per such peer
    would let anyone flood the journal.  The boundary's ``close_left_open`` hook
    closes the connection.
    """
    thread = args.thread.name if args.thread is not None else "?"
    log.warning(
        "connection thread %s ended on %s: %s",
        thread,
        args.exc_type.__name__,
        one_line(args.exc_value),
    )


def serve(conn: Connection) -> None:
    """Child side: run the SCP until told to stop or the adapter goes away."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    threading.excepthook = _thread_died
    try:
        _, dicom, policy, layout, min_free, level = conn.recv()
    except (EOFError, OSError):
        return
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending, contextlib.suppress(OSError):
            conn.send(message)

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(_PipeQueue(send))]  # type: ignore[arg-type]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, level))

    writer = SpoolWriter(
        layout,
        min_free,
        dicom.max_instance_size,
        announce=lambda path: send(("published", os.fspath(path))),
    )
    server = StoreServer(dicom, policy, writer)
    try:
        server.start()
    except OSError as exc:
        send(("failed", exc.errno, exc.strerror or str(exc)))
        return
    send(("listening", server.port, server.tls_port))
    done = threading.Event()
    reporter = threading.Thread(target=_report, args=(server, send, done), name="tally")
    reporter.start()
    orphaned = _obey(conn, server)
    try:
        server.stop(0.0 if orphaned else None)
    finally:
        done.set()
        reporter.join()
        send(("tally", _snapshot(server)))
        send(("stopped",))


def _obey(conn: Connection, server: StoreServer) -> bool:
    """Follow the adapter's messages until "stop"; True if the adapter vanished."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return True
        if message[0] == "policy":
            server.policy = message[1]
        elif message[0] == "min_free":
            server.writer.min_free = message[1]
        elif message[0] == "stop":
            return False


def _snapshot(server: StoreServer) -> Tally:
    return Tally(*server.tally.totals(), server.active_associations)


def _report(server: StoreServer, send: Any, done: threading.Event) -> None:
    last = None
    while not done.wait(TALLY_SECONDS):
        tally = _snapshot(server)
        if tally != last:
            send(("tally", tally))
            last = tally


if __name__ == "__main__":
    # Under its own name, so the Tally it pickles unpickles in the adapter.
    from arenas import limit_malloc_arenas
    from scp import process

    limit_malloc_arenas()
    process.die_with(int(sys.argv[2]))
    process.serve(Connection(int(sys.argv[1])))
