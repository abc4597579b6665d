"""Composition root: builds every part from the config and runs them in order.

Start: ledger at head, intake, watcher, reconcile (crash recovery, before any
association), jobs interrupted by a restart requeued, scheduler (grouping,
dispatch, reclaim, reconcile), SCP last, so nothing is acknowledged before
the adapter knows where everything stood.  Stop in reverse.  ``python adapter.py``
is the same as the ``dicom-adapter`` command.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below: cli turns their failures into one line
    from cli import main

    main()

import json
import logging
import os
import threading

from sqlalchemy import literal, select

import scheduler as schedule
from config import AeConfig, Config, config_warnings, load_config
from config_changes import needing_restart, section_changes
from errors import ConfigError
from exporters.cstore import Peer
from health import HEARTBEAT_SECONDS
from ledger.db import make_engine
from ledger.exports import Exports
from ledger.migrate import upgrade
from ledger.models import TIME_FORMAT, utcnow
from ledger.processing import Processing
from ledger.states import ExportState, JobState
from ledger.store import Ledger
from ledger.wording import plural
from metrics import MetricsServer
from notify import notify, watchdog_seconds
from privileges import clear_ambient_capabilities
from processors.base import Submitter
from processors.command import CommandSubmitter, kill_leftovers
from processors.dispatcher import Dispatcher, DispatchRules
from processors.export_reclaimer import ExportReclaimer
from processors.exporting import ExportRules, ExportRunner
from processors.folder import FolderSubmitter
from processors.forward import ForwardSubmitter
from processors.grouper import Grouper, GroupRules
from processors.notifier import Notifier
from processors.outbox import STAGING, OutboxScanner
from processors.reclaimer import Reclaimer
from processors.webhook import WebhookSubmitter
from scp.admission import AdmissionPolicy, Source
from scp.process import ScpProcess
from spool.layout import SpoolLayout
from watchers.intake import Intake, IntakeWorker
from watchers.reconcile import Reconciler
from watchers.spool_watcher import SpoolWatcher

log = logging.getLogger("adapter")
EXPORT_TICK_SECONDS = 0.5
PRIVATE_UMASK = 0o027  # files 0640, folders 0750 at most


def admission_policy(config: Config) -> AdmissionPolicy:
    return AdmissionPolicy(
        called_aes=frozenset(config.aes),
        sources=tuple(Source(s.ae_title, s.host, s.certificate_name) for s in config.sources),
        reject_unknown_sources=config.dicom.reject_unknown_sources,
        reject_unknown_over_tls=config.dicom.reject_unknown_over_tls,
    )


def peer_for(config: Config, name: str) -> Peer:
    destination = config.destinations[name]
    return Peer(
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        calling_ae=destination.calling_ae or config.dicom.ae_title,
        acse_timeout=destination.acse_timeout,
        dimse_timeout=destination.dimse_timeout,
        network_timeout=destination.network_timeout,
        tls=destination.tls_settings,
    )


def submitter_for(ae: AeConfig, config: Config, exports: Exports) -> Submitter:
    """The submitter an ``[ae:]`` section's ``processor`` names."""
    if ae.processor == "forward":
        assert ae.destinations is not None  # config checks it
        return ForwardSubmitter(
            exports, {name: config.destinations[name].outbox for name in ae.destinations}
        )
    if ae.processor == "command":
        assert ae.command is not None  # config checks it
        return CommandSubmitter(ae.command, ae.command_timeout)
    if ae.processor == "folder":
        assert ae.output is not None
        return FolderSubmitter(ae.output)
    assert ae.processor == "webhook" and ae.url is not None
    return WebhookSubmitter(ae.url, ae.webhook_timeout)


def group_tick_seconds(config: Config) -> float:
    """Check groups a few times per shortest quiet period, between 0.1 and 1 s."""
    timeouts = [ae.timeout for ae in config.processed_aes.values()]
    return min(1.0, max(0.1, min(timeouts, default=4.0) / 4))


class Adapter:
    """The running service."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = SpoolLayout(config.storage.spool)
        self.engine = make_engine(config.ledger.url)
        self.ledger = Ledger(self.engine)
        self.processing = Processing(self.ledger)
        self.exports = Exports(self.ledger)
        outboxes = {name: d.outbox for name, d in config.destinations.items()}
        self.export_runners = {
            name: ExportRunner(
                self.exports, name, ExportRules(peer_for(config, name), d.retries, d.retry_delay)
            )
            for name, d in config.destinations.items()
        }
        self.outbox = OutboxScanner(self.exports, outboxes, config.watcher.settle_seconds)
        self.export_reclaimer = ExportReclaimer(
            self.exports,
            {name: d.retention for name, d in config.destinations.items()},
            {name: folder / STAGING for name, folder in outboxes.items()},
        )
        self.groupers: dict[str, Grouper] = {}  # filled by _take_aes, read by the notifier
        self.dispatcher = Dispatcher(self.processing, config.storage.jobs, {})
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
        # A temporary file older than two network timeouts belongs to no live transfer.
        self.reconciler = Reconciler(
            self.layout,
            self.ledger,
            self.intake.submit,
            config.watcher.settle_seconds,
            stale_tmp_seconds=max(600.0, 2 * config.dicom.network_timeout),
        )
        self.server = ScpProcess(
            config.dicom, admission_policy(config), self.layout, config.storage.min_free
        )
        # group, dispatch, reclaim, reconcile, outbox, watchdog, one per destination,
        # and room for destinations a reload adds
        self.scheduler = schedule.make_scheduler(16 + len(config.destinations))
        self._notifying = threading.Lock()
        self.metrics = (
            MetricsServer(self, config.metrics.host, config.metrics.port)
            if config.metrics.port
            else None
        )
        self._stopping = False
        self._take_aes(config)

    def _take_aes(self, config: Config) -> None:
        """What each ``[ae:NAME]`` asks for: intake rules, grouping, submitting, retention.

        At start and on reload alike, so an AE a reload adds runs its
        processor at once (the group and dispatch ticks see it next time).
        """
        processed = config.processed_aes
        groupers = {
            name: Grouper(
                GroupRules(
                    name,
                    ae.processor,
                    ae.timeout,
                    ae.max_wait,
                    ae.ignored_sop_classes,
                    ae.allowed_sop_classes,
                ),
                self.processing,
            )
            for name, ae in processed.items()
        }
        self.groupers.clear()
        self.groupers.update(groupers)
        self.dispatcher.rules = {
            name: DispatchRules(
                submitter_for(ae, config, self.exports), ae.group_by, ae.retries, ae.retry_delay
            )
            for name, ae in processed.items()
        }
        self.reclaimer.retention = {name: ae.retention for name, ae in processed.items()}
        self.reclaimer.superseded_retention = config.storage.superseded_retention
        self.intake.intake.duplicates = {name: ae.duplicates for name, ae in config.aes.items()}
        self.intake.intake.group_by = {name: ae.group_by for name, ae in config.aes.items()}

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
        self.outbox.adopt_orphans()
        resent = self.exports.recover()
        if resent:
            log.info(
                "after restart: %s that were sending will be sent again", plural(resent, "export")
            )
        requeued, released = self.processing.recover()
        if requeued or released:
            log.info(
                "after restart: %s requeued, %s released",
                plural(requeued, "running job"),
                plural(released, "claim"),
            )
        self._schedule_ticks()
        for name, runner in self.export_runners.items():
            schedule.every(self.scheduler, f"export:{name}", EXPORT_TICK_SECONDS, runner.tick)
        self.scheduler.start()
        self.server.start()
        if self.metrics is not None:
            self.metrics.start()
        listeners = [f"{self.config.dicom.host}:{self.server.port}"] if self.server.port else []
        if self.server.tls_port:
            listeners.append(f"{self.config.dicom.host}:{self.server.tls_port} (TLS)")
        self.ledger.set_service_state("listening", ", ".join(listeners))
        self.ledger.set_service_state("pid", str(os.getpid()))
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
        self.layout.ensure(new.aes)
        self.server.policy = admission_policy(new)
        self.server.min_free = new.storage.min_free
        self._take_aes(new)
        self._reload_destinations(new)
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

    def _reload_destinations(self, new: Config) -> None:
        for name in set(self.export_runners) - set(new.destinations):
            self.scheduler.remove_job(f"export:{name}")
            del self.export_runners[name]
        for name, destination in new.destinations.items():
            rules = ExportRules(peer_for(new, name), destination.retries, destination.retry_delay)
            if name in self.export_runners:
                self.export_runners[name].rules = rules
                continue
            self.export_runners[name] = ExportRunner(self.exports, name, rules)
            schedule.every(
                self.scheduler,
                f"export:{name}",
                EXPORT_TICK_SECONDS,
                self.export_runners[name].tick,
            )
        outboxes = {name: d.outbox for name, d in new.destinations.items()}
        self.outbox.outboxes = outboxes
        self.outbox.ensure()
        self.export_reclaimer.retention = {n: d.retention for n, d in new.destinations.items()}
        self.export_reclaimer.staging_roots = {n: f / STAGING for n, f in outboxes.items()}

    def alive(self) -> bool:
        """Every part that must run does, and the ledger answers."""
        try:
            self.ledger.read(select(literal(1)))
        except Exception:
            log.exception("ledger does not answer")
            return False
        return self.server.running and self.intake.running and self.watcher.running

    def problems(self) -> list[str]:
        """What keeps the running service from doing its job now, one phrase each."""
        found = []
        if not self.server.running:
            found.append("the SCP process has stopped")
        if (problem := self.intake.problem()) is not None:
            found.append(problem)
        if not self.watcher.running:
            found.append("the spool watcher has stopped")
        return found

    def _heartbeat_tick(self) -> None:
        """Tell ``status`` (through the ledger) that the service lives, and what ails it.

        If the ledger cannot be written, the heartbeat goes stale, which
        ``status`` reports as well.
        """
        self.ledger.set_service_state("problems", json.dumps(self.problems()))
        self.ledger.set_service_state("heartbeat_at", utcnow().strftime(TIME_FORMAT))

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
            counts.append(plural(len(self.processing.jobs(JobState.RUNNING)), "running job"))
            counts.append(
                f"{plural(len(self.exports.tasks(ExportState.SENDING)), 'export')} sending"
            )
        except Exception:  # the ledger may be the reason for stopping
            counts.append("jobs and exports unknown (the ledger does not answer)")
        return ", ".join(counts)

    def _schedule_ticks(self) -> None:
        """The periodic jobs whose pace the config sets; again after a reload.

        The outbox is scanned even with no destination, so one a reload
        adds is watched at once (a scan of no folders costs nothing).
        """
        tick = group_tick_seconds(self.config)
        schedule.every(self.scheduler, "group", tick, self._group_tick)
        schedule.every(self.scheduler, "dispatch", tick, self.dispatcher.tick)
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
