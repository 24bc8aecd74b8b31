"""``x0tta6bl4 check --connectivity``: does traffic flow, and fast enough?

- ``mesh-ping``: every node pings every other node over the mesh (the node's
  ``GET /v1/ping?target=ID&count=N&timeout=S``, answered ``{"sent", "received", "results":
  [{"seq", "rtt_ms"}]}``, 504 when nothing came back); every pair must answer.
  ``mesh-latency``: the p95 of all RTTs against the guide's 10 ms target (a warning: a
  performance target, not a failure of the mesh).
- ``controller-latency``: p95 of :data:`API_SAMPLES` requests to the controller's ``/ready``
  against the guide's 100 ms target (a warning; through the API server's proxy the proxy hop
  is included).
- ``relay-loss``: stopping a relay needs control over the nodes' processes, which only a
  local mesh started by ``x0tta6bl4 up`` would give; elsewhere it is skipped with that reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from x0tta6bl4.check.cluster import ClusterContext
from x0tta6bl4.check.mesh import ClusterMesh, MeshAccess, MeshError
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
    "PING_COUNT",
    "PING_P95_TARGET_MS",
    "cluster_connectivity_categories",
    "connectivity_categories",
    "p95",
]

PING_P95_TARGET_MS = 10.0
"""The guide's "Network latency <10ms" (Performance Targets)."""
API_P95_TARGET_MS = 100.0
"""The guide's "API response <100ms"."""
PING_COUNT = 5
API_SAMPLES = 40


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (nearest rank) of ``values``; ValueError when empty."""
    if not values:
        raise ValueError("p95 of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return ordered[rank - 1]


async def check_mesh_ping(mesh: MeshAccess) -> str:
    """Every ordered pair of nodes answers a mesh ping."""
    nodes = await mesh.nodes()
    if len(nodes) < 2:
        raise CheckSkippedError(f"{len(nodes)} mesh node(s) known; pings need two")
    rtts: list[float] = []
    problems: list[str] = []
    for src in nodes:
        for dst in nodes:
            if src.node_id == dst.node_id:
                continue
            try:
                text, _ = await mesh.node_get(
                    src,
                    "/v1/ping",
                    {"target": dst.node_id, "count": str(PING_COUNT), "timeout": "2"},
                )
                answer: Any = json.loads(text)
                samples = [
                    float(r["rtt_ms"]) for r in answer["results"] if r.get("rtt_ms") is not None
                ]
            except MeshError as exc:
                problems.append(f"{src.node_id} → {dst.node_id}: {exc}")
                continue
            except (ValueError, KeyError, TypeError):
                problems.append(f"{src.node_id} → {dst.node_id}: malformed /v1/ping answer")
                continue
            if not samples:
                problems.append(f"{src.node_id} → {dst.node_id}: no reply")
            rtts += samples
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


async def check_relay_loss(mesh: MeshAccess) -> str:
    """Route around a stopped relay (needs a mesh whose node processes the check controls)."""
    raise CheckSkippedError(
        "the drill stops a relay node, which needs control of the node processes "
        "(a local mesh from `x0tta6bl4 up`); not available for this target"
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

    cats: list[Category[ClusterContext]] = [api_category()]
    for cat in connectivity_categories():
        cats.append(Category(cat.name, [adapt(c) for c in cat.checks]))
    return cats
