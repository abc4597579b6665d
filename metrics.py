"""An optional Prometheus endpoint (``[metrics] port``, on 127.0.0.1 by default).

Everything is read at scrape time: counters the SCP keeps since start
(instances and bytes received per called AE, rejections by reason), the
associations running now, and from the ledger the counts by state of
instances, tasks (jobs and exports) and their items, the age of the oldest open group, and the
spool's free space.  A scrape costs a few indexed queries, nothing on the
receive path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.models import utcnow
from ledger.states import TaskKind

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from adapter import Adapter

PREFIX = "dicom_adapter"


class AdapterCollector(Collector):
    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def collect(self) -> Iterator[Metric]:
        adapter = self.adapter
        tally = adapter.server.tally
        # Which node this is (``[node] name``), for joining on when several share a ledger.
        node = GaugeMetricFamily(f"{PREFIX}_node", "This adapter's node name", labels=["node"])
        node.add_metric([adapter.config.node.name], 1)
        yield node
        received = CounterMetricFamily(
            f"{PREFIX}_instances_received", "Instances stored, by called AE", labels=["called_ae"]
        )
        received_bytes = CounterMetricFamily(
            f"{PREFIX}_received_bytes", "Bytes stored, by called AE", labels=["called_ae"]
        )
        for ae, count in tally.received.items():
            received.add_metric([ae], count)
            received_bytes.add_metric([ae], tally.received_bytes[ae])
        rejected = CounterMetricFamily(
            f"{PREFIX}_associations_rejected", "Associations rejected, by reason", labels=["reason"]
        )
        for reason, count in tally.rejected.items():
            rejected.add_metric([reason], count)
        yield from (received, received_bytes, rejected)
        yield GaugeMetricFamily(
            f"{PREFIX}_associations_active",
            "Associations running now",
            value=adapter.server.active_associations,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_intake_queued",
            "Spool files waiting for intake",
            value=adapter.intake.queued,
        )
        yield _by_state(
            f"{PREFIX}_ledger_instances",
            "Instances in the ledger, by state",
            adapter.ledger.counts_by_state(),
        )
        tasks = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Jobs and exports, by kind and state", labels=["kind", "state"]
        )
        for kind in TaskKind:
            for state, count in adapter.tasks.counts(kind).items():
                tasks.add_metric([kind, state], count)
        yield tasks
        yield _by_state(
            f"{PREFIX}_task_items",
            "Export files, by state (failed: undelivered, kept for a human)",
            adapter.exports.item_counts(),
        )
        oldest = adapter.processing.oldest_open_group(list(adapter.config.processed_aes))
        age = 0.0 if oldest is None else (utcnow() - oldest.first_received_at).total_seconds()
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_open_group_seconds",
            "How long the oldest group not yet claimed has waited",
            value=age,
        )
        stats = os.statvfs(adapter.layout.root)
        yield GaugeMetricFamily(
            f"{PREFIX}_spool_free_bytes",
            "Free space on the spool",
            value=stats.f_bavail * stats.f_frsize,
        )


def _by_state(name: str, help_text: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for state, count in counts.items():
        family.add_metric([state], count)
    return family


def metrics_registry(adapter: Adapter) -> CollectorRegistry:
    """The adapter's metrics, for ``[metrics]``'s endpoint and the HTTP listener's ``/metrics``."""
    registry = CollectorRegistry()
    registry.register(AdapterCollector(adapter))
    return registry


class MetricsServer:
    """The HTTP endpoint; started last, stopped first."""

    def __init__(self, adapter: Adapter, host: str, port: int) -> None:
        self.registry = metrics_registry(adapter)
        self.host, self.port = host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
