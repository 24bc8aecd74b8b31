"""``x0tta6bl4 check --post``: is the installed release healthy?

The guide's "Verify Installation", "Manual Validation" and the Deployment/Post-Deployment
parts of its Production Checklist: controller rollout, etcd members and PVCs, mesh pods on
every node, HPA and PDBs, controller health, ``x0tta6bl4_mesh_nodes_total`` against the mesh
pods, PQ SVIDs, SPIRE server/agents/registration/SVIDs, and Prometheus scraping.

Needs only what the chart's read-only ClusterRole ``x0tta6bl4-check`` grants when run in the
cluster (get/list on the objects involved); HTTP endpoints are reached as
:class:`~x0tta6bl4.check.cluster.ClusterContext` describes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from x0tta6bl4.check.checks_pre import api_category, check_spire_server
from x0tta6bl4.check.cluster import ClusterContext
from x0tta6bl4.check.kube import KubeError, KubeNotFoundError, Obj
from x0tta6bl4.check.kubeobj import (
    daemonset_eligible,
    name_of,
    pod_problem,
    pod_ready,
)
from x0tta6bl4.check.model import (
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Severity,
)

__all__ = [
    "CONTROLLER",
    "CONTROLLER_PORT",
    "ETCD",
    "HPA",
    "MESH",
    "NODE_HTTP_PORT",
    "PROMETHEUS_JOBS",
    "SVID_MIN_REMAINING",
    "metric_value",
    "post_categories",
    "pq_svid_problem",
    "spiffe_problem",
    "svid_problem",
]

CONTROLLER = "x0tta6bl4-controller"
CONTROLLER_SERVICE = "x0tta6bl4-api"
CONTROLLER_PORT = 8080
ETCD = "x0tta6bl4-etcd"
MESH = "x0tta6bl4-mesh-node"
HPA = "x0tta6bl4-controller-hpa"
NODE_HTTP_PORT = 7811
PROMETHEUS_JOBS = ("x0tta6bl4-controller", "x0tta6bl4-mesh")
"""The scrape jobs of the chart's Prometheus (templates/monitoring/prometheus.yaml)."""
SPIRE_AGENT = "spire-agent"
SVID_MIN_REMAINING = 300.0
"""An SVID with less than this many seconds left is failing to rotate (the chart's alert
fires at the same 5 minutes)."""
ROTATION_SLACK = 0.75
"""An SVID older than this fraction of its lifetime has missed its renewal (SPIRE and the
controller renew at half-life)."""


def _selector(workload: Obj) -> str:
    labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


async def _workload(ctx: ClusterContext, kind: str, name: str, ns: str = "") -> Obj:
    try:
        return await ctx.kube.get(ctx.ns_path("apps/v1", kind, name, ns))
    except KubeNotFoundError:
        singular = kind.rstrip("s")
        raise CheckFailedError(f"no {singular} {name} in namespace {ns or ctx.namespace}") from None


async def _pods(ctx: ClusterContext, workload: Obj, ns: str = "") -> list[Obj]:
    return await ctx.kube.items(
        ctx.ns_path("v1", "pods", ns=ns), {"labelSelector": _selector(workload)}
    )


def _not_ready(pods: list[Obj]) -> str:
    bad = [pod_problem(p) for p in pods if not pod_ready(p)]
    return "; not ready: " + ", ".join(bad) if bad else ""


# --------------------------------------------------------------------------- control plane


async def check_controller_rollout(ctx: ClusterContext) -> str:
    """Deployment x0tta6bl4-controller is rolled out and every replica is ready."""
    dep = await _workload(ctx, "deployments", CONTROLLER)
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    generation = int((dep.get("metadata") or {}).get("generation", 0))
    if int(status.get("observedGeneration", 0)) < generation:
        raise CheckFailedError("the Deployment's latest spec has not been observed yet")
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < want or ready < want or available < want:
        pods = await _pods(ctx, dep)
        raise CheckFailedError(
            f"{CONTROLLER}: {updated} of {want} updated, {ready} ready, {available} available"
            + _not_ready(pods)
        )
    return f"{ready} of {want} ready"


async def check_pods_ready(ctx: ClusterContext) -> str:
    """Every pod of the controller, etcd and the mesh DaemonSet is running and ready."""
    pods = await ctx.kube.items(
        ctx.ns_path("v1", "pods"),
        {"labelSelector": f"app in ({CONTROLLER},x0tta6bl4-etcd,x0tta6bl4-mesh)"},
    )
    if not pods:
        raise CheckFailedError(f"no x0tta6bl4 pods in namespace {ctx.namespace}")
    bad = [pod_problem(p) for p in pods if not pod_ready(p)]
    if bad:
        raise CheckFailedError(f"{len(bad)} of {len(pods)} pods are not ready: " + ", ".join(bad))
    return f"{len(pods)} pods"


def _store_url(dep: Obj) -> str:
    for container in ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []:
        args = [*(container.get("command") or []), *(container.get("args") or [])]
        for i, arg in enumerate(args):
            if arg == "--store" and i + 1 < len(args):
                return str(args[i + 1])
            if str(arg).startswith("--store="):
                return str(arg).split("=", 1)[1]
        for env in container.get("env") or []:
            if env.get("name") == "X0_STORE" and "value" in env:
                return str(env["value"])
    return ""


async def _uses_chart_etcd(ctx: ClusterContext) -> bool:
    dep = await _workload(ctx, "deployments", CONTROLLER)
    return f"{ETCD}-0.{ETCD}" in _store_url(dep)


async def check_etcd_ready(ctx: ClusterContext) -> str:
    """StatefulSet x0tta6bl4-etcd has every member ready at the current revision."""
    if not await _uses_chart_etcd(ctx):
        raise CheckSkippedError("the controller does not use the chart's etcd")
    sts = await _workload(ctx, "statefulsets", ETCD)
    want = int((sts.get("spec") or {}).get("replicas", 1))
    status = sts.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    if ready < want:
        pods = await _pods(ctx, sts)
        raise CheckFailedError(f"{ETCD}: {ready} of {want} members ready" + _not_ready(pods))
    if status.get("updateRevision") and status.get("currentRevision") != status.get(
        "updateRevision"
    ):
        raise CheckFailedError(f"{ETCD}: a rolling update is still in progress")
    return f"{ready} of {want} members ready"


async def check_pvcs_bound(ctx: ClusterContext) -> str:
    """Every PVC of etcd (or of the SQLite controller) is Bound."""
    dep = await _workload(ctx, "deployments", CONTROLLER)
    expected: list[str] = []
    if f"{ETCD}-0.{ETCD}" in _store_url(dep):
        sts = await _workload(ctx, "statefulsets", ETCD)
        replicas = int((sts.get("spec") or {}).get("replicas", 1))
        for template in (sts.get("spec") or {}).get("volumeClaimTemplates") or []:
            expected += [f"{name_of(template)}-{ETCD}-{i}" for i in range(replicas)]
    volumes = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "volumes"
    ) or []
    expected += [
        str(v["persistentVolumeClaim"]["claimName"])
        for v in volumes
        if "persistentVolumeClaim" in v
    ]
    if not expected:
        raise CheckSkippedError("no persistent volumes (persistence off or external store)")
    pvcs = {
        name_of(p): p for p in await ctx.kube.items(ctx.ns_path("v1", "persistentvolumeclaims"))
    }
    problems = []
    for name in expected:
        pvc = pvcs.get(name)
        if pvc is None:
            problems.append(f"{name} missing")
            continue
        phase = (pvc.get("status") or {}).get("phase", "Unknown")
        if phase != "Bound":
            sc = (pvc.get("spec") or {}).get("storageClassName") or "default"
            problems.append(f"{name} {phase} (StorageClass {sc})")
    if problems:
        raise CheckFailedError("PVCs not bound: " + ", ".join(problems))
    return f"{len(expected)} bound"


async def check_hpa(ctx: ClusterContext) -> str:
    """HPA x0tta6bl4-controller-hpa targets the controller and can read its metrics."""
    hpa = await ctx.kube.get_or_none(ctx.ns_path("autoscaling/v2", "horizontalpodautoscalers", HPA))
    if hpa is None:
        raise CheckFailedError(f"no HorizontalPodAutoscaler {HPA}")
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if target.get("kind") != "Deployment" or target.get("name") != CONTROLLER:
        raise CheckFailedError(f"{HPA} scales {target.get('kind')}/{target.get('name')}")
    for cond in (hpa.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ScalingActive" and cond.get("status") != "True":
            raise CheckFailedError(
                f"{HPA} cannot scale: {cond.get('reason')}: {cond.get('message', '')}"
            )
    status = hpa.get("status") or {}
    return f"{status.get('currentReplicas', '?')} replicas (min {hpa['spec'].get('minReplicas')})"


async def check_pdbs(ctx: ClusterContext) -> str:
    """PodDisruptionBudgets protect the controller (and etcd)."""
    wanted = [CONTROLLER]
    if await _uses_chart_etcd(ctx):
        wanted.append(ETCD)
    missing = [
        name
        for name in wanted
        if await ctx.kube.get_or_none(ctx.ns_path("policy/v1", "poddisruptionbudgets", name))
        is None
    ]
    if missing:
        raise CheckFailedError("missing PodDisruptionBudgets: " + ", ".join(missing))
    return ", ".join(wanted)


async def check_controller_ready(ctx: ClusterContext) -> str:
    """The controller's /ready answers 200 through its Service."""
    try:
        await ctx.service_text(CONTROLLER_SERVICE, CONTROLLER_PORT, "/ready")
    except KubeError as exc:
        raise CheckFailedError(f"{CONTROLLER_SERVICE}:{CONTROLLER_PORT}/ready: {exc}") from None
    return f"{CONTROLLER_SERVICE}:{CONTROLLER_PORT}"


# --------------------------------------------------------------------------- data plane


async def _mesh(ctx: ClusterContext) -> tuple[Obj, list[Obj], list[Obj]]:
    """The mesh DaemonSet, its pods, and the nodes it should run on."""
    ds = await _workload(ctx, "daemonsets", MESH)
    pods = await _pods(ctx, ds)
    nodes = await ctx.kube.items("/api/v1/nodes")
    pod_spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    eligible = [n for n in nodes if daemonset_eligible(pod_spec, n)]
    return ds, pods, eligible


async def check_mesh_coverage(ctx: ClusterContext) -> str:
    """A ready mesh pod on every node the DaemonSet can schedule to."""
    ds, pods, eligible = await _mesh(ctx)
    status = ds.get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    ready = int(status.get("numberReady") or 0)
    ready_on = {(p.get("spec") or {}).get("nodeName") for p in pods if pod_ready(p)}
    missing = sorted(name_of(n) for n in eligible if name_of(n) not in ready_on)
    if missing or desired != len(eligible) or ready != desired:
        detail = f"; no ready mesh pod on: {', '.join(missing)}" if missing else ""
        raise CheckFailedError(
            f"{MESH}: {len(eligible)} schedulable nodes, {desired} desired, {ready} ready" + detail
        )
    return f"{ready} of {len(eligible)} nodes"


def metric_value(exposition: str, name: str) -> float:
    """The value of the single unlabelled sample ``name`` in a Prometheus exposition."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise KeyError(name)


async def check_mesh_nodes_metric(ctx: ClusterContext) -> str:
    """x0tta6bl4_mesh_nodes_total on the controller equals the number of mesh pods."""
    _, pods, _ = await _mesh(ctx)
    try:
        text = await ctx.service_text(CONTROLLER_SERVICE, CONTROLLER_PORT, "/metrics")
    except KubeError as exc:
        raise CheckFailedError(f"cannot scrape the controller: {exc}") from None
    try:
        value = metric_value(text, "x0tta6bl4_mesh_nodes_total")
    except (KeyError, ValueError):
        raise CheckFailedError(
            "the controller does not export x0tta6bl4_mesh_nodes_total"
        ) from None
    if not math.isfinite(value) or int(value) != len(pods):
        raise CheckFailedError(
            f"x0tta6bl4_mesh_nodes_total is {value:g}, but there are {len(pods)} mesh pods"
        )
    return f"{int(value)} nodes"


def svid_problem(
    what: str, not_before: float | None, not_after: float | None, now: float
) -> str | None:
    """Why an SVID with this validity is not valid-and-rotating at ``now``, else None."""
    if not_after is None:
        return f"{what}: no SVID"
    remaining = not_after - now
    if remaining <= 0:
        return f"{what}: expired {-remaining:.0f} s ago"
    if remaining < SVID_MIN_REMAINING:
        return f"{what}: expires in {remaining:.0f} s and has not been renewed"
    if not_before is not None:
        if not_before > now + 60:
            return f"{what}: not valid before {not_before - now:.0f} s from now"
        lifetime = not_after - not_before
        if lifetime > 0 and (now - not_before) > ROTATION_SLACK * lifetime:
            return (
                f"{what}: issued {now - not_before:.0f} s ago, past {ROTATION_SLACK:.0%} of its "
                f"{lifetime:.0f} s lifetime: renewal is overdue"
            )
    return None


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def _node_statuses(ctx: ClusterContext) -> list[tuple[Obj, dict[str, Any] | str]]:
    """Each mesh pod with its /v1/status JSON, or the reason it could not be read."""
    _, pods, _ = await _mesh(ctx)
    out: list[tuple[Obj, dict[str, Any] | str]] = []
    for pod in pods:
        try:
            data = json.loads(await ctx.pod_text(pod, NODE_HTTP_PORT, "/v1/status"))
        except KubeError as exc:
            out.append((pod, f"{name_of(pod)}: /v1/status: {exc}"))
            continue
        except ValueError:
            out.append((pod, f"{name_of(pod)}: /v1/status is not JSON"))
            continue
        out.append((pod, data if isinstance(data, dict) else f"{name_of(pod)}: bad status"))
    return out


def pq_svid_problem(label: str, status: dict[str, Any], now: float) -> str | None:
    """Why a node's PQ SVID (``pq_svid_not_after`` in /v1/status) is not fine, else None."""
    return svid_problem(
        f"{label} PQ SVID",
        _number(status, "pq_svid_not_before"),
        _number(status, "pq_svid_not_after"),
        now,
    )


def spiffe_problem(label: str, status: dict[str, Any], now: float) -> str | None:
    """Why a node's SPIFFE identity is not working, else None.

    The nodes authenticate to the controller with a JWT-SVID fetched from the Workload API
    for each request, so a node that is registered and whose last report reached the
    controller (``registered`` and ``controller_reachable`` in /v1/status) holds a valid,
    current SVID. If the node also reports ``svid_not_after`` (an X.509-SVID) it is checked
    like a PQ SVID."""
    if status.get("registered") is not True:
        return f"{label}: not registered with the controller (no accepted SVID)"
    if status.get("controller_reachable") is False:
        return f"{label}: its last report to the controller failed"
    if _number(status, "svid_not_after") is not None:
        return svid_problem(
            f"{label} X.509-SVID",
            _number(status, "svid_not_before"),
            _number(status, "svid_not_after"),
            now,
        )
    return None


async def _check_statuses(
    ctx: ClusterContext, judge: Callable[[str, dict[str, Any], float], str | None]
) -> str:
    statuses = await _node_statuses(ctx)
    if not statuses:
        raise CheckFailedError("no mesh pods")
    now = ctx.now()
    problems = []
    for pod, data in statuses:
        if isinstance(data, str):
            problems.append(data)
            continue
        problem = judge(name_of(pod), data, now)
        if problem:
            problems.append(problem)
    if problems:
        raise CheckFailedError("; ".join(problems))
    return f"{len(statuses)} nodes"


async def check_pq_svids(ctx: ClusterContext) -> str:
    """Every mesh node holds a PQ SVID valid for its policy period, renewed on time."""
    return await _check_statuses(ctx, pq_svid_problem)


# --------------------------------------------------------------------------- spire


async def check_spire_agents(ctx: ClusterContext) -> str:
    """A ready SPIRE agent on every node that runs a mesh pod."""
    ds = await _workload(ctx, "daemonsets", SPIRE_AGENT, ctx.spire_namespace)
    agents = await _pods(ctx, ds, ctx.spire_namespace)
    agent_nodes = {(p.get("spec") or {}).get("nodeName") for p in agents if pod_ready(p)}
    _, _, eligible = await _mesh(ctx)
    missing = sorted(name_of(n) for n in eligible if name_of(n) not in agent_nodes)
    if missing:
        raise CheckFailedError("no ready SPIRE agent on: " + ", ".join(missing))
    return f"{len(agent_nodes)} agents"


#: The chart's ClusterSPIFFEIDs (``x0tta6bl4-<namespace>-<role>``) and the pods each selects.
SPIFFE_ROLES = (("controller", CONTROLLER), ("mesh", "x0tta6bl4-mesh"))


async def check_spire_registration(ctx: ClusterContext) -> str:
    """The chart's ClusterSPIFFEIDs (one per principal: controller, mesh nodes) select the
    x0tta6bl4 pods and render their entries."""
    total = 0
    for role, app in SPIFFE_ROLES:
        name = f"x0tta6bl4-{ctx.namespace}-{role}"
        path = f"/apis/spire.spiffe.io/v1alpha1/clusterspiffeids/{name}"
        try:
            cid = await ctx.kube.get(path)
        except KubeNotFoundError:
            raise CheckFailedError(f"no ClusterSPIFFEID {name}") from None
        stats = (cid.get("status") or {}).get("stats") or {}
        pods = await ctx.kube.items(ctx.ns_path("v1", "pods"), {"labelSelector": f"app={app}"})
        selected = int(stats.get("podsSelected") or 0)
        failures = int(stats.get("podEntryRenderFailures") or 0) + int(
            stats.get("entryFailures") or 0
        )
        if failures:
            raise CheckFailedError(f"{name}: {failures} registration entries failed")
        if selected < len(pods):
            raise CheckFailedError(
                f"{name} selects {selected} pods, but there are {len(pods)} {app} pods "
                "(is the SPIRE controller manager running and watching this class?)"
            )
        total += selected
    return f"{total} pods registered"


async def check_spire_svids(ctx: ClusterContext) -> str:
    """Every mesh node's SPIFFE SVID is accepted by the controller (see spiffe_problem)."""
    return await _check_statuses(ctx, spiffe_problem)


# --------------------------------------------------------------------------- monitoring


async def check_scraped(ctx: ClusterContext) -> str:
    """Prometheus scrapes every controller and mesh pod (``up == 1``)."""
    mon = ctx.options.monitoring_namespace
    service = await ctx.kube.get_or_none(ctx.ns_path("v1", "services", "prometheus", mon))
    if service is None:
        raise CheckSkippedError(f"monitoring is off (no Service prometheus in namespace {mon})")
    problems, total = [], 0
    for job, workload in (
        ("x0tta6bl4-controller", ("deployments", CONTROLLER)),
        ("x0tta6bl4-mesh", ("daemonsets", MESH)),
    ):
        pods = await _pods(ctx, await _workload(ctx, *workload))
        try:
            text = await ctx.service_text(
                "prometheus", 9090, "/api/v1/query", ns=mon, query={"query": f'up{{job="{job}"}}'}
            )
            answer = json.loads(text)
        except (KubeError, ValueError) as exc:
            raise CheckFailedError(f"cannot query Prometheus: {exc}") from None
        series = ((answer.get("data") or {}).get("result")) or []
        up = {
            str(s.get("metric", {}).get("pod"))
            for s in series
            if len(s.get("value") or []) == 2 and str(s["value"][1]) == "1"
        }
        missing = sorted(name_of(p) for p in pods if name_of(p) not in up)
        if missing:
            problems.append(f"job {job}: not scraped: {', '.join(missing)}")
        total += len(pods)
    if problems:
        raise CheckFailedError("; ".join(problems))
    return f"{total} targets up"


async def check_controller_tls(ctx: ClusterContext) -> str:
    """From inside the cluster: the controller's API answers over TLS as its SPIFFE ID (the
    check pod presents its own X.509-SVID), and plain HTTP refuses it."""
    from x0tta6bl4.check.mesh import ClusterMesh, MeshError
    from x0tta6bl4.check.tls_probe import TlsProbeError

    try:
        probe = await ClusterMesh(ctx).controller_tls()
    except MeshError as exc:
        raise CheckSkippedError(str(exc)) from None
    except TlsProbeError as exc:
        raise CheckFailedError(str(exc)) from None
    ctx.scratch["controller_tls_group"] = probe.group
    return f"{probe.spiffe_id} over TLS, key exchange {probe.group}"


def post_categories() -> list[Category[ClusterContext]]:
    """The categories of ``--post``, in order."""
    return [
        api_category(),
        Category(
            "x0tta6bl4-control-plane",
            [
                Check(
                    "controller-rollout", "controller rollout is complete", check_controller_rollout
                ),
                Check("pods-ready", "all x0tta6bl4 pods are running and ready", check_pods_ready),
                Check("etcd-ready", "etcd members are ready", check_etcd_ready),
                Check("pvcs-bound", "persistent volume claims are bound", check_pvcs_bound),
                Check("controller-hpa", "controller HPA is in place", check_hpa),
                Check("controller-pdb", "PodDisruptionBudgets are in place", check_pdbs),
                Check("controller-ready", "controller API is ready", check_controller_ready),
                Check(
                    "controller-tls",
                    "controller API is served over TLS only, as its SPIFFE ID",
                    check_controller_tls,
                ),
            ],
        ),
        Category(
            "x0tta6bl4-data-plane",
            [
                Check(
                    "mesh-coverage",
                    "a mesh pod runs on every schedulable node",
                    check_mesh_coverage,
                ),
                Check(
                    "mesh-nodes-metric",
                    "x0tta6bl4_mesh_nodes_total equals the number of mesh pods",
                    check_mesh_nodes_metric,
                ),
                Check("pq-svids", "PQ SVIDs are valid and renewed", check_pq_svids),
            ],
        ),
        Category(
            "spire",
            [
                Check("spire-server", "SPIRE server is running", check_spire_server),
                Check("spire-agents", "a SPIRE agent runs on every mesh node", check_spire_agents),
                Check(
                    "spire-registration",
                    "x0tta6bl4 workloads are registered",
                    check_spire_registration,
                ),
                Check("spire-svids", "SPIFFE SVIDs are valid and rotating", check_spire_svids),
            ],
        ),
        Category(
            "monitoring",
            [
                Check(
                    "metrics-scraped",
                    "Prometheus scrapes the controller and mesh pods",
                    check_scraped,
                    Severity.ERROR,
                ),
            ],
        ),
    ]
