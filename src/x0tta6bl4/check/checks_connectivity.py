"""``x0tta6bl4 check --connectivity``: does traffic flow, and fast enough?

- ``mesh-ping``: every node pings every other node over the mesh (the node's
  ``GET /v1/ping?target=ID&count=N&timeout=S``, answered ``{"sent", "received", "results":
  [{"seq", "rtt_ms"}]}``, 504 when nothing came back); every pair must answer.
  ``mesh-latency``: the p95 of all RTTs against the guide's 10 ms target (a warning: a
  performance target, not a failure of the mesh).
- ``controller-latency``: p95 of :data:`API_SAMPLES` requests to the controller's ``/ready``
  against the guide's 100 ms target (a warning; through the API server's proxy the proxy hop
  is included).
- ``relay-loss``: finds the relays from the nodes' routes and is skipped with the reason: no
  relay (every route direct, as in ``x0tta6bl4 up``'s full mesh), or the relay and how to stop
  it — the check never stops a mesh node it cannot restart.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from x0tta6bl4.check.cluster import ClusterContext
from x0tta6bl4.check.mesh import ClusterMesh, MeshAccess, MeshAuthError, MeshError, MeshNode
from x0tta6bl4.check.model import (
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Severity,
)

__all__ = [
    "API_P95_TARGET_MS",
    "API_SAMPLES",
    "PING_CONCURRENCY",
    "PING_COUNT",
    "PING_P95_TARGET_MS",
    "cluster_connectivity_categories",
    "connectivity_categories",
    "p95",
    "relays_of",
]

PING_P95_TARGET_MS = 10.0
"""The guide's "Network latency <10ms" (Performance Targets)."""
API_P95_TARGET_MS = 100.0
"""The guide's "API response <100ms"."""
PING_COUNT = 5
PING_CONCURRENCY = 4
"""Mesh pings in flight at once (each is a request to the source node's ``/v1/ping``)."""
API_SAMPLES = 40


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank) of ``values``; ValueError when empty."""
    if not values:
        raise ValueError("p95 of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return ordered[rank - 1]


async def _ping_pair(
    mesh: MeshAccess, src: MeshNode, dst: MeshNode
) -> tuple[list[float], str | None]:
    """(RTTs in ms, problem) of one ``src → dst`` mesh ping."""
    where = f"{src.node_id} → {dst.node_id}"
    try:
        text, _ = await mesh.node_get(
            src, "/v1/ping", {"target": dst.node_id, "count": str(PING_COUNT), "timeout": "2"}
        )
        answer: Any = json.loads(text)
        samples = [float(r["rtt_ms"]) for r in answer["results"] if r.get("rtt_ms") is not None]
    except MeshAuthError:
        raise
    except MeshError as exc:
        return [], f"{where}: {exc}"
    except (ValueError, KeyError, TypeError):
        return [], f"{where}: malformed /v1/ping answer"
    return samples, None if samples else f"{where}: no reply"


async def check_mesh_ping(mesh: MeshAccess) -> str:
    """Every ordered pair of nodes answers a mesh ping.

    Nodes whose HTTP API does not answer are reported once (not once per pair: pinging a
    dead node would wait out every ping's timeout); the pairs of the others are pinged,
    :data:`PING_CONCURRENCY` at a time.
    """
    nodes = await mesh.nodes()
    if len(nodes) < 2:
        raise CheckSkippedError(f"{len(nodes)} mesh node(s) known; pings need two")
    problems: list[str] = []
    alive: list[MeshNode] = []
    for node in nodes:
        try:
            await mesh.node_get(node, "/health")
        except MeshError as exc:
            problems.append(f"{node.node_id}: does not answer, no pair with it can work ({exc})")
        else:
            alive.append(node)
    gate = asyncio.Semaphore(PING_CONCURRENCY)

    async def one(src: MeshNode, dst: MeshNode) -> tuple[list[float], str | None]:
        async with gate:
            return await _ping_pair(mesh, src, dst)

    try:
        answers = await asyncio.gather(
            *(one(src, dst) for src in alive for dst in alive if src.node_id != dst.node_id)
        )
    except MeshAuthError as exc:
        raise CheckSkippedError(str(exc)) from None
    rtts = [rtt for samples, _ in answers for rtt in samples]
    problems += [problem for _, problem in answers if problem]
    mesh.measurements["ping_rtts_ms"] = rtts
    if problems:
        raise CheckFailedError("; ".join(problems))
    pairs = len(nodes) * (len(nodes) - 1)
    return f"{pairs} pairs, {len(rtts)} replies"


async def check_mesh_latency(mesh: MeshAccess) -> str:
    """p95 of the mesh RTTs is within the guide's 10 ms."""
    rtts = mesh.measurements.get("ping_rtts_ms")
    if not rtts:
        raise CheckSkippedError("no mesh ping RTTs were measured")
    value = p95(rtts)
    if value > PING_P95_TARGET_MS:
        raise CheckFailedError(
            f"mesh ping p95 is {value:.2f} ms, above the {PING_P95_TARGET_MS:g} ms target"
        )
    return f"p95 {value:.2f} ms over {len(rtts)} pings"


async def check_controller_latency(mesh: MeshAccess) -> str:
    """p95 of the controller's /ready is within the guide's 100 ms."""
    samples: list[float] = []
    for _ in range(API_SAMPLES):
        try:
            _, seconds = await mesh.controller_get("/ready")
        except MeshError as exc:
            raise CheckFailedError(str(exc)) from None
        samples.append(seconds * 1000)
    value = p95(samples)
    if value > API_P95_TARGET_MS:
        raise CheckFailedError(
            f"controller /ready p95 is {value:.1f} ms, above the {API_P95_TARGET_MS:g} ms target"
        )
    return f"p95 {value:.1f} ms over {len(samples)} requests"


def relays_of(statuses: Mapping[str, Any]) -> Counter[str]:
    """How many routes each node relays, from the nodes' ``/v1/status`` documents (a relay
    is any hop of a route's ``path`` other than its destination)."""
    relayed: Counter[str] = Counter()
    for status in statuses.values():
        routes = status.get("routes") if isinstance(status, dict) else None
        for route in routes if isinstance(routes, list) else []:
            if not isinstance(route, dict) or not isinstance(route.get("path"), list):
                continue
            dest = route.get("dest")
            relayed.update(str(hop) for hop in route["path"] if hop != dest)
    return relayed


async def check_relay_loss(mesh: MeshAccess) -> str:
    """Route around a stopped relay. Never stops anything itself: it finds the relays from
    the nodes' routes and says how to run the drill (see docs/checks.md#relay-loss)."""
    nodes = await mesh.nodes()
    if len(nodes) < 3:
        raise CheckSkippedError(
            f"{len(nodes)} mesh node(s) known; a relay needs three "
            "(or the node list is not known for this target)"
        )
    statuses: dict[str, Any] = {}
    for node in nodes:
        try:
            text, _ = await mesh.node_get(node, "/v1/status")
            statuses[node.node_id] = json.loads(text)
        except (MeshError, ValueError):
            continue  # mesh-ping reports unreachable nodes
    relayed = relays_of(statuses)
    if not relayed:
        raise CheckSkippedError(
            f"every route of the {len(statuses)} nodes is direct: no node relays traffic, so "
            "there is no relay to lose (`x0tta6bl4 up --chaos` kills nodes and measures "
            "re-routing)"
        )
    relay, count = relayed.most_common(1)[0]
    raise CheckSkippedError(
        f"{relay} relays {count} route(s); the drill would stop it, and `check` does not stop "
        "mesh nodes it cannot restart: stop it yourself (delete its pod, or SIGKILL its pid "
        "from mesh.json) and run --connectivity again"
    )


def connectivity_categories() -> list[Category[MeshAccess]]:
    """The connectivity categories, over any :class:`MeshAccess`."""
    return [
        Category(
            "connectivity",
            [
                Check("mesh-ping", "every pair of mesh nodes can ping", check_mesh_ping),
                Check(
                    "mesh-latency",
                    "mesh ping p95 is under 10 ms",
                    check_mesh_latency,
                    Severity.WARNING,
                ),
                Check(
                    "controller-latency",
                    "controller API p95 is under 100 ms",
                    check_controller_latency,
                    Severity.WARNING,
                ),
                Check("relay-loss", "traffic survives the loss of a relay", check_relay_loss),
            ],
        )
    ]


def cluster_connectivity_categories() -> list[Category[ClusterContext]]:
    """``--connectivity`` against a cluster: the API reachability check, then the mesh
    checks over a :class:`ClusterMesh` built from the check's ClusterContext."""
    from x0tta6bl4.check.checks_pre import api_category

    def adapt(check: Check[MeshAccess]) -> Check[ClusterContext]:
        async def run(ctx: ClusterContext) -> str | None:
            mesh = ctx.scratch.get("mesh")
            if mesh is None:
                mesh = ctx.scratch["mesh"] = ClusterMesh(ctx)
            return await check.fn(mesh)

        return Check(check.anchor, check.description, run, check.severity, check.retry)

    from x0tta6bl4.check.checks_post import check_mesh_coverage

    cats: list[Category[ClusterContext]] = [api_category()]
    for index, cat in enumerate(connectivity_categories()):
        checks = [adapt(c) for c in cat.checks]
        if index == 0:
            # Pairs of the pods there are prove nothing about a node without one.
            coverage = Check("mesh-coverage", "a mesh pod runs on every node", check_mesh_coverage)
            checks.insert(0, coverage)
        cats.append(Category(cat.name, checks))
    return cats
