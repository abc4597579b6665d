"""The one place that touches uvicorn's internals, checked against one version.

uvicorn closes a keep-alive connection that stays idle after a response, but
a new connection that sends nothing, or sends its request head a byte at a
time, it holds open for ever; and every open connection counts against
``limit_concurrency``, past which every request is answered 503.  So a few
dozen silent sockets from one machine would lock every scanner and viewer
out.  uvicorn's public configuration has no deadline for the request head
and no limit per client, so :func:`guarded_protocol` subclasses its h11
protocol:

- a connection gets ``head_timeout`` seconds, from connecting or from its
  previous response, to deliver a whole request head, or it is closed;
- a host with ``per_host`` connections open gets its next one closed at once.

What the subclass relies on (methods it overrides with their signatures, the
attributes those methods set) is listed in :data:`REQUIRES` and checked when
this module is imported; the version is pinned like pyproject.toml's.  An
uvicorn that differs fails the import with one line (:class:`UvicornMismatch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from private_api import Requirement

log = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 10.0  # at most one line per host this often for closed connections
MAX_REMEMBERED_HOSTS = 4096
PINNED_VERSION = "0.55"  # major.minor; keep equal to pyproject.toml's uvicorn>=0.55,<0.56
_H11 = "uvicorn.protocols.http.h11_impl:H11Protocol"
REQUIRES = (
    Requirement(f"{_H11}.__init__", ("self", "config", "server_state", "app_state", "_loop")),
    Requirement(f"{_H11}.connection_made", ("self", "transport"), uses="connections"),
    Requirement(f"{_H11}.connection_lost", ("self", "exc")),
    Requirement(f"{_H11}.handle_events", ("self",), uses="cycle"),
    Requirement(f"{_H11}.on_response_complete", ("self",), uses="handle_events"),
    Requirement(f"{_H11}.__init__", uses="loop"),
    Requirement(f"{_H11}.__init__", uses="client"),
    Requirement(f"{_H11}.__init__", uses="transport"),
)


class UvicornMismatch(ImportError):
    """The installed uvicorn is not the one the HTTP listener's protocol was checked against."""

    def __init__(self, installed: str, broken: str) -> None:
        super().__init__(
            f"uvicorn {installed} is installed, the adapter requires uvicorn "
            f"{PINNED_VERSION}.x: {broken}",
            name="uvicorn",
        )


def check(installed: str) -> None:
    """Raises UvicornMismatch unless ``installed`` is the pinned series with every requirement."""
    if installed.split(".")[:2] != PINNED_VERSION.split("."):
        raise UvicornMismatch(installed, "web/uvicorn_boundary.py is checked against that only")
    for requirement in REQUIRES:
        if (problem := requirement.problem()) is not None:
            raise UvicornMismatch(installed, problem)


check(uvicorn.__version__)


def guarded_protocol(head_timeout: float, per_host: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline on each request head and a cap per client host;
    pass it as ``uvicorn.Config(http=...)``."""

    quiet = _OnceAWhile(LOG_INTERVAL_SECONDS)  # shared by the server's connections

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _awaited_after: Any = None  # the cycle in place when the deadline was armed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host is not None and _open_from(self.connections, host) > per_host:
                if (repeats := quiet.allow(host)) is not None:
                    log.warning(
                        "HTTP connection from %s closed: %d already open%s",
                        host,
                        per_host,
                        f" ({repeats} more closed since the last line)" if repeats else "",
                    )
                transport.close()
                return
            self._await_head()

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._awaited_after:
                self._deadline.cancel()  # a request head arrived: the body has its own timeout
                self._deadline = None

        def on_response_complete(self) -> None:
            self._await_head()  # before super(): it may parse a pipelined request at once
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._awaited_after = self.cycle
            self._deadline = self.loop.call_later(head_timeout, self._head_too_slow)

        def _head_too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                host = self.client[0] if self.client else "a client"
                if (repeats := quiet.allow(host)) is not None:
                    log.warning(
                        "HTTP connection from %s closed: no whole request head in %gs%s",
                        host,
                        head_timeout,
                        f" ({repeats} more closed since the last line)" if repeats else "",
                    )
                self.transport.close()

    return GuardedH11Protocol


class _OnceAWhile:
    """One log line per host per interval, counting those left out: a host opening
    connections as fast as it can must not flood the journal."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # host -> (logged at, left out since)

    def allow(self, host: str) -> int | None:
        """None to stay quiet; else how many were left out since the last line."""
        now = time.monotonic()
        logged, left_out = self._last.get(host, (-self.interval, 0))
        if now - logged < self.interval:
            self._last[host] = (logged, left_out + 1)
            return None
        if len(self._last) >= MAX_REMEMBERED_HOSTS:
            self._last.clear()  # bounded memory; at worst one more line per host
        self._last[host] = (now, 0)
        return left_out


def _open_from(connections: set[Any], host: str) -> int:
    """How many of the server's open connections (this one included) come from ``host``."""
    return sum(1 for protocol in connections if protocol.client and protocol.client[0] == host)
