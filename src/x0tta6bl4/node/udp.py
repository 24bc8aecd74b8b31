"""The asyncio driver of a :class:`~x0tta6bl4.node.core.NodeCore`: one UDP socket, one timer.

Datagram in → ``core.receive_datagram`` → transmit → re-arm the timer, as aioquic's
``asyncio/protocol.py`` does. User calls (send an application datagram, ping, membership or
policy updates) go through :meth:`MeshEndpoint.call` so that their output is transmitted and
the timer re-armed too. Application datagrams and echo replies are handed to the callbacks.

The endpoint owns a non-blocking socket registered with ``loop.add_reader`` and **drains**
it: each readiness callback reads every queued datagram (up to :data:`RECV_BATCH`), feeds
them all to the core, then transmits and re-arms once. (asyncio's datagram transport reads
one datagram per loop iteration, so on a busy loop a peer's heartbeats waited in the socket
buffer behind every other callback while our failure detector's timer fired.) asyncio runs
the readers of an iteration before its due timers, so after a stall the queued heartbeats
are seen before the silence limit is checked. Sends go straight to ``sendto``; a full send
buffer drops the datagram (counted in :attr:`MeshEndpoint.send_errors`), as a lossy link
would.

**Native data plane** (``dataplane="native"``, default when built; :mod:`x0tta6bl4.node.native`):
the endpoint hands the socket to ``x0tta6bl4_native.Dataplane``, whose I/O thread does the
packet path; the endpoint reads its hand-up queue when its eventfd is readable (instead of the
socket), feeds the core, and sends the core's output through it (sendmmsg).

Concurrency: everything runs on the event loop's thread; the core is never shared (the native
data plane's thread touches only the sessions and tables, behind their own locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from x0tta6bl4.dataplane import Dataplane, native_module, resolve
from x0tta6bl4.node.core import NodeCore
from x0tta6bl4.node.model import Addr, AppMessage, CoreConfig, NodeIdentity
from x0tta6bl4.node.native import NativeHooks, PortSet, dispatch

__all__ = ["RECV_BATCH", "MeshEndpoint", "bind_udp", "open_endpoint"]

_T = TypeVar("_T")

#: Socket buffers: bursts of adverts and handshakes must not overflow the kernel queue.
_SOCKET_BUFFER = 4 * 1024 * 1024
#: A deadline that appears after a datagram may wait this long for an already armed timer
#: (heartbeats run every 100 ms, SPF waits 30 ms: a few ms more change nothing).
_TIMER_SLACK = 0.005
#: Datagrams read per readiness callback at most (then other callbacks get a turn).
RECV_BATCH = 64
#: ``recvfrom`` buffer: the largest UDP payload.
_RECV_SIZE = 65535


class MeshEndpoint:
    """Owns the core, the UDP socket and the timer handle of one node.

    Create it inside the running loop, then :meth:`attach` a bound UDP socket.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        config: CoreConfig | None = None,
        on_app: Callable[[AppMessage], None] | None = None,
        on_pong: Callable[[str, int, float], None] | None = None,
        on_output: Callable[[], None] | None = None,
        dataplane: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        #: ``native`` or ``python`` (``--dataplane``; native when built).
        self.dataplane: Dataplane = resolve(dataplane)
        self._hooks = NativeHooks() if self.dataplane == "native" else None
        self.core = NodeCore(
            identity,
            now,
            wall_offset=time.time() - now,
            config=config or CoreConfig(),
            dataplane=self._hooks,
        )
        #: The native data plane (``x0tta6bl4_native.Dataplane``) once attached.
        self.native: Any = None
        #: TUN packets the native data plane hands up (no session yet, too big).
        self.on_tun: Callable[[str, bytes, float], None] | None = None
        self._sock: socket.socket | None = None
        self._local_addr: Addr | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._on_app = on_app
        self._on_pong = on_pong
        self._on_output = on_output
        self.closed = False
        #: Datagrams the kernel refused to send (or receive errors it reported).
        self.send_errors = 0
        #: Datagrams read from the socket.
        self.datagrams_received = 0
        #: Fault injection: datagrams to or from these ports are dropped (a partition).
        self.blocked_ports: set[int] = (
            set() if self._hooks is None else PortSet(self._push_blocked_ports)
        )

    def _push_blocked_ports(self, ports: set[int]) -> None:
        if self.native is not None:
            self.native.set_blocked_ports(ports)

    def attach(self, sock: socket.socket) -> None:
        """Take ownership of a bound UDP socket and start reading and timing."""
        if self._sock is not None or self.native is not None:
            raise RuntimeError("the endpoint already has a socket")
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        host, port = sock.getsockname()[:2]
        self._local_addr = (str(host), int(port))
        if self._hooks is not None:
            module: Any = native_module()
            self.native = module.Dataplane(
                sock.detach(), self.core.node_id, ttl=self.core.config.ttl
            )
            self._hooks.bind(self.native)
            self._push_blocked_ports(set(self.blocked_ports))
            self._loop.add_reader(self.native.notify_fd, self._events_ready)
            self._service()
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._read_ready)
        self._service()

    # --- socket -------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        if self.closed or sock is None:
            return
        core = self.core
        blocked = self.blocked_ports
        received = 0
        for _ in range(RECV_BATCH):
            try:
                data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.send_errors += 1  # an ICMP error reported on the socket
                continue
            if blocked and addr[1] in blocked:
                continue
            core.receive_datagram(data, (addr[0], addr[1]), self._loop.time())
            received += 1
        if received:
            self.datagrams_received += received
            self._service()

    def _events_ready(self) -> None:
        """The native data plane handed events up: feed them to the core, then transmit."""
        native = self.native
        if self.closed or native is None:
            return
        events = native.drain(RECV_BATCH)
        if events:
            self.datagrams_received += dispatch(self.core, events, self.on_tun, self._loop.time())
            self._service()

    # --- API ----------------------------------------------------------------------------------

    @property
    def local_addr(self) -> Addr:
        """The bound address (still known after :meth:`close`, for a restart on it)."""
        if self._local_addr is None:
            raise RuntimeError("the endpoint has no socket (attach one)")
        return self._local_addr

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
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self.native is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self.native.notify_fd)
            self.native.close()

    def native_counters(self) -> dict[str, int]:
        """The native data plane's packet counters and drops (empty with the reference)."""
        if self.native is None:
            return {}
        counters: dict[str, int] = self.native.counters()
        return counters

    # --- internals ----------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        self.core.handle_timer(self._loop.time())
        self._service()

    def _service(self) -> None:
        if self.closed or (self._sock is None and self.native is None):
            return
        core = self.core
        if self.native is not None:
            out = core.datagrams_to_send()
            if out:
                self.native.send(out)  # blocked ports and send errors: counted natively
        else:
            assert self._sock is not None
            sendto = self._sock.sendto
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


def bind_udp(local_addr: Addr) -> socket.socket:
    """A UDP socket bound to ``local_addr`` (IPv6 when the host contains a colon)."""
    family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(local_addr)
    except OSError:
        sock.close()
        raise
    return sock


async def open_endpoint(
    identity: NodeIdentity,
    local_addr: Addr,
    *,
    config: CoreConfig | None = None,
    on_app: Callable[[AppMessage], None] | None = None,
    on_pong: Callable[[str, int, float], None] | None = None,
    on_output: Callable[[], None] | None = None,
    dataplane: str | None = None,
) -> MeshEndpoint:
    """Bind ``local_addr`` (UDP) and start a node's data plane on it."""
    endpoint = MeshEndpoint(
        identity,
        config=config,
        on_app=on_app,
        on_pong=on_pong,
        on_output=on_output,
        dataplane=dataplane,
    )
    endpoint.attach(bind_udp(local_addr))
    return endpoint
