"""The native data plane (``x0tta6bl4_native.Dataplane``) wired to a :class:`NodeCore`.

With ``--dataplane native`` the Rust data plane owns the node's UDP socket (and the TUN
device in TUN mode) and runs the packet path on its own thread: it opens transport packets
by receiver index, forwards ROUTED frames by the forwarding table, opens end-to-end packets
for us, answers mesh echoes and heartbeat PROBEs, stamps each peer's last authentic packet,
and carries TUN packets. The core (handshakes, failure detection, routing, identity, policy)
stays Python and works as with the reference data plane, through :class:`NativeHooks`:

* sessions the core's channels create are native ``Session`` objects attached to the data
  plane (their keys are installed by the Python handshake; the data plane's index table
  follows their keypairs);
* forgotten peers lose their keys there at once (``remove_peer``), moved links their
  address; route changes install the forwarding table; link up/down is told (our answers to
  PROBEs probe while our side is down);
* the failure detectors and the end-to-end stale check read the data plane's time stamps
  (:meth:`NodeCore.handle_timer`), so traffic handled natively keeps links alive and
  detection does not wait on a busy interpreter.

What the data plane hands up (:func:`dispatch`) goes to the same core inputs the reference's
socket driver feeds: handshake datagrams, control frames of link packets, end-to-end
handshakes, end-to-end frames on other channels and echo replies, TUN packets for a
destination without a session yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from x0tta6bl4.dataplane import native_module
from x0tta6bl4.node.core import NodeCore
from x0tta6bl4.node.drops import NodeDrop
from x0tta6bl4.node.model import Addr

__all__ = ["NativeHooks", "PortSet", "dispatch"]


class NativeHooks:
    """:class:`~x0tta6bl4.node.core.DataplaneHooks` over one ``x0tta6bl4_native.Dataplane``.

    Created before the data plane exists (the core is built first); :meth:`bind` gives it the
    data plane before the first session is made.
    """

    def __init__(self) -> None:
        module = native_module()
        if module is None:
            raise RuntimeError("the native data plane is not built")
        self._native: Any = module
        self.dp: Any = None

    def bind(self, dp: Any) -> None:
        self.dp = dp

    def _require(self) -> Any:
        if self.dp is None:
            raise RuntimeError("the native data plane is not attached to a socket yet")
        return self.dp

    def session(self, node_id: str, addr: Addr | None, *, e2e: bool, **limits: Any) -> Any:
        dp = self._require()
        session = self._native.Session(**limits)
        if e2e:
            dp.attach_e2e(node_id, session)
        else:
            dp.attach_link(node_id, session, addr)
        return session

    def forget(self, node_id: str, *, e2e: bool) -> None:
        if self.dp is not None:
            self.dp.remove_peer(node_id, link=not e2e, e2e=e2e)

    def move(self, node_id: str, addr: Addr) -> None:
        if self.dp is not None:
            self.dp.set_addr(node_id, addr)

    def routes_changed(self, routes: dict[str, str]) -> None:
        if self.dp is not None:
            self.dp.set_routes(routes)

    def link_up(self, node_id: str, up: bool) -> None:
        if self.dp is not None:
            self.dp.set_link_up(node_id, up)

    def liveness(self, *, e2e: bool) -> dict[str, float]:
        if self.dp is None:
            return {}
        stamps: dict[str, float] = self.dp.last_received(e2e=e2e)
        return stamps

    def counters(self) -> dict[str, int]:
        if self.dp is None:
            return {}
        counters: dict[str, int] = self.dp.counters()
        return counters


def dispatch(
    core: NodeCore,
    events: Iterable[tuple[Any, ...]],
    on_tun: Callable[[str, bytes, float], None] | None,
    now: float,
) -> int:
    """Feed the data plane's hand-up events to ``core``; how many were datagrams."""
    datagrams = 0
    for event in events:
        kind = event[0]
        if kind == 1:
            core.receive_link_frames(event[1], event[2], event[3], event[4])
        elif kind == 0:
            core.receive_datagram(event[1], (event[2][0], event[2][1]), event[3])
            datagrams += 1
        elif kind == 3:
            core.receive_e2e_frames(event[1], event[2], event[3], event[4])
        elif kind == 2:
            core.receive_e2e_datagram(event[1], event[2], event[3])
        elif kind == 4:
            if on_tun is not None:
                on_tun(event[1], event[2], now)
            else:
                core.dropped[NodeDrop.TUN_NO_BRIDGE] += 1
    return datagrams


class PortSet(set[int]):
    """A set of UDP ports whose changes are pushed to the data plane (fault injection)."""

    def __init__(self, push: Callable[[set[int]], None]) -> None:
        super().__init__()
        self._push = push

    def add(self, port: int) -> None:
        super().add(port)
        self._push(set(self))

    def discard(self, port: object) -> None:
        super().discard(port)
        self._push(set(self))

    def remove(self, port: int) -> None:
        super().remove(port)
        self._push(set(self))

    def clear(self) -> None:
        super().clear()
        self._push(set())

    def update(self, *others: Iterable[int]) -> None:
        super().update(*others)
        self._push(set(self))
