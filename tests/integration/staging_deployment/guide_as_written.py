"""The deployment guide's manifests and values, as written, against what the chart renders."""

from __future__ import annotations

import pytest
import yaml

from tests.integration.chart_helpers import (
    CHART_DIR,
    by_kind_name,
    container,
    guide_values_staging,
    render,
)
from tests.integration.staging_deployment.common import (
    NS,
    STAGING,
    Index,
    workloads,
)


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
    for obj, pod in workloads(staging):
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
    # Mesh nodes reach only the TLS API; the check pod also the plain probe port.
    assert api["ingress"][0] == {
        "from": [{"podSelector": {"matchLabels": {"app": "x0tta6bl4-mesh"}}}],
        "ports": [{"port": 8443, "protocol": "TCP"}],
    }
    assert api["ingress"][1] == {
        "from": [{"podSelector": {"matchLabels": {"app": "x0tta6bl4-check"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}],
    }
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
