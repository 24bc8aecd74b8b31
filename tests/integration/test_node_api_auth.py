"""The node's ``/v1/ping`` answers loopback callers and callers with a JWT-SVID only.

The real node app (``node/http.py``) of a real, unstarted :class:`NodeAgent`, whose Workload
API is the real embedded issuer; requests arrive from the client address the test chooses
(httpx's ASGI transport). A request that passes the gate reaches the ping handler, which
answers ``unknown_target`` (the agent is not running): that is how the test tells "let in"
from "refused" without sending a ping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.controller_support import NODE_A, Identity, running_issuer
from x0tta6bl4.identity import NODE_API_AUDIENCE
from x0tta6bl4.node.agent import NodeAgent
from x0tta6bl4.node.api_auth import is_loopback
from x0tta6bl4.node.config import NodeSettings
from x0tta6bl4.node.http import build_app

pytestmark = pytest.mark.timeout(120)

PING = "/v1/ping?target=node-b&count=1&timeout=1"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    ids = ("spiffe://evil.example/ns/mesh/sa/node-a",)
    with running_issuer(tmp_path_factory.mktemp("foreign"), "evil.example", ids) as ident:
        yield ident


def _agent(identity: Identity, tmp_path: Path) -> NodeAgent:
    settings = NodeSettings(
        node_id="node-a",
        state_dir=tmp_path,
        spiffe_socket=str(identity.issuer.socket_path),
    )
    return NodeAgent(settings)


def _client(agent: NodeAgent, host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=build_app(agent), client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://node")


async def test_ping_refuses_remote_callers_without_a_jwt_svid(
    identity: Identity, foreign: Identity, tmp_path: Path
) -> None:
    agent = _agent(identity, tmp_path)
    async with _client(agent, "10.1.2.3") as remote:
        r = await remote.get(PING)
        assert r.status_code == 401
        assert r.json()["error"] == "missing_credentials"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await remote.get(PING, headers={"Authorization": "Bearer not.a.jwt"})
        assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
        # A token for the controller is not one for the node.
        token = identity.token(NODE_A)
        r = await remote.get(PING, headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json()["error"]) == (401, "wrong_audience")
        # Another trust domain's token, for the right audience: refused.
        other = foreign.token("spiffe://evil.example/ns/mesh/sa/node-a", NODE_API_AUDIENCE)
        r = await remote.get(PING, headers={"Authorization": f"Bearer {other}"})
        assert r.status_code in (401, 403)
        # The reading routes stay open (probes, Prometheus, check).
        for path in ("/health", "/metrics", "/v1/status"):
            assert (await remote.get(path)).status_code == 200, path


async def test_ping_lets_in_loopback_and_trust_domain_callers(
    identity: Identity, tmp_path: Path
) -> None:
    agent = _agent(identity, tmp_path)
    token = identity.token(NODE_A, NODE_API_AUDIENCE)
    async with _client(agent, "10.1.2.3") as remote:
        r = await remote.get(PING, headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json()["error"]) == (404, "unknown_target")
    for host in ("127.0.0.1", "127.9.9.9", "::1"):
        async with _client(agent, host) as local:
            r = await local.get(PING)
            assert (r.status_code, r.json()["error"]) == (404, "unknown_target"), host


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("fd00::1", False),
        ("localhost", False),  # a name, not an address: never trusted
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
