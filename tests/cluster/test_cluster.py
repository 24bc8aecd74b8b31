"""The cluster scripts/cluster makes is a real one: separate nodes (each its own network and
mount namespace, kubelet and containerd), cluster DNS, Service routing by kube-proxy, enforced
NetworkPolicies, the Metrics API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.kube import RealCluster, wait_until

pytestmark = pytest.mark.timeout(3600)

IMAGE = "x0tta6bl4/mesh:v1.0.0"  # the image has Python: the probes below are python -c


def _pod(
    name: str, ns: str, labels: dict[str, str], command: list[str], node: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"cpu": "200m", "memory": "128Mi"},
                },
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    }


SERVE = [
    "python3",
    "-c",
    (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'pong')\n"
        "h.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
    ),
]
SLEEP = ["python3", "-c", "import time; time.sleep(3600)"]


def fetch(url: str) -> list[str]:
    """A python -c that prints 'ok' or 'fail <reason>' for one GET with a 3 s timeout."""
    return [
        "python3",
        "-c",
        (
            "import urllib.request as u\n"
            f"try: print('ok', u.urlopen({url!r}, timeout=3).read().decode())\n"
            "except Exception as e: print('fail', type(e).__name__, e)\n"
        ),
    ]


@pytest.fixture(scope="module")
def scratch(cluster_up: RealCluster) -> Iterator[str]:
    """A namespace of its own for the tests of this module, deleted afterwards."""
    ns = f"x0-test-{uuid.uuid4().hex[:6]}"
    cluster_up.kubectl("create", "namespace", ns)
    try:
        yield ns
    finally:
        cluster_up.kubectl("delete", "namespace", ns, "--wait=false")


def running(cluster: RealCluster, ns: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get("pod", name, namespace=ns)
        return (
            pod if pod["status"].get("phase") == "Running" and pod["status"].get("podIP") else None
        )

    return wait_until(f"pod {ns}/{name} running", ready, 180)


def test_three_nodes_each_with_its_own_kubelet_and_containerd(cluster_up: RealCluster) -> None:
    nodes = cluster_up.get("nodes", namespace=None)["items"]
    names = sorted(n["metadata"]["name"] for n in nodes)
    assert names == sorted(cluster_up.nodes)
    assert len(names) >= 3
    ips = set()
    for n in nodes:
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.35.4"
        assert info["containerRuntimeVersion"].startswith("containerd://1.")
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
        )
        ips |= {a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"}
        assert n["spec"]["podCIDR"]
    assert len(ips) == len(names)  # one network namespace (and address) per node
    # Each node's containerd is its own: it runs exactly the pods the API places on that node.
    pods = cluster_up.get("pods", "--all-namespaces", namespace=None)["items"]
    for node in names:
        here = {
            p["metadata"]["uid"]
            for p in pods
            if p["spec"].get("nodeName") == node and p["status"].get("phase") == "Running"
        }
        out = cluster_up.node_run(
            node, "ctr", "-n", "k8s.io", "containers", "list", "--quiet"
        ).stdout.split()
        labels = [
            json.loads(
                cluster_up.node_run(node, "ctr", "-n", "k8s.io", "containers", "info", c).stdout
            )["Labels"]
            for c in out
        ]
        uids = {lab.get("io.kubernetes.pod.uid") for lab in labels}
        assert here <= uids, (node, here - uids)
        others = {
            p["metadata"]["uid"] for p in pods if p["spec"].get("nodeName") not in (node, None)
        }
        assert not (uids & others), node


def test_cluster_dns_and_service_routing(cluster_up: RealCluster, scratch: str) -> None:
    cluster_up.apply(
        _pod(
            "dns",
            scratch,
            {"app": "dns"},
            [
                "python3",
                "-c",
                "import socket\n"
                "print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
                "s = socket.create_connection(('kubernetes.default', 443), timeout=5)\n"
                "print('connected')\n",
            ],
        )
    )

    def done() -> str | None:
        pod = cluster_up.get("pod", "dns", namespace=scratch)
        return pod["status"]["phase"] if pod["status"]["phase"] in ("Succeeded", "Failed") else None

    phase = wait_until("dns pod finished", done, 180)
    out = cluster_up.kubectl("logs", "-n", scratch, "dns").stdout.split()
    kube_ip = cluster_up.get("service", "kubernetes", namespace="default")["spec"]["clusterIP"]
    assert phase == "Succeeded", out
    assert out == [kube_ip, "connected"]


def test_network_policies_are_enforced(cluster_up: RealCluster, scratch: str) -> None:
    k = cluster_up
    k.apply(_pod("server", scratch, {"app": "server"}, SERVE))
    k.apply(_pod("friend", scratch, {"app": "friend"}, SLEEP))
    k.apply(_pod("stranger", scratch, {"app": "stranger"}, SLEEP))
    server_ip = running(k, scratch, "server")["status"]["podIP"]
    for name in ("friend", "stranger"):
        running(k, scratch, name)
    url = f"http://{server_ip}:8080/"

    def reach(client: str) -> str:
        return k.exec_in(client, *fetch(url), namespace=scratch).stdout.strip()

    wait_until("server answers", lambda: reach("friend").startswith("ok"), 60)
    assert reach("stranger").startswith("ok")
    k.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "only-friends", "namespace": scratch},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "friend"}}}]}],
            },
        }
    )
    wait_until("the policy cuts the stranger off", lambda: reach("stranger").startswith("fail"), 60)
    assert reach("friend").startswith("ok")
    k.kubectl("delete", "networkpolicy", "-n", scratch, "only-friends")
    wait_until(
        "without the policy the stranger gets through again",
        lambda: reach("stranger").startswith("ok"),
        60,
    )


def test_metrics_api_serves_node_and_pod_metrics(cluster_up: RealCluster) -> None:
    def nodes() -> list[dict[str, Any]] | None:
        raw = cluster_up.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
        if raw.returncode != 0:
            return None
        items: list[dict[str, Any]] = json.loads(raw.stdout)["items"]
        return items if len(items) == len(cluster_up.nodes) else None

    items = wait_until("metrics.k8s.io answers for every node", nodes, 180, 5)
    assert all(i["usage"]["cpu"] and i["usage"]["memory"] for i in items)
    top = cluster_up.kubectl("top", "nodes").stdout
    for node in cluster_up.nodes:
        assert node in top
