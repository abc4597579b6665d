"""``dicom-adapter run``: the service in the foreground, as systemd starts it.

The service, the DICOM network and the scheduler are imported here, when
the command runs: ``status`` is run by monitoring scripts and should answer
in well under a second, not wait for pynetdicom, watchdog and APScheduler.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from cli.common import config_option, load

SIGNAL_POLL_SECONDS = 0.5


@click.command()
@config_option
def run(config_path: Path | None) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT; SIGHUP reloads.

    SIGHUP re-reads the config (AE titles with their processors, sources,
    destinations, a few keys; see docs/configuration.md)
    without dropping running associations; a broken config is refused with
    one log line and the running one stays.

    \b
    Example:
      dicom-adapter run --config config.ini
    """
    from arenas import limit_malloc_arenas
    from logs import configure_logging

    try:
        from adapter import Adapter
        from scp.server import ensure_bindable
    except ImportError as exc:  # e.g. the pynetdicom boundary's version check: one line
        if exc.name != "pynetdicom":
            raise
        raise click.ClickException(str(exc)) from None

    limit_malloc_arenas()
    config = load(config_path)
    configure_logging(config.log.level)
    # The handlers only record the signal; the main thread looks every half
    # second, so a signal that arrives while starting up is acted on once
    # started, and one that lands while the main thread waits is never
    # missed.  (Blocking the signals instead would be inherited by every
    # command the adapter runs.)
    received: list[int] = []
    reloads: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, _frame: received.append(n))
    signal.signal(signal.SIGHUP, lambda n, _frame: reloads.append(n))
    try:
        ensure_bindable(config.dicom)
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from None
    adapter = Adapter(config)
    try:
        adapter.start()
    except OSError as exc:
        adapter.stop()
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None
    while not received:
        time.sleep(SIGNAL_POLL_SECONDS)
        if reloads:
            reloads.clear()
            adapter.reload()
    adapter.stop(reason=signal.Signals(received[0]).name)
    sys.exit(130 if received[0] == signal.SIGINT else 0)
