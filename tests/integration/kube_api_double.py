"""A test double for the Kubernetes API server, for the ``x0tta6bl4 check`` tests.

No Kubernetes cluster can run on the development machines (no container runtime, no
kubelet), so the Kubernetes path of ``x0tta6bl4 check`` is tested against this: a real HTTP
server (aiohttp, 127.0.0.1, ephemeral port) that answers exactly the Kubernetes API calls the
checks make — ``/version``, ``/apis`` discovery, ``SelfSubjectAccessReview``, lists and gets
of namespaced and cluster objects with label selectors, ``metrics.k8s.io``, and the service
and pod proxies (controller ``/metrics`` and ``/ready``, node ``/v1/status``, Prometheus
``/api/v1/query``) — with a bearer token from a real kubeconfig file.

The objects are the chart's own rendered manifests (``helm template`` with
``values-staging.yaml``, via :func:`chart_helpers.render`) plus realistic ``status`` fields
and the objects a cluster would add: nodes, pods created from the workloads' pod templates,
PVCs from the StatefulSet's claim templates, namespaces, StorageClasses, SPIRE's server
StatefulSet and agent DaemonSet. Tests break one thing at a time (:class:`ClusterState`
methods) and check that the right check fails.

What it does not do: watch, patch, field selectors, pagination, admission, real RBAC
evaluation (denials are listed explicitly), or anything the checks do not call.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.integration.chart_helpers import by_kind_name, render

__all__ = [
    "NODES",
    "TOKEN",
    "ClusterState",
    "KubeApiDouble",
    "build_state",
    "write_kubeconfig",
]

Obj = dict[str, Any]

TOKEN = "kube-api-double-token"
NAMESPACE = "x0tta6bl4-staging"
NODES = ("node-a", "node-b", "node-c")
CONTROL_PLANE = "control-plane-0"

_PLURALS = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Pod": "pods",
    "ResourceQuota": "resourcequotas",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "NetworkPolicy": "networkpolicies",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ClusterSPIFFEID": "clusterspiffeids",
}


def _gv(api_version: str) -> str:
    return api_version


@dataclass
class ClusterState:
    """Everything the double serves; tests mutate it to break the cluster."""

    version: str = "v1.29.4"
    groups: dict[str, list[str]] = field(default_factory=dict)
    objects: dict[tuple[str, str, str], dict[str, Obj]] = field(default_factory=dict)
    denied: set[tuple[str, str]] = field(default_factory=set)
    """(group, resource) pairs a SelfSubjectAccessReview denies."""
    registered_nodes: int | None = None
    """x0tta6bl4_mesh_nodes_total as the controller reports it (None: one per mesh pod)."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    now: float = field(default_factory=time.time)

    # -- storage --------------------------------------------------------------------------

    def put(self, gv: str, resource: str, obj: Obj, ns: str = "") -> Obj:
        meta = obj.setdefault("metadata", {})
        if ns:
            meta["namespace"] = ns
        self.objects.setdefault((gv, resource, ns), {})[meta["name"]] = obj
        return obj

    def get(self, gv: str, resource: str, name: str, ns: str = "") -> Obj:
        return self.objects[(gv, resource, ns)][name]

    def delete(self, gv: str, resource: str, name: str, ns: str = "") -> None:
        del self.objects[(gv, resource, ns)][name]

    def items(self, gv: str, resource: str, ns: str = "") -> list[Obj]:
        return list(self.objects.get((gv, resource, ns), {}).values())

    def pods(self, app: str, ns: str = NAMESPACE) -> list[Obj]:
        return [
            p for p in self.items("v1", "pods", ns) if p["metadata"]["labels"].get("app") == app
        ]

    # -- faults ---------------------------------------------------------------------------

    def break_pod(self, app: str, index: int = 0, reason: str = "CrashLoopBackOff") -> str:
        """Make one pod of ``app`` not ready; returns its name. Updates the owner's status."""
        pod = sorted(self.pods(app), key=lambda p: p["metadata"]["name"])[index]
        _set_ready(pod, ready=False, reason=reason)
        if app == "x0tta6bl4-mesh":
            ds = self.get("apps/v1", "daemonsets", "x0tta6bl4-mesh-node", NAMESPACE)
            ds["status"]["numberReady"] -= 1
            ds["status"]["numberUnavailable"] = 1
        elif app == "x0tta6bl4-controller":
            dep = self.get("apps/v1", "deployments", "x0tta6bl4-controller", NAMESPACE)
            dep["status"]["readyReplicas"] -= 1
            dep["status"]["availableReplicas"] -= 1
        return str(pod["metadata"]["name"])

    def fix_pod(self, app: str, index: int = 0) -> None:
        """Undo :meth:`break_pod`."""
        pod = sorted(self.pods(app), key=lambda p: p["metadata"]["name"])[index]
        _set_ready(pod, ready=True)
        if app == "x0tta6bl4-mesh":
            ds = self.get("apps/v1", "daemonsets", "x0tta6bl4-mesh-node", NAMESPACE)
            ds["status"]["numberReady"] += 1
            ds["status"].pop("numberUnavailable", None)
        elif app == "x0tta6bl4-controller":
            dep = self.get("apps/v1", "deployments", "x0tta6bl4-controller", NAMESPACE)
            dep["status"]["readyReplicas"] += 1
            dep["status"]["availableReplicas"] += 1

    def remove_mesh_pod(self, node: str) -> None:
        """The mesh pod on ``node`` is gone (evicted and not replaced)."""
        for pod in self.pods("x0tta6bl4-mesh"):
            if pod["spec"]["nodeName"] == node:
                self.delete("v1", "pods", pod["metadata"]["name"], NAMESPACE)
        ds = self.get("apps/v1", "daemonsets", "x0tta6bl4-mesh-node", NAMESPACE)
        ds["status"]["currentNumberScheduled"] -= 1
        ds["status"]["numberReady"] -= 1
        ds["status"]["numberAvailable"] -= 1
        ds["status"]["numberMisscheduled"] = 0


def _set_ready(pod: Obj, *, ready: bool, reason: str = "") -> None:
    status = pod["status"]
    flag = "True" if ready else "False"
    for cond in status["conditions"]:
        if cond["type"] in ("Ready", "ContainersReady"):
            cond["status"] = flag
    for cs in status["containerStatuses"]:
        cs["ready"] = ready
        if ready:
            cs["state"] = {"running": {"startedAt": "2026-01-13T10:00:00Z"}}
        else:
            cs["state"] = {"waiting": {"reason": reason, "message": "back-off restarting"}}
            cs["restartCount"] = 7


def _node(name: str, *, control_plane: bool = False) -> Obj:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "topology.kubernetes.io/zone": f"zone-{name[-1]}",
    }
    spec: Obj = {"podCIDR": "10.244.0.0/24"}
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
        spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "DiskPressure", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ],
            "nodeInfo": {"kubeletVersion": "v1.29.4"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        },
    }


def _pod(owner: Obj, name: str, node: str, ip: str) -> Obj:
    template = copy.deepcopy(owner["spec"]["template"])
    spec = template["spec"]
    spec["nodeName"] = node
    containers = [c["name"] for c in spec["containers"]]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "ownerReferences": [
                {"kind": owner["kind"], "name": owner["metadata"]["name"], "controller": True}
            ],
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "192.168.1.10",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": c,
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-13T10:00:00Z"}},
                }
                for c in containers
            ],
        },
    }


def _spire_workload(kind: str, name: str, app: str, replicas: int) -> Obj:
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [{"name": app, "image": f"ghcr.io/spiffe/{app}:1.12.4"}]},
    }
    obj: Obj = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "spire", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
            "template": template,
        },
    }
    if kind == "StatefulSet":
        obj["spec"]["replicas"] = replicas
        obj["status"] = {
            "replicas": replicas,
            "readyReplicas": replicas,
            "currentReplicas": replicas,
            "updatedReplicas": replicas,
            "observedGeneration": 1,
        }
    else:
        obj["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}]
        obj["status"] = {
            "desiredNumberScheduled": replicas,
            "currentNumberScheduled": replicas,
            "numberReady": replicas,
            "numberAvailable": replicas,
            "updatedNumberScheduled": replicas,
            "observedGeneration": 1,
        }
    return obj


@functools.lru_cache(maxsize=4)
def _render(values: tuple[str, ...]) -> list[Obj]:
    """The chart rendered once per values tuple (objects are deep-copied before use)."""
    return render(list(values), namespace=NAMESPACE)


def build_state(values: Iterable[str] = ("values-staging.yaml",)) -> ClusterState:
    """A healthy staging cluster with the chart installed from ``values`` (rendered by helm)."""
    rendered = _render(tuple(values))
    index = by_kind_name(rendered)
    state = ClusterState()
    state.groups = {
        "apps": ["v1"],
        "autoscaling": ["v2", "v1"],
        "policy": ["v1"],
        "networking.k8s.io": ["v1"],
        "rbac.authorization.k8s.io": ["v1"],
        "storage.k8s.io": ["v1"],
        "authorization.k8s.io": ["v1"],
        "metrics.k8s.io": ["v1beta1"],
        "spire.spiffe.io": ["v1alpha1"],
    }
    for name in (NAMESPACE, "monitoring", "spire", "kube-system", "default"):
        state.put(
            "v1",
            "namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                "status": {"phase": "Active"},
            },
        )
    for node in NODES:
        state.put("v1", "nodes", _node(node))
    state.put("v1", "nodes", _node(CONTROL_PLANE, control_plane=True))
    state.put(
        "storage.k8s.io/v1",
        "storageclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
        },
    )
    state.put(
        "storage.k8s.io/v1",
        "storageclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "fast-ssd"},
            "provisioner": "pd.csi.storage.gke.io",
        },
    )
    # The chart's objects as rendered, with status.
    for source in rendered:
        obj = copy.deepcopy(source)
        kind = obj["kind"]
        if kind not in _PLURALS or (
            kind == "Pod" and "helm.sh/hook" in obj["metadata"].get("annotations", {})
        ):
            continue
        obj["metadata"].setdefault("generation", 1)
        ns = obj["metadata"].get("namespace", "")
        state.put(_gv(obj["apiVersion"]), _PLURALS[kind], obj, ns)

    ip = iter(f"10.244.{i // 200}.{i % 200 + 10}" for i in range(1000))
    dep = state.get("apps/v1", "deployments", "x0tta6bl4-controller", NAMESPACE)
    replicas = dep["spec"]["replicas"]
    dep["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    }
    for i in range(replicas):
        state.put(
            "v1",
            "pods",
            _pod(
                dep, f"x0tta6bl4-controller-7d9f8b6c5-{'abcdefgh'[i]}x2kq", NODES[i % 3], next(ip)
            ),
            NAMESPACE,
        )
    sts = state.get("apps/v1", "statefulsets", "x0tta6bl4-etcd", NAMESPACE)
    members = sts["spec"]["replicas"]
    sts["status"] = {
        "observedGeneration": 1,
        "replicas": members,
        "readyReplicas": members,
        "currentReplicas": members,
        "updatedReplicas": members,
        "currentRevision": "x0tta6bl4-etcd-6c8b9d7f4",
        "updateRevision": "x0tta6bl4-etcd-6c8b9d7f4",
    }
    for i in range(members):
        state.put("v1", "pods", _pod(sts, f"x0tta6bl4-etcd-{i}", NODES[i % 3], next(ip)), NAMESPACE)
        for claim in sts["spec"]["volumeClaimTemplates"]:
            pvc = copy.deepcopy(claim)
            pvc.update({"apiVersion": "v1", "kind": "PersistentVolumeClaim"})
            pvc["metadata"]["name"] = f"{claim['metadata']['name']}-x0tta6bl4-etcd-{i}"
            pvc["spec"]["volumeName"] = f"pvc-{i:08x}-etcd"
            pvc["status"] = {"phase": "Bound", "capacity": pvc["spec"]["resources"]["requests"]}
            state.put("v1", "persistentvolumeclaims", pvc, NAMESPACE)
    ds = state.get("apps/v1", "daemonsets", "x0tta6bl4-mesh-node", NAMESPACE)
    for node in NODES:
        state.put(
            "v1", "pods", _pod(ds, f"x0tta6bl4-mesh-node-{node[-1]}7k2p", node, next(ip)), NAMESPACE
        )
    n = len(NODES)
    ds["status"] = {
        "observedGeneration": 1,
        "desiredNumberScheduled": n,
        "currentNumberScheduled": n,
        "updatedNumberScheduled": n,
        "numberReady": n,
        "numberAvailable": n,
        "numberMisscheduled": 0,
    }
    hpa = state.get(
        "autoscaling/v2", "horizontalpodautoscalers", "x0tta6bl4-controller-hpa", NAMESPACE
    )
    hpa["status"] = {
        "currentReplicas": replicas,
        "desiredReplicas": replicas,
        "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}
        ],
        "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
            {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
        ],
    }
    for name in ("x0tta6bl4-controller", "x0tta6bl4-etcd"):
        pdb = state.get("policy/v1", "poddisruptionbudgets", name, NAMESPACE)
        pdb["status"] = {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 1}
    quota = state.get("v1", "resourcequotas", "x0tta6bl4-quota", NAMESPACE)
    quota["status"] = {
        "hard": quota["spec"]["hard"],
        "used": {"pods": "9", "requests.cpu": "3250m", "requests.memory": "4608Mi"},
    }
    for role, selected in (("controller", replicas), ("mesh", n)):
        cid = state.get(
            "spire.spiffe.io/v1alpha1", "clusterspiffeids", f"x0tta6bl4-{NAMESPACE}-{role}"
        )
        cid["status"] = {
            "stats": {
                "namespacesSelected": 1,
                "namespacesIgnored": 0,
                "podsSelected": selected,
                "podEntryRenderFailures": 0,
                "entryFailures": 0,
            }
        }
    # Prometheus (rendered by the chart in namespace monitoring) with its pods.
    prom = index.get(("Deployment", "prometheus"))
    if prom is not None:
        stored = state.get("apps/v1", "deployments", "prometheus", "monitoring")
        for i in range(stored["spec"]["replicas"]):
            state.put(
                "v1", "pods", _pod(stored, f"prometheus-5f7c-{i}", NODES[i], next(ip)), "monitoring"
            )
    # SPIRE, installed as its own release.
    server = _spire_workload("StatefulSet", "spire-server", "server", 3)
    state.put("apps/v1", "statefulsets", server, "spire")
    agent = _spire_workload("DaemonSet", "spire-agent", "agent", len(NODES) + 1)
    state.put("apps/v1", "daemonsets", agent, "spire")
    for i, node in enumerate((*NODES, CONTROL_PLANE)):
        state.put("v1", "pods", _pod(agent, f"spire-agent-{i}x9z", node, next(ip)), "spire")
    for i in range(3):
        state.put("v1", "pods", _pod(server, f"spire-server-{i}", NODES[i], next(ip)), "spire")
    state.put("v1", "configmaps", spire_bundle_configmap("x0tta6bl4.mesh"), "spire")
    return state


def spire_bundle_configmap(trust_domain: str, *, days: float = 1.0) -> Obj:
    """ConfigMap spire-bundle as SPIRE's k8sbundle notifier writes it: a CA of
    ``spiffe://<trust_domain>`` (EC P-256, self-signed, valid ``days`` from now)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=min(days, 0) - 1 / 24))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "spire-bundle", "namespace": "spire"},
        "data": {"bundle.crt": pem},
    }


# --------------------------------------------------------------------------- HTTP server


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        },
        status=code,
    )


_SET = re.compile(r"^\s*([\w./-]+)\s+in\s+\(([^)]*)\)\s*$")


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    # Split on commas outside parentheses.
    parts, depth, buf = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    if buf:
        parts.append(buf)
    for part in parts:
        match = _SET.match(part)
        if match:
            values = {v.strip() for v in match.group(2).split(",")}
            if labels.get(match.group(1)) not in values:
                return False
            continue
        key, _, value = part.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


_NAMESPACED = re.compile(r"^/(api/v1|apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$")
_CLUSTER = re.compile(r"^/(api/v1|apis/[^/]+/[^/]+)/([^/]+)(?:/([^/]+))?$")
_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/(services|pods)/([^/:]+):(\d+)/proxy(/.*)$")


class KubeApiDouble:
    """The HTTP server over a :class:`ClusterState`; ``async with`` starts and stops it."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> KubeApiDouble:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        path = request.path
        self.state.requests.append((request.method, path))
        if request.method == "POST":
            if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
                return await self._ssar(request)
            return _status(405, "MethodNotAllowed", f"POST {path} is not served by the double")
        if request.method != "GET":
            return _status(405, "MethodNotAllowed", f"{request.method} not served")
        state = self.state
        if path == "/version":
            major, minor = state.version.lstrip("v").split(".")[:2]
            return web.json_response(
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": state.version,
                    "platform": "linux/amd64",
                }
            )
        if path == "/apis":
            return web.json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": g,
                            "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                            "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                        }
                        for g, vs in state.groups.items()
                    ],
                }
            )
        if path == "/apis/networking.k8s.io/v1" and "networking.k8s.io" in state.groups:
            return web.json_response(
                {
                    "kind": "APIResourceList",
                    "groupVersion": "networking.k8s.io/v1",
                    "resources": [
                        {"name": "networkpolicies", "namespaced": True, "kind": "NetworkPolicy"},
                        {"name": "ingresses", "namespaced": True, "kind": "Ingress"},
                    ],
                }
            )
        if path.startswith("/apis/metrics.k8s.io/"):
            if "metrics.k8s.io" not in state.groups:
                return _status(404, "NotFound", "the server could not find the requested resource")
            if path == "/apis/metrics.k8s.io/v1beta1/nodes":
                return web.json_response(
                    {
                        "kind": "NodeMetricsList",
                        "apiVersion": "metrics.k8s.io/v1beta1",
                        "items": [
                            {
                                "metadata": {"name": n["metadata"]["name"]},
                                "usage": {"cpu": "412m", "memory": "3120Mi"},
                                "window": "20s",
                            }
                            for n in state.items("v1", "nodes")
                        ],
                    }
                )
        proxy = _PROXY.match(path)
        if proxy:
            return self._proxy(
                proxy.group(1), proxy.group(2), proxy.group(3), proxy.group(5), request
            )
        selector = request.query.get("labelSelector", "")
        match = _NAMESPACED.match(path)
        if match:
            gv = match.group(1).removeprefix("api/").removeprefix("apis/")
            return self._read(gv, match.group(3), match.group(4), match.group(2), selector)
        match = _CLUSTER.match(path)
        if match:
            gv = match.group(1).removeprefix("api/").removeprefix("apis/")
            return self._read(gv, match.group(2), match.group(3), "", selector)
        return _status(404, "NotFound", "the server could not find the requested resource")

    def _read(
        self, gv: str, resource: str, name: str | None, ns: str, selector: str
    ) -> web.Response:
        group = gv.split("/", maxsplit=1)[0] if "/" in gv else ""
        if group and group not in self.state.groups:
            return _status(404, "NotFound", "the server could not find the requested resource")
        objs = self.state.objects.get((gv, resource, ns), {})
        if name is not None:
            obj = objs.get(name)
            if obj is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            return web.json_response(obj)
        items = [
            o
            for o in objs.values()
            if not selector or _selector_matches(selector, o["metadata"].get("labels", {}))
        ]
        return web.json_response(
            {
                "kind": "List",
                "apiVersion": gv,
                "metadata": {"resourceVersion": "4711"},
                "items": items,
            }
        )

    async def _ssar(self, request: web.Request) -> web.Response:
        body = await request.json()
        attrs = body["spec"]["resourceAttributes"]
        key = (attrs.get("group", ""), attrs["resource"])
        allowed = key not in self.state.denied
        body["status"] = {
            "allowed": allowed,
            "reason": "" if allowed else "RBAC: access denied",
        }
        return web.json_response(body, status=201)

    def _proxy(
        self, ns: str, kind: str, name: str, path: str, request: web.Request
    ) -> web.Response:
        state = self.state
        if kind == "services":
            if (ns, name) == (NAMESPACE, "x0tta6bl4-api"):
                ready = [p for p in state.pods("x0tta6bl4-controller") if _ready(p)]
                if not ready:
                    return _status(503, "ServiceUnavailable", "no endpoints available for service")
                if path == "/ready":
                    return web.json_response({"status": "ready"})
                if path == "/metrics":
                    count = state.registered_nodes
                    if count is None:
                        count = len(state.pods("x0tta6bl4-mesh"))
                    return web.Response(
                        text=(
                            "# HELP x0tta6bl4_mesh_nodes_total Mesh nodes currently registered.\n"
                            "# TYPE x0tta6bl4_mesh_nodes_total gauge\n"
                            f"x0tta6bl4_mesh_nodes_total {float(count)}\n"
                            "# HELP x0tta6bl4_store_up 1 if the store answers.\n"
                            "# TYPE x0tta6bl4_store_up gauge\nx0tta6bl4_store_up 1.0\n"
                        ),
                        content_type="text/plain",
                    )
            if (ns, name) == ("monitoring", "prometheus") and path == "/api/v1/query":
                job = re.search(r'job="([^"]+)"', request.query.get("query", ""))
                app = job.group(1) if job else ""
                result = [
                    {
                        "metric": {"__name__": "up", "job": app, "pod": p["metadata"]["name"]},
                        "value": [state.now, "1" if _ready(p) else "0"],
                    }
                    for p in state.pods(app)
                ]
                return web.json_response(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                )
            return _status(404, "NotFound", f"service {ns}/{name}: nothing at {path}")
        pods = {p["metadata"]["name"]: p for p in state.items("v1", "pods", ns)}
        pod = pods.get(name)
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if not _ready(pod):
            return _status(503, "ServiceUnavailable", f"error trying to reach service: {name}")
        if path == "/v1/status" and pod["metadata"]["labels"].get("app") == "x0tta6bl4-mesh":
            node = pod["spec"]["nodeName"]
            return web.json_response(
                {
                    "node_id": node,
                    "registered": True,
                    "controller": "http://x0tta6bl4-api:8080",
                    "controller_reachable": True,
                    "spiffe_id": f"spiffe://x0tta6bl4.mesh/ns/{NAMESPACE}/sa/x0tta6bl4-app",
                    "pq_svid_not_after": state.now + 1800.0,
                    "members": len(state.pods("x0tta6bl4-mesh")),
                    "links": [],
                }
            )
        return _status(404, "NotFound", f"pod {name}: nothing at {path}")


def _ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    """A kubeconfig with one context ``double`` pointing at ``server`` with ``token``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "double", "cluster": {"server": server}}],
                "users": [{"name": "checker", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "double",
                        "context": {"cluster": "double", "user": "checker", "namespace": NAMESPACE},
                    }
                ],
                "current-context": "double",
            }
        ),
        encoding="utf-8",
    )
    return path
