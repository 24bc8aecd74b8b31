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
  :data:`FD_RESERVE` (descriptors kept for the store, the Workload API, the log). A connection
  arriving at the cap evicts the connection that has been *waiting* longest — still sending its
  request, or idle between requests; one whose request is being served is never evicted — and
  is closed itself only when every connection is being served;
- **size limits**: request line and headers at most :data:`MAX_HEADER_BYTES` (431 with a JSON
  reason; h11 also answers 400 while an incomplete head passes the size, so at most one socket
  read is ever buffered); bodies are limited by each app (the controller's
  ``X0_MAX_BODY_BYTES``, the node API :data:`NODE_MAX_BODY_BYTES` through :class:`BodyLimit`);
- a listen backlog of :data:`LISTEN_BACKLOG`.

Every limit is a constant of this module; ``docs/runtime-contract.md`` lists them. Several
listeners of one process (the controller's TLS and plain-HTTP ports) share one
:class:`ConnectionLimiter`, so the descriptor budget is the process's, not each listener's.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "FD_RESERVE",
    "KEEPALIVE_TIMEOUT",
    "LISTEN_BACKLOG",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "MIN_CONNECTIONS",
    "NODE_MAX_BODY_BYTES",
    "READ_TIMEOUT",
    "BodyLimit",
    "ConnectionLimiter",
    "limited_config",
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
"""Connections the kernel queues before the server accepts them."""
NODE_MAX_BODY_BYTES = 1024
"""Largest request body the node's HTTP API reads (its routes take none)."""

CLOSE_REASONS: tuple[str, ...] = ("read_timeout", "evicted", "over_capacity")
"""Why the limiter closed a connection (labels of the controller's connection metric)."""

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


class ConnectionLimiter:
    """The open connections of one process's HTTP listeners, and the cap on them.

    Connections waiting for their request (or idle between requests) are kept in the order
    they started waiting, oldest first: the one evicted when a new connection arrives at the
    cap. ``closed`` counts connections the limiter closed, by :data:`CLOSE_REASONS`.
    """

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        budget = _descriptor_budget()
        self.cap = max_connections if budget is None else min(max_connections, budget)
        self.cap = max(self.cap, MIN_CONNECTIONS)
        self.open = 0
        self._waiting: dict[_LimitedProtocol, None] = {}
        self.closed: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)

    def admit(self, protocol: _LimitedProtocol) -> bool:
        """Count a new connection; at the cap, evict the longest-waiting one first. False if
        every connection is being served (the new one must be closed)."""
        if self.open >= self.cap:
            if not self._waiting:
                self.closed["over_capacity"] += 1
                return False
            victim = next(iter(self._waiting))
            self.closed["evicted"] += 1
            victim.drop()
        self.open += 1
        return True

    def waiting(self, protocol: _LimitedProtocol) -> None:
        """``protocol`` waits for a request (evictable), from now."""
        self._waiting.pop(protocol, None)
        self._waiting[protocol] = None

    def serving(self, protocol: _LimitedProtocol) -> None:
        """``protocol``'s request is being served (not evictable)."""
        self._waiting.pop(protocol, None)

    def gone(self, protocol: _LimitedProtocol, *, counted: bool) -> None:
        """``protocol``'s connection is closed."""
        self._waiting.pop(protocol, None)
        if counted:
            self.open -= 1


class _LimitedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the read timeout and the connection cap."""

    limiter: ClassVar[ConnectionLimiter]
    read_timeout: ClassVar[float]

    _read_timer: asyncio.TimerHandle | None = None
    _counted = False
    _served_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
    protocol = type(
        "LimitedH11Protocol",
        (_LimitedProtocol,),
        {"limiter": limiter or ConnectionLimiter(), "read_timeout": read_timeout},
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
        backlog=LISTEN_BACKLOG,
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
