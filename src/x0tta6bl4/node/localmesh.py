"""An in-process mesh: N real node data planes on real loopback UDP sockets, one event loop.

Used by the benchmarks (``x0tta6bl4 bench heal`` / ``bench dataplane``) and by tests where
process isolation is not the point. Each node is a real :class:`~x0tta6bl4.node.udp.MeshEndpoint`
with its own ML-DSA-65 key and a PQ SVID issued by a throw-away mesh CA (what the controller
would hand out); the membership is given to every node directly instead of through a
controller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.model import AppMessage, CoreConfig, Member, NodeIdentity
from x0tta6bl4.node.udp import MeshEndpoint, open_endpoint

__all__ = ["LocalMesh", "LocalNode", "issue_identity"]


def issue_identity(
    ca: MeshCA,
    node_id: str,
    *,
    key: SigningKey | None = None,
    spiffe_id: str | None = None,
    ttl_seconds: int = 3600,
) -> NodeIdentity:
    """A node identity with a PQ SVID issued by ``ca`` (what registration returns)."""
    key = key or SigningKey.generate()
    sid = spiffe_id or f"spiffe://{ca.trust_domain}/ns/x0tta6bl4/sa/x0tta6bl4-app"
    now = time.time()
    cert = ca.issue(
        spiffe_id=sid,
        node_id=node_id,
        public_key=key.public_bytes,
        now=now,
        ttl_seconds=ttl_seconds,
    )
    return NodeIdentity(
        node_id=node_id,
        spiffe_id=sid,
        signing_key=key,
        cert_der=cert,
        bundle=ca.bundle(),
        not_after=now + ttl_seconds,
    )


@dataclass
class LocalNode:
    """One in-process node: its endpoint, identity and received datagrams."""

    identity: NodeIdentity
    endpoint: MeshEndpoint
    inbox: asyncio.Queue[AppMessage] = field(default_factory=asyncio.Queue)
    pongs: dict[int, asyncio.Future[float]] = field(default_factory=dict)
    alive: bool = True

    @property
    def node_id(self) -> str:
        return self.identity.node_id


class LocalMesh:
    """N nodes named ``prefix-000`` … on ``127.0.0.1``, fully known to each other."""

    def __init__(
        self,
        n: int,
        *,
        config: CoreConfig | None = None,
        prefix: str = "node",
        host: str = "127.0.0.1",
        dataplane: str | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a mesh needs at least one node")
        self.n = n
        #: ``native`` / ``python`` / None (``X0_DATAPLANE``, else native when built).
        self.dataplane = dataplane
        self.config = config or CoreConfig()
        self.host = host
        self.ids = [f"{prefix}-{i:03d}" for i in range(n)]
        self.ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
        self.nodes: dict[str, LocalNode] = {}
        self._seq = 0

    async def start(self) -> None:
        for node_id in self.ids:
            await self.start_node(node_id, announce=False)
        self.announce()

    async def start_node(
        self, node_id: str, *, identity: NodeIdentity | None = None, announce: bool = True
    ) -> LocalNode:
        """Start (or restart, with the same identity) one node."""
        old = self.nodes.get(node_id)
        if identity is None:
            identity = old.identity if old is not None else issue_identity(self.ca, node_id)
        holder: list[LocalNode] = []

        def on_app(message: AppMessage) -> None:
            holder[0].inbox.put_nowait(message)

        def on_pong(src: str, seq: int, rtt: float) -> None:
            future = holder[0].pongs.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(rtt)

        port = old.endpoint.local_addr[1] if old is not None else 0
        endpoint = await open_endpoint(
            identity,
            (self.host, port),
            config=self.config,
            on_app=on_app,
            on_pong=on_pong,
            dataplane=self.dataplane,
        )
        node = LocalNode(identity, endpoint)
        holder.append(node)
        self.nodes[node_id] = node
        if announce:
            self.announce()
        return node

    def members(self) -> list[Member]:
        return [
            Member(
                node_id=n.node_id,
                spiffe_id=n.identity.spiffe_id,
                endpoint=n.endpoint.local_addr,
                cert_der=n.identity.cert_der,
            )
            for n in self.nodes.values()
        ]

    def announce(self) -> None:
        """Give every live node the current membership (what a controller watch does)."""
        members = self.members()
        for node in self.alive():
            node.endpoint.call(lambda core, now: core.set_members(members, now))

    def alive(self) -> list[LocalNode]:
        return [n for n in self.nodes.values() if n.alive]

    def kill(self, node_id: str) -> None:
        """Stop a node abruptly: its socket closes, peers see silence."""
        node = self.nodes[node_id]
        node.alive = False
        node.endpoint.close()

    def converged(self, among: list[str] | None = None) -> bool:
        """Every live node (of ``among``) has a route to every other one."""
        names = among if among is not None else [n.node_id for n in self.alive()]
        for name in names:
            core = self.nodes[name].endpoint.core
            routes = core.router.routes()
            if any(other != name and other not in routes for other in names):
                return False
        return True

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.01
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(step)
        return predicate()

    async def ping(self, src: str, dst: str, timeout: float = 5.0) -> float:
        """Mesh ping over an end-to-end session; the RTT in seconds (TimeoutError if lost)."""
        node = self.nodes[src]
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        node.pongs[seq] = future
        node.endpoint.call(lambda core, now: core.ping(dst, seq, now))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            node.pongs.pop(seq, None)

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                node.endpoint.close()
                node.alive = False
        await asyncio.sleep(0)
