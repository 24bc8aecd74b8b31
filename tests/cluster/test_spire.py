"""SPIRE as its own release on the real cluster (charts/x0tta6bl4-spire, installed first by
``scripts/cluster staging``): server, one agent and one CSI driver per node, the registration
entries the controller manager made from the x0tta6bl4 chart's ClusterSPIFFEIDs, and — the
acceptance of issue 15 — every mesh pod holding an X.509-SVID of its own node's SPIFFE ID,
signed by the in-cluster SPIRE's CA and fetched through the CSI-mounted agent socket."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cluster.kube import NAMESPACE, RealCluster, parse_time, wait_until
from tests.cluster.test_staging import check

pytestmark = pytest.mark.timeout(3600)

TD = "x0tta6bl4.mesh"
SPIRE_NS = "spire"
SERVER_SOCKET = "/tmp/spire-server/private/api.sock"
SPIRE_BACKDATE_S = 10.0  # SPIRE issues X.509-SVIDs with NotBefore = issue time - 10 s

_FETCH = (
    "import json, os\n"
    "from spiffe import WorkloadApiClient\n"
    "c = WorkloadApiClient('unix://' + os.environ['X0_SPIFFE_SOCKET'], default_timeout=20)\n"
    "s = c.fetch_x509_svid()\n"
    "from cryptography.hazmat.primitives.serialization import Encoding\n"
    "pem = s.leaf.public_bytes(Encoding.PEM).decode()\n"
    "print(json.dumps({'id': str(s.spiffe_id), 'pem': pem}))\n"
)


def spire_bundle(k: RealCluster) -> list[x509.Certificate]:
    cm = k.get("configmap/spire-bundle", namespace=SPIRE_NS)
    return x509.load_pem_x509_certificates(cm["data"]["bundle.crt"].encode())


def svid_in(k: RealCluster, pod: str) -> dict[str, Any] | None:
    out = k.exec_in(pod, "python3", "-c", _FETCH, check=False, timeout=60)
    if out.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_server_agents_and_csi_driver_run_on_every_node(staged: RealCluster) -> None:
    k = staged
    server = k.get("statefulset/spire-server", namespace=SPIRE_NS)["status"]
    assert server.get("readyReplicas") == 1
    for ds in ("spire-agent", "spiffe-csi-driver"):
        status = k.get(f"daemonset/{ds}", namespace=SPIRE_NS)["status"]
        assert status["numberReady"] == status["desiredNumberScheduled"] == len(k.nodes), ds
    driver = k.get("csidriver/csi.spiffe.io", namespace=None)
    assert driver["spec"]["volumeLifecycleModes"] == ["Ephemeral"]


def test_spire_serves_the_trust_domain_and_check_pre_says_so(staged: RealCluster) -> None:
    uris = {
        uri
        for ca in spire_bundle(staged)
        for uri in ca.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    }
    assert uris == {f"spiffe://{TD}"}
    _, report = check(staged, "pre")
    spire = {c["id"]: c for cat in report["categories"] for c in cat["checks"]}
    assert spire["spire-server"]["result"] == "success", spire["spire-server"]
    trust = spire["spire-trust-domain"]
    assert trust["result"] == "success", trust
    assert f"CA(s) of spiffe://{TD}" in str(trust)


def test_controller_manager_registered_each_mesh_pod_under_its_node(
    staged: RealCluster,
) -> None:
    k = staged
    shown = k.exec_in(
        "spire-server-0",
        "/opt/spire/bin/spire-server", "entry", "show", "-socketPath", SERVER_SOCKET,
        "-output", "json",
        namespace=SPIRE_NS,
    ).stdout  # fmt: skip
    entries = json.loads(shown).get("entries", [])
    ids = {f"spiffe://{e['spiffe_id']['trust_domain']}{e['spiffe_id']['path']}" for e in entries}
    for node in k.nodes:
        assert f"spiffe://{TD}/ns/{NAMESPACE}/sa/x0tta6bl4-app/node/{node}" in ids, ids
    assert f"spiffe://{TD}/ns/{NAMESPACE}/sa/x0tta6bl4-app/controller" in ids
    # Parent: the agent of the node the pod runs on (k8s_psat agent IDs), selectors: the pod.
    for e in entries:
        assert e["parent_id"]["path"].startswith("/spire/agent/k8s_psat/"), e
        assert any(s["type"] == "k8s" for s in e["selectors"]), e


def test_every_mesh_pod_holds_an_svid_of_its_own_node_from_the_in_cluster_spire(
    staged: RealCluster, measurements: dict[str, Any]
) -> None:
    k = staged
    cas = {ca.subject: ca for ca in spire_bundle(k)}
    pods = k.pods("app=x0tta6bl4-mesh")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(k.nodes)
    seen: dict[str, str] = {}
    lifetimes: dict[str, float] = {}
    issued_after: dict[str, float] = {}
    for pod in pods:
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        svid = wait_until(f"{name} to be served its SVID", partial(svid_in, k, name), 180, 3)
        assert svid["id"] == f"spiffe://{TD}/ns/{NAMESPACE}/sa/x0tta6bl4-app/node/{node}"
        leaf = x509.load_pem_x509_certificate(svid["pem"].encode())
        ca = cas[leaf.issuer]  # issued by the in-cluster SPIRE's CA ...
        public = ca.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        hash_algorithm = leaf.signature_hash_algorithm
        assert hash_algorithm is not None
        public.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
        seen[node] = svid["id"]
        # Figures (docs/identity.md): SPIRE backdates NotBefore by 10 s, so the pod's first SVID
        # was issued at NotBefore + 10 s; a later one (rotated at half-life) says nothing here.
        not_before = leaf.not_valid_before_utc.timestamp()
        lifetime = leaf.not_valid_after_utc.timestamp() - not_before
        lifetimes[node] = lifetime
        after = not_before + SPIRE_BACKDATE_S - parse_time(pod["metadata"]["creationTimestamp"])
        if after < lifetime / 2:
            issued_after[node] = round(after, 1)
    assert len(set(seen.values())) == len(k.nodes)  # one SPIFFE ID per node
    measurements["mesh_svids"] = seen
    measurements["mesh_svid_lifetime_seconds"] = lifetimes
    measurements["mesh_pod_created_to_svid_issued_seconds"] = issued_after
