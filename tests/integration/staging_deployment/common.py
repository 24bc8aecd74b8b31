"""What every section of the packaging checks shares: the marks, the values files, the
renders (module-scoped fixtures) and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.chart_helpers import (
    KUSTOMIZE_DIR,
    by_kind_name,
    find_tool,
    guide_manifests,
    kustomize_build,
    render,
)

HELM = [
    pytest.mark.helm,
    pytest.mark.skipif(
        find_tool("helm") is None or find_tool("kubectl") is None,
        reason="helm/kubectl missing: run scripts/install-tools.sh (make tools)",
    ),
]

NS = "x0tta6bl4-staging"
STAGING = ["values-staging.yaml"]
PRODUCTION = ["values-staging.yaml", "values-production.yaml"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "VerticalPodAutoscaler", "ClusterSPIFFEID"}
# Metrics the controller and nodes export (docs/metrics.md).
EXPORTED_METRICS = {
    "x0tta6bl4_mesh_nodes_total",
    "x0tta6bl4_api_requests_total",
    "x0tta6bl4_api_request_duration_seconds",
    "x0tta6bl4_store_up",
    "x0tta6bl4_node_links",
    "x0tta6bl4_node_link_down_events_total",
    "x0tta6bl4_node_handshakes_total",
    "x0tta6bl4_node_pq_svid_expiry_timestamp_seconds",
    "x0tta6bl4_node_packets_dropped_total",
    "x0tta6bl4_node_route_count",
    "x0tta6bl4_node_routing_events_total",
}

Obj = dict[str, Any]
Index = dict[tuple[str, str], Obj]


@pytest.fixture(scope="module")
def staging() -> Index:
    return by_kind_name(render(STAGING, namespace=NS))


@pytest.fixture(scope="module")
def production() -> Index:
    return by_kind_name(render(PRODUCTION, namespace="x0tta6bl4"))


@pytest.fixture(scope="module")
def defaults() -> Index:
    return by_kind_name(render(namespace=NS))


@pytest.fixture(scope="module")
def guide() -> Index:
    return guide_manifests()


@pytest.fixture(scope="module")
def kustomized() -> Index:
    return by_kind_name(kustomize_build(KUSTOMIZE_DIR / "overlays" / "staging"))


def workloads(index: Index) -> Iterator[tuple[Obj, Obj]]:
    """(object, pod spec) of every pod-bearing object."""
    for obj in index.values():
        if obj["kind"] == "Pod":
            yield obj, obj["spec"]
        elif obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet"}:
            yield obj, obj["spec"]["template"]["spec"]


def strip_meta(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in {"metadata", "apiVersion", "kind"}}


VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "staging": (STAGING, {}),
    "production": (PRODUCTION, {}),
    "operator-tun-hostpath": (
        STAGING,
        {
            "monitoring.mode": "operator",
            "x0tta6bl4.mesh.tun": "true",
            "x0tta6bl4.spiffe.socketVolume": "hostPath",
            "x0tta6bl4.admin.tokenSecretName": "x0tta6bl4-admin-token",
            "x0tta6bl4.admin.spiffeIds[0]": "spiffe://x0tta6bl4.mesh/ns/ops/sa/admin",
        },
    ),
    "sqlite": (
        STAGING,
        {
            "x0tta6bl4.store.mode": "sqlite",
            "x0tta6bl4.replicaCount": "1",
            "x0tta6bl4.autoscaling.enabled": "false",
        },
    ),
}


@pytest.fixture(scope="module")
def variants() -> dict[str, list[Obj]]:
    return {name: render(v, s, namespace=NS) for name, (v, s) in VARIANTS.items()}
