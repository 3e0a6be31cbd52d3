"""Prometheus metrics of a node (prometheus-client), served at ``GET /metrics``.

Theory of operation
-------------------
Each ``NodeServer`` owns one ``CollectorRegistry`` (never the process-global one, so
several in-process nodes in a test do not collide). Two histograms are observed as
things happen: the duration of every WAL fsync, and the number of commands in every
batch the leader proposes (one slot value). Everything else is read from the node at
scrape time by a collector, so the hot path pays nothing for it: slots committed,
elections and leader changes, queue depths (replies waiting for an fsync, slots in
flight, proposals queued behind the window, frames queued on peer links), the
network counters of each port (malformed, oversized and dropped frames, refused
handshakes and connections, connections closed for their buffered bytes or a frame
timeout), and each port's open connections and buffered bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "NodeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _StatusCollector(Collector):
    def __init__(self, sample: Callable[[], dict[str, Any]]) -> None:
        self.sample = sample

    def collect(self) -> Iterator[Metric]:
        s = self.sample()
        counters = {
            "pyxos_commits": ("Slots chosen and applied by this node.", s.get("applied", 0)),
            "pyxos_elections": ("Elections this node started (phase 1).", s.get("elections", 0)),
            "pyxos_leader_changes": ("Leaders this node has seen.", s.get("leader_changes", 0)),
            "pyxos_fsyncs": ("Completed WAL fsyncs.", s.get("driver", {}).get("fsyncs", 0)),
            "pyxos_client_requests": (
                "Client requests received.",
                s.get("driver", {}).get("client_requests", 0),
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        gauges = {
            "pyxos_is_leader": ("1 while this node leads.", int(s.get("role") == "leader")),
            "pyxos_rebuilding": (
                "1 while this node rebuilds lost state (not voting).",
                int(bool(s.get("rebuilding"))),
            ),
            "pyxos_bootstrapping": (
                "1 while this node, started with --init on an empty directory, asks its "
                "peers whether the cluster is new (not voting).",
                int(bool(s.get("bootstrapping"))),
            ),
            "pyxos_majority_lost": (
                "1 while the nodes that lost their state contain a quorum: this cluster "
                "cannot recover on its own (see /v1/status 'recovery').",
                int(bool(s.get("majority_lost"))),
            ),
            "pyxos_forced_recovery": (
                "1 if this node's cluster was forced from its state alone (pyxos recover "
                "--force-new-cluster): writes may have been lost (see /v1/status 'recovered').",
                int("recovered" in s),
            ),
            "pyxos_disk_full": (
                "1 while the disk is full: the node refuses clients, takes part in nothing "
                "and retries until space returns (see /v1/status 'disk_full_reason').",
                int(bool(s.get("disk_full"))),
            ),
            "pyxos_first_unchosen_slot": (
                "First slot not known chosen.",
                s.get("first_unchosen", 0),
            ),
            "pyxos_keys": ("Keys in the store.", s.get("keys", 0)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        ports = s.get("ports", {})
        for name, key, doc in (
            ("pyxos_open_connections", "connections", "Open connections, by listening port."),
            (
                "pyxos_buffered_bytes",
                "buffered_bytes",
                "Bytes of unfinished frames (HTTP: bodies being read), by listening port.",
            ),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["port"])
            for port, values in sorted(ports.items()):
                gauge.add_metric([port], values.get(key, 0))
            yield gauge
        queues = GaugeMetricFamily(
            "pyxos_queue_depth", "Items waiting, by queue.", labels=["queue"]
        )
        for queue, depth in sorted(s.get("queues", {}).items()):
            queues.add_metric([queue], depth)
        yield queues
        for family, key in (
            ("pyxos_peer_net", "net"),
            ("pyxos_client_net", "client_net"),
            ("pyxos_http_net", "http_net"),
        ):
            net = CounterMetricFamily(
                family, f"Network events on the {key.replace('_', ' ')} port.", labels=["event"]
            )
            for event, value in sorted(s.get(key, {}).items()):
                net.add_metric([event], value)
            yield net


class NodeMetrics:
    """The metrics of one node: live histograms plus a scrape-time collector."""

    def __init__(self, node_id: int, sample: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.fsync_seconds = Histogram(
            "pyxos_fsync_seconds",
            "Duration of each WAL write+fsync (group commit).",
            buckets=_FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.batch_commands = Histogram(
            "pyxos_batch_commands",
            "Commands per proposed batch (one slot value).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(sample))
        self.node_id = node_id

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
