"""In-process self-healing simulation: N routers and failure detectors on a simulated network.

:class:`MeshSimulation` is a discrete-event simulator (like Nebula's in-process test router):
every node is a real :class:`~x0tta6bl4.protocol.router.Router` plus one real
:class:`~x0tta6bl4.protocol.failure.FailureDetector` per link, with real ML-DSA-65 keys and
signatures; the "network" delivers heartbeats, acks and signed adverts after a per-link latency
on a simulated clock, and can kill nodes and cut links. Nothing reads a real clock, so results
depend only on the seed.

:func:`simulate_heal` is the in-process mode of ``x0tta6bl4 bench heal``: it builds a mesh of
``nodes`` nodes with :func:`~x0tta6bl4.protocol.neighbours.select_neighbours`, waits for full
convergence, then kills nodes one at a time and measures, in simulated time:

* **MTTD**: from the kill until the first neighbour's failure detector declares it down;
* **MTTR**: from the kill until every surviving pair whose route went through the dead node
  (and that is still connected) forwards along a working path again.

The simulated time covers the protocol's timers (heartbeats, detection, origination limits,
SPF debounce) and link latencies, not CPU time: signing and verifying take no simulated time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.protocol.failure import (
    FailureDetector,
    FailureDetectorConfig,
    LinkCostChanged,
    LinkDown,
    LinkUp,
)
from x0tta6bl4.protocol.neighbours import (
    Candidate,
    SelectionConfig,
    accept_inbound,
    select_neighbours,
)
from x0tta6bl4.protocol.router import Router, RouterConfig

__all__ = ["HealEvent", "MeshSimulation", "build_topology", "simulate_heal"]

#: Wall clock at simulated time 0 (any fixed value: seqs are derived from it).
_EPOCH = 1_750_000_000.0


@dataclass(slots=True)
class _Node:
    node_id: str
    router: Router
    detectors: dict[str, FailureDetector]
    alive: bool = True
    timer_version: int = 0


@dataclass(frozen=True, slots=True)
class HealEvent:
    """One killed node and how long the mesh took to notice and to route around it."""

    killed: str
    mttd_s: float | None
    mttr_s: float | None
    affected_pairs: int


@dataclass(slots=True)
class _Stats:
    delivered: int = 0
    dropped: int = 0
    link_down_events: list[tuple[float, str, str]] = field(default_factory=list)


class MeshSimulation:
    """Nodes, links with latencies, and a simulated clock. All times are in seconds."""

    def __init__(
        self,
        links: Iterable[tuple[str, str, float]],
        *,
        nodes: Iterable[str] = (),
        keys: dict[str, SigningKey] | None = None,
        detector_config: FailureDetectorConfig | None = None,
        router_config: RouterConfig | None = None,
        loss: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")
        #: Probability that any one message is lost in transit (seeded, reproducible).
        self.loss = loss
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
        self.now = 0.0
        self.latency: dict[frozenset[str], float] = {}
        for a, b, latency in links:
            if a == b or latency < 0:
                raise ValueError("links join two distinct nodes with a non-negative latency")
            self.latency[frozenset((a, b))] = latency
        ids = sorted(set(nodes) | {n for pair in self.latency for n in pair})
        self.keys = dict(keys or {})
        for node_id in ids:
            if node_id not in self.keys:
                self.keys[node_id] = SigningKey.generate()
        self.public: dict[str, mldsa.MLDSA65PublicKey] = {
            n: k.key.public_key() for n, k in self.keys.items()
        }
        self.detector_config = detector_config or FailureDetectorConfig()
        self.router_config = router_config or RouterConfig()
        self.cut: set[frozenset[str]] = set()
        self.stats = _Stats()
        #: Set whenever a route or a link changes (route checks are skipped otherwise).
        self._dirty = True
        self._heap: list[tuple[float, int, str, str, str, object]] = []
        self._counter = itertools.count()
        self.nodes: dict[str, _Node] = {}
        for node_id in ids:
            self.nodes[node_id] = self._make_node(node_id)
        for node_id in ids:
            self._service(self.nodes[node_id])

    # --- topology ---------------------------------------------------------------------------

    def key_for(self, node_id: str) -> mldsa.MLDSA65PublicKey | None:
        return self.public.get(node_id)

    def peers_of(self, node_id: str) -> list[str]:
        return sorted(n for pair in self.latency if node_id in pair for n in pair if n != node_id)

    def link_works(self, a: str, b: str) -> bool:
        pair = frozenset((a, b))
        return (
            pair in self.latency
            and pair not in self.cut
            and self.nodes[a].alive
            and self.nodes[b].alive
        )

    def _make_node(self, node_id: str) -> _Node:
        router = Router(
            node_id,
            self.keys[node_id],
            self.key_for,
            self.now,
            wall_offset=_EPOCH,
            config=self.router_config,
        )
        detectors = {
            peer: FailureDetector(peer, self.now, self.detector_config)
            for peer in self.peers_of(node_id)
        }
        return _Node(node_id, router, detectors)

    # --- faults -----------------------------------------------------------------------------

    def kill(self, node_id: str) -> None:
        """The node stops: everything sent to or by it is lost."""
        self.nodes[node_id].alive = False
        self._dirty = True

    def restart(self, node_id: str) -> None:
        """The node comes back with the same identity and fresh state."""
        node = self._make_node(node_id)
        node.timer_version = self.nodes[node_id].timer_version + 1
        self.nodes[node_id] = node
        self._dirty = True
        self._service(node)

    def cut_link(self, a: str, b: str) -> None:
        self.cut.add(frozenset((a, b)))
        self._dirty = True

    def heal_link(self, a: str, b: str) -> None:
        self.cut.discard(frozenset((a, b)))
        self._dirty = True

    def inject_lsa(self, src: str, dst: str, data: bytes) -> None:
        """Deliver ``data`` to ``dst`` as an advert arriving on its link from ``src`` (an
        attacker's or a faulty relay's packet: it went through the link's authentication)."""
        self._push(self.now, "msg", dst, src, ("lsa", data))

    # --- event loop -------------------------------------------------------------------------

    def _push(self, at: float, kind: str, dst: str, src: str, payload: object) -> None:
        heapq.heappush(self._heap, (at, next(self._counter), kind, dst, src, payload))

    def _send(self, src: str, dst: str, payload: object) -> None:
        if not self.link_works(src, dst) or (self.loss and self._rng.random() < self.loss):
            self.stats.dropped += 1
            return
        self._push(self.now + self.latency[frozenset((src, dst))], "msg", dst, src, payload)

    def _service(self, node: _Node, only: str | None = None) -> None:
        """Move outputs of a node's machines (all detectors, or ``only`` the one of that peer)
        to the network and re-arm its one timer."""
        router = node.router
        detectors = node.detectors.items() if only is None else [(only, node.detectors[only])]
        for peer, fd in detectors:
            while (event := fd.next_event()) is not None:
                if isinstance(event, LinkUp):
                    router.neighbour_up(peer, event.cost, self.now)
                elif isinstance(event, LinkDown):
                    self.stats.link_down_events.append((self.now, node.node_id, peer))
                    router.neighbour_down(peer, self.now)
                elif isinstance(event, LinkCostChanged):
                    router.neighbour_up(peer, event.cost, self.now)
            for seq in fd.heartbeats_to_send():
                self._send(node.node_id, peer, ("hb", seq))
        for peer, entries in router.summaries_to_send():
            self._send(node.node_id, peer, ("sum", entries))
        for peer, entries in router.requests_to_send():
            self._send(node.node_id, peer, ("req", entries))
        for peer, entries in router.announces_to_send():
            self._send(node.node_id, peer, ("ann", entries))
        for peer, data in router.lsas_to_send():
            self._send(node.node_id, peer, ("lsa", data))
        while router.next_event() is not None:
            self._dirty = True
        deadline = min([router.get_timer(), *(fd.get_timer() for fd in node.detectors.values())])
        node.timer_version += 1
        self._push(max(deadline, self.now), "timer", node.node_id, "", node.timer_version)

    def _dispatch(self, kind: str, dst: str, src: str, payload: object) -> None:
        node = self.nodes[dst]
        if not node.alive:
            return
        if kind == "timer":
            if payload != node.timer_version:
                return
            for fd in node.detectors.values():
                if fd.get_timer() <= self.now:
                    fd.handle_timer(self.now)
            if node.router.get_timer() <= self.now:
                node.router.handle_timer(self.now)
            self._service(node)
            return
        assert isinstance(payload, tuple)
        if not self.link_works(src, dst):  # cut or killed while in flight
            self.stats.dropped += 1
            return
        self.stats.delivered += 1
        fd = node.detectors[src]
        what, value = payload
        if what == "hb":
            self._send(dst, src, ("ack", fd.on_heartbeat(value, self.now)))
        elif what == "ack":
            fd.on_heartbeat_ack(value, self.now)
        elif what == "sum":
            fd.on_packet_received(self.now)
            node.router.receive_summary(src, value, self.now)
        elif what == "ann":
            fd.on_packet_received(self.now)
            node.router.receive_announce(src, value, self.now)
        elif what == "req":
            fd.on_packet_received(self.now)
            node.router.receive_request(src, value, self.now)
        else:
            fd.on_packet_received(self.now)
            node.router.receive_lsa(value, src, self.now)
        self._service(node, only=src)

    def run_until(self, t: float) -> None:
        """Process every event up to simulated time ``t``."""
        while self._heap and self._heap[0][0] <= t:
            at, _, kind, dst, src, payload = heapq.heappop(self._heap)
            self.now = at
            self._dispatch(kind, dst, src, payload)
        self.now = max(self.now, t)

    # --- route checks -----------------------------------------------------------------------

    def path(self, src: str, dst: str) -> list[str] | None:
        """The hops a packet from ``src`` to ``dst`` takes, or None when it is lost."""
        hops = [src]
        node = src
        while node != dst:
            nxt = self.nodes[node].router.next_hop(dst)
            if nxt is None or not self.link_works(node, nxt) or len(hops) > len(self.nodes):
                return None
            hops.append(nxt)
            node = nxt
        return hops

    def working_pairs(self, dst: str) -> set[str]:
        """Alive sources whose forwarding chain reaches ``dst`` over working links."""
        ok: dict[str, bool] = {dst: True}
        for start, node in self.nodes.items():
            if not node.alive or start in ok:
                continue
            chain: list[str] = []
            current = start
            result = False
            while True:
                if current in ok:
                    result = ok[current]
                    break
                if current in chain:
                    break
                chain.append(current)
                nxt = self.nodes[current].router.next_hop(dst)
                if nxt is None or not self.link_works(current, nxt):
                    break
                current = nxt
            for c in chain:
                ok[c] = result
        return {n for n, good in ok.items() if good and n != dst}

    def reachable(self, src: str) -> set[str]:
        """Nodes physically reachable from ``src`` over working links."""
        seen = {src}
        stack = [src]
        while stack:
            u = stack.pop()
            for v in self.peers_of(u):
                if v not in seen and self.link_works(u, v):
                    seen.add(v)
                    stack.append(v)
        return seen

    def broken_pairs(self, pairs: Iterable[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
        """Physically connected alive pairs without a working route (all pairs by default)."""
        alive = [n for n, node in self.nodes.items() if node.alive]
        if pairs is None:
            pairs = [(s, d) for s in alive for d in alive if s != d]
        wanted: dict[str, list[str]] = {}
        for s, d in pairs:
            wanted.setdefault(d, []).append(s)
        components: dict[str, set[str]] = {}
        broken: set[tuple[str, str]] = set()
        for d, sources in wanted.items():
            if not self.nodes[d].alive:
                continue
            if d not in components:
                comp = self.reachable(d)
                for n in comp:
                    components[n] = comp
            good = self.working_pairs(d)
            for s in sources:
                if self.nodes[s].alive and s in components[d] and s not in good:
                    broken.add((s, d))
        return broken

    def run_until_repaired(
        self,
        pairs: Iterable[tuple[str, str]] | None = None,
        *,
        timeout: float = 30.0,
        step: float = 0.005,
    ) -> float | None:
        """Advance until no pair is broken; the simulated time that took, or None on timeout."""
        start = self.now
        pair_list = None if pairs is None else list(pairs)
        self._dirty = True
        while self.now - start <= timeout:
            if self._dirty:
                self._dirty = False
                if not self.broken_pairs(pair_list):
                    return self.now - start
            self.run_until(self.now + step)
        return None


def build_topology(
    nodes: int, seed: int, config: SelectionConfig | None = None
) -> list[tuple[str, str, float]]:
    """A mesh as the node agents would build it: ``(a, b, one-way latency)`` links.

    Nodes sit at random points in a 2-D plane (four zones); latency grows with distance from
    0.2 ms to 5 ms. Each node selects neighbours with
    :func:`~x0tta6bl4.protocol.neighbours.select_neighbours` and the other end applies
    :func:`~x0tta6bl4.protocol.neighbours.accept_inbound`.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
    ids = [f"node-{i:04d}" for i in range(nodes)]
    pos = {n: (rng.random(), rng.random()) for n in ids}

    def zone(n: str) -> str:
        x, y = pos[n]
        return f"zone-{int(x * 2)}{int(y * 2)}"

    def latency(a: str, b: str) -> float:
        return 0.0002 + 0.0048 * math.dist(pos[a], pos[b]) / math.sqrt(2)

    degree: dict[str, int] = dict.fromkeys(ids, 0)
    links: dict[frozenset[str], float] = {}
    for n in ids:
        candidates = [Candidate(m, 2 * latency(n, m), zone(m)) for m in ids if m != n]
        for m in sorted(select_neighbours(n, candidates, zone=zone(n), config=config)):
            pair = frozenset((n, m))
            if pair in links:
                continue
            if accept_inbound(m, n, ids, degree[m], config=config):
                links[pair] = latency(n, m)
                degree[n] += 1
                degree[m] += 1
    out: list[tuple[str, str, float]] = []
    for pair, lat in links.items():
        a, b = sorted(pair)
        out.append((a, b, lat))
    return sorted(out)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def simulate_heal(
    nodes: int = 100,
    seed: int = 1,
    *,
    events: int = 10,
    detector_config: FailureDetectorConfig | None = None,
    router_config: RouterConfig | None = None,
    keys: dict[str, SigningKey] | None = None,
    timeout: float = 30.0,
) -> dict[str, object]:
    """Converge a simulated mesh, kill ``events`` nodes one at a time, measure MTTD/MTTR.

    Each killed node is restarted (same identity, fresh state) after its event has been
    measured and the mesh re-converges before the next kill, so every event hits a full mesh.
    Returns the keys of ``x0tta6bl4 bench heal --json`` (``nodes``, ``converge_s``,
    ``mttd_p50_ms``, ``mttd_p99_ms``, ``mttr_p50_ms``, ``mttr_p99_ms``, ``events``) plus
    ``mode`` = ``"simulated"``, ``failed_events`` and the per-event details.
    """
    if nodes < 3 or events < 0:
        raise ValueError("need at least 3 nodes and a non-negative number of events")
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not cryptography
    sim = MeshSimulation(
        build_topology(nodes, seed),
        keys=keys,
        detector_config=detector_config,
        router_config=router_config,
    )
    converge_s = sim.run_until_repaired(timeout=timeout)
    if converge_s is None:
        raise RuntimeError(f"the simulated mesh did not converge within {timeout} s")
    ids = sorted(sim.nodes)
    victims = rng.sample(ids, min(events, len(ids)))
    results: list[HealEvent] = []
    for victim in victims:
        affected = [
            (s, d)
            for s in ids
            for d in ids
            if s != d and victim not in (s, d) and victim in (sim.path(s, d) or ())
        ]
        kill_at = sim.now
        seen_downs = len(sim.stats.link_down_events)
        sim.kill(victim)
        mttr = sim.run_until_repaired(affected, timeout=timeout)
        mttd: float | None = None
        deadline = kill_at + timeout
        while mttd is None and sim.now <= deadline:
            for at, _, peer in sim.stats.link_down_events[seen_downs:]:
                if peer == victim:
                    mttd = at - kill_at
                    break
            else:
                sim.run_until(sim.now + 0.01)
        results.append(HealEvent(victim, mttd, mttr, len(affected)))
        sim.restart(victim)
        if sim.run_until_repaired(timeout=timeout) is None:
            raise RuntimeError(f"the mesh did not re-converge after {victim} restarted")
    mttds = [e.mttd_s * 1000 for e in results if e.mttd_s is not None]
    # A node no pair routed through (a leaf) needs no repair: it has no MTTR.
    mttrs = [e.mttr_s * 1000 for e in results if e.mttr_s is not None and e.affected_pairs]
    return {
        "mode": "simulated",
        "nodes": nodes,
        "links": len(sim.latency),
        "seed": seed,
        "converge_s": round(converge_s, 4),
        "mttd_p50_ms": round(statistics.median(mttds), 1) if mttds else None,
        "mttd_p99_ms": round(_percentile(mttds, 0.99), 1) if mttds else None,
        "mttr_p50_ms": round(statistics.median(mttrs), 1) if mttrs else None,
        "mttr_p99_ms": round(_percentile(mttrs, 0.99), 1) if mttrs else None,
        "events": len(results),
        "failed_events": sum(1 for e in results if e.mttd_s is None or e.mttr_s is None),
        "details": [
            {
                "killed": e.killed,
                "mttd_ms": None if e.mttd_s is None else round(e.mttd_s * 1000, 1),
                "mttr_ms": None
                if e.mttr_s is None or not e.affected_pairs
                else round(e.mttr_s * 1000, 1),
                "affected_pairs": e.affected_pairs,
            }
            for e in results
        ],
    }
