"""What ``up`` sees of the mesh: each node's own ``/ready`` and ``/v1/status``, and mesh pings.

Everything here asks the nodes themselves (their HTTP API, runtime contract port 7811), never
the controller: a pair ``a → b`` is *routed* when ``a``'s routing table has ``b``, and
*reachable* when a mesh ping from ``a`` to ``b`` (``GET /v1/ping`` on ``a``, an end-to-end
encrypted echo over the mesh) comes back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "LinkView",
    "NodeView",
    "PairCheck",
    "fetch_node",
    "fetch_nodes",
    "ping_pairs",
    "routed_pairs",
]


@dataclass(frozen=True)
class LinkView:
    """One neighbour link as a node reports it."""

    peer: str
    state: str
    rtt_ms: float | None


@dataclass(frozen=True)
class NodeView:
    """One node's answer (``error`` set and the rest empty when it did not answer)."""

    node_id: str
    ready: bool = False
    reason: str = ""
    error: str | None = None
    links: tuple[LinkView, ...] = ()
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sessions: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    overlay_ip: str | None = None

    @property
    def up_links(self) -> int:
        return sum(1 for link in self.links if link.state == "up")

    def link(self, peer: str) -> LinkView | None:
        """The link to ``peer``, if this node has one."""
        for link in self.links:
            if link.peer == peer:
                return link
        return None


def _parse_status(node_id: str, ready: bool, reason: str, body: Mapping[str, Any]) -> NodeView:
    links = tuple(
        LinkView(
            peer=str(item.get("peer", "?")),
            state=str(item.get("state", "?")),
            rtt_ms=item.get("rtt_ms") if isinstance(item.get("rtt_ms"), int | float) else None,
        )
        for item in body.get("links", ())
        if isinstance(item, Mapping)
    )
    routes: dict[str, tuple[str, ...]] = {}
    for item in body.get("routes", ()):
        if isinstance(item, Mapping) and isinstance(item.get("dest"), str):
            path = item.get("path")
            routes[item["dest"]] = tuple(str(p) for p in path) if isinstance(path, list) else ()
    sessions = sum(
        1 for s in body.get("sessions", ()) if isinstance(s, Mapping) and s.get("established")
    )
    raw_counters = body.get("counters")
    counters = (
        {str(k): int(v) for k, v in raw_counters.items() if isinstance(v, int)}
        if isinstance(raw_counters, Mapping)
        else {}
    )
    overlay = body.get("overlay_ip")
    return NodeView(
        node_id=node_id,
        ready=ready,
        reason=reason,
        links=links,
        routes=routes,
        sessions=sessions,
        counters=counters,
        overlay_ip=overlay if isinstance(overlay, str) else None,
    )


async def fetch_node(
    client: httpx.AsyncClient, node_id: str, base_url: str, *, timeout: float = 2.0
) -> NodeView:
    """``/ready`` and ``/v1/status`` of one node."""
    try:
        ready_answer = await client.get(f"{base_url}/ready", timeout=timeout)
        status_answer = await client.get(f"{base_url}/v1/status", timeout=timeout)
        status_answer.raise_for_status()
        body = status_answer.json()
        reason = ""
        try:
            reason = str(ready_answer.json().get("reason", ""))
        except ValueError:
            reason = ready_answer.text[:80]
    except (httpx.HTTPError, ValueError) as err:
        return NodeView(node_id=node_id, error=type(err).__name__)
    if not isinstance(body, Mapping):
        return NodeView(node_id=node_id, error="status is not a JSON object")
    return _parse_status(node_id, ready_answer.status_code == 200, reason, body)


async def fetch_nodes(
    client: httpx.AsyncClient, urls: Mapping[str, str], *, timeout: float = 2.0
) -> dict[str, NodeView]:
    """:func:`fetch_node` for every ``node_id → base URL``, concurrently."""
    views = await asyncio.gather(
        *(fetch_node(client, node_id, url, timeout=timeout) for node_id, url in urls.items())
    )
    return {view.node_id: view for view in views}


def routed_pairs(views: Mapping[str, NodeView], among: Iterable[str]) -> tuple[int, int]:
    """(ordered pairs of ``among`` whose source has a route to the destination, all pairs)."""
    names = list(among)
    total = len(names) * (len(names) - 1)
    routed = sum(
        1
        for a, b in itertools.permutations(names, 2)
        if a in views and views[a].error is None and b in views[a].routes
    )
    return routed, total


@dataclass(frozen=True)
class PairCheck:
    """Result of mesh pings between every ordered pair."""

    reachable: int
    total: int
    failed: tuple[tuple[str, str], ...]
    rtt_ms: Mapping[tuple[str, str], float]


async def _ping_once(
    client: httpx.AsyncClient, base_url: str, target: str, timeout: float
) -> float | None:
    try:
        answer = await client.get(
            f"{base_url}/v1/ping",
            params={"target": target, "count": "1", "timeout": f"{timeout:g}"},
            timeout=timeout + 3.0,
        )
        body = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    if answer.status_code != 200 or not isinstance(body, Mapping):
        return None
    for result in body.get("results", ()):
        if isinstance(result, Mapping) and isinstance(result.get("rtt_ms"), int | float):
            return float(result["rtt_ms"])
    return None


async def ping_pairs(
    client: httpx.AsyncClient,
    urls: Mapping[str, str],
    *,
    timeout: float = 5.0,
    deadline: float = 60.0,
    concurrency: int = 4,
) -> PairCheck:
    """Mesh-ping every ordered pair of ``urls`` (node id → base URL).

    Pairs that do not answer are pinged again in further rounds until ``deadline`` seconds
    have passed (a first ping also sets up the pair's end-to-end session, which on a loaded
    machine can take longer than one ping's ``timeout``); a pair counts as reachable once one
    ping comes back.
    """
    gate = asyncio.Semaphore(concurrency)
    rtts: dict[tuple[str, str], float] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline

    async def one(a: str, b: str) -> None:
        async with gate:
            if loop.time() > end:
                return
            rtt = await _ping_once(client, urls[a], b, timeout)
        if rtt is not None:
            rtts[(a, b)] = rtt

    pairs = list(itertools.permutations(urls, 2))
    while True:
        pending = [pair for pair in pairs if pair not in rtts]
        if not pending or loop.time() > end:
            break
        await asyncio.gather(*(one(a, b) for a, b in pending))
    failed = tuple(pair for pair in pairs if pair not in rtts)
    return PairCheck(reachable=len(rtts), total=len(pairs), failed=failed, rtt_ms=rtts)
