"""Neighbour selection: which members a node opens links to.

* **Small mesh** (at most ``small_mesh`` = 16 nodes including this one): every member the
  policy allows (a full mesh; at most 15 links).
* **Larger mesh**: ``degree`` (8) links per node, chosen in this order:

  1. **ring**: the successor and the predecessor of this node in the cyclic order of the
     sorted node ids of the members (skipping members the policy forbids);
  2. **near**: the members closest to this node: same zone first, then lowest RTT, then the
     pair's rendezvous hash below (``degree - 2 - random_links`` = 4 of them). Never the node
     id: members whose RTT is not known yet (every member at start-up) and links whose costs
     tie (every link of a LAN sits at the cost floor) would otherwise all rank the same few
     lowest ids first, and every node of the mesh would open its near links to those few (a
     200-node mesh sent ~200 handshakes to each of ``node-000`` … ``node-003``, which refused
     all past ``max_degree`` and stayed cut off: ``bench heal --nodes 200`` never converged);
  3. **long**: ``random_links`` (2) members chosen by a rendezvous hash of the *pair*,
     ``BLAKE2b-64(key=seed; len(min) ‖ min(a, b) ‖ max(a, b))``: uniform over the ring (so
     they are long links, which keep the diameter logarithmic), stable while the membership
     is (no churn when a selection is recomputed), and symmetric (when ``a`` picks ``b`` for
     a long link, ``b`` ranks ``a`` by the same weight, so many are chosen by both ends).

**Why the graph stays connected.** Every node links to its ring successor, so the links contain
the cycle ``n0 - n1 - … - n(k-1) - n0`` over all members in id order: a Hamiltonian cycle is
connected, and adding the near and long links cannot disconnect it. If one node dies before the
others have recomputed their selection, the cycle minus one node is a path, still connected;
when the membership (or the failure detector) drops the dead node, the next selection closes
the ring again around it. Two or more simultaneous failures can cut the ring into arcs, but the
near and long links (six per node) join the arcs with overwhelming probability, and the next
selection restores the ring. This needs the policy to allow ring neighbours to link: a policy
that forbids whole groups to talk can of course partition the mesh.

**Degree.** A node opens at most ``degree`` links; others may open links to it. With
:func:`accept_inbound` a node refuses inbound links once it has ``max_degree`` (16) links,
except from its ring neighbours, so every node's degree stays at most ``max_degree + 2``.

Pure functions: the node agent calls them with the membership it knows (minus peers whose link
is down) and opens/closes links to match.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from x0tta6bl4.protocol.errors import InvalidConfigError

__all__ = [
    "Candidate",
    "LinkPolicy",
    "SelectionConfig",
    "accept_inbound",
    "pair_weight",
    "ring_neighbours",
    "select_neighbours",
]

#: ``may_link(a, b)``: whether the mesh policy lets ``a`` and ``b`` link.
LinkPolicy = Callable[[str, str], bool]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A member this node could link to, with what it knows about the path to it."""

    node_id: str
    #: Measured or estimated RTT in seconds (None when unknown).
    rtt: float | None = None
    #: Topology zone (e.g. ``topology.kubernetes.io/zone``), None when unknown.
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """Neighbour selection parameters."""

    #: Meshes of at most this many nodes (this one included) are fully meshed.
    small_mesh: int = 16
    #: Links a node opens in a larger mesh.
    degree: int = 8
    #: How many of them are random long links.
    random_links: int = 2
    #: Inbound links are refused past this degree (except from ring neighbours).
    max_degree: int = 16
    #: Seed of the pair hash (e.g. the trust domain), so meshes differ.
    seed: bytes = b"x0tta6bl4"

    def __post_init__(self) -> None:
        if self.degree < 2 or self.random_links < 0 or self.random_links > self.degree - 2:
            raise InvalidConfigError(
                "degree must be at least 2 and leave room for the two ring links"
            )
        if self.small_mesh < 1 or self.max_degree < self.degree:
            raise InvalidConfigError("small_mesh must be positive and max_degree at least degree")


def _allow_all(a: str, b: str) -> bool:
    return True


def pair_weight(seed: bytes, a: str, b: str) -> bytes:
    """The symmetric rendezvous weight of the pair ``{a, b}`` (smaller = preferred)."""
    a_raw, b_raw = a.encode("utf-8"), b.encode("utf-8")
    lo, hi = (a_raw, b_raw) if a_raw <= b_raw else (b_raw, a_raw)
    return hashlib.blake2b(
        len(lo).to_bytes(1, "big") + lo + hi, digest_size=8, key=seed[:64]
    ).digest()


def ring_neighbours(
    self_id: str, members: Iterable[str], may_link: LinkPolicy | None = None
) -> tuple[str, ...]:
    """The ring successor and predecessor of ``self_id`` (one entry when they coincide)."""
    allow = may_link or _allow_all
    ids = sorted({m for m in members if m != self_id and allow(self_id, m)} | {self_id})
    if len(ids) < 2:
        return ()
    i = ids.index(self_id)
    successor, predecessor = ids[(i + 1) % len(ids)], ids[i - 1]
    return (successor,) if successor == predecessor else (successor, predecessor)


def select_neighbours(
    self_id: str,
    candidates: Iterable[Candidate],
    *,
    zone: str | None = None,
    config: SelectionConfig | None = None,
    may_link: LinkPolicy | None = None,
) -> frozenset[str]:
    """The members ``self_id`` should open links to (see the module docstring)."""
    cfg = config or SelectionConfig()
    allow = may_link or _allow_all
    by_id = {c.node_id: c for c in candidates if c.node_id != self_id}
    allowed = {n: c for n, c in by_id.items() if allow(self_id, n)}
    if len(by_id) + 1 <= cfg.small_mesh:
        return frozenset(allowed)
    chosen: list[str] = list(ring_neighbours(self_id, allowed, allow))
    rest = [n for n in allowed if n not in chosen]
    n_near = cfg.degree - len(chosen) - cfg.random_links

    def nearness(n: str) -> tuple[int, float, bytes, str]:
        c = allowed[n]
        same_zone = 0 if zone is not None and c.zone == zone else 1
        rtt = c.rtt if c.rtt is not None else float("inf")
        # Ties (unknown RTTs, costs at the floor) go by the pair hash: uniform over the mesh.
        return same_zone, rtt, pair_weight(cfg.seed, self_id, n), n

    near = heapq.nsmallest(max(0, n_near), rest, key=nearness)
    chosen += near
    taken = set(near)
    rest = [n for n in rest if n not in taken]
    chosen += heapq.nsmallest(
        cfg.degree - len(chosen), rest, key=lambda n: pair_weight(cfg.seed, self_id, n)
    )
    return frozenset(chosen)


def accept_inbound(
    self_id: str,
    peer: str,
    members: Collection[str],
    current_degree: int,
    *,
    config: SelectionConfig | None = None,
    may_link: LinkPolicy | None = None,
) -> bool:
    """Whether to accept a link that ``peer`` opens to us while we have ``current_degree``."""
    cfg = config or SelectionConfig()
    allow = may_link or _allow_all
    if peer == self_id or not allow(self_id, peer):
        return False
    mesh_size = len(members) + (0 if self_id in members else 1)
    if mesh_size <= cfg.small_mesh or current_degree < cfg.max_degree:
        return True
    return peer in ring_neighbours(self_id, members, allow)
