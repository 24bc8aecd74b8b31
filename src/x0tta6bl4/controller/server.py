"""Running the controller app on uvicorn, with graceful shutdown.

On SIGTERM (Kubernetes stopping the pod) or SIGINT uvicorn stops accepting connections, lets
running requests finish (up to ``graceful_timeout`` seconds; long-poll watches are cut at that
point and nodes simply watch again elsewhere), then runs the app's shutdown: background work
stops, the leader lease is released, the store is closed.

Every listener is built by :func:`x0tta6bl4.httpserver.limited_config` (read and keep-alive
timeouts, the connection cap, header size) and shares one
:class:`~x0tta6bl4.httpserver.ConnectionLimiter` of ``--max-connections``.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from x0tta6bl4.controller.app import create_app
from x0tta6bl4.controller.config import ControllerSettings
from x0tta6bl4.controller.startup import StartupRefusedError
from x0tta6bl4.httpserver import ConnectionLimiter, limited_config

__all__ = ["build_server", "serve"]


def _build(settings: ControllerSettings, graceful_timeout: int) -> tuple[uvicorn.Server, Any]:
    limiter = ConnectionLimiter(settings.max_connections)
    app = create_app(settings, limiter=limiter)
    config = limited_config(
        app,
        settings.listen_host,
        settings.listen_port,
        limiter=limiter,
        lifespan="on",
        proxy_headers=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    return uvicorn.Server(config), app


def build_server(settings: ControllerSettings, *, graceful_timeout: int = 10) -> uvicorn.Server:
    """A configured (not yet running) uvicorn server for the controller app.

    Raises the errors of :func:`~x0tta6bl4.controller.app.create_app` (CA, admin token).
    """
    return _build(settings, graceful_timeout)[0]


def serve(settings: ControllerSettings) -> None:
    """Run the controller until SIGTERM/SIGINT. Raises
    :class:`~x0tta6bl4.controller.startup.StartupRefusedError` (with the reason) when the store
    checks refused the start, SystemExit(1) if startup failed otherwise."""
    server, app = _build(settings, 10)
    try:
        server.run()  # exits (SystemExit 3) itself when the startup failed
    except SystemExit:
        error = getattr(app.state, "startup_error", None)
        if error:
            raise StartupRefusedError(error) from None
        raise
    if not server.started:
        raise SystemExit(1)
