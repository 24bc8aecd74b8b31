"""``x0tta6bl4 check`` against a Kubernetes API server **test double**, for what the real
cluster of tests/cluster/ cannot be made to show (docs/checks.md, "Testing").

The real cluster (scripts/cluster, with SPIRE and the formed mesh) runs every failure it can
show for real: the API unreachable, a wrong token, RBAC denied, a missing StorageClass, the
Metrics API missing, the output formats, --wait retrying while a mesh pod is replaced
(tests/cluster/test_check_failures.py), a node's mesh pod deleted and blocked (too few mesh
pods), the CA Secret missing, and every check passing (tests/cluster/test_staging.py). Kept
here, because the real cluster cannot be made to show them: Kubernetes older than 1.28, a
controller whose node count disagrees with the mesh pods, a PVC pending beside bound ones,
SPIRE's server or its bundle missing, expired or of another trust domain, a controller in
CrashLoopBackOff mid-rollout (the image has no switch that crashes it), and the record of
every API read --post makes (checked against the check's ClusterRole). The double's own
all-pass runs stay as the baseline those faults are measured against.

The double is :mod:`tests.integration.kube_api_double`: a local HTTP server that answers the
API calls the checks make, serving the chart's own rendered manifests (``helm template`` with
``values-staging.yaml``) plus realistic status.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chart_helpers import CHART_DIR, by_kind_name, find_tool, render
from tests.integration.kube_api_double import (
    NAMESPACE,
    ClusterState,
    KubeApiDouble,
    build_state,
    spire_bundle_configmap,
    write_kubeconfig,
)
from x0tta6bl4.check.app import CheckRequest, run_request
from x0tta6bl4.check.checks_pre import RBAC_NEEDS
from x0tta6bl4.check.model import HINT_BASE

pytestmark = [
    pytest.mark.helm,
    pytest.mark.skipif(
        find_tool("helm") is None,
        reason="helm missing (the double serves the chart's render): run scripts/install-tools.sh",
    ),
]

STAGING_VALUES = CHART_DIR / "values-staging.yaml"


class Cluster:
    """A running double, its state and a kubeconfig for it."""

    def __init__(self, double: KubeApiDouble, kubeconfig: Path) -> None:
        self.double = double
        self.state: ClusterState = double.state
        self.kubeconfig = kubeconfig

    async def run(self, mode: str, output: str = "json", **kw: Any) -> tuple[int, str]:
        out = io.StringIO()
        request = CheckRequest(
            mode=mode,
            kubeconfig=self.kubeconfig,
            namespace=NAMESPACE,
            output=output,
            values=[STAGING_VALUES],
            **kw,
        )
        code = await run_request(request, out)
        return code, out.getvalue()

    async def json(self, mode: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        code, text = await self.run(mode, "json", **kw)
        return code, json.loads(text)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with KubeApiDouble(build_state()) as double:
        yield Cluster(double, write_kubeconfig(tmp_path / "kubeconfig", double.url))


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for cat in report["categories"] for c in cat["checks"]}


def failed(report: dict[str, Any]) -> set[str]:
    return {k for k, c in checks(report).items() if c["result"] == "error"}


def assert_fails(code: int, report: dict[str, Any], anchor: str, text: str) -> None:
    assert code == 1
    assert report["success"] is False
    check = checks(report)[anchor]
    assert check["result"] == "error", check
    assert text in check["error"], check["error"]
    assert check["hint"] == HINT_BASE + anchor


# --------------------------------------------------------------------------- passing


async def test_pre_all_pass(cluster: Cluster) -> None:
    code, report = await cluster.json("pre")
    assert failed(report) == set(), report
    assert code == 0
    assert report["success"] is True
    found = checks(report)
    assert found["k8s-storageclass"]["detail"] == "fast-ssd"
    # Every check passed (nothing skipped with the guide's values: SPIFFE and monitoring on).
    assert {c["result"] for c in found.values()} == {"success"}


async def test_post_all_pass(cluster: Cluster) -> None:
    code, report = await cluster.json("post")
    assert failed(report) == set(), report
    assert code == 0
    found = checks(report)
    # From outside the cluster the TLS API cannot be checked (the API server's proxy has no
    # client X.509-SVID); helm test runs it in the cluster. Everything else passes.
    tls = found.pop("controller-tls")
    assert tls["result"] == "skipped"
    assert "inside the cluster" in tls["error"]
    assert {c["result"] for c in found.values()} == {"success"}, found
    assert found["mesh-nodes-metric"]["detail"] == "3 nodes"
    assert found["mesh-coverage"]["detail"] == "3 of 3 nodes"  # the tainted control plane is not


async def test_post_reads_only_what_the_check_clusterrole_grants(cluster: Cluster) -> None:
    """Every API read of --post (proxies aside, which --in-cluster replaces by direct HTTP)
    is allowed by the chart's ClusterRole x0tta6bl4-check."""
    await cluster.json("post")
    role = by_kind_name(render(["values-staging.yaml"]))["ClusterRole", "x0tta6bl4-check"]
    allowed = {
        (group, resource)
        for rule in role["rules"]
        if {"get", "list"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    used = set()
    for method, path in cluster.state.requests:
        if "/proxy/" in path or path in ("/version", "/apis"):
            continue
        assert method == "GET", path
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        used.add((group, rest[0]))
    assert used
    assert used <= allowed, used - allowed


# --------------------------------------------------------------------------- failing


async def test_pod_not_ready(cluster: Cluster) -> None:
    name = cluster.state.break_pod("x0tta6bl4-controller", 1)
    code, report = await cluster.json("post")
    assert_fails(code, report, "pods-ready", f"{name} on node-b (controller: CrashLoopBackOff)")
    assert_fails(code, report, "controller-rollout", "3 updated, 2 ready")


async def test_pvc_pending(cluster: Cluster) -> None:
    pvc = cluster.state.get("v1", "persistentvolumeclaims", "data-x0tta6bl4-etcd-2", NAMESPACE)
    pvc["status"] = {"phase": "Pending"}
    code, report = await cluster.json("post")
    assert_fails(
        code, report, "pvcs-bound", "data-x0tta6bl4-etcd-2 Pending (StorageClass fast-ssd)"
    )
    assert failed(report) == {"pvcs-bound"}


async def test_mesh_nodes_metric_disagrees(cluster: Cluster) -> None:
    cluster.state.registered_nodes = 2
    code, report = await cluster.json("post")
    assert_fails(code, report, "mesh-nodes-metric", "is 2, but there are 3 mesh pods")


async def test_kubernetes_too_old(cluster: Cluster) -> None:
    cluster.state.version = "v1.27.9"
    code, report = await cluster.json("pre")
    assert_fails(code, report, "k8s-version", "older than 1.28")
    assert checks(report)["k8s-version"]["attempts"] == 1  # never retried


async def test_spire_server_missing(cluster: Cluster) -> None:
    cluster.state.delete("apps/v1", "statefulsets", "spire-server", "spire")
    code, report = await cluster.json("pre")
    assert_fails(code, report, "spire-server", "no StatefulSet spire-server in namespace spire")
    assert failed(report) == {"spire-server"}


async def test_spire_trust_domain_is_checked_in_its_bundle(cluster: Cluster) -> None:
    code, report = await cluster.json("pre")
    trust = checks(report)["spire-trust-domain"]
    assert trust["result"] == "success", trust
    assert "CA(s) of spiffe://x0tta6bl4.mesh" in str(trust), trust
    cluster.state.put("v1", "configmaps", spire_bundle_configmap("other.example"), "spire")
    code, report = await cluster.json("pre")
    assert_fails(code, report, "spire-trust-domain", "SPIRE serves spiffe://other.example, not")
    expired = spire_bundle_configmap("x0tta6bl4.mesh", days=-1.0)
    cluster.state.put("v1", "configmaps", expired, "spire")
    code, report = await cluster.json("pre")
    assert_fails(code, report, "spire-trust-domain", "expired or not yet valid")
    empty = {**expired, "data": {}}
    cluster.state.put("v1", "configmaps", empty, "spire")
    code, report = await cluster.json("pre")
    assert_fails(code, report, "spire-trust-domain", "holds no bundle yet")
    cluster.state.delete("v1", "configmaps", "spire-bundle", "spire")
    code, report = await cluster.json("pre")
    assert_fails(code, report, "spire-trust-domain", "no ConfigMap spire-bundle in namespace")
    assert failed(report) == {"spire-trust-domain"}


# --------------------------------------------------------------------------- formats


async def test_cli_exit_code_and_env(cluster: Cluster) -> None:
    """The real command line in a subprocess, flags given as X0_ environment variables."""
    env = dict(os.environ)
    env.update(
        X0_KUBECONFIG=str(cluster.kubeconfig),
        X0_NAMESPACE=NAMESPACE,
        X0_OUTPUT="json",
        X0_VALUES=str(STAGING_VALUES),
    )
    cluster.state.version = "v1.26.0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "x0tta6bl4", "check", "--pre",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 1, stderr.decode()
    report = json.loads(stdout)
    assert failed(report) == {"k8s-version"}


def test_rbac_needs_cover_every_kind_the_chart_renders() -> None:
    """The pre-install RBAC check asks for every (group, resource) the staging render holds."""
    from x0tta6bl4.check.checks_pre import _RBAC_PROMETHEUS, _RBAC_SPIFFE

    asked = {(g, r) for g, r, _ in (*RBAC_NEEDS, *_RBAC_SPIFFE, *_RBAC_PROMETHEUS)}
    plural = {
        "NetworkPolicy": "networkpolicies",
        "PodDisruptionBudget": "poddisruptionbudgets",
        "HorizontalPodAutoscaler": "horizontalpodautoscalers",
        "ClusterSPIFFEID": "clusterspiffeids",
    }
    for obj in render(["values-staging.yaml"]):
        group = obj["apiVersion"].rpartition("/")[0]
        kind = obj["kind"]
        resource = plural.get(kind, kind.lower() + "s")
        assert (group, resource) in asked, (group, resource)
