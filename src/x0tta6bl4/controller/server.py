"""Running the controller app on uvicorn, with graceful shutdown.

On SIGTERM (Kubernetes stopping the pod) or SIGINT uvicorn stops accepting connections, lets
running requests finish (up to ``graceful_timeout`` seconds; long-poll watches are cut at that
point and nodes simply watch again elsewhere), then runs the app's shutdown: background work
stops, the leader lease is released, the store is closed.
"""

from __future__ import annotations

import uvicorn

from x0tta6bl4.controller.app import create_app
from x0tta6bl4.controller.config import ControllerSettings

__all__ = ["build_server", "serve"]


def build_server(settings: ControllerSettings, *, graceful_timeout: int = 10) -> uvicorn.Server:
    """A configured (not yet running) uvicorn server for the controller app.

    Raises the errors of :func:`~x0tta6bl4.controller.app.create_app` (CA, admin token).
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        lifespan="on",
        log_config=None,  # x0tta6bl4.logging configures the root logger
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(settings: ControllerSettings) -> None:
    """Run the controller until SIGTERM/SIGINT; raises SystemExit(1) if startup failed."""
    server = build_server(settings)
    server.run()
    if not server.started:
        raise SystemExit(1)
