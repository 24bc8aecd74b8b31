"""The node's HTTP server (port 7811): health, readiness, metrics, status, local ping.

``GET /health`` 200 while the process runs; ``GET /ready`` 200 once registered and at least one
link is up (or the node is alone in the mesh), else 503 with the reason; ``GET /metrics``
Prometheus text; ``GET /v1/status`` JSON (links with state and RTT, routes, end-to-end
sessions, PQ SVID expiry, counters); ``GET /v1/ping?target=T&count=N&timeout=S`` runs mesh
pings from this node (``x0tta6bl4 ping`` calls it) for loopback callers and callers with a
JWT-SVID of the trust domain (:mod:`x0tta6bl4.node.api_auth`).

The server has the limits of :mod:`x0tta6bl4.httpserver` (read and keep-alive timeouts, at most
:data:`NODE_MAX_CONNECTIONS` connections with the longest-waiting one evicted, header and body
sizes); ``/metrics`` reports its connections (``x0tta6bl4_node_api_connections*``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from x0tta6bl4.httpserver import (
    NODE_MAX_BODY_BYTES,
    BodyLimit,
    ConnectionCollector,
    ConnectionLimiter,
    limited_config,
)
from x0tta6bl4.node.api_auth import ApiAuth
from x0tta6bl4.node.metrics import node_registry

if TYPE_CHECKING:
    from x0tta6bl4.node.agent import NodeAgent

__all__ = [
    "NODE_MAX_CONNECTIONS",
    "NODE_PING_MAX_COUNT",
    "NODE_PING_MAX_TIMEOUT",
    "build_app",
    "serve_http",
]

NODE_MAX_CONNECTIONS = 64
"""Cap on the open connections of the node's HTTP API (probes, Prometheus, ``check``)."""
NODE_PING_MAX_COUNT = 100
"""Most mesh pings one ``/v1/ping`` request may ask for (``count``)."""
NODE_PING_MAX_TIMEOUT = 30.0
"""Longest wait for one mesh ping's answer that ``/v1/ping`` accepts (``timeout``, seconds)."""


def build_app(agent: NodeAgent, *, limiter: ConnectionLimiter | None = None) -> Starlette:
    """The Starlette app serving ``agent``; ``limiter``, the connection limiter of the server
    it runs on, is reported in ``/metrics``."""
    registry = node_registry(lambda: agent.core, lambda: agent.registered)
    if limiter is not None:
        registry.register(ConnectionCollector(limiter, "x0tta6bl4_node_api", "the node's API"))

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        ok, reason = agent.ready()
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "reason": reason},
            status_code=200 if ok else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def status(_: Request) -> Response:
        return JSONResponse(agent.status())

    auth = ApiAuth(agent.jwt_bundles, agent.settings.trust_domain)

    async def ping(request: Request) -> Response:
        refusal = await auth.refuse(request)
        if refusal is not None:
            return refusal
        params = request.query_params
        target = params.get("target", "")
        try:
            count = int(params.get("count", "3"))
            timeout = float(params.get("timeout", "2"))
            if not 1 <= count <= NODE_PING_MAX_COUNT or not 0 < timeout <= NODE_PING_MAX_TIMEOUT:
                raise ValueError
        except ValueError:
            detail = (
                f"count 1..{NODE_PING_MAX_COUNT}, timeout (0, {NODE_PING_MAX_TIMEOUT:g}] seconds"
            )
            return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=400)
        try:
            dest = agent.resolve(target)
        except ValueError as exc:
            return JSONResponse({"error": "unknown_target", "detail": str(exc)}, status_code=404)
        results: list[dict[str, Any]] = []
        for seq in range(count):
            core = agent.core
            route = None if core is None else core.router.route(dest)
            try:
                rtt = await agent.ping(dest, timeout)
                results.append(
                    {
                        "seq": seq,
                        "rtt_ms": round(rtt * 1e3, 3),
                        "path": [agent.node_id, *(route.path if route else ())],
                    }
                )
            except (TimeoutError, ValueError) as exc:
                results.append({"seq": seq, "rtt_ms": None, "error": type(exc).__name__})
        received = sum(1 for r in results if r["rtt_ms"] is not None)
        return JSONResponse(
            {
                "source": agent.node_id,
                "target": target,
                "node_id": dest,
                "sent": count,
                "received": received,
                "results": results,
            },
            status_code=200 if received else 504,
        )

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
            Route("/v1/status", status),
            Route("/v1/ping", ping),
        ]
    )


async def serve_http(agent: NodeAgent, listen: tuple[str, int], stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, with the limits of :mod:`x0tta6bl4.httpserver` (at most
    :data:`NODE_MAX_CONNECTIONS` connections, bodies of :data:`NODE_MAX_BODY_BYTES`)."""
    limiter = ConnectionLimiter(NODE_MAX_CONNECTIONS)
    config = limited_config(
        BodyLimit(build_app(agent, limiter=limiter), NODE_MAX_BODY_BYTES),
        listen[0],
        listen[1],
        limiter=limiter,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
