"""Running the controller app on uvicorn: the TLS and plain-HTTP listeners, graceful shutdown.

One uvicorn server serves two sockets (:mod:`x0tta6bl4.controller.listeners` says what each
serves): ``--tls-listen`` (default ``0.0.0.0:8443``), TLS 1.3 with the controller's
X.509-SVID and mutual TLS, and ``--listen`` (default ``0.0.0.0:8080``), plain HTTP for
``/health``, ``/ready``, ``/metrics`` and ``/ui`` only. Its first log line says both.

On SIGTERM (Kubernetes stopping the pod) or SIGINT uvicorn stops accepting connections, lets
running requests finish (up to ``graceful_timeout`` seconds; long-poll watches are cut at that
point and nodes simply watch again elsewhere), then runs the app's shutdown: background work
stops, the leader lease is released, the store is closed.

Both listeners are built by :func:`x0tta6bl4.httpserver.limited_config` (read and keep-alive
timeouts, the connection cap, header size) and share one
:class:`~x0tta6bl4.httpserver.ConnectionLimiter` of ``--max-connections``; a connection still
in its TLS handshake counts against it too.
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from x0tta6bl4.controller.app import ControllerApp, create_app
from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.controller.listeners import ControllerTls
from x0tta6bl4.controller.startup import StartupRefusedError
from x0tta6bl4.httpserver import ConnectionLimiter, limited_config
from x0tta6bl4.logging import get_logger
from x0tta6bl4.tls.credentials import CredentialSource
from x0tta6bl4.tls.server import listener_protocol

__all__ = ["ControllerServer", "build_server", "serve", "where_message"]

_log = get_logger(__name__)


def where_message(settings: ControllerSettings) -> str:
    """The first log line: where TLS and plain HTTP are served."""
    return (
        f"x0tta6bl4 controller: API over TLS (mutual, X.509-SVID; every route) on "
        f"{settings.tls_listen}; plain HTTP on {settings.listen} for /health, /ready, /metrics "
        "and /ui only"
    )


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for
    # sockets that say so (with proto 0 every small response waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ControllerServer:
    """The uvicorn server and its two bound sockets (plain, TLS)."""

    def __init__(
        self, server: uvicorn.Server, plain: socket.socket, tls: socket.socket, app: ControllerApp
    ) -> None:
        self.server = server
        self.plain = plain
        self.tls = tls
        self.app = app

    @property
    def plain_port(self) -> int:
        port: int = self.plain.getsockname()[1]
        return port

    @property
    def tls_port(self) -> int:
        port: int = self.tls.getsockname()[1]
        return port

    async def serve(self) -> None:
        """Serve until ``server.should_exit`` (the caller's loop)."""
        await self.server.serve(sockets=[self.plain, self.tls])

    def run(self) -> None:
        """Serve on a new loop until SIGTERM/SIGINT."""
        self.server.run(sockets=[self.plain, self.tls])

    def close(self) -> None:
        """Close the sockets (after serving)."""
        self.plain.close()
        self.tls.close()


def build_server(
    settings: ControllerSettings,
    *,
    graceful_timeout: int = 10,
    tls_credentials: CredentialSource | None = None,
) -> ControllerServer:
    """A configured (not yet running) server for the controller app, its sockets bound.

    ``tls_credentials`` replaces the X.509-SVID fetched from the Workload API (tests). Raises
    the errors
    of :func:`~x0tta6bl4.controller.app.create_app` (CA, admin token, store URL) and OSError
    when a listen address cannot be bound.
    """
    limiter = ConnectionLimiter(settings.max_connections)
    app = create_app(settings, limiter=limiter, tls_credentials=tls_credentials)
    controller_tls: ControllerTls = app.state.controller.tls
    config = limited_config(
        app,
        settings.listen_host,
        settings.listen_port,
        limiter=limiter,
        lifespan="on",
        proxy_headers=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    inner = config.http
    assert isinstance(inner, type)
    assert issubclass(inner, H11Protocol)
    # limited_config counted the plain listener; the TLS one's accept bursts take
    # descriptors too (the cap shrinks to keep them).
    limiter.add_listener()
    plain = _bind(settings.listen_host, settings.listen_port, limiter.backlog)
    try:
        tls_sock = _bind(settings.tls_host, settings.tls_port, limiter.backlog)
    except OSError:
        plain.close()
        raise
    controller_tls.options.tls_ports = frozenset({tls_sock.getsockname()[1]})
    config.http = listener_protocol(controller_tls.options, inner)
    return ControllerServer(uvicorn.Server(config), plain, tls_sock, app)


def serve(settings: ControllerSettings) -> None:
    """Run the controller until SIGTERM/SIGINT. Raises
    :class:`~x0tta6bl4.controller.startup.StartupRefusedError` (with the reason) when the store
    checks refused the start, ValueError when a listen address cannot be bound, SystemExit(1)
    if startup failed otherwise."""
    _log.info(where_message(settings), tls=settings.tls_listen, http=settings.listen)
    try:
        server = build_server(settings)
    except OSError as err:
        raise ValueError(f"cannot listen: {err.strerror or err}") from None
    try:
        server.run()  # exits (SystemExit 3) itself when the startup failed
    except SystemExit:
        error = getattr(server.app.state, "startup_error", None)
        if error:
            raise StartupRefusedError(error) from None
        raise
    finally:
        server.close()
    if not server.server.started:
        raise SystemExit(1)
