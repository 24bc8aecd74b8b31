"""The node's reading of the membership answer: serials, the member-certificate cache keyed
by serial, and hostile ``revoked`` lists (oversize, malformed) refused without changing the
membership the node holds.

The agent under test is a real :class:`NodeAgent` with a real :class:`MeshEndpoint` (its
sans-IO core, no socket); the controller is a test controller answering the three calls a
refresh makes (``list_nodes``, ``get_node``, ``get_policy``) with what the test hands it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.agent import NodeAgent
from x0tta6bl4.node.config import NodeSettings
from x0tta6bl4.node.control import ControllerError
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.membership import MAX_REVOKED, MembershipError, parse_revoked, parse_serial
from x0tta6bl4.node.model import NodeIdentity, RevokedCert
from x0tta6bl4.node.udp import MeshEndpoint


def _pem(identity: NodeIdentity) -> str:
    cert = x509.load_der_x509_certificate(identity.cert_der)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _serial(identity: NodeIdentity) -> int:
    return int(x509.load_der_x509_certificate(identity.cert_der).serial_number)


class TestController:
    """Answers a node's refresh with the listing the test sets; counts certificate fetches."""

    __test__ = False

    def __init__(self, members: dict[str, NodeIdentity]) -> None:
        self.members = members
        self.revoked: Any = []
        self.fetches = 0
        self.overrides: dict[str, Any] = {}

    async def list_nodes(self) -> dict[str, Any]:
        nodes = [
            {
                "node_id": node_id,
                "spiffe_id": ident.spiffe_id,
                "endpoint": "127.0.0.1:7811",
                "overlay_ip": "100.96.0.9",
                "pq_svid_not_after": ident.not_after,
                "pq_svid_serial": format(_serial(ident), "x"),
            }
            | self.overrides
            for node_id, ident in self.members.items()
        ]
        return {"revision": 7, "nodes": nodes, "revoked": self.revoked}

    async def get_node(self, node_id: str) -> dict[str, Any]:
        self.fetches += 1
        return {"pq_svid": _pem(self.members[node_id])}

    async def get_policy(self) -> dict[str, Any]:
        return {"rules": []}


@pytest.fixture
def ca() -> MeshCA:
    return MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())


async def _agent(ca: MeshCA, tmp_path: Path, controller: TestController) -> NodeAgent:
    agent = NodeAgent(NodeSettings(node_id="node-a", state_dir=tmp_path))
    agent.endpoint = MeshEndpoint(issue_identity(ca, "node-a"))
    agent._client = controller  # type: ignore[assignment]
    return agent


async def test_member_certificates_are_cached_by_serial(ca: MeshCA, tmp_path: Path) -> None:
    b, c = issue_identity(ca, "node-b"), issue_identity(ca, "node-c")
    controller = TestController({"node-b": b, "node-c": c})
    agent = await _agent(ca, tmp_path, controller)
    await agent.refresh()
    assert controller.fetches == 2
    await agent.refresh()
    assert controller.fetches == 2  # same serials: nothing fetched again
    controller.members["node-b"] = issue_identity(ca, "node-b")  # a new certificate
    await agent.refresh()
    assert controller.fetches == 3
    assert agent.core is not None
    assert set(agent.core.members) == {"node-b", "node-c"}
    assert len(agent._member_cache) == 2  # only the current members' certificates


@pytest.mark.parametrize(
    ("revoked", "reason"),
    [
        ("not a list", "must be a list"),
        ([{"serial": "ab", "node_id": "node-b", "not_after": 1e12}] * (MAX_REVOKED + 1), "at most"),
        ([{"serial": "AB", "node_id": "node-b", "not_after": 1e12}], "hex"),
        ([{"serial": "0", "node_id": "node-b", "not_after": 1e12}], "positive"),
        ([{"serial": "a" * 41, "node_id": "node-b", "not_after": 1e12}], "hex"),
        ([{"serial": "ab", "node_id": "../x", "not_after": 1e12}], "node ID"),
        ([{"serial": "ab", "node_id": "node-b", "not_after": True}], "finite"),
        ([{"serial": "ab", "node_id": "node-b", "not_after": float("inf")}], "finite"),
        ([{"serial": "ab", "node_id": "node-b"}], "serial, node_id, not_after"),
        ([{"serial": "ab", "node_id": "node-b", "not_after": 1, "x": 1}], "serial, node_id"),
        (["ab"], "serial, node_id"),
    ],
)
async def test_a_hostile_revoked_list_is_refused_and_changes_nothing(
    ca: MeshCA, tmp_path: Path, revoked: Any, reason: str
) -> None:
    b = issue_identity(ca, "node-b")
    controller = TestController({"node-b": b})
    controller.revoked = [{"serial": "1f", "node_id": "node-x", "not_after": time.time() + 60}]
    agent = await _agent(ca, tmp_path, controller)
    await agent.refresh()
    assert agent.core is not None
    before = (agent.core.members, agent.core.revoked_serials(), agent.revision)
    controller.revoked = revoked
    controller.members = {}  # were the answer used, the membership would empty
    with pytest.raises(ControllerError, match=reason) as caught:
        await agent.refresh()
    assert caught.value.error == "bad_response"
    assert (agent.core.members, agent.core.revoked_serials(), agent.revision) == before
    assert agent.core.revoked_serials() == {0x1F: pytest.approx(time.time() + 60, abs=5)}


async def test_a_malformed_member_serial_is_refused_and_changes_nothing(
    ca: MeshCA, tmp_path: Path
) -> None:
    controller = TestController({"node-b": issue_identity(ca, "node-b")})
    agent = await _agent(ca, tmp_path, controller)
    await agent.refresh()
    assert agent.core is not None
    members = agent.core.members
    controller.overrides = {"pq_svid_serial": "0x1f"}
    with pytest.raises(ControllerError, match="pq_svid_serial"):
        await agent.refresh()
    assert agent.core.members == members


async def test_a_listing_without_serials_still_works(ca: MeshCA, tmp_path: Path) -> None:
    """A controller of an earlier version lists no serial and no revocations: every refresh
    fetches the certificates (the serial is read from them)."""
    controller = TestController({"node-b": issue_identity(ca, "node-b")})
    controller.overrides = {"pq_svid_serial": None}
    controller.revoked = None
    agent = await _agent(ca, tmp_path, controller)
    await agent.refresh()
    await agent.refresh()
    assert controller.fetches == 2
    assert agent.core is not None
    assert set(agent.core.members) == {"node-b"}


def test_parse_revoked_and_serials() -> None:
    assert parse_revoked(None) == []
    assert parse_revoked([{"serial": "1f", "node_id": "n1", "not_after": 5}]) == [
        RevokedCert(0x1F, "n1", 5.0)
    ]
    assert parse_serial("f" * 40) == (1 << 160) - 1
    for bad in ("", "-1", " 1", "1 ", 31, None, "g"):
        with pytest.raises(MembershipError):
            parse_serial(bad)
