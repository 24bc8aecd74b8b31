"""charts/x0tta6bl4-spire, SPIRE as its own release: lint, schema, strict Kubernetes validation,
what it renders from its defaults and from the guide's values-spire-staging.yaml, and — with the
SPIRE binaries built — SPIRE itself validating the configuration the chart renders.

The real-cluster run of this chart is in the cluster tests (tests/cluster/)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.chart_helpers import (
    CHART_DIR,
    REPO_ROOT,
    HelmError,
    find_tool,
    helm,
    render,
)
from x0tta6bl4.identity.spire import find_spire

pytestmark = [
    pytest.mark.helm,
    pytest.mark.skipif(find_tool("helm") is None, reason="helm missing: run make tools"),
]

SPIRE_CHART = REPO_ROOT / "charts" / "x0tta6bl4-spire"
STAGING_VALUES = CHART_DIR / "values-spire-staging.yaml"
NS = "spire"
Obj = dict[str, Any]


def render_spire(values: list[Path] | None = None, sets: dict[str, str] | None = None) -> list[Obj]:
    return render(values or [], sets, chart=SPIRE_CHART, namespace=NS, release="spire")


def index(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


@pytest.fixture(scope="module")
def default() -> dict[tuple[str, str], Obj]:
    return index(render_spire())


@pytest.fixture(scope="module")
def staging() -> dict[tuple[str, str], Obj]:
    return index(render_spire([STAGING_VALUES]))


def containers(workload: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def config(objs: dict[tuple[str, str], Obj], name: str, key: str) -> str:
    text: str = objs["ConfigMap", name]["data"][key]
    return text


@pytest.mark.parametrize("values", [[], [STAGING_VALUES]], ids=["defaults", "staging"])
def test_helm_lint_strict(values: list[Path]) -> None:
    args = ["lint", "--strict", str(SPIRE_CHART)]
    for v in values:
        args += ["-f", str(v)]
    helm(*args)


@pytest.mark.parametrize("k8s", ["1.28", "1.35"])
def test_every_object_validates_against_kubernetes_schema_strict(k8s: str) -> None:
    checked = 0
    for objs in (render_spire(), render_spire([STAGING_VALUES])):
        for obj in objs:
            kubernetes_validate.validate(obj, k8s, strict=True)
            checked += 1
    assert checked >= 40


def test_the_release_holds_server_agent_csi_driver_and_controller_manager(
    default: dict[tuple[str, str], Obj],
) -> None:
    expected = {
        ("StatefulSet", "spire-server"),
        ("Service", "spire-server"),
        ("DaemonSet", "spire-agent"),
        ("DaemonSet", "spiffe-csi-driver"),
        ("CSIDriver", "csi.spiffe.io"),
        ("ConfigMap", "spire-bundle"),
        ("ConfigMap", "spire-server"),
        ("ConfigMap", "spire-agent"),
        ("ConfigMap", "spire-controller-manager"),
        ("ValidatingWebhookConfiguration", "spire-controller-manager-webhook"),
        ("Service", "spire-controller-manager-webhook"),
    }
    assert expected <= set(default)
    server = default["StatefulSet", "spire-server"]
    assert server["spec"]["replicas"] == 1
    assert set(containers(server)) == {"spire-server", "spire-controller-manager"}
    assert server["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "1Gi"
    }
    crds = helm("template", "spire", str(SPIRE_CHART), "-n", NS, "--include-crds")
    kinds = {
        d["spec"]["names"]["kind"]
        for d in yaml.safe_load_all(crds)
        if d and d["kind"] == "CustomResourceDefinition"
    }
    assert kinds == {"ClusterSPIFFEID", "ClusterFederatedTrustDomain", "ClusterStaticEntry"}


def test_server_configuration(default: dict[tuple[str, str], Obj]) -> None:
    conf = config(default, "spire-server", "server.conf")
    for line in (
        'trust_domain = "x0tta6bl4.mesh"',
        'database_type = "sqlite3"',
        'connection_string = "/run/spire/data/datastore.sqlite3"',
        'NodeAttestor "k8s_psat" {',
        '"x0tta6bl4" = {',
        'service_account_allow_list = ["spire:spire-agent"]',
        'Notifier "k8sbundle" {',
        'config_map = "spire-bundle"',
        'ca_key_type = "ec-p256"',
        'socket_path = "/tmp/spire-server/private/api.sock"',
        "require_pq_kem = false",
    ):
        assert line in conf, line


def test_agent_configuration_and_attestation(default: dict[tuple[str, str], Obj]) -> None:
    conf = config(default, "spire-agent", "agent.conf")
    for line in (
        'server_address = "spire-server.spire.svc"',
        'socket_path = "/run/spire/agent-sockets/spire-agent.sock"',
        'trust_bundle_path = "/run/spire/bundle/bundle.crt"',
        'NodeAttestor "k8s_psat" {',
        'cluster = "x0tta6bl4"',
        'WorkloadAttestor "k8s" {',
        "require_pq_kem = false",
    ):
        assert line in conf, line
    agent = default["DaemonSet", "spire-agent"]
    spec = agent["spec"]["template"]["spec"]
    assert spec["hostPID"] is True  # the k8s attestor reads callers' cgroups
    token = next(v for v in spec["volumes"] if v["name"] == "token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "spire-server"
    sockets = next(v for v in spec["volumes"] if v["name"] == "agent-socket-dir")
    assert sockets["hostPath"]["path"] == "/run/spire/agent-sockets"


def test_controller_manager_serves_the_x0tta6bl4_cluster_spiffe_ids(
    default: dict[tuple[str, str], Obj],
) -> None:
    conf = yaml.safe_load(config(default, "spire-controller-manager", "controller-manager.yaml"))
    assert conf["trustDomain"] == "x0tta6bl4.mesh"
    assert conf["clusterName"] == "x0tta6bl4"
    assert conf["watchClassless"] is True  # the x0tta6bl4 chart's ClusterSPIFFEID has no class
    assert "spire" in conf["ignoreNamespaces"]
    assert conf["spireServerSocketPath"] == "/tmp/spire-server/private/api.sock"
    x0 = render(["values-staging.yaml"], namespace="x0tta6bl4-staging")
    ids = [o for o in x0 if o["kind"] == "ClusterSPIFFEID"]
    assert ids, "the x0tta6bl4 chart registers its pods through ClusterSPIFFEIDs"
    assert all(not o["spec"].get("className") for o in ids)


def test_the_guides_spire_values_drive_this_chart(staging: dict[tuple[str, str], Obj]) -> None:
    values = yaml.safe_load(STAGING_VALUES.read_text(encoding="utf-8"))
    server = staging["StatefulSet", "spire-server"]
    assert server["spec"]["replicas"] == values["spire-server"]["replicaCount"] == 3
    main = containers(server)["spire-server"]
    assert main["resources"] == values["spire-server"]["resources"]
    assert "-expandEnv" in main["args"]
    assert main["env"] == [
        {
            "name": "DBPW",
            "valueFrom": {"secretKeyRef": {"name": "spire-db-password", "key": "DBPW"}},
        }
    ]
    conf = config(staging, "spire-server", "server.conf")
    assert 'database_type = "postgres"' in conf
    assert (
        'connection_string = "dbname=spire user=spire password=${DBPW} '
        'host=spire-postgres.spire.svc port=5432"'
    ) in conf
    assert 'cluster = "x0tta6bl4-staging"' in config(staging, "spire-agent", "agent.conf")
    agent = containers(staging["DaemonSet", "spire-agent"])["spire-agent"]
    assert agent["resources"] == values["spire-agent"]["resources"]


def test_no_catch_all_identity_unless_asked_for(staging: dict[tuple[str, str], Obj]) -> None:
    # The x0tta6bl4 pods get exactly one SVID each, from the x0tta6bl4 chart's ClusterSPIFFEIDs.
    assert [k for k in staging if k[0] == "ClusterSPIFFEID"] == []
    on = index(
        render_spire(
            [STAGING_VALUES],
            {"spire-server.controllerManager.identities.clusterSPIFFEIDs.default.enabled": "true"},
        )
    )
    catch_all = on["ClusterSPIFFEID", "spire-spire-default"]["spec"]
    assert catch_all["spiffeIDTemplate"].endswith("/sa/{{ .PodSpec.ServiceAccountName }}")
    excluded = catch_all["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn"
    assert "x0tta6bl4-staging" in excluded["values"]


def test_an_embedded_database_ignores_the_database_secret() -> None:
    objs = index(
        render_spire(
            [STAGING_VALUES],
            {
                "spire-server.replicaCount": "1",
                "spire-server.dataStore.sql.databaseType": "sqlite3",
            },
        )
    )
    main = containers(objs["StatefulSet", "spire-server"])["spire-server"]
    assert "env" not in main
    assert "-expandEnv" not in main["args"]


def test_only_the_csi_driver_is_privileged(default: dict[tuple[str, str], Obj]) -> None:
    privileged = []
    for (kind, name), obj in default.items():
        if kind not in ("StatefulSet", "DaemonSet"):
            continue
        for cname, c in containers(obj).items():
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, cname)
            assert sc["capabilities"]["drop"] == ["ALL"], (name, cname)
            if sc.get("privileged"):
                privileged.append((name, cname))
            else:
                assert sc["allowPrivilegeEscalation"] is False, (name, cname)
    assert privileged == [("spiffe-csi-driver", "spiffe-csi-driver")]
    pod = default["StatefulSet", "spire-server"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_socket_the_x0tta6bl4_chart_mounts_is_the_one_this_chart_serves(
    default: dict[tuple[str, str], Obj],
) -> None:
    x0 = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    spiffe = x0["x0tta6bl4"]["spiffe"]
    conf = config(default, "spire-agent", "agent.conf")
    assert f'socket_path = "{spiffe["socketDir"]}/{spiffe["socketName"]}"' in conf
    assert default["CSIDriver", "csi.spiffe.io"]["spec"]["volumeLifecycleModes"] == ["Ephemeral"]
    assert spiffe["socketVolume"] == "csi"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"spire-server.replicaCount": "3"}, "needs a shared datastore"),
        ({"spire-server.dataStore.sql.databaseType": "postgres"}, "host is required"),
        ({"spire-server.extra": "1"}, "additional properties 'extra' not allowed"),
        ({"global.spire.trustDomain": "Bad Domain"}, "trustDomain"),
        ({"spiffe-csi-driver.agentSocketPath": "/run/other/a.sock"}, "must equal"),
        ({"spire-agent.requirePQKEM": "true"}, "must agree"),
        ({"spire-server.caTTL": "a day"}, "caTTL"),
    ],
)
def test_bad_values_fail_with_a_message(sets: dict[str, str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render_spire(sets=sets)


def test_spire_accepts_the_configuration_the_chart_renders(
    default: dict[tuple[str, str], Obj], tmp_path: Path
) -> None:
    """``spire-server validate`` and ``spire-agent validate`` on the rendered files (the k8s
    plugins are configured, not started: no cluster is needed)."""
    binaries = find_spire()
    if binaries is None:
        pytest.skip("SPIRE binaries not built: run scripts/components/build spire")
    for binary, name, key in (
        (binaries.server, "spire-server", "server.conf"),
        (binaries.agent, "spire-agent", "agent.conf"),
    ):
        path = tmp_path / key
        path.write_text(config(default, name, key), encoding="utf-8")
        done = subprocess.run(
            [str(binary), "validate", "-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
