"""The asyncio driver of a :class:`~x0tta6bl4.node.core.NodeCore`: one UDP socket, one timer.

Datagram in → ``core.receive_datagram`` → transmit → re-arm the timer, as aioquic's
``asyncio/protocol.py`` does. User calls (send an application datagram, ping, membership or
policy updates) go through :meth:`MeshEndpoint.call` so that their output is transmitted and
the timer re-armed too. Application datagrams and echo replies are handed to the callbacks.

Concurrency: everything runs on the event loop's thread; the core is never shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from x0tta6bl4.node.core import NodeCore
from x0tta6bl4.node.model import Addr, AppMessage, CoreConfig, NodeIdentity

__all__ = ["MeshEndpoint", "open_endpoint"]

_T = TypeVar("_T")

#: Socket buffers: bursts of adverts and handshakes must not overflow the kernel queue.
_SOCKET_BUFFER = 4 * 1024 * 1024
#: A deadline that appears after a datagram may wait this long for an already armed timer
#: (heartbeats run every 100 ms, SPF waits 30 ms: a few ms more change nothing).
_TIMER_SLACK = 0.005


class MeshEndpoint(asyncio.DatagramProtocol):
    """Owns the core, the UDP transport and the timer handle of one node."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        config: CoreConfig | None = None,
        on_app: Callable[[AppMessage], None] | None = None,
        on_pong: Callable[[str, int, float], None] | None = None,
        on_output: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.core = NodeCore(
            identity, now, wall_offset=time.time() - now, config=config or CoreConfig()
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._on_app = on_app
        self._on_pong = on_pong
        self._on_output = on_output
        self.closed = False
        #: Datagrams the kernel refused to send.
        self.send_errors = 0
        #: Fault injection: datagrams to or from these ports are dropped (a partition).
        self.blocked_ports: set[int] = set()

    # --- asyncio.DatagramProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        self._service()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed or addr[1] in self.blocked_ports:
            return
        self.core.receive_datagram(data, (addr[0], addr[1]), self._loop.time())
        self._service()

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- API ----------------------------------------------------------------------------------

    @property
    def local_addr(self) -> Addr:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def now(self) -> float:
        return self._loop.time()

    def call(self, fn: Callable[[NodeCore, float], _T]) -> _T:
        """Run ``fn(core, now)``, then transmit and re-arm the timer."""
        try:
            return fn(self.core, self._loop.time())
        finally:
            self._service()

    def close(self) -> None:
        """Stop: no more input, output or timers (peers will see silence)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    # --- internals ----------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        self.core.handle_timer(self._loop.time())
        self._service()

    def _service(self) -> None:
        if self.closed or self._transport is None:
            return
        core = self.core
        sendto = self._transport.sendto
        blocked = self.blocked_ports
        for datagram, addr in core.datagrams_to_send():
            if blocked and addr[1] in blocked:
                continue
            try:
                sendto(datagram, addr)
            except OSError:
                self.send_errors += 1
        if self._on_app is not None:
            while (message := core.next_app()) is not None:
                self._on_app(message)
        if self._on_pong is not None:
            while (pong := core.next_pong()) is not None:
                self._on_pong(*pong)
        if self._on_output is not None:
            self._on_output()
        armed = self._timer_at
        if (
            armed is not None
            and self._timer is not None
            and armed - self._loop.time() <= _TIMER_SLACK
        ):
            # The armed timer fires within the slack anyway and re-computes the deadline
            # then; computing it now (a scan of every link and session) would cost more.
            return
        at = core.get_timer()
        if armed is not None and armed <= at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(max(at, self._loop.time()), self._on_timer)


async def open_endpoint(
    identity: NodeIdentity,
    local_addr: Addr,
    *,
    config: CoreConfig | None = None,
    on_app: Callable[[AppMessage], None] | None = None,
    on_pong: Callable[[str, int, float], None] | None = None,
) -> MeshEndpoint:
    """Bind ``local_addr`` (UDP) and start a node's data plane on it."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: MeshEndpoint(identity, config=config, on_app=on_app, on_pong=on_pong),
        local_addr=local_addr,
    )
    return protocol
