"""``x0tta6bl4 check --local``: the checks that apply to a mesh without Kubernetes.

Against a running ``x0tta6bl4 up``'s state directory (controller and node URLs from its
``mesh.json``, :mod:`x0tta6bl4.local.descriptor`) or a bare controller URL. With a URL the
nodes are found through the controller's public ``/ui/topology.json`` (``nodes-reporting``),
but the controller does not know the nodes' HTTP addresses, so the checks that talk to the
nodes themselves are skipped with that reason. ``--post`` (the default) runs the health
checks below, ``--connectivity`` the connectivity checks. With ``--wait`` the descriptor of
an ``up`` that is still starting is waited for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from x0tta6bl4.check.checks_connectivity import connectivity_categories
from x0tta6bl4.check.checks_post import metric_value, pq_svid_problem, spiffe_problem
from x0tta6bl4.check.mesh import LocalMesh, MeshAccess, MeshError, load_local
from x0tta6bl4.check.model import (
    Category,
    Check,
    CheckFailedError,
    CheckSkippedError,
    Severity,
)
from x0tta6bl4.check.runner import run_categories
from x0tta6bl4.check.tls_probe import PQ_GROUP, TlsProbeError
from x0tta6bl4.local.descriptor import UpNotRunningError

__all__ = ["NO_NODE_URLS", "load_waiting", "local_categories", "run_local"]


async def check_controller_health(mesh: MeshAccess) -> str:
    """The controller answers /health."""
    try:
        await mesh.controller_get("/health")
    except MeshError as exc:
        raise CheckFailedError(str(exc)) from None
    return "ok"


async def check_controller_ready(mesh: MeshAccess) -> str:
    """The controller answers /ready (its store is reachable)."""
    try:
        await mesh.controller_get("/ready")
    except MeshError as exc:
        raise CheckFailedError(str(exc)) from None
    return "ok"


NO_NODE_URLS = (
    "the controller's API does not give the nodes' HTTP addresses; run it with the state "
    "directory of `x0tta6bl4 up` (the `check` line up prints) to check the nodes themselves"
)


async def _known_nodes(mesh: MeshAccess) -> list[Any]:
    nodes = await mesh.nodes()
    if not nodes:
        raise CheckSkippedError(NO_NODE_URLS)
    return nodes


async def check_nodes_reporting(mesh: MeshAccess) -> str:
    """Every node registered with the controller reports its status (the controller's public
    ``/ui/topology.json``: ``state`` is ``up`` within 15 s of a report); when the node list
    is known (the state directory), every node of it is registered."""
    try:
        text, _ = await mesh.controller_get("/ui/topology.json")
        registered = {str(n["node_id"]): str(n["state"]) for n in json.loads(text)["nodes"]}
    except MeshError as exc:
        raise CheckFailedError(str(exc)) from None
    except (ValueError, KeyError, TypeError):
        raise CheckFailedError("the controller's /ui/topology.json is malformed") from None
    problems = [f"{node}: {state}" for node, state in sorted(registered.items()) if state != "up"]
    expected = {node.node_id for node in await mesh.nodes()}
    missing = sorted(expected - set(registered))
    if missing:
        problems.append("not registered: " + ", ".join(missing))
    if problems:
        raise CheckFailedError(
            f"{len(registered)} nodes registered; not reporting: " + "; ".join(problems)
        )
    if not registered:
        raise CheckSkippedError("no node is registered with the controller")
    return f"{len(registered)} nodes reporting"


async def check_nodes_ready(mesh: MeshAccess) -> str:
    """Every node answers /ready (registered and linked)."""
    nodes = await _known_nodes(mesh)
    bad = []
    for node in nodes:
        try:
            await mesh.node_get(node, "/ready")
        except MeshError as exc:
            bad.append(f"{node.node_id}: {exc}")
    if bad:
        raise CheckFailedError(f"{len(bad)} of {len(nodes)} nodes not ready: " + "; ".join(bad))
    return f"{len(nodes)} nodes"


async def check_nodes_metric(mesh: MeshAccess) -> str:
    """x0tta6bl4_mesh_nodes_total equals the number of nodes of the mesh."""
    try:
        text, _ = await mesh.controller_get("/metrics")
        value = metric_value(text, "x0tta6bl4_mesh_nodes_total")
    except MeshError as exc:
        raise CheckFailedError(str(exc)) from None
    except (KeyError, ValueError):
        raise CheckFailedError(
            "the controller does not export x0tta6bl4_mesh_nodes_total"
        ) from None
    nodes = await mesh.nodes()
    if not nodes:
        return f"{value:g} registered (node list unknown)"
    if value != len(nodes):
        raise CheckFailedError(
            f"x0tta6bl4_mesh_nodes_total is {value:g}, but the mesh has {len(nodes)} nodes"
        )
    return f"{value:g} nodes"


async def _judge_nodes(
    mesh: MeshAccess, judge: Callable[[str, dict[str, Any], float], str | None]
) -> str:
    nodes = await _known_nodes(mesh)
    problems = []
    now = mesh.now()
    for node in nodes:
        try:
            text, _ = await mesh.node_get(node, "/v1/status")
            data = json.loads(text)
        except MeshError as exc:
            problems.append(f"{node.node_id}: {exc}")
            continue
        except ValueError:
            problems.append(f"{node.node_id}: /v1/status is not JSON")
            continue
        problem = judge(node.node_id, data if isinstance(data, dict) else {}, now)
        if problem:
            problems.append(problem)
    if problems:
        raise CheckFailedError("; ".join(problems))
    return f"{len(nodes)} nodes"


async def check_pq_svids(mesh: MeshAccess) -> str:
    """Every node holds a valid PQ SVID, renewed on time."""
    return await _judge_nodes(mesh, pq_svid_problem)


async def check_spiffe_svids(mesh: MeshAccess) -> str:
    """Every node's SPIFFE SVID is accepted by the controller."""
    return await _judge_nodes(mesh, spiffe_problem)


async def check_controller_tls(mesh: MeshAccess) -> str:
    """The API is served over TLS by the controller's SPIFFE ID (post-quantum key exchange),
    and plain HTTP refuses it."""
    try:
        probe = await mesh.controller_tls()
    except MeshError as exc:
        raise CheckSkippedError(str(exc)) from None
    except TlsProbeError as exc:
        raise CheckFailedError(str(exc)) from None
    mesh.measurements["controller_tls_group"] = probe.group
    return f"{probe.spiffe_id} over TLS (plain HTTP refuses the API)"


async def check_controller_tls_pq(mesh: MeshAccess) -> str:
    """The control channel's key exchange is the post-quantum hybrid X25519MLKEM768."""
    group = mesh.measurements.get("controller_tls_group")
    if group is None:
        raise CheckSkippedError("the TLS listener was not reached (see controller-tls)")
    if group != PQ_GROUP:
        raise CheckFailedError(
            f"the key exchange is {group}, not the hybrid {PQ_GROUP}: this side or the "
            "controller runs on an OpenSSL without ML-KEM"
        )
    return str(group)


def local_categories() -> list[Category[MeshAccess]]:
    """The health categories of ``--local``."""
    return [
        Category(
            "x0tta6bl4-control-plane",
            [
                Check(
                    "controller-health",
                    "controller answers /health",
                    check_controller_health,
                    Severity.FATAL,
                ),
                Check("controller-ready", "controller API is ready", check_controller_ready),
                Check(
                    "controller-tls",
                    "controller API is served over TLS only, as its SPIFFE ID",
                    check_controller_tls,
                ),
                Check(
                    "controller-tls-pq",
                    "controller TLS key exchange is post-quantum (X25519MLKEM768)",
                    check_controller_tls_pq,
                    Severity.WARNING,
                ),
                Check(
                    "mesh-nodes-metric",
                    "x0tta6bl4_mesh_nodes_total equals the number of mesh nodes",
                    check_nodes_metric,
                ),
            ],
        ),
        Category(
            "x0tta6bl4-data-plane",
            [
                Check(
                    "nodes-reporting",
                    "every registered node reports to the controller",
                    check_nodes_reporting,
                ),
                Check("nodes-ready", "every mesh node is ready", check_nodes_ready),
                Check("pq-svids", "PQ SVIDs are valid and renewed", check_pq_svids),
                Check("spire-svids", "SPIFFE SVIDs are valid and rotating", check_spiffe_svids),
            ],
        ),
    ]


async def load_waiting(target: str, wait: float, interval: float = 0.5) -> LocalMesh:
    """:func:`load_local`, retried while ``up`` is still starting and ``wait`` allows."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return load_local(target)
        except UpNotRunningError as exc:
            if not exc.starting or time.monotonic() + interval > deadline:
                raise
        await asyncio.sleep(interval)


async def run_local(target: str, mode: str, out: TextIO, output: str, wait: float) -> int:
    """Run the local checks for ``mode`` ("post" or "connectivity") on ``target``."""
    mesh = await load_waiting(target, wait)
    try:
        categories = local_categories() if mode == "post" else connectivity_categories()
        report = await run_categories(categories, mesh, out, output=output, wait=wait)
    finally:
        await mesh.close()
    return report.exit_code()
