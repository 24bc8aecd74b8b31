"""The production overlay, the ingress and the ``helm test`` hook."""

from __future__ import annotations

import yaml

from tests.integration.chart_helpers import (
    CHART_DIR,
    container,
    guide_values_staging,
    helm,
)
from tests.integration.staging_deployment.common import (
    NS,
    Index,
)


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
        "port": {"name": "https"},
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
