"""The HTTP listener: uvicorn serving the adapter's ASGI app from a thread of its own.

The SCP is a process of its own, so nothing the HTTP side does (parsing a
large STOW-RS body, hashing a password) can stall a C-STORE; within the
adapter the listener's event loop runs on its own thread and hands disk
work to worker threads.  uvicorn is configured for a listener facing
hospital networks: h11 only, no proxy headers trusted, no server banner,
idle keep-alive connections closed after 5 s, a request head due within
``[http] timeout`` of connecting, at most :data:`MAX_CONNECTIONS` connections
and :data:`MAX_PER_HOST` from one host (``web.uvicorn_boundary``), TLS from
the same settings as ``[dicom]`` (config.tls).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from config import HttpConfig
from web.uvicorn_boundary import guarded_protocol

log = logging.getLogger(__name__)
START_TIMEOUT = 10.0  # seconds for the listener to bind
MAX_CONNECTIONS = 64  # open connections at once; more are answered 503
MAX_PER_HOST = 16  # open connections from one client host; more are closed at once


class HttpListener:
    """Serves ``app`` on ``[http] host:port`` until :meth:`stop`."""

    def __init__(self, app: Any, http: HttpConfig) -> None:
        self.http = http
        tls = None
        if (settings := http.tls) is not None:
            tls = lambda _config, _default: settings.server_context()  # noqa: E731
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=http.host,
                port=http.port,
                http=guarded_protocol(http.timeout, MAX_PER_HOST),
                lifespan="off",
                log_config=None,
                access_log=False,
                proxy_headers=False,
                server_header=False,
                timeout_keep_alive=5,
                timeout_graceful_shutdown=5,
                limit_concurrency=MAX_CONNECTIONS,
                ssl_context_factory=tls,
            )
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen, or raise OSError saying why not (the port taken, say)."""
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                where = f"{self.http.host}:{self.http.port}"
                raise OSError(f"the HTTP listener could not listen on {where}")
            time.sleep(0.01)
        log.info("HTTP listening on %s", self.http.base_url)

    @property
    def running(self) -> bool:
        """Serving: started, and its thread has not ended."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop accepting; requests under way get a few seconds to finish."""
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._thread = None
