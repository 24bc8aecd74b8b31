"""Shortest paths first: Dijkstra over the link-state database.

* A link ``u -> v`` is used only when it is **confirmed by both ends**: ``u``'s advert lists
  ``v`` and ``v``'s advert lists ``u``. A node that died (its neighbours stopped listing it) or a
  forged one-sided claim is therefore never a hop. The cost of ``u -> v`` is the cost ``u``
  advertises (costs may differ per direction).
* A node whose advert has :data:`~x0tta6bl4.protocol.lsa.FLAG_TRANSIT_OFF` is reachable as a
  destination but never used as a relay.
* Deterministic tie-break: among equal-cost paths, the one whose sequence of node ids (first
  hop to destination) is lexicographically smallest wins. Costs are at least 1, so this order
  is preserved by extending paths and Dijkstra with ``(cost, path)`` heap keys finds exactly
  that path. Every node computes the same answer from the same database.

Complexity: ``O(E log V)`` heap operations, each carrying a path tuple of at most the diameter;
about 8 ms for 1,000 nodes of average degree 8 on one core. The router does not rebuild the
confirmed graph for every run: the database keeps it up to date as adverts come and go
(:meth:`~x0tta6bl4.protocol.lsdb.LinkStateDatabase.confirmed`) and :func:`shortest_paths`
runs on it directly.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from x0tta6bl4.protocol.lsa import LinkStateAdvert

__all__ = ["Route", "compute_routes", "confirmed_links", "shortest_paths"]


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach ``dest``: forward to ``next_hop``; ``path`` runs from it to ``dest``."""

    dest: str
    next_hop: str
    cost: int
    path: tuple[str, ...]


def confirmed_links(adverts: Mapping[str, LinkStateAdvert]) -> dict[str, dict[str, int]]:
    """``{u: {v: cost}}`` for every link both ends advertise."""
    listed = {origin: lsa.neighbour_costs() for origin, lsa in adverts.items()}
    return {
        u: {v: c for v, c in out.items() if u in listed.get(v, ())} for u, out in listed.items()
    }


def compute_routes(source: str, adverts: Mapping[str, LinkStateAdvert]) -> dict[str, Route]:
    """Shortest routes from ``source`` to every reachable node (``source`` itself excluded)."""
    if source not in adverts:
        return {}
    no_transit = {origin for origin, lsa in adverts.items() if lsa.transit_off}
    return shortest_paths(source, confirmed_links(adverts), no_transit)


def shortest_paths(
    source: str, links: Mapping[str, Mapping[str, int]], no_transit: Collection[str] = ()
) -> dict[str, Route]:
    """Dijkstra over confirmed ``links`` (``{u: {v: cost}}``); ``no_transit`` nodes are
    destinations only. ``source`` must be a key of ``links`` (else no routes)."""
    if source not in links:
        return {}
    best: dict[str, tuple[int, tuple[str, ...]]] = {source: (0, ())}
    heap: list[tuple[int, tuple[str, ...], str]] = [(0, (), source)]
    done: set[str] = set()
    routes: dict[str, Route] = {}
    empty: Mapping[str, int] = {}
    while heap:
        dist, path, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node != source:
            routes[node] = Route(node, path[0], dist, path)
            if node in no_transit:
                continue
        for neighbour, cost in links.get(node, empty).items():
            if neighbour in done:
                continue
            candidate = (dist + cost, (*path, neighbour))
            current = best.get(neighbour)
            if current is None or candidate < current:
                best[neighbour] = candidate
                heapq.heappush(heap, (candidate[0], candidate[1], neighbour))
    return routes
