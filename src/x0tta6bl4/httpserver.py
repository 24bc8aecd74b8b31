"""HTTP servers with limits: every HTTP listener of x0tta6bl4 (controller, node API) is built here.

uvicorn alone waits forever for a request's headers, accepts connections until the process
runs out of file descriptors, and then (asyncio's accept loop) logs one traceback per pending
connection per pass: issue 13 row 6 held 200 idle or half-sent connections against a
controller limited to 200 descriptors, ``/ready`` stopped answering and 125 MB of log were
written in 25 s. :func:`limited_config` gives uvicorn a protocol class that enforces:

- **read timeout** (:data:`READ_TIMEOUT`): a request — its headers and its body — must arrive
  whole within this many seconds of the connection opening or of the request's first byte;
  otherwise the connection is closed;
- **keep-alive timeout** (:data:`KEEPALIVE_TIMEOUT`): an idle connection between requests is
  closed after this many seconds;
- **connection cap**: at most ``max_connections`` open connections (default
  :data:`MAX_CONNECTIONS`), never more than the process's ``RLIMIT_NOFILE`` minus
  :data:`FD_RESERVE` (descriptors kept for the store, the Workload API, the log) minus twice
  the listen backlog per listener (sockets accepted in one pass and not yet seen by the
  limiter, and evicted ones not yet closed: without this margin a flood filled every
  descriptor though the cap held). A connection
  arriving at the cap evicts a connection that is *waiting* — still sending its request, or
  idle between requests; one whose request is being served is never evicted: the one that has
  waited longest among those of the **source** (the client's IP address; an IPv6 /64) with the
  most connections waiting. So a client that opens connections as fast as it is evicted
  churns its own, never a probe's from another address; to reach every slot an attacker needs
  as many source addresses as the cap. The newcomer is closed itself only when every
  connection is being served;
- **size limits**: request line and headers at most :data:`MAX_HEADER_BYTES` (431 with a JSON
  reason; h11 also answers 400 while an incomplete head passes the size, so at most one socket
  read is ever buffered); bodies are limited by each app (the controller's
  ``X0_MAX_BODY_BYTES``, the node API :data:`NODE_MAX_BODY_BYTES` through :class:`BodyLimit`);
- a listen backlog of :data:`LISTEN_BACKLOG`, at most 1/8 of the descriptor budget (not below
  :data:`MIN_BACKLOG`).

Every limit is a constant of this module; ``docs/runtime-contract.md`` and ``docs/limits.md``
list them. Several listeners of one process (the controller's TLS and plain-HTTP ports) share
one :class:`ConnectionLimiter`, so the descriptor budget is the process's, not each listener's.
:class:`ConnectionCollector` exports a limiter's state as Prometheus metrics (the controller's
``x0tta6bl4_api_connections*``, the node's ``x0tta6bl4_node_api_connections*``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import resource
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, ClassVar

import h11
import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "FD_RESERVE",
    "KEEPALIVE_TIMEOUT",
    "LISTEN_BACKLOG",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "MIN_BACKLOG",
    "MIN_CONNECTIONS",
    "NODE_MAX_BODY_BYTES",
    "READ_TIMEOUT",
    "BodyLimit",
    "ConnectionCollector",
    "ConnectionLimiter",
    "limited_config",
    "source_key",
]

READ_TIMEOUT = 10.0
"""Seconds a client has to send a whole request (headers and body) once it opened the
connection or sent the request's first byte."""
KEEPALIVE_TIMEOUT = 10.0
"""Seconds an idle connection is kept open between two requests."""
MAX_CONNECTIONS = 2048
"""Default cap on the open connections of a process's HTTP listeners (each watching node holds
one to the controller)."""
MIN_CONNECTIONS = 16
"""The cap never goes below this, however low ``RLIMIT_NOFILE`` is."""
FD_RESERVE = 64
"""File descriptors the connection cap leaves free for everything else of the process."""
MAX_HEADER_BYTES = 16 * 1024
"""Largest request line plus headers, in bytes."""
LISTEN_BACKLOG = 128
"""Connections the kernel queues before the server accepts them (asyncio also accepts up to
this many in one pass, holding their descriptors until the limiter has seen them)."""
MIN_BACKLOG = 8
"""The backlog never goes below this; above it, it is at most 1/8 of the descriptor budget."""
NODE_MAX_BODY_BYTES = 1024
"""Largest request body the node's HTTP API reads (its routes take none)."""

CLOSE_REASONS: tuple[str, ...] = (
    "read_timeout",
    "keepalive_timeout",
    "evicted",
    "over_capacity",
)
"""Why the server's limits closed a connection (the ``reason`` label of the connection metrics):
a request not whole within :data:`READ_TIMEOUT`, a connection idle between requests for
:data:`KEEPALIVE_TIMEOUT`, evicted at the cap, or refused at the cap (every slot serving)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _descriptor_budget() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return int(soft) - FD_RESERVE


def source_key(client: tuple[str, int] | None) -> str:
    """The source a connection from ``client`` counts under: its IP address (an IPv6 /64,
    which one host usually holds whole); ``""`` when the address is unknown."""
    if client is None:
        return ""
    host = client[0]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False).network_address)
        except ValueError:
            pass
    return host


class ConnectionLimiter:
    """The open connections of one process's HTTP listeners, and the cap on them.

    Connections waiting for their request (or idle between requests) are kept per source
    (:func:`source_key`), each source's in the order they started waiting, and the sources by
    how many they have waiting. At the cap, a new connection evicts the longest-waiting
    connection of the source with the most waiting (of those with as many, the one that got
    there first). ``accepted`` counts the connections admitted, ``closed`` those the server's
    limits closed, by :data:`CLOSE_REASONS`. Every operation is O(1).
    """

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._requested = max_connections
        self._budget = _descriptor_budget()
        #: The listen backlog of each listener: also how many connections asyncio accepts in
        #: one pass, so it is kept small when descriptors are few (see :meth:`add_listener`).
        self.backlog = LISTEN_BACKLOG
        if self._budget is not None:
            self.backlog = max(MIN_BACKLOG, min(LISTEN_BACKLOG, self._budget // 8))
        self.listeners = 0
        self.cap = self._fit()
        self.open = 0
        #: source -> its waiting connections, oldest first.
        self._waiting: dict[str, dict[_LimitedProtocol, None]] = {}
        #: n -> the sources with n connections waiting, in the order they reached n.
        self._sources_by_count: dict[int, dict[str, None]] = {}
        self._most = 0
        self._waiting_total = 0
        self.accepted = 0
        self.closed: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)

    def _fit(self) -> int:
        if self._budget is None:
            return self._requested
        # Each listener's accept pass may hold ``backlog`` sockets not yet admitted, and as
        # many evicted ones are closed one loop iteration later.
        in_flight = 2 * self.backlog * max(1, self.listeners)
        return max(MIN_CONNECTIONS, min(self._requested, self._budget - in_flight))

    def add_listener(self) -> None:
        """A listener of the process uses this limiter: its accept bursts take descriptors
        too, so the cap shrinks to keep ``RLIMIT_NOFILE`` − :data:`FD_RESERVE` for the rest."""
        self.listeners += 1
        self.cap = self._fit()

    @property
    def waiting_connections(self) -> int:
        """Connections waiting for a request (the evictable ones)."""
        return self._waiting_total

    def admit(self, protocol: _LimitedProtocol) -> bool:
        """Count a new connection; at the cap, evict a waiting one first (see the class
        docstring). False if every connection is being served (the new one must be closed)."""
        if self.open >= self.cap:
            if not self._most:
                self.closed["over_capacity"] += 1
                return False
            source = next(iter(self._sources_by_count[self._most]))
            victim = next(iter(self._waiting[source]))
            self.closed["evicted"] += 1
            victim.drop()
        self.open += 1
        self.accepted += 1
        return True

    def waiting(self, protocol: _LimitedProtocol) -> None:
        """``protocol`` waits for a request (evictable), from now."""
        self._unwait(protocol)
        queue = self._waiting.setdefault(protocol.source, {})
        self._recount(protocol.source, len(queue), len(queue) + 1)
        queue[protocol] = None
        self._waiting_total += 1

    def serving(self, protocol: _LimitedProtocol) -> None:
        """``protocol``'s request is being served (not evictable)."""
        self._unwait(protocol)

    def gone(self, protocol: _LimitedProtocol, *, counted: bool) -> None:
        """``protocol``'s connection is closed."""
        self._unwait(protocol)
        if counted:
            self.open -= 1

    def _unwait(self, protocol: _LimitedProtocol) -> None:
        queue = self._waiting.get(protocol.source)
        if queue is None or protocol not in queue:
            return
        count = len(queue)
        del queue[protocol]
        if not queue:
            del self._waiting[protocol.source]
        self._recount(protocol.source, count, count - 1)
        self._waiting_total -= 1

    def _recount(self, source: str, old: int, new: int) -> None:
        """``source`` now has ``new`` connections waiting instead of ``old`` (they differ by
        one, so the largest count moves by at most one)."""
        buckets = self._sources_by_count
        if old:
            bucket = buckets[old]
            del bucket[source]
            if not bucket:
                del buckets[old]
        if new:
            buckets.setdefault(new, {})[source] = None
            self._most = max(self._most, new)
        while self._most and self._most not in buckets:
            self._most -= 1


class ConnectionCollector(Collector):
    """A :class:`ConnectionLimiter` as four metric families, read at scrape time:
    ``<prefix>_connections`` (open), ``<prefix>_connections_limit`` (the cap),
    ``<prefix>_connections_accepted_total`` and ``<prefix>_connections_closed_total{reason}``
    (:data:`CLOSE_REASONS`, every one present)."""

    def __init__(self, limiter: ConnectionLimiter, prefix: str, what: str) -> None:
        self._limiter = limiter
        self._prefix = prefix
        self._what = what

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        limiter, prefix = self._limiter, self._prefix
        yield GaugeMetricFamily(
            f"{prefix}_connections", f"Open HTTP connections of {self._what}.", value=limiter.open
        )
        yield GaugeMetricFamily(
            f"{prefix}_connections_limit",
            f"Cap on the open HTTP connections of {self._what} (lowered to fit RLIMIT_NOFILE).",
            value=limiter.cap,
        )
        yield CounterMetricFamily(
            f"{prefix}_connections_accepted",
            f"HTTP connections of {self._what} admitted under the cap.",
            value=limiter.accepted,
        )
        closed = CounterMetricFamily(
            f"{prefix}_connections_closed",
            f"HTTP connections of {self._what} closed by the server's limits, by reason.",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], limiter.closed[reason])
        yield closed


class _LimitedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the read timeout and the connection cap."""

    limiter: ClassVar[ConnectionLimiter]
    read_timeout: ClassVar[float]

    _read_timer: asyncio.TimerHandle | None = None
    _counted = False
    _served_cycle: object = None
    #: The source this connection counts under (:func:`source_key` of the client).
    source = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.source = source_key(self.client)
        if not self.limiter.admit(self):
            transport.abort()
            return
        self._counted = True
        self._start_waiting()

    def _start_waiting(self) -> None:
        self.limiter.waiting(self)
        self._arm(self.read_timeout)

    def _arm(self, delay: float) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_later(delay, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.limiter.closed["read_timeout"] += 1
            self.transport.abort()

    def drop(self) -> None:
        """Close this connection now (evicted by the limiter)."""
        self._disarm()
        self.limiter.gone(self, counted=self._counted)
        self._counted = False
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            # The first byte of a request after an idle keep-alive period.
            self._arm(self.read_timeout)
        super().data_received(data)
        self._track()

    def _track(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._served_cycle:
            # A request's headers arrived: it is served from now (not evictable) ...
            self._served_cycle = cycle
            self.limiter.serving(self)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            # ... and once it has arrived whole, the read timer stops.
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._served_cycle:
            self._track()  # a pipelined request started inside the call above
        elif self.conn.their_state is h11.IDLE or self.conn.their_state is h11.DONE:
            # Idle between requests: uvicorn's keep-alive timer runs; evictable meanwhile.
            self._disarm()
            self.limiter.waiting(self)
        else:
            self._start_waiting()  # the rest of a request body is still to come

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.limiter.closed["keepalive_timeout"] += 1
        super().timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.limiter.gone(self, counted=self._counted)
        self._counted = False
        super().connection_lost(exc)


def limited_config(
    app: Any,
    host: str,
    port: int,
    *,
    limiter: ConnectionLimiter | None = None,
    read_timeout: float = READ_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    **options: Any,
) -> uvicorn.Config:
    """A uvicorn config serving ``app`` on ``host:port`` with the limits of this module.

    ``limiter`` is shared by every listener of the process (a new one by default);
    ``options`` go to :class:`uvicorn.Config` unchanged (``lifespan``, ``ssl_*`` …).
    """
    limiter = limiter or ConnectionLimiter()
    limiter.add_listener()
    protocol = type(
        "LimitedH11Protocol",
        (_LimitedProtocol,),
        {"limiter": limiter, "read_timeout": read_timeout},
    )
    options.setdefault("log_config", None)  # x0tta6bl4.logging configures the root logger
    options.setdefault("access_log", False)
    options.setdefault("server_header", False)
    return uvicorn.Config(
        _HeaderLimit(app),
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=int(keepalive_timeout),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=limiter.backlog,
        **options,
    )


async def _refuse(send: Send, status: int, reason: str, detail: str) -> None:
    body = json.dumps({"error": reason, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _HeaderLimit:
    """431 for a request whose line and headers pass :data:`MAX_HEADER_BYTES` (h11 only checks
    a head that is still incomplete after a read)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > MAX_HEADER_BYTES:
                await _refuse(
                    send,
                    431,
                    "headers_too_large",
                    f"request line and headers are limited to {MAX_HEADER_BYTES} bytes",
                )
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 with a JSON reason, before the app runs, for a request declaring a
    body above ``max_bytes`` or a chunked one (its length is not known in advance). An HTTP/1.1
    request has a body only with one of the two headers, so nothing larger reaches the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._too_large(scope["headers"]):
            detail = f"request bodies are limited to {self.max_bytes} bytes"
            await _refuse(send, 413, "body_too_large", detail)
            return
        await self.app(scope, receive, send)

    def _too_large(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"transfer-encoding":
                return True
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                return True
        return False
