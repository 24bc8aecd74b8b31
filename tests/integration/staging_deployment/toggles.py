"""Values toggles: what each one adds, removes or changes in the render."""

from __future__ import annotations

import pytest

from tests.integration.chart_helpers import (
    HelmError,
    by_kind_name,
    container,
    render,
    render_text,
    runtime_containers,
)
from tests.integration.staging_deployment.common import (
    NS,
    STAGING,
    Index,
    Obj,
    workloads,
)


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
    for _, pod in workloads(objs):
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
        (
            {"x0tta6bl4.controller.nodeIdMapping": "spiffe://x0tta6bl4.mesh/ns/a/node"},
            "at '/x0tta6bl4/controller/nodeIdMapping'",
        ),
        (
            {"x0tta6bl4.controller.nodeIdMapping": "spiffe://x0tta6bl4.mesh/{node}/x"},
            "at '/x0tta6bl4/controller/nodeIdMapping'",
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
        "node-id-mapping-without-node",
        "node-id-mapping-node-not-last",
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


def _controller_env(sets: dict[str, str]) -> dict[str, str]:
    objs = by_kind_name(render(STAGING, sets, namespace=NS))
    ctl = container(objs["Deployment", "x0tta6bl4-controller"], "controller")
    return {e["name"]: e.get("value", "") for e in ctl["env"]}


@pytest.mark.parametrize(
    ("sets", "mapping"),
    [
        ({}, "spiffe://x0tta6bl4.mesh/**/node/{node}"),
        (
            {"x0tta6bl4.spiffe.trustDomain": "staging.example"},
            "spiffe://staging.example/**/node/{node}",
        ),
        (
            {"x0tta6bl4.controller.nodeIdMapping": "spiffe://x0tta6bl4.mesh/ns/*/sa/x/node/{node}"},
            "spiffe://x0tta6bl4.mesh/ns/*/sa/x/node/{node}",
        ),
        ({"x0tta6bl4.controller.nodeIdMapping": "none"}, "none"),
    ],
    ids=["default", "trust-domain", "explicit", "none"],
)
def test_the_node_id_mapping_reaches_the_controller(sets: dict[str, str], mapping: str) -> None:
    """controller.nodeIdMapping (default: the trust domain's …/node/{node}, matching the mesh
    nodes' ClusterSPIFFEID) is the controller's X0_NODE_ID_MAPPING, and the controller
    accepts it."""
    from x0tta6bl4.identity.node_ids import NodeIdMapping

    env = _controller_env(sets)
    assert env["X0_NODE_ID_MAPPING"] == mapping
    NodeIdMapping(mapping)  # what the controller validates at startup
