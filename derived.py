"""Everything the running service derives from its config, built by one function.

Start and SIGHUP both call :func:`derive`, and the adapter swaps every part
in from the one result (:meth:`adapter.Adapter._apply`), so a reload can
never apply half a config: a new ``group_by`` reaches intake and the jobs
that use it together, a new destination gets its lane, its outbox and its
retention at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config import AeConfig, Config
from exporters.base import Sender
from exporters.cstore import CStoreSender, Peer
from exporters.outbox import STAGING
from exporters.stow import StowSender
from exporters.web_client import WebPeer
from ledger.exports import Exports
from ledger.processing import Processing
from ledger.states import TaskKind
from processors.base import Submitter
from processors.command import CommandSubmitter
from processors.folder import FolderSubmitter
from processors.forward import ForwardSubmitter
from processors.grouper import Grouper, GroupRules
from processors.webhook import WebhookSubmitter
from scp.admission import AdmissionPolicy, Source
from tasks.lanes import ExportLane, Lane, ProcessLane, Retries
from tasks.runner import LaneKey


@dataclass(frozen=True)
class Derived:
    """The parts of the service a config decides, for one config."""

    policy: AdmissionPolicy  # who may associate with which called AE
    groupers: dict[str, Grouper]  # processed AE -> its grouper
    lanes: dict[LaneKey, Lane]  # each AE's and destination's way of running its tasks
    duplicates: dict[str, str]  # AE -> its duplicates policy (intake)
    group_by: dict[str, int]  # AE -> the tag whose value is the group key (intake)
    retention: dict[str, float]  # processed AE -> seconds a submitted file is kept
    superseded_retention: float
    outboxes: dict[str, Path]  # destination -> its outbox folder
    senders: dict[str, str]  # destination -> its export tasks' submitter (cstore, stow)
    export_retention: dict[str, float]  # destination -> seconds a delivered file is kept
    staging_roots: dict[str, Path]  # destination -> its outbox's staging folder


def derive(config: Config, processing: Processing, exports: Exports) -> Derived:
    """Build every config-derived part from ``config``; nothing running is touched."""
    processed = config.processed_aes
    senders = {name: sender_for(config, name) for name in config.destinations}
    submitters = {name: sender.name for name, sender in senders.items()}
    lanes: dict[LaneKey, Lane] = {
        (TaskKind.PROCESS, name): ProcessLane(
            processing,
            config.storage.jobs,
            submitter_for(ae, config, exports, submitters),
            ae.group_by,
            Retries(ae.retries, ae.retry_delay),
        )
        for name, ae in processed.items()
    }
    lanes.update(
        {
            (TaskKind.EXPORT, name): ExportLane(
                exports, senders[name], Retries(d.retries, d.retry_delay)
            )
            for name, d in config.destinations.items()
        }
    )
    outboxes = {name: d.outbox for name, d in config.destinations.items()}
    return Derived(
        policy=admission_policy(config),
        groupers={
            name: Grouper(group_rules(name, ae), processing) for name, ae in processed.items()
        },
        lanes=lanes,
        duplicates={name: ae.duplicates for name, ae in config.aes.items()},
        group_by={name: ae.group_by for name, ae in config.aes.items()},
        retention={name: ae.retention for name, ae in processed.items()},
        superseded_retention=config.storage.superseded_retention,
        outboxes=outboxes,
        senders=submitters,
        export_retention={name: d.retention for name, d in config.destinations.items()},
        staging_roots={name: folder / STAGING for name, folder in outboxes.items()},
    )


def group_rules(name: str, ae: AeConfig) -> GroupRules:
    return GroupRules(
        name,
        ae.processor,
        ae.timeout,
        ae.max_wait,
        ae.ignored_sop_classes,
        ae.allowed_sop_classes,
    )


def admission_policy(config: Config) -> AdmissionPolicy:
    return AdmissionPolicy(
        called_aes=frozenset(config.aes),
        sources=tuple(Source(s.ae_title, s.host, s.certificate_name) for s in config.sources),
        reject_unknown_sources=config.dicom.reject_unknown_sources,
        reject_unknown_over_tls=config.dicom.reject_unknown_over_tls,
    )


def sender_for(config: Config, name: str) -> Sender:
    """How ``[destination:NAME]`` is sent to and echoed, by its ``type``."""
    destination = config.destinations[name]
    if destination.type == "dicomweb":
        assert destination.url is not None  # config checks it
        return StowSender(
            WebPeer(
                url=destination.url,
                username=destination.username,
                password_file=destination.password_file,
                token_file=destination.token_file,
                tls=destination.tls_settings,
                timeout=destination.timeout,
                max_request_size=destination.max_request_size,
                max_parts=destination.max_parts,
            )
        )
    return CStoreSender(peer_for(config, name))


def peer_for(config: Config, name: str) -> Peer:
    destination = config.destinations[name]
    # config checks a type = dicom destination has all three
    assert destination.ae_title and destination.host and destination.port
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


def submitter_for(
    ae: AeConfig, config: Config, exports: Exports, senders: dict[str, str]
) -> Submitter:
    """The submitter an ``[ae:]`` section's ``processor`` names (``senders``: each
    destination's export submitter, for ``forward``)."""
    if ae.processor == "forward":
        assert ae.destinations is not None  # config checks it
        return ForwardSubmitter(
            exports,
            {name: config.destinations[name].outbox for name in ae.destinations},
            {name: senders[name] for name in ae.destinations},
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
