"""Prometheus metrics of the controller, on a per-app registry.

Each :func:`~x0tta6bl4.controller.app.create_app` builds its own :class:`ControllerMetrics`
with a fresh :class:`prometheus_client.CollectorRegistry`, so tests can build many apps in one
process. Every metric is documented in ``docs/metrics.md``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from x0tta6bl4.httpserver import ConnectionCollector, ConnectionLimiter

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HTTP_METHODS",
    "OTHER_METHOD",
    "REJECTION_REASONS",
    "ControllerMetrics",
    "method_label",
]

HTTP_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
)
"""Request methods that are their own ``method`` label; any other counts as :data:`OTHER_METHOD`
(the method token is the client's to choose: as a label it grew ``/metrics`` without bound)."""
OTHER_METHOD = "OTHER"


def method_label(method: str) -> str:
    """The ``method`` label of a request: itself if in :data:`HTTP_METHODS`, else ``OTHER``."""
    return method if method in HTTP_METHODS else OTHER_METHOD


REJECTION_REASONS: tuple[str, ...] = (
    "missing_credentials",
    "invalid_token",
    "token_expired",
    "wrong_audience",
    "wrong_trust_domain",
    "spiffe_identity_required",
    "client_certificate_required",
    "certificate_expired",
    "identity_conflict",
    "pop_invalid",
    "pop_replayed",
    "clock_skew",
    "policy_denied",
    "identity_mismatch",
    "node_id_taken",
    "node_id_not_bound",
    "node_not_found",
    "cidr_exhausted",
    "invalid_request",
    "malformed_json",
    "unknown_field",
    "store_unavailable",
    "store_corrupt",
    "tls_required",
)
"""Values of the ``reason`` label of ``x0tta6bl4_registrations_rejected_total`` (the
``error`` of the refusal; pre-created so that dashboards see zeros)."""

# The *_created series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ControllerMetrics:
    """The controller's metrics; ``render()`` gives the exposition text."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.mesh_nodes = Gauge(
            "x0tta6bl4_mesh_nodes_total",
            "Mesh nodes currently registered with the controller (from the store).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "x0tta6bl4_api_requests",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.api_duration = Histogram(
            "x0tta6bl4_api_request_duration_seconds",
            "Time to serve an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_up = Gauge(
            "x0tta6bl4_store_up",
            "1 if the last store health check succeeded, else 0.",
            registry=self.registry,
        )
        self.store_faults = Gauge(
            "x0tta6bl4_store_faults",
            "Damaged store records known to this replica (each named by /ready), 0 when whole.",
            registry=self.registry,
        )
        self.ca_loaded = Gauge(
            "x0tta6bl4_mesh_ca_loaded",
            "1 if the mesh CA is loaded and can sign, else 0.",
            registry=self.registry,
        )
        self.pq_svids_issued = Counter(
            "x0tta6bl4_pq_svids_issued",
            "Post-quantum X.509-SVIDs issued, by kind (register or renew).",
            ["kind"],
            registry=self.registry,
        )
        self.registrations_rejected = Counter(
            "x0tta6bl4_registrations_rejected",
            "Registration and renewal requests refused, by machine-readable reason.",
            ["reason"],
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "x0tta6bl4_controller_leader",
            "1 while this replica holds the leader lease for singleton work.",
            registry=self.registry,
        )
        self.nodes_expired = Counter(
            "x0tta6bl4_nodes_expired",
            "Node records removed because the node was not heard from within --node-ttl.",
            registry=self.registry,
        )
        self.watchers = Gauge(
            "x0tta6bl4_watchers",
            "Watch requests (long-poll or SSE) currently waiting.",
            registry=self.registry,
        )
        self.tls_handshakes = Counter(
            "x0tta6bl4_api_tls_handshakes",
            "TLS handshakes on the API's TLS listener, by result (ok, failed, bad_peer, "
            "timeout, refused) and negotiated key-exchange group (X25519MLKEM768 when both "
            "sides have a post-quantum capable OpenSSL).",
            ["result", "group"],
            registry=self.registry,
        )
        for reason in REJECTION_REASONS:
            self.registrations_rejected.labels(reason=reason)
        for kind in ("register", "renew"):
            self.pq_svids_issued.labels(kind=kind)

    def bind_connections(self, limiter: ConnectionLimiter) -> None:
        """Report ``limiter`` (the HTTP listeners' connections) in this registry."""
        self.registry.register(
            ConnectionCollector(limiter, "x0tta6bl4_api", "this replica's listeners")
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
