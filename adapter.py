"""Composition root: builds every part from the config and runs them in order.

Start: ledger at head, intake, watcher, reconcile (crash recovery, before any
association), scheduler, SCP last, so nothing is acknowledged before the
adapter knows where everything stood.  Stop in reverse.  ``python adapter.py``
is the same as the ``dicom-adapter`` command.
"""

from __future__ import annotations

import logging

from pynetdicom import _config as pynetdicom_config

import scheduler as schedule
from config import Config
from ledger.db import make_engine
from ledger.migrate import upgrade
from ledger.store import Ledger
from scp.admission import AdmissionPolicy, Source
from scp.server import StoreServer
from spool.layout import SpoolLayout
from spool.writer import SpoolWriter
from watchers.intake import Intake, IntakeWorker
from watchers.reconcile import Reconciler
from watchers.spool_watcher import SpoolWatcher

log = logging.getLogger("adapter")


def admission_policy(config: Config) -> AdmissionPolicy:
    return AdmissionPolicy(
        called_aes=frozenset(config.aes),
        sources=tuple(Source(s.ae_title, s.host) for s in config.sources),
        reject_unknown_sources=config.dicom.reject_unknown_sources,
    )


class Adapter:
    """The running service."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = SpoolLayout(config.storage.spool)
        self.engine = make_engine(config.ledger.url)
        self.ledger = Ledger(self.engine)
        intake = Intake(
            self.layout, self.ledger, {name: ae.duplicates for name, ae in config.aes.items()}
        )
        self.intake = IntakeWorker(intake)
        self.watcher = SpoolWatcher(self.layout, self.intake.submit, config.watcher.settle_seconds)
        # A temporary file older than two network timeouts belongs to no live transfer.
        self.reconciler = Reconciler(
            self.layout,
            self.ledger,
            self.intake.submit,
            config.watcher.settle_seconds,
            stale_tmp_seconds=max(600.0, 2 * config.dicom.network_timeout),
        )
        self.writer = SpoolWriter(self.layout, config.storage.min_free)
        self.server = StoreServer(config.dicom, admission_policy(config), self.writer)
        self.scheduler = schedule.make_scheduler()

    def start(self) -> None:
        self.layout.ensure(self.config.aes)
        # Stream every C-STORE dataset to a file (scp/receiving.py says where),
        # so a 1 GB instance never sits in memory.
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        before, after = upgrade(self.engine)
        if before != after:
            log.info("ledger migrated from %s to %s", before or "empty", after)
        self.intake.start()
        self.watcher.start()
        self.reconciler.tick(startup=True)
        self.intake.wait_idle()
        schedule.every(
            self.scheduler,
            "reconcile",
            self.config.watcher.reconcile_interval,
            self.reconciler.tick,
        )
        self.scheduler.start()
        self.server.start()

    def stop(self) -> None:
        """Stop accepting, then wind down the rest in reverse order.

        Safe to call after a partial start and more than once.
        """
        self.server.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.watcher.stop()
        if self.intake.running:
            # Events still in flight when the watcher stopped: a last scan
            # records every file the SCP acknowledged before we exit.
            self.reconciler.tick(shutdown=True)
        self.intake.stop()
        self.engine.dispose()


if __name__ == "__main__":
    from cli import main

    main()
