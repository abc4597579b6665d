"""Composition root: builds every part from the config and runs them in order.

Start: ledger at head, intake, watcher, reconcile (crash recovery, before any
association), tasks interrupted by a restart requeued, scheduler (grouping,
tasks, reclaim, reconcile), SCP last, so nothing is acknowledged before
the adapter knows where everything stood.  Stop in reverse.  ``python adapter.py``
is the same as the ``dicom-adapter`` command.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: cli turns their failures into one line
    from cli import main

    main()

import logging
import os
import threading

from prometheus_client import generate_latest
from sqlalchemy import literal, select

import scheduler as schedule
from config import Config, config_warnings, load_config
from config_changes import needing_restart, section_changes
from derived import Derived, derive, group_tick_seconds
from errors import ConfigError
from exporters.outbox import OutboxScanner
from health import HEARTBEAT_SECONDS
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.models import TIME_FORMAT, utcnow
from ledger.nodes import Nodes
from ledger.processing import Processing
from ledger.states import TaskKind, TaskState
from ledger.store import Ledger
from ledger.tasks import Tasks
from ledger.wording import plural
from metrics import MetricsServer, metrics_registry
from notify import notify, watchdog_seconds
from privileges import clear_ambient_capabilities
from processors.command import kill_leftovers
from processors.grouper import Grouper
from processors.notifier import Notifier
from reclaim.outbox_files import ExportReclaimer
from reclaim.spool_files import Reclaimer
from scp.process import ScpProcess
from spool.layout import SpoolLayout
from spool.writer import SpoolWriter
from tasks.runner import TaskRunner
from watchers.intake import Intake, IntakeWorker
from watchers.reconcile import Reconciler
from watchers.spool_watcher import SpoolWatcher
from web.access import Access
from web.app import build_app
from web.auth import Authenticator, AuthFileError
from web.pages import Live, Pages
from web.server import HttpListener

log = logging.getLogger("adapter")
TASK_TICK_SECONDS = 0.25  # how soon a due job or export is handed to its lane
PRIVATE_UMASK = 0o027  # files 0640, folders 0750 at most


class Adapter:
    """The running service."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = SpoolLayout(config.storage.spool, config.node.name)
        self.engine = make_engine(config.ledger.url)
        self.ledger = Ledger(self.engine)
        self.processing = Processing(self.ledger)
        self.exports = Exports(self.ledger)
        self.tasks = Tasks(self.ledger)
        self.nodes = Nodes(self.ledger)
        self._started_at = utcnow()
        self._listening = ""
        self.runner = TaskRunner(
            self.tasks, config.tasks.workers, config.node.name, config.node.lease
        )
        self.outbox = OutboxScanner(self.exports, {}, config.watcher.settle_seconds)
        self.export_reclaimer = ExportReclaimer(self.exports, {}, {})
        self.groupers: dict[str, Grouper] = {}  # filled by _apply, read by the notifier
        self.reclaimer = Reclaimer(
            self.processing,
            self.layout,
            config.storage.jobs,
            {},
            config.storage.superseded_retention,
        )
        intake = Intake(
            self.layout,
            self.ledger,
            {},
            group_by={},
            notify=Notifier(self.groupers),
            log_phi=config.log.log_phi,
        )
        self.intake = IntakeWorker(intake)
        self.watcher = SpoolWatcher(self.layout, self.intake.submit, config.watcher.settle_seconds)
        # A temporary file untouched for two network (or HTTP body) timeouts belongs to
        # no live transfer: each chunk of a C-STORE or a STOW-RS part is written as it comes.
        self.reconciler = Reconciler(
            self.layout,
            self.ledger,
            self.intake.submit,
            config.watcher.settle_seconds,
            stale_tmp_seconds=max(600.0, 2 * config.dicom.network_timeout, 2 * config.http.timeout),
        )
        derived = derive(config, self.processing, self.exports)
        self.server = ScpProcess(
            config.dicom, derived.policy, self.layout, config.storage.min_free, self.intake.submit
        )
        # group, tasks, reclaim, reconcile, outbox, heartbeat, watchdog: a thread each
        self.scheduler = schedule.make_scheduler(8)
        self._notifying = threading.Lock()
        # STOW-RS writes through a writer of its own into the same spool, under the
        # SCP's min_free (a reload changes both) and max_instance_size.
        self.http_writer = SpoolWriter(
            self.layout,
            config.storage.min_free,
            config.dicom.max_instance_size,
            announce=lambda path: self.intake.submit([path]),
        )
        self.http = self._http_listener(self.http_writer) if config.http.port else None
        self.metrics = (
            MetricsServer(self, config.metrics.host, config.metrics.port)
            if config.metrics.port
            else None
        )
        self._stopping = False
        self._apply(derived)

    def _apply(self, derived: Derived) -> None:
        """Swap in every config-derived part, at start and on reload alike.

        Each part is replaced whole from one :func:`derived.derive` result, so
        an AE or destination a reload adds runs at once (the next ticks see
        it), and none keeps rules from the config before.
        """
        self.server.policy = derived.policy
        self.groupers.clear()
        self.groupers.update(derived.groupers)
        self.runner.lanes = derived.lanes
        self.reclaimer.retention = derived.retention
        self.reclaimer.superseded_retention = derived.superseded_retention
        self.intake.intake.duplicates = derived.duplicates
        self.intake.intake.group_by = derived.group_by
        self.outbox.outboxes = derived.outboxes
        self.outbox.senders = derived.senders
        self.export_reclaimer.retention = derived.export_retention
        self.export_reclaimer.staging_roots = derived.staging_roots

    def start(self) -> None:
        # Spool files, job folders, manifests, command output and the ledger
        # hold patient data: none of it readable by other users, whatever
        # umask the service was started with (the SCP process inherits it).
        os.umask(os.umask(0) | PRIVATE_UMASK)
        for warning in config_warnings(self.config):
            log.warning("%s %s", self.config.path, warning)
        # The SCP process first, while this one may still pass on the right to
        # bind port 104; then nothing started later (commands) inherits it.
        self.server.spawn()
        clear_ambient_capabilities()
        self.layout.ensure(self.config.aes)
        before, after = upgrade(self.engine)
        if before != after:
            log.info("ledger migrated from %s to %s", before or "empty", after)
        self.intake.start()
        self.watcher.start()
        # Everything a crash left unrecorded is recorded before the SCP listens,
        # a pass at a time (each hands intake a bounded number of files).
        while self.reconciler.tick(startup=True).more:
            self.intake.wait_idle()
        self.intake.wait_idle()
        self.ledger.set_service_state("last_reconcile_at", utcnow().strftime(TIME_FORMAT))
        self.config.storage.jobs.mkdir(parents=True, exist_ok=True)
        kill_leftovers(self.config.storage.jobs)
        self.outbox.ensure()
        requeued = self.tasks.recover(self.config.node.name)
        released = self.processing.release_orphan_claims()
        if any(requeued.values()) or released:
            log.info(
                "after restart: %s and %s run again, %s released",
                plural(requeued[TaskKind.PROCESS], "running job"),
                plural(requeued[TaskKind.EXPORT], "sending export"),
                plural(released, "claim"),
            )
        self._schedule_ticks()
        self.scheduler.start()
        self.server.start()
        if self.http is not None:
            self.http.start()
        if self.metrics is not None:
            self.metrics.start()
        listeners = [f"{self.config.dicom.host}:{self.server.port}"] if self.server.port else []
        if self.server.tls_port:
            listeners.append(f"{self.config.dicom.host}:{self.server.tls_port} (TLS)")
        self._listening = ", ".join(listeners)
        self._heartbeat_tick()
        schedule.every(self.scheduler, "heartbeat", HEARTBEAT_SECONDS, self._heartbeat_tick)
        notify("READY=1")
        if (seconds := watchdog_seconds()) is not None:
            schedule.every(self.scheduler, "watchdog", seconds, self._watchdog_tick)

    def reload(self) -> bool:
        """Apply the config file again (SIGHUP), all of it or none of it.

        AE titles with their processors, sources, destinations with their
        outboxes, and the keys config_changes.RELOADABLE names are applied
        while running associations keep going.  A broken file, or a change
        only a restart can apply, is refused with one log line and changes
        nothing.
        """
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        if restart := needing_restart(self.config, new):
            log.error(
                "reload refused, keeping the running config: %s %s %s a restart",
                new.path,
                ", ".join(restart),
                "needs" if len(restart) == 1 else "need",
            )
            return False
        changes = section_changes(self.config, new)
        derived = derive(new, self.processing, self.exports)
        self.layout.ensure(new.aes)
        self.server.min_free = new.storage.min_free
        self.http_writer.min_free = new.storage.min_free
        self._apply(derived)
        self.outbox.ensure()
        self.config = new
        if self.scheduler.running:
            self._schedule_ticks()
        log.info(
            "reloaded %s: %s (%d with a processor), %s, %s; %s",
            new.path,
            plural(len(new.aes), "AE title"),
            len(new.processed_aes),
            plural(len(new.sources), "source"),
            plural(len(new.destinations), "destination"),
            changes,
        )
        return True

    def alive(self) -> bool:
        """Every part that must run does, and the ledger answers."""
        try:
            self.ledger.read(select(literal(1)))
        except Exception:
            log.exception("ledger does not answer")
            return False
        return (
            self.server.running
            and self.intake.running
            and self.watcher.running
            and (self.http is None or self.http.running)
        )

    def problems(self) -> list[str]:
        """What keeps the running service from doing its job now, one phrase each."""
        found = []
        if not self.server.running:
            found.append("the SCP process has stopped")
        if (problem := self.intake.problem()) is not None:
            found.append(problem)
        if not self.watcher.running:
            found.append("the spool watcher has stopped")
        if self.http is not None and not self.http.running:
            found.append("the HTTP listener has stopped")
        return found

    def _heartbeat_tick(self) -> None:
        """Tell ``status`` (through the ledger) that the service lives, and what ails it.

        If the ledger cannot be written, the heartbeat goes stale, which
        ``status`` reports as well.
        """
        self.nodes.beat(
            self.config.node.name, os.getpid(), self._listening, self.problems(), self._started_at
        )

    def _watchdog_tick(self) -> None:
        """Ping systemd only from a service that works: else it gets restarted."""
        healthy = self.alive()
        with self._notifying:
            if self._stopping:
                return  # STOPPING=1 was the last word
            if healthy:
                notify("WATCHDOG=1")
            else:
                log.error("not alive: withholding the systemd watchdog ping")

    def _in_flight(self) -> str:
        """Associations, files waiting for intake, running jobs and sending exports, now."""
        counts = [
            plural(self.server.active_associations, "association"),
            f"{plural(self.intake.queued, 'file')} waiting for intake",
        ]
        try:
            running = self.tasks.listing(state=TaskState.RUNNING)
            jobs = sum(task.kind == TaskKind.PROCESS for task in running)
            counts.append(plural(jobs, "running job"))
            counts.append(f"{plural(len(running) - jobs, 'export')} sending")
        except Exception:  # the ledger may be the reason for stopping
            counts.append("jobs and exports unknown (the ledger does not answer)")
        return ", ".join(counts)

    def _http_listener(self, writer: SpoolWriter) -> HttpListener:
        """The HTTP listener, STOW-RS storing through ``writer``."""
        try:
            auth = Authenticator(self.config.http.users, self.config.http.tokens)
        except AuthFileError as exc:  # a line that cannot be read: the config is at fault
            raise ConfigError(str(self.config.path), "http", None, str(exc)) from None
        access = Access(auth, self.config.http.anonymous_pages)
        metrics = metrics_registry(self)
        pages = Pages(
            lambda: self.config,
            self.ledger,
            lambda: Live(self.server.active_associations, self.intake.queued),
            access,
            lambda: generate_latest(metrics),
        )
        app = build_app(self.config.http, lambda: self.config.aes, writer, access, pages)
        return HttpListener(app, self.config.http)

    def _schedule_ticks(self) -> None:
        """The periodic jobs whose pace the config sets; again after a reload.

        The outbox is scanned even with no destination, so one a reload
        adds is watched at once (a scan of no folders costs nothing).
        """
        schedule.every(self.scheduler, "group", group_tick_seconds(self.config), self._group_tick)
        schedule.every(self.scheduler, "tasks", TASK_TICK_SECONDS, self.runner.tick)
        schedule.every(
            self.scheduler, "reclaim", self.config.storage.reclaim_interval, self._reclaim_tick
        )
        schedule.every(
            self.scheduler, "outbox", self.config.watcher.settle_seconds / 2, self.outbox.tick
        )
        schedule.every(
            self.scheduler,
            "reconcile",
            self.config.watcher.reconcile_interval,
            self._reconcile_tick,
        )

    def _reclaim_tick(self) -> None:
        self.reclaimer.tick()
        self.export_reclaimer.tick()

    def _reconcile_tick(self) -> None:
        self.watcher.ensure_alive()
        self.reconciler.tick()
        self.ledger.set_service_state("last_reconcile_at", utcnow().strftime(TIME_FORMAT))

    def _group_tick(self) -> None:
        for name, grouper in list(self.groupers.items()):  # a reload may replace them
            try:
                grouper.tick()
            except Exception:  # one AE's trouble must not stop the others' groups
                log.exception("grouping for %s failed", name)

    def stop(self, reason: str | None = None) -> None:
        """Stop accepting, then wind down the rest in reverse order.

        ``reason`` (the signal, say) is logged with what was still in flight,
        so the last line of a service's log says why it ended and what it
        left to the next start.  Safe to call after a partial start and more
        than once.
        """
        if reason is not None:
            log.info("stopping: %s; in flight: %s", reason, self._in_flight())
        with self._notifying:
            self._stopping = True
            notify("STOPPING=1")
        if self.metrics is not None:
            self.metrics.stop()
        if self.http is not None:
            self.http.stop()
        self.server.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.runner.shutdown()
        self.watcher.stop()
        if self.intake.running:
            # Events still in flight when the watcher stopped: a last scan
            # records every file the SCP acknowledged before we exit.
            self.reconciler.tick(shutdown=True)
        self.intake.stop()
        self.engine.dispose()
