"""Fuzz harness: the node's HTTP API (port 7811), through its real Starlette app in process.

A :class:`NodeAgent` (never registered with a controller) gets a real data plane: a
:class:`MeshEndpoint` on a loopback UDP socket, linked to one more node of a
:class:`LocalMesh` (real handshake, real heartbeats), both knowing each other as members. Every
input is one HTTP request to ``build_app(agent)``: byte 0 picks ``/health``, ``/ready``,
``/metrics``, ``/v1/status`` or ``/v1/ping`` with the rest as its query string (``target``,
``count``, ``timeout``), or a raw ``METHOD path?query`` request line.

Checked: every answer is 2xx, 4xx, 503 from ``/ready`` (not registered) or 504 from
``/v1/ping`` (no echo came back), with a JSON body where the API promises one; nothing raises
out of the ASGI call.

    python fuzz/node_http.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fuzzlib

with fuzzlib.instrumented():
    from x0tta6bl4.node.agent import NodeAgent
    from x0tta6bl4.node.config import NodeSettings
    from x0tta6bl4.node.http import build_app
    from x0tta6bl4.node.localmesh import LocalMesh, issue_identity
    from x0tta6bl4.node.model import Member
    from x0tta6bl4.node.udp import open_endpoint

PATHS = ("/health", "/ready", "/metrics", "/v1/status", "/v1/ping", "RAW")


async def _start() -> tuple[NodeAgent, Any, LocalMesh]:
    agent = NodeAgent(NodeSettings(node_id="node-a", state_dir=fuzzlib.scratch("node")))
    mesh = LocalMesh(1, prefix="peer")
    await mesh.start()
    identity = issue_identity(mesh.ca, "node-a")
    agent.endpoint = await open_endpoint(
        identity,
        ("127.0.0.1", 0),
        config=mesh.config,
        on_app=agent._on_app,
        on_pong=agent._on_pong,
    )
    members = [
        *mesh.members(),
        Member(
            node_id="node-a",
            spiffe_id=identity.spiffe_id,
            endpoint=agent.endpoint.local_addr,
            overlay_ip="100.96.0.9",
            cert_der=identity.cert_der,
        ),
    ]
    for endpoint in (agent.endpoint, mesh.nodes["peer-000"].endpoint):
        endpoint.call(lambda core, now: core.set_members(members, now))
    await agent.ping("peer-000", 10.0)  # the link is up
    return agent, build_app(agent), mesh


LOOP = asyncio.new_event_loop()
AGENT, APP, MESH = LOOP.run_until_complete(_start())


async def request(method: str, path: str, query: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"node")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 7811),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    status = [0]
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await APP(scope, receive, send)
    return status[0], b"".join(chunks)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    path = PATHS[data[0] % len(PATHS)]
    method, query = "GET", data[1:]
    if path == "RAW":
        line = data[1:].decode("latin-1")
        method, _, target = line.partition(" ")
        if not method or not target.startswith("/"):
            return
        path, _, raw_query = target.partition("?")
        query = raw_query.encode("latin-1")
    status, body = LOOP.run_until_complete(request(method, path, query))
    allowed = 200 <= status < 500 or (path, status) in (("/ready", 503), ("/v1/ping", 504))
    assert allowed, f"{method} {path}?{query[:100]!r} answered {status}: {body[:300]!r}"
    if path in ("/ready", "/v1/status", "/v1/ping") and status in (200, 400, 404, 503, 504):
        assert isinstance(json.loads(body), dict)


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
