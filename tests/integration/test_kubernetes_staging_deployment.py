"""The Kubernetes packaging, rendered and checked with the real tools.

Helm v4 renders charts/x0tta6bl4 with the deployment guide's own values-staging.yaml, the
production overlay and toggles; kubectl's built-in kustomize builds deploy/kustomize; every
object is validated against the Kubernetes 1.28 and 1.35 OpenAPI schemas in strict mode
(kubernetes-validate), CRD objects against their required structure. The guide's inline
manifests (RBAC, NetworkPolicies, quota, HPA, VPA) are parsed out of the guide itself and
compared with what the chart renders. No Docker engine runs here, so the Dockerfile is checked
statically. Golden renders live in tests/golden; regenerate them with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.chart_helpers import (
    CHART_DIR,
    GOLDEN_DIR,
    KUSTOMIZE_DIR,
    REPO_ROOT,
    FieldRef,
    HelmError,
    Probe,
    by_kind_name,
    container,
    find_tool,
    guide_manifests,
    guide_values_staging,
    helm,
    helm_env,
    kustomize_build,
    parse_dockerfile,
    render,
    render_text,
    runtime_containers,
)

pytestmark = [
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


# --------------------------------------------------------------------------- fixtures


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


def _workloads(index: Index) -> Iterator[tuple[Obj, Obj]]:
    """(object, pod spec) of every pod-bearing object."""
    for obj in index.values():
        if obj["kind"] == "Pod":
            yield obj, obj["spec"]
        elif obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet"}:
            yield obj, obj["spec"]["template"]["spec"]


def _strip_meta(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in {"metadata", "apiVersion", "kind"}}


# --------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize(
    "values", [[], STAGING, PRODUCTION], ids=["default", "staging", "production"]
)
def test_helm_lint_strict(values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART_DIR), "--namespace", NS]
    for v in values:
        args += ["-f", str(CHART_DIR / v)]
    out = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


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


@pytest.mark.parametrize("k8s", ["1.28", "1.35"])
def test_every_object_validates_against_kubernetes_schema_strict(
    k8s: str, variants: dict[str, list[Obj]]
) -> None:
    checked = 0
    for name, objs in variants.items():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, k8s, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}"
                )
            checked += 1
    assert checked > 100


def test_strict_validation_catches_a_broken_object(staging: Index) -> None:
    # The validator is a real check: an unknown field in a rendered Deployment fails it.
    dep = json.loads(json.dumps(staging["Deployment", "x0tta6bl4-controller"]))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.35", strict=True)


def _check_crd(obj: Obj) -> None:
    kind, spec = obj["kind"], obj["spec"]
    assert obj["metadata"]["name"]
    if kind == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        assert spec["namespaceSelector"]["matchNames"] == [NS]
        for ep in spec["endpoints"]:
            assert ep["port"] == "http"
            assert ep["path"] == "/metrics"
    elif kind == "PrometheusRule":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        for group in spec["groups"]:
            assert group["name"]
            assert group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert rule["alert"]
                assert rule["expr"]
                assert rule["labels"]["severity"] in {"warning", "critical"}
    elif kind == "VerticalPodAutoscaler":
        assert obj["apiVersion"] == "autoscaling.k8s.io/v1"
        assert spec["targetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "x0tta6bl4-controller",
        }
        assert spec["updatePolicy"]["updateMode"] in {
            "Off",
            "Initial",
            "Recreate",
            "InPlaceOrRecreate",
            "Auto",
        }
    elif kind == "ClusterSPIFFEID":
        assert obj["apiVersion"] == "spire.spiffe.io/v1alpha1"
        assert "namespace" not in obj["metadata"]  # cluster-scoped
        assert spec["spiffeIDTemplate"].startswith("spiffe://{{ .TrustDomain }}/")
        assert spec["podSelector"]
    else:  # pragma: no cover - CRD_KINDS is closed
        raise AssertionError(kind)


def test_crd_objects_have_their_required_structure(variants: dict[str, list[Obj]]) -> None:
    seen = set()
    for objs in variants.values():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                _check_crd(obj)
                seen.add(obj["kind"])
    assert seen == CRD_KINDS


# --------------------------------------------------------------------------- the guide, as written


def test_values_staging_is_the_guide_verbatim() -> None:
    assert (CHART_DIR / "values-staging.yaml").read_text(encoding="utf-8") == guide_values_staging()


def test_controller_replicas_resources_and_image_from_values_staging(staging: Index) -> None:
    values = yaml.safe_load(guide_values_staging())["x0tta6bl4"]
    dep = staging["Deployment", "x0tta6bl4-controller"]
    assert dep["spec"]["replicas"] == values["replicaCount"] == 3
    c = container(dep, "controller")
    assert c["resources"] == values["resources"]
    assert c["image"] == "x0tta6bl4/mesh:v1.0.0"
    assert c["imagePullPolicy"] == "IfNotPresent"


def test_controller_anti_affinity_is_the_guides_mesh_affinity(staging: Index) -> None:
    values = yaml.safe_load(guide_values_staging())["x0tta6bl4"]["mesh"]
    pod = staging["Deployment", "x0tta6bl4-controller"]["spec"]["template"]["spec"]
    assert pod["affinity"] == values["affinity"]
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
        "podAffinityTerm"
    ]["labelSelector"]["matchExpressions"][0]["values"] == ["x0tta6bl4-controller"]
    assert staging["Deployment", "x0tta6bl4-controller"]["spec"]["template"]["metadata"]["labels"][
        "app"
    ] == ("x0tta6bl4-controller")


def test_mesh_daemonset_label_and_node_affinity(staging: Index) -> None:
    values = yaml.safe_load(guide_values_staging())["x0tta6bl4"]["mesh"]
    ds = staging["DaemonSet", "x0tta6bl4-mesh-node"]
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "x0tta6bl4-mesh"}
    assert ds["spec"]["template"]["metadata"]["labels"]["app"] == "x0tta6bl4-mesh"
    pod = ds["spec"]["template"]["spec"]
    assert pod["affinity"] == {"nodeAffinity": values["nodeAffinity"]}
    assert "nodeSelector" not in pod  # the guide's nodeSelector is {}


def test_hpa_is_the_guides(staging: Index, guide: Index) -> None:
    ours = staging["HorizontalPodAutoscaler", "x0tta6bl4-controller-hpa"]
    theirs = guide["HorizontalPodAutoscaler", "x0tta6bl4-controller-hpa"]
    assert ours["spec"] == theirs["spec"]
    assert ours["spec"]["minReplicas"] == 3
    assert ours["spec"]["maxReplicas"] == 10


def test_rbac_is_exactly_the_guides(staging: Index, guide: Index) -> None:
    assert (
        staging["ClusterRole", "x0tta6bl4-mesh"]["rules"]
        == guide["ClusterRole", "x0tta6bl4-mesh"]["rules"]
    )
    binding = staging["ClusterRoleBinding", "x0tta6bl4-mesh-binding"]
    assert binding["roleRef"]["name"] == "x0tta6bl4-mesh"
    # kubectl create clusterrolebinding --serviceaccount=x0tta6bl4-staging:x0tta6bl4-app
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "x0tta6bl4-app", "namespace": NS}
    ]
    assert staging["ServiceAccount", "x0tta6bl4-app"]["metadata"]["namespace"] == NS
    for obj, pod in _workloads(staging):
        if obj["metadata"].get("labels", {}).get("app") in {
            "x0tta6bl4-controller",
            "x0tta6bl4-mesh",
        }:
            assert pod["serviceAccountName"] == "x0tta6bl4-app"


def test_guide_network_policies_and_quota_as_written(staging: Index, guide: Index) -> None:
    for key in [
        ("NetworkPolicy", "x0tta6bl4-deny-all"),
        ("NetworkPolicy", "x0tta6bl4-allow-mesh"),
        ("ResourceQuota", "x0tta6bl4-quota"),
    ]:
        assert staging[key]["spec"] == guide[key]["spec"], key
        assert staging[key]["metadata"]["namespace"] == guide[key]["metadata"]["namespace"] == NS


def test_network_allowances_are_narrow(staging: Index) -> None:
    policies = {name: o["spec"] for (kind, name), o in staging.items() if kind == "NetworkPolicy"}
    assert set(policies) == {
        "x0tta6bl4-deny-all",
        "x0tta6bl4-allow-mesh",
        "x0tta6bl4-allow-api",
        "x0tta6bl4-allow-check",
        "x0tta6bl4-allow-etcd",
        "x0tta6bl4-allow-metrics",
    }
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress"]
    api = policies["x0tta6bl4-allow-api"]
    assert api["podSelector"] == {"matchLabels": {"app": "x0tta6bl4-controller"}}
    assert api["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": {"app": "x0tta6bl4-mesh"}}} in api["ingress"][0]["from"]
    etcd = policies["x0tta6bl4-allow-etcd"]
    assert etcd["ingress"][0] == {
        "from": [{"podSelector": {"matchLabels": {"app": "x0tta6bl4-controller"}}}],
        "ports": [{"port": 2379, "protocol": "TCP"}],
    }
    assert [p["port"] for p in etcd["ingress"][1]["ports"]] == [2379, 2380]
    metrics = policies["x0tta6bl4-allow-metrics"]["ingress"][0]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert [p["port"] for p in metrics["ports"]] == [8080, 7811]
    for spec in policies.values():
        for rule in spec.get("ingress", []):
            for peer in rule["from"]:
                assert peer != {}
                assert "ipBlock" not in peer


def test_etcd_statefulset_members_and_volumes_from_persistence(staging: Index) -> None:
    sts = staging["StatefulSet", "x0tta6bl4-etcd"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "x0tta6bl4-etcd"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    args = container(sts, "etcd")["args"]
    cluster = next(a for a in args if a.startswith("--initial-cluster="))
    assert cluster.count("=https://") == 3
    assert f".x0tta6bl4-etcd.{NS}.svc:2380" in cluster
    assert staging["Service", "x0tta6bl4-etcd"]["spec"]["clusterIP"] == "None"
    store = container(staging["Deployment", "x0tta6bl4-controller"], "controller")["args"]
    url = store[store.index("--store") + 1]
    assert url == "etcds://" + ",".join(f"x0tta6bl4-etcd-{i}.x0tta6bl4-etcd:2379" for i in range(3))


def test_etcd_speaks_tls_with_client_certificates_only(staging: Index) -> None:
    """Client and peer ports: TLS, client certificates required (issue #12: whoever writes
    etcd rewrites the membership); certificates from the operator's Secrets; only the
    probe/metrics port 2381 is plain."""
    sts = staging["StatefulSet", "x0tta6bl4-etcd"]
    args = container(sts, "etcd")["args"]
    flags = {a.split("=", 1)[0]: [*a.split("=", 1), ""][1] for a in args}
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):  # fmt: skip
        assert flags[flag].startswith("https://"), (flag, flags[flag])
    assert flags["--listen-metrics-urls"] == "http://0.0.0.0:2381"
    assert "--client-cert-auth" in flags
    assert "--peer-client-cert-auth" in flags
    for flag in ("--trusted-ca-file", "--peer-trusted-ca-file"):
        assert flags[flag] == "/etc/etcd/tls/ca.crt"
    for flag in ("--cert-file", "--peer-cert-file"):
        assert flags[flag] == "/etc/etcd/tls/tls.crt"
    pod = sts["spec"]["template"]["spec"]
    tls = {v["name"]: v for v in pod["volumes"]}["tls"]
    assert tls["secret"]["secretName"] == "x0tta6bl4-etcd-server-tls"
    assert {i["key"] for i in tls["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    probes = container(sts, "etcd")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probes[kind]["httpGet"]["port"] == "metrics"
    ctl = staging["Deployment", "x0tta6bl4-controller"]
    env = {e["name"]: e.get("value") for e in container(ctl, "controller")["env"]}
    assert env["X0_ETCD_CA_FILE"] == "/etc/x0tta6bl4/etcd-client/ca.crt"
    assert env["X0_ETCD_CERT_FILE"] == "/etc/x0tta6bl4/etcd-client/tls.crt"
    assert env["X0_ETCD_KEY_FILE"] == "/etc/x0tta6bl4/etcd-client/tls.key"
    volumes = {v["name"]: v for v in ctl["spec"]["template"]["spec"]["volumes"]}
    assert volumes["etcd-client-tls"]["secret"]["secretName"] == "x0tta6bl4-etcd-client-tls"
    # The controller never gets the members' key, nor the members the controllers' key.
    assert "x0tta6bl4-etcd-server-tls" not in str(ctl)
    assert "x0tta6bl4-etcd-client-tls" not in str(sts)


@pytest.mark.parametrize(("tls", "scheme"), [("true", "etcds"), ("false", "etcd")])
def test_external_etcd_tls_follows_its_value(tls: str, scheme: str) -> None:
    objs = by_kind_name(
        render(
            STAGING,
            {
                "x0tta6bl4.store.mode": "external",
                "x0tta6bl4.store.external.endpoints[0]": "etcd.example:2379",
                "x0tta6bl4.store.external.tls": tls,
            },
            namespace=NS,
        )
    )
    ctl = container(objs["Deployment", "x0tta6bl4-controller"], "controller")
    assert ctl["args"][ctl["args"].index("--store") + 1] == f"{scheme}://etcd.example:2379"
    env = {e["name"] for e in ctl["env"]}
    assert ("X0_ETCD_CERT_FILE" in env) is (tls == "true")
    assert ("StatefulSet", "x0tta6bl4-etcd") not in objs


# --------------------------------------------------------------------------- runtime contract


def test_containers_follow_the_runtime_contract(staging: Index) -> None:
    rc = runtime_containers(staging.values())
    ctl, node = rc["controller"], rc["node"]
    assert ctl.argv[:5] == ["x0tta6bl4", "controller", "--listen", "0.0.0.0:8080", "--store"]
    assert ctl.ports == {"http": (8080, "TCP")}
    assert ctl.probes["livenessProbe"] == Probe("/health", 8080)
    assert ctl.probes["readinessProbe"] == Probe("/ready", 8080)
    assert ctl.env["X0_CA_CERT_FILE"] == "/etc/x0tta6bl4/mesh-ca/ca.crt"
    assert ctl.env["X0_TRUST_DOMAIN"] == "x0tta6bl4.mesh"
    assert ctl.env["X0_SPIFFE_SOCKET"] == "/run/spire/agent-sockets/spire-agent.sock"
    assert node.argv[:4] == ["x0tta6bl4", "node", "--controller", "http://x0tta6bl4-api:8080"]
    assert node.ports == {"mesh": (7810, "UDP"), "http": (7811, "TCP")}
    assert node.probes["livenessProbe"] == Probe("/health", 7811)
    assert node.probes["readinessProbe"] == Probe("/ready", 7811)
    assert node.env["X0_NODE_NAME"] == FieldRef("spec.nodeName")
    assert node.env["X0_POD_IP"] == FieldRef("status.podIP")
    assert all(k.startswith("X0_") for k in [*ctl.env, *node.env])
    assert staging["Service", "x0tta6bl4-api"]["spec"]["ports"][0]["port"] == 8080
    mesh_svc = staging["Service", "x0tta6bl4-mesh"]["spec"]
    assert mesh_svc["clusterIP"] == "None"
    assert {(p["port"], p["protocol"]) for p in mesh_svc["ports"]} == {(7810, "UDP"), (7811, "TCP")}


def test_runtime_container_extraction_unit() -> None:
    # A hand-written workload: named and numeric probe ports, value and fieldRef env.
    ds = {
        "kind": "DaemonSet",
        "metadata": {"name": "d"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "n",
                            "image": "i:1",
                            "command": ["x"],
                            "args": ["node", "--a", "b"],
                            "env": [
                                {"name": "A", "value": 4},
                                {
                                    "name": "B",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                },
                            ],
                            "ports": [
                                {"name": "http", "containerPort": 7811},
                                {"name": "u", "containerPort": 1, "protocol": "UDP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": 9, "scheme": "HTTPS"}
                            },
                        }
                    ]
                }
            }
        },
    }
    from tests.integration.chart_helpers import extract_container

    spec = extract_container(ds, "n")
    assert spec.argv == ["x", "node", "--a", "b"]
    assert spec.env == {"A": "4", "B": FieldRef("status.podIP")}
    assert spec.ports == {"http": (7811, "TCP"), "u": (1, "UDP")}
    assert spec.probes == {
        "readinessProbe": Probe("/ready", 7811),
        "livenessProbe": Probe("/health", 9, "HTTPS"),
    }
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "nope"
    with pytest.raises(KeyError, match="nope"):
        extract_container(bad, "n")
    with pytest.raises(KeyError, match="no container"):
        extract_container(ds, "other")


def test_security_contexts(variants: dict[str, list[Obj]]) -> None:
    for name, objs in variants.items():
        for obj, pod in _workloads(by_kind_name(objs)):
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True, where
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                added = sc["capabilities"].get("add", [])
                tun = name == "operator-tun-hostpath" and c["name"] == "node"
                assert added == (["NET_ADMIN"] if tun else []), where
                assert sc.get("privileged", False) is False, where


def test_every_container_in_the_release_namespace_fits_the_quota(
    variants: dict[str, list[Obj]],
) -> None:
    # The guide's quota sets requests and limits: pods without both are rejected by the API.
    for name, objs in variants.items():
        for obj, pod in _workloads(by_kind_name(objs)):
            if obj["metadata"]["namespace"] != NS:
                continue
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][part]), (
                        name,
                        obj["metadata"]["name"],
                        part,
                    )


def test_mesh_ca_comes_from_the_operator_secret(variants: dict[str, list[Obj]]) -> None:
    for objs in variants.values():
        assert not [o for o in objs if o["kind"] == "Secret"]  # the chart never creates keys
    dep = by_kind_name(variants["staging"])["Deployment", "x0tta6bl4-controller"]
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["mesh-ca"]["secret"]["secretName"] == "x0tta6bl4-mesh-ca"
    assert [i["key"] for i in vols["mesh-ca"]["secret"]["items"]] == ["ca.crt", "ca.key"]


# --------------------------------------------------------------------------- toggles


def _keys(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


TOGGLES: list[tuple[str, dict[str, str], dict[str, str], set[tuple[str, str]]]] = [
    (
        "monitoring",
        {"monitoring.enabled": "true"},
        {"monitoring.enabled": "false"},
        {
            ("ServiceAccount", "prometheus"),
            ("Role", "x0tta6bl4-prometheus"),
            ("RoleBinding", "x0tta6bl4-prometheus"),
            ("ConfigMap", "prometheus-config"),
            ("Deployment", "prometheus"),
            ("Service", "prometheus"),
            ("ConfigMap", "x0tta6bl4-grafana-dashboard"),
            ("NetworkPolicy", "x0tta6bl4-allow-metrics"),
        },
    ),
    (
        "monitoring-operator",
        {"monitoring.enabled": "true", "monitoring.mode": "operator"},
        {"monitoring.enabled": "false"},
        {
            ("ServiceMonitor", "x0tta6bl4-controller"),
            ("ServiceMonitor", "x0tta6bl4-mesh-node"),
            ("PrometheusRule", "x0tta6bl4"),
            ("ConfigMap", "x0tta6bl4-grafana-dashboard"),
            ("NetworkPolicy", "x0tta6bl4-allow-metrics"),
        },
    ),
    (
        "spiffe",
        {"x0tta6bl4.spiffe.enabled": "true"},
        {"x0tta6bl4.spiffe.enabled": "false"},
        {("ClusterSPIFFEID", f"x0tta6bl4-{NS}-{role}") for role in ("controller", "mesh", "check")},
    ),
    (
        "vpa",
        {"x0tta6bl4.vpa.enabled": "true"},
        {"x0tta6bl4.vpa.enabled": "false"},
        {("VerticalPodAutoscaler", "x0tta6bl4-vpa")},
    ),
    (
        "ingress",
        {"x0tta6bl4.ingress.enabled": "true"},
        {"x0tta6bl4.ingress.enabled": "false"},
        {("Ingress", "x0tta6bl4-api"), ("NetworkPolicy", "x0tta6bl4-allow-ingress")},
    ),
    (
        "hpa",
        {"x0tta6bl4.autoscaling.enabled": "true"},
        {"x0tta6bl4.autoscaling.enabled": "false"},
        {("HorizontalPodAutoscaler", "x0tta6bl4-controller-hpa")},
    ),
    (
        "tests",
        {"x0tta6bl4.tests.enabled": "true"},
        {"x0tta6bl4.tests.enabled": "false"},
        {
            ("Pod", "x0tta6bl4-check"),
            ("ServiceAccount", "x0tta6bl4-check"),
            ("ClusterRole", "x0tta6bl4-check"),
            ("ClusterRoleBinding", "x0tta6bl4-check"),
            ("NetworkPolicy", "x0tta6bl4-allow-check"),
            ("ClusterSPIFFEID", f"x0tta6bl4-{NS}-check"),
        },
    ),
    (
        "cluster-prep",
        {},
        {
            "x0tta6bl4.serviceAccount.create": "false",
            "x0tta6bl4.rbac.create": "false",
            "x0tta6bl4.networkPolicy.enabled": "false",
            "x0tta6bl4.quota.enabled": "false",
        },
        {
            ("ServiceAccount", "x0tta6bl4-app"),
            ("ClusterRole", "x0tta6bl4-mesh"),
            ("ClusterRoleBinding", "x0tta6bl4-mesh-binding"),
            ("ResourceQuota", "x0tta6bl4-quota"),
            ("NetworkPolicy", "x0tta6bl4-deny-all"),
            ("NetworkPolicy", "x0tta6bl4-allow-mesh"),
            ("NetworkPolicy", "x0tta6bl4-allow-api"),
            ("NetworkPolicy", "x0tta6bl4-allow-check"),
            ("NetworkPolicy", "x0tta6bl4-allow-etcd"),
        },
    ),
    (
        "store-etcd-vs-external",
        {"x0tta6bl4.store.mode": "etcd"},
        {
            "x0tta6bl4.store.mode": "external",
            "x0tta6bl4.store.external.endpoints[0]": "etcd.db:2379",
        },
        {
            ("StatefulSet", "x0tta6bl4-etcd"),
            ("Service", "x0tta6bl4-etcd"),
            ("PodDisruptionBudget", "x0tta6bl4-etcd"),
            ("NetworkPolicy", "x0tta6bl4-allow-etcd"),
        },
    ),
]


@pytest.mark.parametrize(
    ("on", "off", "expected"), [t[1:] for t in TOGGLES], ids=[t[0] for t in TOGGLES]
)
def test_toggle_adds_and_removes_exactly_its_objects(
    on: dict[str, str], off: dict[str, str], expected: set[tuple[str, str]]
) -> None:
    with_it = _keys(render(sets=on, namespace=NS))
    without = _keys(render(sets=off, namespace=NS))
    assert without < with_it
    assert with_it - without == expected


def test_spiffe_off_removes_the_socket_and_its_env(staging: Index) -> None:
    off = runtime_containers(render(STAGING, {"x0tta6bl4.spiffe.enabled": "false"}, namespace=NS))
    on = runtime_containers(staging.values())
    assert "X0_SPIFFE_SOCKET" in on["node"].env
    assert "X0_SPIFFE_SOCKET" not in off["node"].env
    objs = by_kind_name(render(STAGING, {"x0tta6bl4.spiffe.enabled": "false"}, namespace=NS))
    for _, pod in _workloads(objs):
        assert "spire-agent-socket" not in {v["name"] for v in pod.get("volumes", [])}


def test_spiffe_registration_and_socket_volume(staging: Index) -> None:
    """One ClusterSPIFFEID per principal: distinct SPIFFE IDs for the controller, every mesh
    node (named by its Kubernetes node) and the check job (docs/identity.md, "Names")."""
    base = (
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
        "/sa/{{ .PodSpec.ServiceAccountName }}"
    )
    expected = {
        "controller": ("x0tta6bl4-controller", f"{base}/controller"),
        "mesh": ("x0tta6bl4-mesh", f"{base}/node/{{{{ .PodSpec.NodeName }}}}"),
        "check": ("x0tta6bl4-check", f"{base}/check"),
    }
    rendered = {name for kind, name in staging if kind == "ClusterSPIFFEID"}
    assert rendered == {f"x0tta6bl4-{NS}-{role}" for role in expected}
    templates = set()
    for role, (app, template) in expected.items():
        reg = staging["ClusterSPIFFEID", f"x0tta6bl4-{NS}-{role}"]["spec"]
        assert reg["spiffeIDTemplate"] == template
        assert reg["podSelector"] == {"matchLabels": {"app": app}}
        assert reg["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NS}}
        templates.add(reg["spiffeIDTemplate"])
    assert len(templates) == 3  # distinct IDs
    # Pod selectors are disjoint: no pod gets two SVIDs from this chart.
    assert len({expected[r][0] for r in expected}) == 3
    for key in [("Deployment", "x0tta6bl4-controller"), ("DaemonSet", "x0tta6bl4-mesh-node")]:
        pod = staging[key]["spec"]["template"]["spec"]
        vol = {v["name"]: v for v in pod["volumes"]}["spire-agent-socket"]
        assert vol == {
            "name": "spire-agent-socket",
            "csi": {"driver": "csi.spiffe.io", "readOnly": True},
        }
        mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["spire-agent-socket"]
        assert mount["mountPath"] == "/run/spire/agent-sockets"
        assert mount["readOnly"] is True
    hp = by_kind_name(render(STAGING, {"x0tta6bl4.spiffe.socketVolume": "hostPath"}, namespace=NS))
    pod = hp["DaemonSet", "x0tta6bl4-mesh-node"]["spec"]["template"]["spec"]
    vol = {v["name"]: v for v in pod["volumes"]}["spire-agent-socket"]
    assert vol["hostPath"] == {"path": "/run/spire/agent-sockets", "type": "Directory"}


def test_tun_mode_adds_net_admin_and_the_device_only_when_on(staging: Index) -> None:
    off = container(staging["DaemonSet", "x0tta6bl4-mesh-node"], "node")
    assert "--tun" not in off["args"]
    assert "add" not in off["securityContext"]["capabilities"]
    on_objs = by_kind_name(render(STAGING, {"x0tta6bl4.mesh.tun": "true"}, namespace=NS))
    ds = on_objs["DaemonSet", "x0tta6bl4-mesh-node"]
    on = container(ds, "node")
    assert on["args"][-1] == "--tun"
    assert on["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["dev-net-tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    # The controller never gets capabilities.
    ctl = container(on_objs["Deployment", "x0tta6bl4-controller"], "controller")
    assert ctl["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_sqlite_store_mode(variants: dict[str, list[Obj]]) -> None:
    objs = by_kind_name(variants["sqlite"])
    assert ("StatefulSet", "x0tta6bl4-etcd") not in objs
    assert ("HorizontalPodAutoscaler", "x0tta6bl4-controller-hpa") not in objs
    dep = objs["Deployment", "x0tta6bl4-controller"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    args = container(dep, "controller")["args"]
    assert args[args.index("--store") + 1] == "sqlite:////var/lib/x0tta6bl4/controller.db"
    pvc = objs["PersistentVolumeClaim", "x0tta6bl4-controller-data"]["spec"]
    assert pvc["storageClassName"] == "fast-ssd"
    assert pvc["resources"]["requests"]["storage"] == "10Gi"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["state"]["persistentVolumeClaim"]["claimName"] == "x0tta6bl4-controller-data"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"x0tta6bl4.store.mode": "sqlite"},
            "store.mode=sqlite runs exactly one controller, but x0tta6bl4.replicaCount=3",
        ),
        (
            {"x0tta6bl4.store.mode": "sqlite", "x0tta6bl4.replicaCount": "1"},
            "set x0tta6bl4.autoscaling.enabled=false",
        ),
        ({"x0tta6bl4.store.mode": "external"}, "needs x0tta6bl4.store.external.endpoints"),
        (
            {"x0tta6bl4.vpa.enabled": "true", "x0tta6bl4.vpa.updateMode": "Auto"},
            "would fight the HPA",
        ),
        ({"x0tta6bl4.pqc.enabled": "false"}, "no classical-only mode"),
        (
            {"x0tta6bl4.autoscaling.minReplicas": "11"},
            "minReplicas (11) is greater than maxReplicas (10)",
        ),
    ],
    ids=[
        "sqlite-replicas",
        "sqlite-hpa",
        "external-no-endpoints",
        "vpa-auto-with-hpa",
        "pqc-off",
        "hpa-bounds",
    ],
)
def test_inconsistent_values_fail_with_an_actionable_message(
    sets: dict[str, str], message: str
) -> None:
    with pytest.raises(HelmError) as err:
        render_text(STAGING, sets)
    assert message in err.value.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"x0tta6bl4.replicaCnt": "3"},
            "at '/x0tta6bl4': additional properties 'replicaCnt' not allowed",
        ),
        (
            {"x0tta6bl4.replicaCount": "three"},
            "at '/x0tta6bl4/replicaCount': got string, want integer",
        ),
        (
            {"x0tta6bl4.vpa.updateMode": "auto"},
            "at '/x0tta6bl4/vpa/updateMode': value must be one of",
        ),
        ({"x0tta6bl4.pqc.algorithm": "Kyber512"}, "at '/x0tta6bl4/pqc/algorithm'"),
        ({"x0tta6bl4.persistence.size": "ten"}, "at '/x0tta6bl4/persistence/size'"),
        ({"monitoring.prometheus.retention": "forever"}, "at '/monitoring/prometheus/retention'"),
        (
            {"spire.server.extra": "1"},
            "at '/spire/server': additional properties 'extra' not allowed",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "guide-vpa-auto",
        "algorithm",
        "quantity",
        "retention",
        "spire-unknown",
    ],
)
def test_bad_values_fail_with_a_schema_message(sets: dict[str, str], message: str) -> None:
    with pytest.raises(HelmError) as err:
        render_text(STAGING, sets)
    assert "values don't meet the specifications of the schema" in err.value.stderr
    assert message in err.value.stderr


def test_vpa_matches_the_guide_except_the_api_spelling(guide: Index) -> None:
    objs = by_kind_name(render(STAGING, {"x0tta6bl4.vpa.enabled": "true"}, namespace=NS))
    ours, theirs = (
        objs["VerticalPodAutoscaler", "x0tta6bl4-vpa"],
        guide["VerticalPodAutoscaler", "x0tta6bl4-vpa"],
    )
    assert ours["spec"]["targetRef"] == theirs["spec"]["targetRef"]
    assert theirs["spec"]["updatePolicy"]["updateMode"] == "auto"  # not a valid API value
    assert ours["spec"]["updatePolicy"]["updateMode"] == "Off"
    alone = by_kind_name(
        render(
            STAGING,
            {
                "x0tta6bl4.vpa.enabled": "true",
                "x0tta6bl4.vpa.updateMode": "Auto",
                "x0tta6bl4.autoscaling.enabled": "false",
            },
            namespace=NS,
        )
    )
    assert (
        alone["VerticalPodAutoscaler", "x0tta6bl4-vpa"]["spec"]["updatePolicy"]["updateMode"]
        == "Auto"
    )


# --------------------------------------------------------------------------- monitoring


def test_prometheus_tier_from_values(staging: Index) -> None:
    dep = staging["Deployment", "prometheus"]
    assert dep["metadata"]["namespace"] == "monitoring"
    assert dep["spec"]["replicas"] == 2
    assert "--storage.tsdb.retention.time=15d" in container(dep, "prometheus")["args"]
    svc = staging["Service", "prometheus"]
    assert svc["metadata"]["namespace"] == "monitoring"
    assert svc["spec"]["ports"][0]["port"] == 9090
    cfg = yaml.safe_load(staging["ConfigMap", "prometheus-config"]["data"]["prometheus.yml"])
    assert cfg["global"]["scrape_interval"] == "15s"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"x0tta6bl4-controller", "x0tta6bl4-mesh"}
    for name, job in jobs.items():
        assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NS]
        assert job["relabel_configs"][0]["regex"] == name
    role = staging["Role", "x0tta6bl4-prometheus"]
    assert role["metadata"]["namespace"] == NS
    binding = staging["RoleBinding", "x0tta6bl4-prometheus"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    other = by_kind_name(
        render(
            STAGING,
            {"monitoring.namespace": "observability", "monitoring.prometheus.retention": "30d"},
            namespace=NS,
        )
    )
    assert other["Service", "prometheus"]["metadata"]["namespace"] == "observability"
    assert (
        "--storage.tsdb.retention.time=30d"
        in container(other["Deployment", "prometheus"], "prometheus")["args"]
    )


_METRIC = re.compile(r"\bx0tta6bl4_[a-z0-9_]+")


def _metric_names(expr: str) -> set[str]:
    """Metric families an expression reads (histogram series mapped to their family)."""
    names = set()
    for m in _METRIC.findall(expr):
        family = re.sub(r"_(bucket|sum|count)$", "", m)
        names.add(m if m in EXPORTED_METRICS or family not in EXPORTED_METRICS else family)
    return names


def test_alert_rules_use_only_exported_metrics(staging: Index, production: Index) -> None:
    rules = yaml.safe_load(
        staging["ConfigMap", "prometheus-config"]["data"]["x0tta6bl4-rules.yml"]
    )["groups"]
    assert rules == production["PrometheusRule", "x0tta6bl4"]["spec"]["groups"]
    used: set[str] = set()
    for group in rules:
        for rule in group["rules"]:
            used |= _metric_names(rule["expr"])
    assert used <= EXPORTED_METRICS
    assert used == EXPORTED_METRICS  # every exported metric is watched by some alert


def test_grafana_dashboard(staging: Index) -> None:
    cm = staging["ConfigMap", "x0tta6bl4-grafana-dashboard"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["x0tta6bl4.json"])
    assert dash["uid"] == "x0tta6bl4-mesh"
    assert len(dash["panels"]) >= 8
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= _metric_names(target["expr"])
    assert used == EXPORTED_METRICS


def test_operator_mode_service_monitors_select_the_services(production: Index) -> None:
    for name, svc in [
        ("x0tta6bl4-controller", "x0tta6bl4-api"),
        ("x0tta6bl4-mesh-node", "x0tta6bl4-mesh"),
    ]:
        sm = production["ServiceMonitor", name]
        labels = production["Service", svc]["metadata"]["labels"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["name"] for p in production["Service", svc]["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] in ports
    assert ("Deployment", "prometheus") not in production


# ------------------------------------------------------------ production, ingress, helm test


def test_production_overlay(production: Index) -> None:
    dep = production["Deployment", "x0tta6bl4-controller"]
    assert dep["spec"]["replicas"] == 5
    assert container(dep, "controller")["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    sts = production["StatefulSet", "x0tta6bl4-etcd"]
    assert sts["spec"]["replicas"] == 5
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    )
    assert (
        production["HorizontalPodAutoscaler", "x0tta6bl4-controller-hpa"]["spec"]["minReplicas"]
        == 5
    )
    ing = production["Ingress", "x0tta6bl4-api"]["spec"]
    assert ing["tls"] == [
        {"hosts": ["x0tta6bl4-api.x0tta6bl4.mesh"], "secretName": "x0tta6bl4-api-tls"}
    ]
    assert ing["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "x0tta6bl4-api",
        "port": {"name": "http"},
    }
    pol = production["NetworkPolicy", "x0tta6bl4-allow-ingress"]["spec"]["ingress"][0]
    assert pol["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_helm_test_hook_runs_the_post_install_check(staging: Index) -> None:
    pod = staging["Pod", "x0tta6bl4-check"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = container(pod, "check")
    assert [*c["command"], *c["args"]][:4] == ["x0tta6bl4", "check", "--post", "--in-cluster"]
    assert pod["spec"]["serviceAccountName"] == "x0tta6bl4-check"
    assert pod["spec"]["restartPolicy"] == "Never"
    role = staging["ClusterRole", "x0tta6bl4-check"]
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list"}  # read-only
        assert "secrets" not in rule["resources"]


def test_install_dry_run_renders_notes() -> None:
    out = helm(
        "install",
        "x0tta6bl4",
        str(CHART_DIR),
        "--namespace",
        NS,
        "-f",
        str(CHART_DIR / "values-staging.yaml"),
        "--dry-run=client",
    )
    notes = out[out.index("NOTES:") :]
    assert "kubectl -n x0tta6bl4-staging create secret generic x0tta6bl4-mesh-ca" in notes
    assert "helm test x0tta6bl4 -n x0tta6bl4-staging" in notes
    assert "svc/prometheus 9090:9090" in notes


def test_spire_values_agree_with_the_guide() -> None:
    spire = yaml.safe_load((CHART_DIR / "values-spire-staging.yaml").read_text(encoding="utf-8"))
    guide_spire = yaml.safe_load(guide_values_staging())["spire"]
    assert spire["global"]["spire"]["trustDomain"] == "x0tta6bl4.mesh"
    assert spire["spire-server"]["replicaCount"] == guide_spire["server"]["replicaCount"] == 3
    assert (
        spire["spire-server"]["resources"]["requests"]
        == guide_spire["server"]["resources"]["requests"]
    )
    assert (
        spire["spire-agent"]["resources"]["requests"]
        == guide_spire["agent"]["resources"]["requests"]
    )
    # More than one server needs a shared SQL datastore in the official chart.
    assert spire["spire-server"]["dataStore"]["sql"]["databaseType"] != "sqlite3"
    socket = spire["spire-agent"]["socketPath"]
    assert socket == spire["spiffe-csi-driver"]["agentSocketPath"]
    chart_values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))[
        "x0tta6bl4"
    ]["spiffe"]
    assert socket == f"{chart_values['socketDir']}/{chart_values['socketName']}"
    assert spire["spiffe-csi-driver"]["pluginName"] == "csi.spiffe.io"


# --------------------------------------------------------------------------- golden renders


@pytest.mark.parametrize(
    ("name", "values", "namespace"),
    [("staging", STAGING, NS), ("production", PRODUCTION, "x0tta6bl4")],
)
def test_golden_render(name: str, values: list[str], namespace: str) -> None:
    text = render_text(values, namespace=namespace)
    golden = GOLDEN_DIR / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8"), (
        f"render differs from {golden}; review, then UPDATE_GOLDEN=1"
    )


# --------------------------------------------------------------------------- kustomize


@pytest.mark.parametrize("k8s", ["1.28", "1.35"])
def test_kustomize_staging_builds_and_validates(k8s: str, kustomized: Index) -> None:
    assert {n for (k, n) in kustomized if k == "Namespace"} == {NS, "monitoring", "spire"}
    for obj in kustomized.values():
        kubernetes_validate.validate(obj, k8s, strict=True)
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == NS


def test_kustomize_objects_equal_the_charts(
    kustomized: Index, staging: Index, guide: Index
) -> None:
    shared = [k for k in kustomized if k[0] != "Namespace"]
    assert len(shared) == 10
    for key in shared:
        ours = _strip_meta(kustomized[key])
        assert ours == _strip_meta(staging[key]), key
        if key in guide:
            assert ours == _strip_meta(guide[key]), key


# --------------------------------------------------------------------------- chart repository


@pytest.fixture
def chart_repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = helm_env(tmp_path / "helm")
    helm("package", str(CHART_DIR), "--destination", str(repo), env=env)
    helm("repo", "index", str(repo), env=env)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(repo))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_chart_repository_flow_of_the_guide(chart_repo: tuple[str, Path]) -> None:
    url, tmp = chart_repo
    env = helm_env(tmp / "helm")
    index = yaml.safe_load((tmp / "repo" / "index.yaml").read_text(encoding="utf-8"))
    (entry,) = index["entries"]["x0tta6bl4"]
    assert entry["version"] == "0.1.0"
    assert entry["urls"] == ["x0tta6bl4-0.1.0.tgz"]
    # The guide: helm repo add x0tta6bl4 <url>; helm repo update;
    # helm install ... x0tta6bl4/x0tta6bl4 -f values-staging.yaml
    helm("repo", "add", "x0tta6bl4", url, env=env)
    helm("repo", "update", env=env)
    assert "x0tta6bl4/x0tta6bl4" in helm("search", "repo", "x0tta6bl4", env=env)
    values = tmp / "values-staging.yaml"
    shutil.copy(CHART_DIR / "values-staging.yaml", values)
    from_repo = render_text([values], chart="x0tta6bl4/x0tta6bl4", namespace=NS, env=env)
    assert from_repo == render_text(STAGING, namespace=NS)


# --------------------------------------------------------------------------- image


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Any]]:
    return parse_dockerfile((REPO_ROOT / "Dockerfile").read_text(encoding="utf-8"))


def test_dockerfile_is_multi_stage_on_debian_trixie_python(
    dockerfile: tuple[dict[str, str], list[Any]],
) -> None:
    args, stages = dockerfile
    assert args["PYTHON_IMAGE"] == "python:3.13-slim-trixie"
    assert args["RUST_IMAGE"] == "rust:1-slim-trixie"
    assert [s.name for s in stages] == ["rust", "build", "runtime"]
    assert all(s.base == "python:3.13-slim-trixie" for s in stages[1:])
    _rust, build, runtime = stages
    runs = " ".join(i.value for i in build.all("RUN"))
    # The package and its native data plane from the repository, not from an index.
    assert "pip install . ./native" in runs
    assert "import x0tta6bl4_native" in runs
    copied = [i.value for i in build.all("COPY")]
    assert "pyproject.toml README.md ./" in copied
    assert "src ./src" in copied
    assert "native ./native" in copied
    assert "--from=rust /usr/local/cargo /usr/local/cargo" in copied
    assert [i.value for i in runtime.all("COPY")] == ["--from=build /opt/x0tta6bl4 /opt/x0tta6bl4"]
    assert "pip" not in " ".join(i.value for i in runtime.all("RUN"))


def test_dockerfile_runtime_is_non_root_and_read_only_friendly(
    dockerfile: tuple[dict[str, str], list[Any]], staging: Index
) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    assert runtime.all("USER")[-1].value == "65532:65532"
    (entry,) = runtime.all("ENTRYPOINT")
    assert entry.json_args() == ["x0tta6bl4"]
    env = " ".join(i.value for i in runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "X0_STATE_DIR=/var/lib/x0tta6bl4" in env
    assert runtime.all("VOLUME")[0].json_args() == ["/var/lib/x0tta6bl4"]
    # The chart runs the image with the same UID and gives it exactly these writable paths.
    pod = staging["Deployment", "x0tta6bl4-controller"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    writable = {
        m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if not m.get("readOnly")
    }
    assert writable == {"/tmp", "/var/lib/x0tta6bl4"}
    exposed = runtime.all("EXPOSE")[0].value.split()
    assert exposed == ["8080/tcp", "7810/udp", "7811/tcp"]


def test_dockerfile_labels_and_build_context(dockerfile: tuple[dict[str, str], list[Any]]) -> None:
    _, stages = dockerfile
    labels = " ".join(i.value for i in stages[-1].all("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded by default ...
    for path in ("pyproject.toml", "README.md", "src/", "native/"):
        assert f"!{path}" in ignore  # ... except what the build stage copies
        assert (REPO_ROOT / path).exists()


def test_dockerfile_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("RUN true\nFROM x\n")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM x\nRUN a \\\n")
