"""``x0tta6bl4 check --pre``: is this cluster ready for the chart?

The guide's prerequisites and the "Pre-Deployment" part of its Production Checklist: API
reachable, Kubernetes ≥ 1.28, nodes Ready, RBAC allows creating what the chart creates
(SelfSubjectAccessReview), NetworkPolicy API, metrics API (HPA), StorageClass, namespaces,
quota headroom, SPIRE server and CRDs. Each check's anchor is its section in docs/checks.md.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from cryptography import x509

from x0tta6bl4.check.cluster import ClusterContext
from x0tta6bl4.check.kube import KubeError, KubeNotFoundError
from x0tta6bl4.check.kubeobj import condition_true, name_of, parse_quantity
from x0tta6bl4.check.model import Category, Check, CheckFailedError, CheckSkippedError, Severity

__all__ = [
    "BUNDLE_CONFIGMAP",
    "CHART_REQUESTS",
    "MIN_VERSION",
    "RBAC_NEEDS",
    "check_api",
    "check_version",
    "pre_categories",
]

MIN_VERSION = (1, 28)
"""The oldest Kubernetes the chart installs on (Chart.yaml ``kubeVersion: >=1.28.0-0``)."""

RBAC_NEEDS: tuple[tuple[str, str, str], ...] = (
    # (API group, resource, where: "release" | "monitoring" | "cluster")
    ("", "serviceaccounts", "release"),
    ("", "services", "release"),
    ("", "pods", "release"),
    ("", "resourcequotas", "release"),
    ("", "persistentvolumeclaims", "release"),
    ("apps", "deployments", "release"),
    ("apps", "statefulsets", "release"),
    ("apps", "daemonsets", "release"),
    ("autoscaling", "horizontalpodautoscalers", "release"),
    ("policy", "poddisruptionbudgets", "release"),
    ("networking.k8s.io", "networkpolicies", "release"),
    ("rbac.authorization.k8s.io", "roles", "release"),
    ("rbac.authorization.k8s.io", "rolebindings", "release"),
    ("rbac.authorization.k8s.io", "clusterroles", "cluster"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "cluster"),
)
"""What ``helm install`` of the chart creates (verb ``create``), always."""

_RBAC_SPIFFE = (("spire.spiffe.io", "clusterspiffeids", "cluster"),)
_RBAC_INGRESS = (("networking.k8s.io", "ingresses", "release"),)
_RBAC_VPA = (("autoscaling.k8s.io", "verticalpodautoscalers", "release"),)
_RBAC_PROMETHEUS = (
    ("", "serviceaccounts", "monitoring"),
    ("", "configmaps", "monitoring"),
    ("", "services", "monitoring"),
    ("apps", "deployments", "monitoring"),
)
_RBAC_OPERATOR = (
    ("", "configmaps", "monitoring"),
    ("monitoring.coreos.com", "servicemonitors", "monitoring"),
    ("monitoring.coreos.com", "prometheusrules", "monitoring"),
)

CHART_REQUESTS: dict[str, tuple[Decimal, Decimal]] = {
    # component: (CPU cores, memory bytes) requested per pod by the chart's defaults
    "controller": (Decimal("0.5"), Decimal(512 * 1024**2)),
    "etcd": (Decimal("0.25"), Decimal(512 * 1024**2)),
    "mesh": (Decimal("0.5"), Decimal(512 * 1024**2)),
    "check": (Decimal("0.1"), Decimal(128 * 1024**2)),
}
"""Requests of one pod of each chart component (values.yaml / values-staging.yaml)."""
CHART_CONTROLLERS = 3
CHART_ETCD_MEMBERS = 3

BUNDLE_CONFIGMAP = "spire-bundle"
"""Where SPIRE's server publishes its trust bundle (its k8sbundle notifier, key ``bundle.crt``):
the name both charts/x0tta6bl4-spire and the official spiffe/spire chart use."""

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


# --------------------------------------------------------------------------- kubernetes-api


async def check_api(ctx: ClusterContext) -> str:
    """The API server answers /version."""
    try:
        version = await ctx.kube.get("/version")
    except KubeError as exc:
        raise CheckFailedError(str(exc)) from None
    return f"{ctx.kube.host}, {version.get('gitVersion', 'unknown version')}"


async def check_version(ctx: ClusterContext) -> str:
    """Kubernetes is at least :data:`MIN_VERSION`."""
    version = await ctx.kube.get("/version")
    git = str(version.get("gitVersion", ""))
    match = _VERSION.match(git)
    if match is None:
        major, minor = str(version.get("major", "")), str(version.get("minor", ""))
        match = _VERSION.match(f"{major}.{minor.rstrip('+')}")
    if match is None:
        raise CheckFailedError(f"cannot read the Kubernetes version from /version ({git!r:.40})")
    have = (int(match.group(1)), int(match.group(2)))
    if have < MIN_VERSION:
        raise CheckFailedError(
            f"Kubernetes {git or '.'.join(map(str, have))} is older than "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]}, the oldest version the chart supports"
        )
    return git


async def check_nodes_ready(ctx: ClusterContext) -> str:
    """Every node is Ready (the guide's `kubectl get nodes`)."""
    nodes = await ctx.kube.items("/api/v1/nodes")
    if not nodes:
        raise CheckFailedError("the cluster has no nodes")
    bad = [name_of(n) for n in nodes if not condition_true(n, "Ready")]
    if bad:
        raise CheckFailedError(f"{len(bad)} of {len(nodes)} nodes are not Ready: {', '.join(bad)}")
    return f"{len(nodes)} nodes"


# --------------------------------------------------------------------------- kubernetes-setup


def _rbac_needs(ctx: ClusterContext) -> list[tuple[str, str, str]]:
    opts = ctx.options
    needs = list(RBAC_NEEDS)
    if opts.spiffe:
        needs += _RBAC_SPIFFE
    if opts.ingress:
        needs += _RBAC_INGRESS
    if opts.vpa:
        needs += _RBAC_VPA
    if opts.monitoring:
        needs += _RBAC_OPERATOR if opts.monitoring_mode == "operator" else _RBAC_PROMETHEUS
    return needs


async def check_rbac(ctx: ClusterContext) -> str:
    """SelfSubjectAccessReview ``create`` for every kind the chart installs."""
    denied: list[str] = []
    needs = _rbac_needs(ctx)
    for group, resource, where in needs:
        ns = {
            "release": ctx.namespace,
            "monitoring": ctx.options.monitoring_namespace,
            "cluster": None,
        }[where]
        allowed, _reason = await ctx.kube.can_i("create", group, resource, ns)
        if not allowed:
            kind = f"{resource}.{group}" if group else resource
            denied.append(f"{kind} in {ns}" if ns else kind)
    if denied:
        raise CheckFailedError("not allowed to create: " + ", ".join(denied))
    return f"{len(needs)} permissions"


async def _groups(ctx: ClusterContext) -> dict[str, list[str]]:
    listing = await ctx.kube.get("/apis")
    groups: dict[str, list[str]] = {}
    for group in listing.get("groups") or []:
        versions = [str(v.get("version")) for v in group.get("versions") or []]
        groups[str(group.get("name"))] = versions
    return groups


async def check_networkpolicy_api(ctx: ClusterContext) -> str:
    """networking.k8s.io/v1 (NetworkPolicy) is served."""
    groups = await _groups(ctx)
    if "v1" not in groups.get("networking.k8s.io", []):
        raise CheckFailedError("the API group networking.k8s.io/v1 (NetworkPolicy) is not served")
    resources = await ctx.kube.get("/apis/networking.k8s.io/v1")
    names = {r.get("name") for r in resources.get("resources") or []}
    if "networkpolicies" not in names:
        raise CheckFailedError("networking.k8s.io/v1 does not serve networkpolicies")
    return (
        "served (enforcement depends on the CNI: "
        "Calico, Cilium and others enforce, Flannel alone does not)"
    )


async def check_metrics_api(ctx: ClusterContext) -> str:
    """metrics.k8s.io is registered and answers (metrics-server, for the HPA)."""
    groups = await _groups(ctx)
    versions = groups.get("metrics.k8s.io")
    if not versions:
        raise CheckFailedError(
            "the metrics API (metrics.k8s.io) is not registered: install metrics-server"
        )
    try:
        nodes = await ctx.kube.items(f"/apis/metrics.k8s.io/{versions[0]}/nodes")
    except KubeError as exc:
        raise CheckFailedError(
            f"the metrics API is registered but does not answer: {exc}"
        ) from None
    if not nodes:
        raise CheckFailedError("the metrics API answers but has no node metrics yet")
    return f"metrics for {len(nodes)} nodes"


async def check_storageclass(ctx: ClusterContext) -> str:
    """The StorageClass the PVCs use exists (the named one, or a default one)."""
    if not ctx.options.persistence and ctx.options.store_mode == "external":
        raise CheckSkippedError("no PersistentVolumeClaims (external store)")
    classes = await ctx.kube.items("/apis/storage.k8s.io/v1/storageclasses")
    names = [name_of(c) for c in classes]
    wanted = ctx.options.storage_class
    if wanted:
        if wanted not in names:
            raise CheckFailedError(
                f"StorageClass {wanted!r} (x0tta6bl4.persistence.storageClass) does not exist; "
                f"have: {', '.join(names) or 'none'}"
            )
        return wanted
    default = [
        name_of(c)
        for c in classes
        if ((c.get("metadata") or {}).get("annotations") or {}).get(
            "storageclass.kubernetes.io/is-default-class"
        )
        == "true"
    ]
    if not default:
        raise CheckFailedError(
            f"no default StorageClass, and x0tta6bl4.persistence.storageClass is not set; "
            f"have: {', '.join(names) or 'none'}"
        )
    return f"default {default[0]}"


async def check_namespaces(ctx: ClusterContext) -> str:
    """The release, monitoring and SPIRE namespaces exist."""
    wanted = [ctx.namespace, ctx.spire_namespace]
    if ctx.options.monitoring:
        wanted.append(ctx.options.monitoring_namespace)
    else:
        wanted.append("monitoring")
    missing = []
    for ns in dict.fromkeys(wanted):
        if await ctx.kube.get_or_none(f"/api/v1/namespaces/{ns}") is None:
            missing.append(ns)
    if missing:
        raise CheckFailedError(f"missing namespaces: {', '.join(missing)}")
    return ", ".join(dict.fromkeys(wanted))


def install_needs(mesh_nodes: int) -> dict[str, Decimal]:
    """What the chart's pods request in the release namespace with ``mesh_nodes`` nodes."""
    counts = {
        "controller": CHART_CONTROLLERS,
        "etcd": CHART_ETCD_MEMBERS,
        "mesh": mesh_nodes,
        "check": 1,
    }
    cpu = sum((CHART_REQUESTS[c][0] * n for c, n in counts.items()), Decimal(0))
    memory = sum((CHART_REQUESTS[c][1] * n for c, n in counts.items()), Decimal(0))
    return {
        "pods": Decimal(sum(counts.values())),
        "requests.cpu": cpu,
        "requests.memory": memory,
        "persistentvolumeclaims": Decimal(CHART_ETCD_MEMBERS),
    }


async def check_quota(ctx: ClusterContext) -> str:
    """Every ResourceQuota of the namespace has room for the chart's pods."""
    quotas = await ctx.kube.items(ctx.ns_path("v1", "resourcequotas"))
    if not quotas:
        return "no ResourceQuota yet (the chart creates x0tta6bl4-quota)"
    nodes = await ctx.kube.items("/api/v1/nodes")
    needs = install_needs(len(nodes))
    short: list[str] = []
    for quota in quotas:
        status = quota.get("status") or {}
        hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
        used = status.get("used") or {}
        for resource, need in needs.items():
            if resource not in hard:
                continue
            room = parse_quantity(hard[resource]) - parse_quantity(used.get(resource, "0"))
            if room < need:
                short.append(
                    f"{name_of(quota)}: {resource} has {room.normalize()} left, "
                    f"the install needs {need.normalize()}"
                )
    if short:
        raise CheckFailedError("; ".join(short))
    return f"{len(quotas)} quota(s), room for {needs['pods']} pods"


# --------------------------------------------------------------------------- spire


async def check_spire_server(ctx: ClusterContext) -> str:
    """StatefulSet spire-server in the SPIRE namespace has ready replicas."""
    if not ctx.options.spiffe:
        raise CheckSkippedError("x0tta6bl4.spiffe.enabled is false")
    path = ctx.ns_path("apps/v1", "statefulsets", "spire-server", ctx.spire_namespace)
    try:
        sts = await ctx.kube.get(path)
    except KubeNotFoundError:
        raise CheckFailedError(
            f"no StatefulSet spire-server in namespace {ctx.spire_namespace}: install SPIRE first"
        ) from None
    want = int((sts.get("spec") or {}).get("replicas", 1))
    ready = int((sts.get("status") or {}).get("readyReplicas") or 0)
    if ready == 0:
        raise CheckFailedError(f"spire-server has no ready replica (0 of {want})")
    if ready < want:
        raise CheckFailedError(f"spire-server has {ready} of {want} replicas ready")
    return f"{ready} of {want} ready"


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(sans.get_values_for_type(x509.UniformResourceIdentifier))


async def check_spire_trust_domain(ctx: ClusterContext) -> str:
    """SPIRE serves the mesh's trust domain: the bundle its server publishes (ConfigMap
    spire-bundle) holds a currently valid CA whose SPIFFE ID is ``spiffe://<trust domain>``."""
    if not ctx.options.spiffe:
        raise CheckSkippedError("x0tta6bl4.spiffe.enabled is false")
    td = ctx.options.trust_domain
    path = ctx.ns_path("v1", "configmaps", BUNDLE_CONFIGMAP, ctx.spire_namespace)
    try:
        cm = await ctx.kube.get(path)
    except KubeNotFoundError:
        raise CheckFailedError(
            f"no ConfigMap {BUNDLE_CONFIGMAP} in namespace {ctx.spire_namespace}: install SPIRE "
            "(charts/x0tta6bl4-spire) and let its server start"
        ) from None
    pem = str((cm.get("data") or {}).get("bundle.crt") or "")
    if "BEGIN CERTIFICATE" not in pem:
        raise CheckFailedError(
            f"{BUNDLE_CONFIGMAP} holds no bundle yet: the SPIRE server has not published its CA"
        )
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise CheckFailedError(f"{BUNDLE_CONFIGMAP}: bundle.crt is not valid PEM") from None
    want = f"spiffe://{td}"
    ours = [c for c in certs if want in _spiffe_uris(c)]
    if not ours:
        found = sorted({u for c in certs for u in _spiffe_uris(c)}) or ["no SPIFFE ID"]
        raise CheckFailedError(
            f"SPIRE serves {', '.join(found)}, not {want}: install SPIRE with "
            f"global.spire.trustDomain={td} (or set x0tta6bl4.spiffe.trustDomain to match)"
        )
    now = dt.datetime.fromtimestamp(ctx.now(), dt.UTC)
    current = [c for c in ours if c.not_valid_before_utc <= now <= c.not_valid_after_utc]
    if not current:
        raise CheckFailedError(f"every CA of {want} in SPIRE's bundle is expired or not yet valid")
    until = max(c.not_valid_after_utc for c in current)
    return f"{len(current)} CA(s) of {want}, valid until {until:%Y-%m-%d %H:%M} UTC"


async def check_spire_crds(ctx: ClusterContext) -> str:
    """The SPIRE controller manager's ClusterSPIFFEID API (spire.spiffe.io) is served."""
    if not ctx.options.spiffe:
        raise CheckSkippedError("x0tta6bl4.spiffe.enabled is false")
    groups = await _groups(ctx)
    if "spire.spiffe.io" not in groups:
        raise CheckFailedError(
            "the API group spire.spiffe.io is not served: install the spire-crds chart"
        )
    return ", ".join(groups["spire.spiffe.io"])


def api_category() -> Category[ClusterContext]:
    """The fatal reachability check and the version check (shared with --post)."""
    return Category(
        "kubernetes-api",
        [
            Check("k8s-api", "can reach the Kubernetes API", check_api, Severity.FATAL),
            Check(
                "k8s-version",
                "Kubernetes version is 1.28 or newer",
                check_version,
                Severity.ERROR,
                retry=False,
            ),
        ],
    )


def pre_categories() -> list[Category[ClusterContext]]:
    """The categories of ``--pre``, in order."""
    return [
        api_category(),
        Category(
            "kubernetes-setup",
            [
                Check("k8s-nodes", "all nodes are Ready", check_nodes_ready),
                Check("k8s-rbac", "can create the chart's resources (RBAC)", check_rbac),
                Check(
                    "k8s-networkpolicy",
                    "NetworkPolicy API is served",
                    check_networkpolicy_api,
                ),
                Check("k8s-metrics-api", "metrics API is available for the HPA", check_metrics_api),
                Check("k8s-storageclass", "StorageClass for the PVCs exists", check_storageclass),
                Check("k8s-namespaces", "namespaces exist", check_namespaces),
                Check("k8s-quota", "resource quota has room for the install", check_quota),
            ],
        ),
        Category(
            "spire",
            [
                Check("spire-server", "SPIRE server is running", check_spire_server),
                Check(
                    "spire-trust-domain",
                    "SPIRE serves the mesh's trust domain",
                    check_spire_trust_domain,
                ),
                Check("spire-crds", "SPIRE ClusterSPIFFEID API is served", check_spire_crds),
            ],
        ),
    ]
