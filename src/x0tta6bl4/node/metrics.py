"""Prometheus metrics of one node, read from the data plane on every scrape.

A custom collector on a per-agent :class:`~prometheus_client.CollectorRegistry` (so several
in-process nodes never share series); nothing is updated on the packet path. Names and
labels are documented in ``docs/metrics.md`` ("Mesh node"); the chart's alert rules use
``x0tta6bl4_node_links``, ``x0tta6bl4_node_link_down_events_total``,
``x0tta6bl4_node_handshakes_total``, ``x0tta6bl4_node_pq_svid_expiry_timestamp_seconds``,
``x0tta6bl4_node_packets_dropped_total`` and ``x0tta6bl4_node_route_count``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from x0tta6bl4.node.core import NodeCore

__all__ = ["NodeCollector", "node_registry"]


class NodeCollector(Collector):
    """Exports the state of the core returned by ``get_core`` (None: not started yet)."""

    def __init__(
        self, get_core: Callable[[], NodeCore | None], registered: Callable[[], bool]
    ) -> None:
        self._get_core = get_core
        self._registered = registered

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registered = GaugeMetricFamily(
            "x0tta6bl4_node_registered", "1 while the node holds a PQ SVID from the controller"
        )
        registered.add_metric([], 1.0 if self._registered() else 0.0)
        yield registered
        core = self._get_core()
        if core is None:
            return
        links = GaugeMetricFamily("x0tta6bl4_node_links", "Links by state", labels=["state"])
        states = [core.link_state(peer) for peer in core.link_peers()]
        for state in ("up", "down", "handshaking", "idle"):
            links.add_metric([state], float(sum(1 for s in states if s == state)))
        yield links
        down = CounterMetricFamily(
            "x0tta6bl4_node_link_down_events", "Links declared down by the failure detector"
        )
        down.add_metric([], float(core.counters["link_down_events"]))
        yield down
        handshakes = CounterMetricFamily(
            "x0tta6bl4_node_handshakes", "Link handshakes by result", labels=["result"]
        )
        handshakes.add_metric(["ok"], float(core.counters["handshakes_ok"]))
        handshakes.add_metric(["failed"], float(core.counters["handshakes_failed"]))
        yield handshakes
        failures = CounterMetricFamily(
            "x0tta6bl4_node_handshake_failures",
            "Failed link handshakes by reason",
            labels=["reason"],
        )
        for reason, count in sorted(core.handshake_failures.items()):
            failures.add_metric([reason], float(count))
        yield failures
        e2e = CounterMetricFamily(
            "x0tta6bl4_node_e2e_handshakes", "End-to-end handshakes by result", labels=["result"]
        )
        e2e.add_metric(["ok"], float(core.counters["e2e_handshakes_ok"]))
        e2e.add_metric(["failed"], float(core.counters["e2e_handshakes_failed"]))
        yield e2e
        expiry = GaugeMetricFamily(
            "x0tta6bl4_node_pq_svid_expiry_timestamp_seconds", "notAfter of our PQ SVID"
        )
        expiry.add_metric([], core.identity.not_after)
        yield expiry
        dropped = CounterMetricFamily(
            "x0tta6bl4_node_packets_dropped", "Datagrams and frames dropped", labels=["reason"]
        )
        for reason, count in sorted(core.all_dropped().items()):
            dropped.add_metric([reason], float(count))
        yield dropped
        routes = GaugeMetricFamily("x0tta6bl4_node_route_count", "Destinations with a route")
        routes.add_metric([], float(len(core.router.routes())))
        yield routes
        counters = core.router.all_counters()
        lsa = CounterMetricFamily(
            "x0tta6bl4_node_lsa", "Link-state adverts received, by outcome", labels=["result"]
        )
        for key, value in sorted(counters.items()):
            if key.startswith("lsa_") and key != "lsa_sent":
                lsa.add_metric([key[4:]], float(value))
        yield lsa
        routing = CounterMetricFamily(
            "x0tta6bl4_node_routing_events",
            "Router activity: own adverts, SPF runs, flooding announces and requests",
            labels=["event"],
        )
        for key, value in sorted(counters.items()):
            if not key.startswith("lsa_"):
                routing.add_metric([key], float(value))
        yield routing
        forwarded = CounterMetricFamily(
            "x0tta6bl4_node_forwarded_frames", "Routed frames relayed for other nodes"
        )
        forwarded.add_metric([], float(core.forwarded()))
        yield forwarded


def node_registry(
    get_core: Callable[[], NodeCore | None], registered: Callable[[], bool]
) -> CollectorRegistry:
    """A fresh registry holding only this node's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(get_core, registered))
    return registry
