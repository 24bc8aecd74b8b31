"""``x0tta6bl4 bench heal``: failure detection and repair of real nodes on real UDP sockets.

``nodes`` real node data planes (:class:`~x0tta6bl4.node.udp.MeshEndpoint`: the sans-IO
:class:`~x0tta6bl4.node.core.NodeCore` behind one loopback UDP socket and one asyncio timer,
with its own ML-DSA-65 key and a PQ SVID from a throw-away mesh CA) are spread over ``workers``
processes (one event loop each, so the mesh can use more than one core). A coordinator (this
process) gives every node the full membership, waits for convergence (every live node has a
route to every other), then kills nodes one at a time. The victim of each event is drawn
(seeded) among the nodes that relay traffic for at least one pair; before the kill the
coordinator pings a sample of the pairs that route through it, so their end-to-end sessions
exist.

Per event, with timestamps from ``time.monotonic()`` (``CLOCK_MONOTONIC``, one clock for every
process on Linux; asyncio's ``loop.time()`` is the same clock), taken by the workers at the
moment the event loop processes the change:

* **MTTD**: from the victim's socket closing to the first neighbour's failure detector
  declaring the link down (``LinkDown`` processed by the node's core);
* **MTTR**: from the kill to the earliest moment at which every *affected pair* (live source
  and destination whose forwarding path went through the victim) forwards along a working path
  again, i.e. walking each node's installed next hop from the source reaches the destination
  over live nodes only. Every node's table is snapshotted each time its routes change, so the
  moment is exact (not a polling interval). The repair is then **verified with real traffic**:
  mesh pings (application datagrams over the end-to-end sessions) for the sampled pairs must
  come back over the new paths (``pings_ok`` / ``pings_sent`` per event; an event whose pings
  all fail is counted in ``failed_events``).

A kill that no live pair routed through (possible when no relay is left to choose) counts
for MTTD only.

Victims stay dead (the mesh shrinks by ``events`` nodes); before each event the coordinator
waits for convergence among the survivors plus ``settle`` seconds, so that neighbour
re-selection around the previous victim has finished.

``steady_link_downs`` counts links declared down during the ``settle`` seconds after
convergence, before any kill: links that died only because the host was too busy to answer
heartbeats in time (0 on a healthy run; the failure mode of too many nodes per core).

``converge_s`` is from the moment the membership is handed out (sockets bound, keys made) to
full convergence: every link handshake, the first adverts, flooding and SPF on every node.
With ``join_batch`` the membership grows by that many nodes at a time (each step waits for
convergence), as nodes joining a cluster over time would; ``converge_s`` then covers every
step. It spreads the start-up work (every link's PQ handshake, every node's first advert
verified by every other) that real nodes do on their own CPUs, but that here lands on the
few cores of one host at once.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.dataplane import resolve
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.model import CoreConfig, Member
from x0tta6bl4.node.udp import MeshEndpoint, open_endpoint

__all__ = ["TARGETS", "format_table", "run"]

#: Issue 5's targets at 100 nodes (milliseconds, seconds for ``converge_s``).
TARGETS: dict[str, float] = {"mttd_p99_ms": 1000.0, "mttr_p99_ms": 2000.0, "converge_s": 30.0}

_REPLY_TIMEOUT = 120.0
_POLL = 0.05

Tables = dict[str, dict[str, str]]
_MemberRow = tuple[str, str, int, bytes]


# --- worker side ------------------------------------------------------------------------------


@dataclass
class _Watch:
    """What a worker records for one kill event."""

    victim: str
    detectors: set[str]
    detections: dict[str, float] = field(default_factory=dict)
    #: ``node -> [(time, {dest: next_hop}), ...]``: a snapshot each time its routes change.
    history: dict[str, list[tuple[float, dict[str, str]]]] = field(default_factory=dict)
    changes_seen: dict[str, int] = field(default_factory=dict)
    #: How many snapshots of each node the coordinator already has.
    sent: dict[str, int] = field(default_factory=dict)


class _Worker:
    """One process's slice of the mesh, driven by commands from the coordinator's pipe."""

    def __init__(
        self,
        conn: Connection,
        ca: MeshCA,
        ids: list[str],
        config: CoreConfig,
        dataplane: str = "python",
    ) -> None:
        self.conn = conn
        self.dataplane = dataplane
        self.ca = ca
        self.ids = ids
        self.config = config
        self.endpoints: dict[str, MeshEndpoint] = {}
        self.alive: set[str] = set()
        self.watch: _Watch | None = None
        self.pongs: dict[int, asyncio.Future[float]] = {}
        self.seq = 0
        self.done: asyncio.Future[None] | None = None

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        rows: list[_MemberRow] = []
        for node_id in self.ids:
            identity = issue_identity(self.ca, node_id)
            endpoint = await open_endpoint(
                identity,
                ("127.0.0.1", 0),
                config=self.config,
                on_pong=self._on_pong,
                on_output=self._observer(node_id),
                dataplane=self.dataplane,
            )
            self.endpoints[node_id] = endpoint
            self.alive.add(node_id)
            rows.append((node_id, identity.spiffe_id, endpoint.local_addr[1], identity.cert_der))
        loop.add_reader(self.conn.fileno(), self._on_readable)
        self.conn.send(("ready", rows))
        await self.done
        loop.remove_reader(self.conn.fileno())
        for node_id in list(self.alive):
            self.endpoints[node_id].close()
        await asyncio.sleep(0)

    def _on_pong(self, src: str, seq: int, rtt: float) -> None:
        future = self.pongs.pop(seq, None)
        if future is not None and not future.done():
            future.set_result(rtt)

    def _observer(self, node_id: str) -> Callable[[], None]:
        def observe() -> None:
            watch = self.watch
            if watch is None or node_id not in self.alive:
                return
            endpoint = self.endpoints[node_id]
            core = endpoint.core
            if (
                node_id in watch.detectors
                and node_id not in watch.detections
                and core.link_state(watch.victim) != "up"
            ):
                watch.detections[node_id] = endpoint.now()
            changes = core.counters["route_changes"]
            if changes != watch.changes_seen.get(node_id):
                watch.changes_seen[node_id] = changes
                watch.history.setdefault(node_id, []).append((endpoint.now(), _table(endpoint)))

        return observe

    def _on_readable(self) -> None:
        while self.conn.poll():
            try:
                command = self.conn.recv()
            except EOFError:
                if self.done is not None and not self.done.done():
                    self.done.set_result(None)
                return
            kind = command[0]
            if kind == "ping":
                asyncio.get_running_loop().create_task(self._pings(command[1], command[2]))
            else:
                self.conn.send(self._handle(kind, command[1:]))

    def _handle(self, kind: str, args: tuple[Any, ...]) -> Any:
        if kind == "members":
            members = [Member(n, s, ("127.0.0.1", p), cert_der=c) for n, s, p, c in args[0]]
            joined = {m.node_id for m in members}
            for node_id in self.alive & joined:
                self.endpoints[node_id].call(lambda core, now: core.set_members(members, now))
            return None
        if kind == "converged":
            names: list[str] = args[0]
            count = 0
            for node_id in self.alive:
                routes = self.endpoints[node_id].core.router.routes()
                if all(n == node_id or n in routes for n in names):
                    count += 1
            return count
        if kind == "tables":
            return {n: _table(self.endpoints[n]) for n in self.alive}
        if kind == "links":
            return sum(len(self.endpoints[n].core.up_links()) for n in self.alive)
        if kind == "counters":
            total: Counter[str] = Counter()
            for node_id in self.alive:
                core = self.endpoints[node_id].core
                total.update(core.counters)
                total.update(core.router.all_counters())
            return dict(total)
        if kind == "watch":
            victim = args[0]
            detectors = {n for n in self.alive if self.endpoints[n].core.link_state(victim) == "up"}
            watch = _Watch(victim, detectors)
            for node_id in self.alive:
                endpoint = self.endpoints[node_id]
                watch.changes_seen[node_id] = endpoint.core.counters["route_changes"]
                watch.history[node_id] = [(endpoint.now(), _table(endpoint))]
            self.watch = watch
            return len(detectors)
        if kind == "kill":
            node_id = args[0]
            self.alive.discard(node_id)
            at = time.monotonic()
            self.endpoints[node_id].close()
            return at
        if kind == "collect":
            # Only what is new since the last collect: the coordinator accumulates.
            watching = self.watch
            if watching is None:
                return ({}, {})
            history = {n: h[watching.sent.get(n, 0) :] for n, h in watching.history.items()}
            watching.sent = {n: len(h) for n, h in watching.history.items()}
            return (dict(watching.detections), {n: h for n, h in history.items() if h})
        if kind == "unwatch":
            self.watch = None
            return None
        if kind == "stop":
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return None
        raise ValueError(f"unknown worker command {kind!r}")

    async def _pings(self, pairs: list[tuple[str, str]], timeout: float) -> None:
        results = await asyncio.gather(*(self._ping(s, d, timeout) for s, d in pairs))
        self.conn.send(list(results))

    async def _ping(self, src: str, dst: str, timeout: float) -> float | None:
        if src not in self.alive:
            return None
        self.seq += 1
        seq = self.seq
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pongs[seq] = future
        try:
            self.endpoints[src].call(lambda core, now: core.ping(dst, seq, now))
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, ValueError):
            return None
        finally:
            self.pongs.pop(seq, None)


def _table(endpoint: MeshEndpoint) -> dict[str, str]:
    return {dest: route.next_hop for dest, route in endpoint.core.router.routes().items()}


def _worker_main(  # noqa: PLR0917 - multiprocessing passes args positionally
    conn: Connection,
    ca_cert: bytes,
    ca_key: bytes,
    ids: list[str],
    config: CoreConfig,
    dataplane: str,
) -> None:  # pragma: no cover - runs in a child process
    ca = MeshCA.load(ca_cert, ca_key)
    asyncio.run(_Worker(conn, ca, ids, config, dataplane).main())


# --- coordinator side -------------------------------------------------------------------------


class _Pool:
    """The worker processes and the request/response protocol over their pipes."""

    def __init__(self, slices: list[list[str]], config: CoreConfig, dataplane: str) -> None:
        ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.owner: dict[str, int] = {}
        for index, ids in enumerate(slices):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, ca.cert_pem(), ca.key_pem(), ids, config, dataplane),
                daemon=True,
                name=f"x0-bench-heal-{index}",
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            for node_id in ids:
                self.owner[node_id] = index
        self.rows: list[_MemberRow] = []
        for conn in self.conns:
            kind, rows = self._recv(conn)
            if kind != "ready":  # pragma: no cover - protocol invariant
                raise RuntimeError(f"worker answered {kind!r} instead of ready")
            self.rows.extend(rows)
        self.rows.sort()

    def _recv(self, conn: Connection) -> Any:
        if not conn.poll(_REPLY_TIMEOUT):
            raise RuntimeError("a benchmark worker did not answer (overloaded or crashed)")
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError("a benchmark worker exited unexpectedly") from None

    def ask(self, index: int, *command: Any) -> Any:
        self.conns[index].send(command)
        return self._recv(self.conns[index])

    def ask_all(self, *command: Any) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        return [self._recv(conn) for conn in self.conns]

    def tables(self) -> Tables:
        merged: Tables = {}
        for part in self.ask_all("tables"):
            merged.update(part)
        return merged

    def ping(self, pairs: list[tuple[str, str]], timeout: float) -> list[float | None]:
        by_worker: dict[int, list[tuple[str, str]]] = {}
        for pair in pairs:
            by_worker.setdefault(self.owner[pair[0]], []).append(pair)
        for index, subset in by_worker.items():
            self.conns[index].send(("ping", subset, timeout))
        results: dict[tuple[str, str], float | None] = {}
        for index, subset in by_worker.items():
            results.update(zip(subset, self._recv(self.conns[index]), strict=True))
        return [results[pair] for pair in pairs]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:  # pragma: no cover - worker already gone
                continue
        for proc in self.procs:
            proc.join(10.0)
            if proc.is_alive():  # pragma: no cover - a stuck worker
                proc.terminate()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()


def _path(tables: Tables, src: str, dst: str, dead: set[str]) -> list[str] | None:
    """The forwarding path from ``src`` to ``dst`` (both ends included), None if broken."""
    path = [src]
    node = src
    while node != dst:
        hop = tables.get(node, {}).get(dst)
        if hop is None or hop in dead or hop in path or len(path) > 64:
            return None
        path.append(hop)
        node = hop
    return path


def _through(tables: Tables, alive: list[str], dead: set[str]) -> dict[str, list[tuple[str, str]]]:
    """For every relay, the pairs (live source and destination) whose path crosses it."""
    relayed: dict[str, list[tuple[str, str]]] = {}
    for src in alive:
        for dst in alive:
            if src != dst:
                path = _path(tables, src, dst, dead)
                for relay in (path or [])[1:-1]:
                    relayed.setdefault(relay, []).append((src, dst))
    return relayed


def _repaired_at(
    history: dict[str, list[tuple[float, dict[str, str]]]],
    pairs: list[tuple[str, str]],
    dead: set[str],
    kill_at: float,
) -> tuple[float, str] | None:
    """When every pair first walks to its destination over live nodes, and whose route
    change completed that."""
    state: Tables = {}
    changes: list[tuple[float, str, dict[str, str]]] = []
    for node, snapshots in history.items():
        for at, table in snapshots:
            if at <= kill_at:
                state[node] = table
            else:
                changes.append((at, node, table))
    changes.sort(key=lambda change: change[0])
    broken = {p for p in pairs if _path(state, p[0], p[1], dead) is None}
    if not broken:
        return kill_at, ""
    for at, node, table in changes:
        state[node] = table
        broken = {p for p in broken if _path(state, p[0], p[1], dead) is None}
        if not broken:
            # A later change may break a pair again; the final state decides below.
            if all(_path(state, s, d, dead) is not None for s, d in pairs):
                return at, node
            broken = {p for p in pairs if _path(state, p[0], p[1], dead) is None}
    return None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[index], 1)


def _total(pool: _Pool, counter: str) -> int:
    return sum(int(part.get(counter, 0)) for part in pool.ask_all("counters"))


def _wait_converged(pool: _Pool, names: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if sum(pool.ask_all("converged", names)) == len(names):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)


def _event(
    pool: _Pool,
    rng: random.Random,
    *,
    alive: list[str],
    dead: set[str],
    ping_sample: int,
    repair_timeout: float,
) -> dict[str, Any]:
    tables = pool.tables()
    through = _through(tables, alive, dead)
    relays = sorted(v for v in through if v in alive)
    victim = rng.choice(relays or alive)
    expected = through.get(victim, [])
    sample = rng.sample(expected, min(ping_sample, len(expected)))
    pool.ping(sample, 5.0)  # warm: end-to-end sessions exist before the kill
    owner = pool.owner[victim]
    detectors = sum(pool.ask_all("watch", victim))
    kill_at: float = pool.ask(owner, "kill", victim)
    dead.add(victim)
    alive.remove(victim)
    detections: dict[str, float] = {}
    history: dict[str, list[tuple[float, dict[str, str]]]] = {}
    pairs: list[tuple[str, str]] | None = None
    deadline = time.monotonic() + repair_timeout
    repaired = False
    while time.monotonic() < deadline:
        time.sleep(_POLL)
        for part_detections, part_history in pool.ask_all("collect"):
            detections.update(part_detections)
            for node, snapshots in part_history.items():
                history.setdefault(node, []).extend(snapshots)
        if pairs is None:
            before = {n: h[0][1] for n, h in history.items() if h}
            pairs = _through(before, [*alive, victim], dead - {victim}).get(victim, [])
        current = {n: h[-1][1] for n, h in history.items() if h}
        if detections and all(_path(current, s, d, dead) is not None for s, d in pairs):
            repaired = True
            break
    pool.ask_all("unwatch")
    pairs = pairs or []
    mttd = (min(detections.values()) - kill_at) * 1e3 if detections else None
    repair = _repaired_at(history, pairs, dead, kill_at) if repaired else None
    mttr = None if repair is None else (repair[0] - kill_at) * 1e3
    # Verify with the warmed pairs that did cross the victim, topped up with other affected
    # pairs (their end-to-end handshake then runs over the new path too).
    affected = set(pairs)
    sample = [p for p in sample if p in affected]
    others = sorted(affected - set(sample))
    sample += rng.sample(others, min(ping_sample - len(sample), len(others)))
    rtts = pool.ping(sample, 2.0) if repaired else []
    if repaired and any(r is None for r in rtts):
        rtts = pool.ping(sample, 2.0)
    pings_ok = sum(1 for r in rtts if r is not None)
    return {
        "victim": victim,
        "affected_pairs": len(pairs),
        "detectors": detectors,
        "mttd_ms": None if mttd is None else round(mttd, 1),
        "mttr_ms": None if mttr is None else round(mttr, 1),
        "first_detector": min(detections, key=detections.__getitem__) if detections else None,
        "repaired_by": None if repair is None else repair[1],
        "pings_sent": len(sample),
        "pings_ok": pings_ok,
        "ping_rtt_ms": [None if r is None else round(r * 1e3, 2) for r in rtts],
    }


def run(
    nodes: int = 100,
    *,
    events: int = 10,
    workers: int | None = None,
    seed: int = 1,
    settle: float = 2.0,
    ping_sample: int = 4,
    converge_timeout: float = 120.0,
    repair_timeout: float = 15.0,
    join_batch: int | None = None,
    config: CoreConfig | None = None,
    dataplane: str | None = None,
) -> dict[str, Any]:
    """Start ``nodes`` real nodes in ``workers`` processes, converge, kill ``events`` of them."""
    chosen = resolve(dataplane)
    if nodes < 3:
        raise ValueError("nodes must be at least 3 (a kill must leave a pair to repair)")
    if not 0 <= events <= nodes - 2:
        raise ValueError("events must be 0..nodes-2")
    workers = workers if workers is not None else min(os.cpu_count() or 1, max(1, nodes // 10))
    if not 1 <= workers <= nodes:
        raise ValueError("workers must be 1..nodes")
    if join_batch is not None and join_batch < 1:
        raise ValueError("join_batch must be at least 1")
    if settle < 0 or ping_sample < 0 or converge_timeout <= 0 or repair_timeout <= 0:
        raise ValueError("settle and ping_sample must be >= 0, timeouts positive")
    config = config or CoreConfig()
    if config.link_filter is not None:
        raise ValueError("link_filter cannot cross process boundaries; leave it None")
    ids = [f"node-{i:03d}" for i in range(nodes)]
    slices = [ids[i::workers] for i in range(workers)]
    load_before = os.getloadavg()[0]
    pool = _Pool(slices, config, chosen)
    try:
        started = time.monotonic()
        step = join_batch or nodes
        converged = True
        for end in range(step, nodes + step, step):
            # Members learn of each other (and link up) batch by batch.
            joined = pool.rows[: min(end, nodes)]
            pool.ask_all("members", joined)
            converged = _wait_converged(pool, [r[0] for r in joined], converge_timeout)
            if not converged:
                break
        converge_s = time.monotonic() - started if converged else None
        links = sum(pool.ask_all("links")) // 2
        downs_at_converge = _total(pool, "link_down_events")
        time.sleep(settle)
        steady_downs = _total(pool, "link_down_events") - downs_at_converge
        rng = random.Random(seed)  # noqa: S311 - victim choice, not cryptography
        alive, dead = list(ids), set[str]()
        details: list[dict[str, Any]] = []
        for index in range(events if converged else 0):
            if not _wait_converged(pool, alive, converge_timeout):
                break
            if index:
                time.sleep(settle)
            details.append(
                _event(
                    pool,
                    rng,
                    alive=alive,
                    dead=dead,
                    ping_sample=ping_sample,
                    repair_timeout=repair_timeout,
                )
            )
    finally:
        pool.close()
    ok = [
        d
        for d in details
        if d["mttd_ms"] is not None
        and d["mttr_ms"] is not None
        and (d["pings_sent"] == 0 or d["pings_ok"] > 0)
    ]
    mttd = [float(d["mttd_ms"]) for d in ok]
    # A kill that no live pair routed through has nothing to repair: MTTD only.
    mttr = [float(d["mttr_ms"]) for d in ok if d["affected_pairs"]]
    result: dict[str, Any] = {
        "mode": f"in-process nodes, real UDP sockets on loopback, {workers} worker processes",
        "dataplane": chosen,
        "nodes": nodes,
        "workers": workers,
        "join": "all at once" if join_batch in (None, nodes) else f"{join_batch} nodes per step",
        "links": links,
        "converged": converged,
        "converge_s": None if converge_s is None else round(converge_s, 2),
        "mttd_p50_ms": _percentile(mttd, 0.5),
        "mttd_p99_ms": _percentile(mttd, 0.99),
        "mttr_p50_ms": _percentile(mttr, 0.5),
        "mttr_p99_ms": _percentile(mttr, 0.99),
        "events": len(ok),
        "failed_events": len(details) - len(ok) + (events - len(details)),
        "steady_link_downs": steady_downs,
        "steady_window_s": settle,
        "heartbeat_interval_s": config.heartbeat_interval,
        "dead_after": config.dead_after,
        "cost_update_interval_s": config.cost_update_interval,
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "targets": dict(TARGETS),
        "details": details,
    }
    result["meets_targets"] = all(
        result[key] is not None
        and (result[key] < limit if key == "converge_s" else result[key] <= limit)
        for key, limit in TARGETS.items()
    )
    return result


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    lines = [
        f"mode: {result['mode']}",
        f"nodes {result['nodes']}, links {result['links']}, events {result['events']} "
        f"spurious link downs {result['steady_link_downs']} in {result['steady_window_s']} s, "
        f"(failed {result['failed_events']}), load {result['loadavg_1m_before']} -> "
        f"{result['loadavg_1m_after']}",
    ]
    for key, limit in TARGETS.items():
        lines.append(
            f"{key:>12}: {result[key]} (target {'<' if key == 'converge_s' else '<='} {limit})"
        )
    for key in ("mttd_p50_ms", "mttr_p50_ms"):
        lines.append(f"{key:>12}: {result[key]}")
    for d in result["details"]:
        lines.append(
            f"  kill {d['victim']}: mttd {d['mttd_ms']} ms, mttr {d['mttr_ms']} ms, "
            f"{d['affected_pairs']} pairs rerouted, pings {d['pings_ok']}/{d['pings_sent']}"
        )
    return "\n".join(lines)
