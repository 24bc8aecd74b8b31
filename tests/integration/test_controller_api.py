"""The controller API against a real embedded SPIFFE issuer (Workload API on a Unix socket),
a real SQLite store and the real mesh CA: every endpoint, every auth failure, bad input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, X509Bundle, X509BundleSet, X509Svid

from tests.integration.controller_support import (
    ADMIN_ID,
    ADMIN_TOKEN,
    CHECK_ID,
    CONTROLLER_ID,
    LONG_NODE_NAME,
    NODE_A,
    NODE_A_TWIN,
    NODE_B,
    NODE_DEV,
    NODE_LONG,
    PRESENTED,
    TD,
    ControllerClients,
    Identity,
    bearer,
    controller,
    controller_settings,
    free_port,
    pop_fields,
    register_body,
    rotation_body,
    running_controller,
    running_issuer,
    spawn_controller,
    wait_ready,
)
from x0tta6bl4.controller.ca import rotate_ca_dir
from x0tta6bl4.controller.registration import KEY_REBIND_AFTER
from x0tta6bl4.crypto.pqsvid import TrustBundle, verify_svid
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity.issuer.authority import Authority
from x0tta6bl4.identity.node_ids import node_id_from_name
from x0tta6bl4.identity.spiffe_ids import parse_spiffe_id, parse_trust_domain
from x0tta6bl4.node.config import NodeSettings
from x0tta6bl4.tls.client import tls_client
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    """An issuer of another trust domain (evil.example) naming the same paths."""
    ids = ("spiffe://evil.example/ns/mesh/sa/node-a",)
    with running_issuer(tmp_path_factory.mktemp("foreign"), "evil.example", ids) as ident:
        yield ident


@pytest.fixture(scope="module")
def tokens(identity: Identity) -> dict[str, str]:
    return {sid: identity.token(sid) for sid in (NODE_A, NODE_B, NODE_DEV, ADMIN_ID)}


@pytest.fixture
async def ctl(tmp_path: Path, identity: Identity) -> AsyncIterator[tuple[Any, ControllerClients]]:
    async with controller(tmp_path / "ctl", identity) as pair:
        yield pair


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


ADMIN = bearer(ADMIN_TOKEN)


async def _nodes(client: ControllerClients) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/nodes", headers=ADMIN)
    assert r.status_code == 200
    nodes: list[dict[str, Any]] = r.json()["nodes"]
    return nodes


async def _register(
    client: ControllerClients, key: SigningKey, sid: str, node_id: str, **kw: Any
) -> httpx.Response:
    """Register ``node_id`` as ``sid``: mutual TLS with ``sid``'s X.509-SVID, as nodes do."""
    return await client.tls(sid).post(
        "/api/v1/nodes/register",
        json=register_body(key, spiffe_id=sid, node_id=node_id, **kw),
    )


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split()[0] == name):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def _metric_labels(text: str, prefix: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.split()[-1])
            found = True
    assert found, prefix
    return total


# --------------------------------------------------------------------------- system


async def test_health_ready_metrics_openapi(ctl: tuple[Any, ControllerClients]) -> None:
    _, client = ctl
    r = await client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["store"] is True
    assert r.json()["mesh_ca"] is True
    r = await client.get("/metrics")
    assert r.status_code == 200
    for name in (
        "x0tta6bl4_mesh_nodes_total",
        "x0tta6bl4_store_up",
        "x0tta6bl4_pq_svids_issued_total",
        "x0tta6bl4_registrations_rejected_total",
        "x0tta6bl4_api_request_duration_seconds",
    ):
        assert name in r.text
    assert _metric(r.text, "x0tta6bl4_store_up") == 1.0
    assert 'x0tta6bl4_api_requests_total{method="GET",route="/health",status="200"} 1.0' in r.text
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/api/v1/nodes/register",
        "/api/v1/nodes/{node_id}/renew",
        "/api/v1/nodes",
        "/api/v1/nodes/{node_id}",
        "/api/v1/nodes/{node_id}/status",
        "/api/v1/topology",
        "/api/v1/policy",
        "/api/v1/watch",
        "/api/v1/bundle",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert path in spec["paths"], path


async def test_ready_is_503_when_store_closed(ctl: tuple[Any, ControllerClients]) -> None:
    app, client = ctl
    state = app.state.controller
    await state.store.close()
    state.store_open = False
    r = await client.get("/ready")
    assert r.status_code == 503
    assert r.json()["reasons"] == ["store_unreachable"]
    assert (await client.get("/health")).status_code == 200
    await state.store.open()
    state.store_open = True
    assert (await client.get("/ready")).status_code == 200


# --------------------------------------------------------------------------- registration


async def test_register_issues_pq_svid_address_and_bundle(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    r = await _register(client, key, NODE_A, "node-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["spiffe_id"] == NODE_A
    assert body["overlay_ip"].startswith("100.96.")
    assert body["revision"] >= 1
    assert time.time() < body["renew_after"] < body["pq_svid_not_after"]
    # The PQ SVID verifies against the bundle, names the node and carries our key.
    bundle = TrustBundle.from_pem(TD, body["ca_bundle"].encode())
    cert = x509.load_pem_x509_certificate(body["pq_svid"].encode())
    from cryptography.hazmat.primitives import serialization

    peer = verify_svid(cert.public_bytes(serialization.Encoding.DER), bundle, time.time())
    assert (peer.spiffe_id, peer.node_id) == (NODE_A, "node-1")
    assert peer.public_key_bytes == key.public_bytes
    assert body["pq_svid_not_after"] - time.time() <= 3600 + 1
    # Registering again keeps the address.
    again = await _register(client, key, NODE_A, "node-1")
    assert again.status_code == 200
    assert again.json()["overlay_ip"] == body["overlay_ip"]
    nodes = await _nodes(client)
    assert [n["node_id"] for n in nodes] == ["node-1"]
    metrics = (await client.get("/metrics")).text
    assert _metric(metrics, "x0tta6bl4_mesh_nodes_total") == 1.0
    assert 'x0tta6bl4_pq_svids_issued_total{kind="register"} 2.0' in metrics


async def test_renew(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    first = (await _register(client, key, NODE_A, "node-1")).json()
    new_key = SigningKey.generate()
    body = {
        "ml_dsa_public_key": base64.b64encode(new_key.public_bytes).decode(),
        "pop": pop_fields(new_key, spiffe_id=NODE_A, node_id="node-1"),
    }
    # A new key for a live node ID needs the previous key's rotation proof.
    r = await client.tls(NODE_A).post("/api/v1/nodes/node-1/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "node_id_taken")
    body = rotation_body(key, new_key, spiffe_id=NODE_A, node_id="node-1")
    del body["node_id"], body["endpoint"]
    r = await client.tls(NODE_A).post("/api/v1/nodes/node-1/renew", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["overlay_ip"] == first["overlay_ip"]
    assert r.json()["pq_svid"] != first["pq_svid"]
    detail = (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json()
    assert detail["ml_dsa_public_key"] == body["ml_dsa_public_key"]
    assert detail["endpoint"] == "127.0.0.1:7810"
    # Another identity may not renew node-1: it is taken, whether the node ID mapping binds
    # the caller to another node ID (NODE_B) or to the same node name (the twin).
    body["pop"] = pop_fields(new_key, spiffe_id=NODE_B, node_id="node-1")
    r = await client.tls(NODE_B).post("/api/v1/nodes/node-1/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "node_id_taken")
    body["pop"] = pop_fields(new_key, spiffe_id=NODE_A_TWIN, node_id="node-1")
    r = await client.tls(NODE_A_TWIN).post("/api/v1/nodes/node-1/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "node_id_taken")
    # An unknown node cannot be renewed (NODE_B is bound to node-b, never registered).
    body["pop"] = pop_fields(new_key, spiffe_id=NODE_B, node_id="node-b")
    r = await client.tls(NODE_B).post("/api/v1/nodes/node-b/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (404, "node_not_found")
    body["pop"] = pop_fields(new_key, spiffe_id=NODE_A, node_id="ghost")
    r = await client.tls(NODE_A).post("/api/v1/nodes/ghost/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (403, "node_id_not_bound")
    assert [n["node_id"] for n in await _nodes(client)] == ["node-1"]


async def test_a_node_id_is_admitted_only_for_the_spiffe_id_bound_to_it(
    ctl: tuple[Any, ControllerClients], key: SigningKey
) -> None:
    """Issue 12, point 1: the default node ID mapping (spiffe://<td>/**/node/{node}) binds
    each node SPIFFE ID to one node ID. Another node's ID, a SPIFFE ID naming no node (the
    controller's, the check job's), a long name's unshortened or truncated form: 403
    node_id_not_bound — or 409 node_id_taken when the node ID is registered to another SPIFFE
    ID (the issue's acceptance: an impostor asking for a live node's ID finds it taken) —
    counted, refused before the PoP is verified, and nothing is written."""
    app, client = ctl
    assert (await _register(client, key, NODE_B, "node-b")).status_code == 200
    before = (await client.get("/api/v1/nodes", headers=ADMIN)).json()
    shortened = node_id_from_name(LONG_NODE_NAME)
    refused = [
        (NODE_A, "node-2"),  # a free node ID that is not NODE_A's
        (NODE_B, "node-1"),
        (CONTROLLER_ID, "controller"),  # the pattern does not match: names no node
        (CONTROLLER_ID, "node-1"),
        (CHECK_ID, "check"),
        (NODE_LONG, LONG_NODE_NAME[:64]),  # truncated, not shortened as the node agent does
        (NODE_LONG, shortened[:-1] + ("0" if shortened[-1] != "0" else "1")),
    ]
    for sid, node_id in refused:
        r = await _register(client, key, sid, node_id)
        assert (r.status_code, r.json()["error"]) == (403, "node_id_not_bound"), (sid, r.text)
        assert sid in r.json()["detail"]
        # The renewal route too (node-b is registered: the binding decides, not the store).
        body = register_body(key, spiffe_id=sid, node_id=node_id)
        del body["node_id"], body["endpoint"]
        r = await client.tls(sid).post(f"/api/v1/nodes/{node_id}/renew", json=body)
        assert (r.status_code, r.json()["error"]) == (403, "node_id_not_bound"), (sid, r.text)
    # A live node's ID, under another node's SPIFFE ID: taken (register and renew).
    r = await _register(client, key, NODE_A, "node-b")
    assert (r.status_code, r.json()["error"]) == (409, "node_id_taken"), r.text
    body = register_body(key, spiffe_id=NODE_A, node_id="node-b")
    del body["node_id"], body["endpoint"]
    r = await client.tls(NODE_A).post("/api/v1/nodes/node-b/renew", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "node_id_taken"), r.text
    # Refused before the proof of possession is even looked at: a garbage signature gives
    # the same answers, and nothing was written (revision, records, nonces).
    for node_id, answer in (
        ("node-2", (403, "node_id_not_bound")),
        ("node-b", (409, "node_id_taken")),
    ):
        body = register_body(key, spiffe_id=NODE_A, node_id=node_id)
        body["pop"]["signature"] = base64.b64encode(b"x" * 3309).decode()
        r = await client.tls(NODE_A).post("/api/v1/nodes/register", json=body)
        assert (r.status_code, r.json()["error"]) == answer
    assert (await client.get("/api/v1/nodes", headers=ADMIN)).json() == before
    metrics = (await client.get("/metrics")).text
    count = 'x0tta6bl4_registrations_rejected_total{reason="node_id_not_bound"}'
    assert _metric_labels(metrics, count) == 2 * len(refused) + 1
    taken = 'x0tta6bl4_registrations_rejected_total{reason="node_id_taken"}'
    assert _metric_labels(metrics, taken) == 3
    assert 'x0tta6bl4_pq_svids_issued_total{kind="register"} 1.0' in metrics
    # The long name's node ID is the one the node agent derives from X0_NODE_NAME.
    assert shortened == NodeSettings(node_name=LONG_NODE_NAME).resolved_node_id()
    r = await _register(client, key, NODE_LONG, shortened)
    assert r.status_code == 200, r.text
    assert r.json()["node_id"] == shortened
    assert len(shortened) == 64
    assert app.state.controller.settings.node_mapping.node_id_for(NODE_LONG) == shortened


async def test_the_node_id_mapping_is_configurable(
    tmp_path: Path, identity: Identity, key: SigningKey
) -> None:
    """A narrower mapping admits only its namespace; ``none`` binds by first registration."""
    narrow = f"spiffe://{TD}/ns/mesh/sa/x0tta6bl4-app/node/{{node}}"
    async with controller(tmp_path / "a", identity, node_id_mapping=narrow) as (_, client):
        r = await _register(client, key, NODE_DEV, "dev-1")  # ns/dev: outside the pattern
        assert (r.status_code, r.json()["error"]) == (403, "node_id_not_bound")
        r = await _register(client, key, NODE_A_TWIN, "node-1")  # ns/mesh-b
        assert (r.status_code, r.json()["error"]) == (403, "node_id_not_bound")
        assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    async with controller(tmp_path / "b", identity, node_id_mapping="none") as (_, client):
        assert (await _register(client, key, NODE_B, "node-1")).status_code == 200
        assert (await _register(client, key, CONTROLLER_ID, "anything")).status_code == 200
        r = await _register(client, SigningKey.generate(), NODE_A, "node-1")
        assert (r.status_code, r.json()["error"]) == (409, "node_id_taken")


async def test_two_identities_racing_for_new_node_ids_one_wins(
    tmp_path: Path, identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    """Both identities register the same fresh node IDs at once: both usually pass the early
    ownership check, and the store's atomic check decides — one 200, one 409 per node ID.

    The shared-identity mode (node ID mapping ``none``), where any SPIFFE ID may claim any
    node ID: eight races at once. Under the default mapping the same race is two SPIFFE IDs
    naming one node (``NODE_A_TWIN``), decided by the same store check."""
    async with controller(tmp_path / "ctl", identity, node_id_mapping="none") as (_, client):
        await _race_for_node_ids(client, key)


async def _race_for_node_ids(client: ControllerClients, key: SigningKey) -> None:
    node_ids = [f"race-{i}" for i in range(8)]
    requests = [
        (node_id, sid, register_body(key, spiffe_id=sid, node_id=node_id))
        for node_id in node_ids
        for sid in (NODE_A, NODE_B)
    ]
    answers = await asyncio.gather(
        *(client.tls(sid).post("/api/v1/nodes/register", json=body) for _, sid, body in requests)
    )
    winners: dict[str, str] = {}
    for (node_id, sid, _), answer in zip(requests, answers, strict=True):
        if answer.status_code == 200:
            assert node_id not in winners, f"{node_id} was granted to both identities"
            assert answer.json()["spiffe_id"] == sid
            winners[node_id] = sid
        else:
            assert (answer.status_code, answer.json()["error"]) == (409, "node_id_taken")
    assert sorted(winners) == node_ids
    stored = {n["node_id"]: n["spiffe_id"] for n in await _nodes(client)}
    assert stored == winners
    metrics = (await client.get("/metrics")).text
    rejected = 'x0tta6bl4_registrations_rejected_total{reason="node_id_taken"}'
    assert _metric_labels(metrics, rejected) == len(node_ids)
    assert _metric_labels(metrics, 'x0tta6bl4_pq_svids_issued_total{kind="register"}') == len(
        node_ids
    )


# --------------------------------------------------------------------------- auth failures


async def _assert_rejected(
    client: ControllerClients, response: httpx.Response, status: int, reason: str
) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason
    assert isinstance(response.json()["detail"], str)
    assert await _nodes(client) == []


async def test_registration_auth_failures_change_nothing(
    ctl: tuple[Any, ControllerClients],
    identity: Identity,
    foreign: Identity,
    tokens: dict[str, str],
    key: SigningKey,
) -> None:
    _, client = ctl
    body = register_body(key, spiffe_id=NODE_A, node_id="node-1")
    url = "/api/v1/nodes/register"

    r = await client.post(url, json=body)
    await _assert_rejected(client, r, 401, "missing_credentials")
    r = await client.post(url, json=body, headers={"Authorization": "Basic abc"})
    await _assert_rejected(client, r, 401, "missing_credentials")
    r = await client.post(url, json=body, headers=bearer("not.a.jwt"))
    await _assert_rejected(client, r, 401, "invalid_token")

    # A token of another trust domain (its own issuer, same path).
    evil_sid = "spiffe://evil.example/ns/mesh/sa/node-a"
    evil = foreign.token(evil_sid)
    evil_body = register_body(key, spiffe_id=evil_sid, node_id="node-1")
    r = await client.post(url, json=evil_body, headers=bearer(evil))
    await _assert_rejected(client, r, 401, "wrong_trust_domain")

    # Wrong audience, from the real Workload API.
    r = await client.post(url, json=body, headers=bearer(identity.token(NODE_A, "someone-else")))
    await _assert_rejected(client, r, 401, "wrong_audience")

    # Expired: signed by the issuer's own key (same state directory), in the past.
    authority = Authority.load_or_create(identity.issuer.config.state_dir, parse_trust_domain(TD))
    old = authority.sign_jwt_svid(
        parse_spiffe_id(NODE_A), ["x0tta6bl4-controller"], 60, time.time() - 3600
    )
    r = await client.post(url, json=body, headers=bearer(old))
    await _assert_rejected(client, r, 401, "token_expired")

    # Tampered token: the payload names another subject, the signature is the original one.
    header, payload, sig = tokens[NODE_B].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = NODE_A
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = await client.post(url, json=body, headers=bearer(f"{header}.{forged_payload}.{sig}"))
    await _assert_rejected(client, r, 401, "invalid_token")

    # The admin token is not a node identity.
    r = await client.post(url, json=body, headers=ADMIN)
    await _assert_rejected(client, r, 403, "spiffe_identity_required")

    # A valid JWT-SVID without the client certificate is not enough for a node operation: a
    # token captured anywhere is worth nothing without the certificate (and its key).
    r = await client.post(url, json=body, headers=bearer(tokens[NODE_A]))
    await _assert_rejected(client, r, 401, "client_certificate_required")
    # Certificate and token must name the same SPIFFE ID.
    r = await client.tls(NODE_A).post(url, json=body, headers=bearer(tokens[NODE_B]))
    await _assert_rejected(client, r, 401, "identity_conflict")

    # A node ID the caller's SPIFFE ID is not bound to (checked before the PoP is verified).
    r = await client.tls(NODE_B).post(url, json=body)
    await _assert_rejected(client, r, 403, "node_id_not_bound")
    # PoP signed for another SPIFFE ID than the certificate's (bound to that certificate) / by
    # another key.
    twin_cert = PRESENTED[NODE_A_TWIN]
    misnamed = register_body(key, spiffe_id=NODE_A, node_id="node-1", credential_sha256=twin_cert)
    r = await client.tls(NODE_A_TWIN).post(url, json=misnamed)
    await _assert_rejected(client, r, 401, "pop_invalid")
    other = SigningKey.generate()
    forged = dict(body, pop=pop_fields(other, spiffe_id=NODE_A, node_id="node-1"))
    r = await client.tls(NODE_A).post(url, json=forged)
    await _assert_rejected(client, r, 401, "pop_invalid")

    # Timestamp outside ±60 s.
    for skew in (-120, 120):
        stale = register_body(
            key, spiffe_id=NODE_A, node_id="node-1", timestamp=int(time.time()) + skew
        )
        r = await client.tls(NODE_A).post(url, json=stale)
        await _assert_rejected(client, r, 401, "clock_skew")

    metrics = (await client.get("/metrics")).text
    assert _metric_labels(metrics, "x0tta6bl4_registrations_rejected_total") >= 11
    assert 'x0tta6bl4_pq_svids_issued_total{kind="register"} 0.0' in metrics


def _second_svid(identity: Identity, spiffe_id: str) -> StaticCredentials:
    """Another X.509-SVID of ``spiffe_id``, as valid as the one the issuer serves (signed by
    the same authority): the same identity, another client certificate."""
    authority = Authority.load_or_create(identity.issuer.config.state_dir, parse_trust_domain(TD))
    issued = authority.issue_x509_svid(parse_spiffe_id(spiffe_id), 600, time.time())
    key = serialization.load_der_private_key(issued.key_der, None)
    svid = X509Svid(SpiffeId(spiffe_id), [issued.certificate], key)
    td = SpiffeId(spiffe_id).trust_domain
    bundles = X509BundleSet.of(
        [X509Bundle(td, set(identity.issuer.x509_bundle().x509_authorities))]
    )
    return StaticCredentials(TlsCredentials.from_svid(svid, bundles, td))


async def test_a_proof_is_bound_to_the_credential_it_is_sent_with(
    ctl: tuple[Any, ControllerClients], identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    """Issue 12.2: the proof of possession (format 2) signs the SHA-256 of the client
    certificate it is sent with. A proof made under one certificate and replayed under another
    certificate of the same SPIFFE ID is refused (``proof_not_bound``), so is a format-1 proof
    (no credential), a rewritten credential field (``pop_invalid``: it is signed) and a rotation
    proof bound to another certificate; a captured JWT-SVID with its proof but without the
    client certificate is refused (``client_certificate_required``). Nothing is written."""
    _, client = ctl
    url = "/api/v1/nodes/register"
    second = _second_svid(identity, NODE_A)
    second_hash = second.current()[1].leaf_sha256
    assert second_hash is not None
    assert second_hash != PRESENTED[NODE_A]
    other = tls_client(client.api, second, CONTROLLER_ID, timeout=30)
    try:
        body = register_body(key, spiffe_id=NODE_A, node_id="node-1")  # bound to the first
        r = await other.post(url, json=body)
        await _assert_rejected(client, r, 401, "proof_not_bound")
        assert "another credential" in r.json()["detail"]
        # Naming the second certificate without re-signing: the signature covers the hash.
        relabelled = dict(body, pop=dict(body["pop"], credential_sha256=second_hash.hex()))
        r = await other.post(url, json=relabelled)
        await _assert_rejected(client, r, 401, "pop_invalid")
        # A format-1 proof names no credential.
        unbound = dict(body, pop={k: v for k, v in body["pop"].items() if k != "credential_sha256"})
        r = await client.tls(NODE_A).post(url, json=unbound)
        await _assert_rejected(client, r, 401, "proof_not_bound")
        assert "format" in r.json()["detail"]
        # The captured token and proof, without the client certificate.
        r = await client.post(url, json=body, headers=bearer(tokens[NODE_A]))
        await _assert_rejected(client, r, 401, "client_certificate_required")
        # ... or with the token and the other certificate.
        r = await other.post(url, json=body, headers=bearer(tokens[NODE_A]))
        await _assert_rejected(client, r, 401, "proof_not_bound")
        assert await _nodes(client) == []
        # Bound to the certificate it is sent with, either certificate of NODE_A registers.
        r = await client.tls(NODE_A).post(url, json=body)
        assert r.status_code == 200, r.text
        mine = register_body(key, spiffe_id=NODE_A, node_id="node-1", credential_sha256=second_hash)
        r = await other.post(url, json=mine)
        assert r.status_code == 200, r.text
        # A rotation proof bound to another certificate than the request's own proof.
        new_key = SigningKey.generate()
        rotated = rotation_body(key, new_key, spiffe_id=NODE_A, node_id="node-1")
        pop = pop_fields(
            new_key,
            spiffe_id=NODE_A,
            node_id="node-1",
            nonce=base64.b64decode(rotated["pop"]["nonce"]),
            timestamp=rotated["pop"]["timestamp"],
            credential_sha256=second_hash,
        )
        r = await other.post(url, json=dict(rotated, pop=pop))
        assert (r.status_code, r.json()["error"]) == (401, "pop_invalid"), r.text
        assert "rotation" in r.json()["detail"]
        detail = (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json()
        assert detail["ml_dsa_public_key"] == base64.b64encode(key.public_bytes).decode()
    finally:
        await other.aclose()
    metrics = (await client.get("/metrics")).text
    assert (
        _metric_labels(metrics, 'x0tta6bl4_registrations_rejected_total{reason="proof_not_bound"}')
        == 3
    )


async def test_pop_replay_is_refused(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    body = register_body(key, spiffe_id=NODE_A, node_id="node-1")
    first = await client.tls(NODE_A).post("/api/v1/nodes/register", json=body)
    assert first.status_code == 200
    before = await _nodes(client)
    again = await client.tls(NODE_A).post("/api/v1/nodes/register", json=body)
    assert (again.status_code, again.json()["error"]) == (401, "pop_replayed")
    assert await _nodes(client) == before


async def test_admin_apis_refuse_non_admins(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    policy = {"rules": [{"from": "*", "to": "*", "action": "link", "allow": True}]}
    for token in (tokens[NODE_A], tokens[NODE_B]):
        r = await client.delete("/api/v1/nodes/node-1", headers=bearer(token))
        assert (r.status_code, r.json()["error"]) == (403, "admin_required")
        r = await client.put("/api/v1/policy", json=policy, headers=bearer(token))
        assert (r.status_code, r.json()["error"]) == (403, "admin_required")
    r = await client.delete("/api/v1/nodes/node-1", headers=bearer("wrong-admin-token-xxxxxxxx"))
    assert r.status_code == 401
    assert [n["node_id"] for n in await _nodes(client)] == ["node-1"]
    assert (await client.get("/api/v1/policy", headers=ADMIN)).json()["revision"] == 0
    # Admin by SPIFFE ID and by token.
    r = await client.put("/api/v1/policy", json=policy, headers=bearer(tokens[ADMIN_ID]))
    assert r.status_code == 200, r.text
    r = await client.delete("/api/v1/nodes/node-1", headers=ADMIN)
    assert r.status_code == 204
    assert await _nodes(client) == []
    r = await client.delete("/api/v1/nodes/node-1", headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (404, "node_not_found")


async def test_reads_need_an_identity(
    ctl: tuple[Any, ControllerClients], foreign: Identity
) -> None:
    _, client = ctl
    evil = foreign.token("spiffe://evil.example/ns/mesh/sa/node-a")
    for path in (
        "/api/v1/nodes",
        "/api/v1/nodes/node-1",
        "/api/v1/topology",
        "/api/v1/policy",
        "/api/v1/watch?timeout=0",
        "/api/v1/bundle",
    ):
        r = await client.get(path)
        assert (r.status_code, r.json()["error"]) == (401, "missing_credentials"), path
        r = await client.get(path, headers=bearer(evil))
        assert (r.status_code, r.json()["error"]) == (401, "wrong_trust_domain"), path


# --------------------------------------------------------------------------- policy


async def test_policy_join_link_and_concurrency(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    r = await client.get("/api/v1/policy", headers=bearer(tokens[NODE_A]))
    assert r.json()["default"] is True
    assert r.headers["etag"] == '"0"'
    policy = {
        "rules": [
            {"from": f"spiffe://{TD}/ns/dev/**", "to": "*", "action": "link", "allow": False},
            {"from": f"spiffe://{TD}/ns/mesh/**", "to": "*", "action": "link", "allow": True},
        ]
    }
    r = await client.put("/api/v1/policy", json=policy, headers={**ADMIN, "If-Match": '"0"'})
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    assert revision > 0
    # A stale If-Match is refused and changes nothing.
    r = await client.put("/api/v1/policy", json={"rules": []}, headers={**ADMIN, "If-Match": '"0"'})
    assert (r.status_code, r.json()["error"]) == (412, "revision_mismatch")
    got = (await client.get("/api/v1/policy", headers=ADMIN)).json()
    assert got["revision"] == revision
    assert len(got["rules"]) == 2
    assert got["default"] is False
    # The dev identity may not join; mesh identities may.
    r = await _register(client, key, NODE_DEV, "dev-1")
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")
    assert await _nodes(client) == []
    r = await _register(client, key, NODE_A, "node-1")
    assert r.status_code == 200
    # Invalid policies: foreign trust domain, bad pattern, unknown field, wrong type.
    for bad, reason in (
        (
            {
                "rules": [
                    {"from": "spiffe://evil.example/x", "to": "*", "action": "link", "allow": True}
                ]
            },
            "invalid_policy",
        ),
        (
            {
                "rules": [
                    {
                        "from": "spiffe://x0tta6bl4.mesh/a//b",
                        "to": "*",
                        "action": "link",
                        "allow": True,
                    }
                ]
            },
            "invalid_policy",
        ),
        # Beyond the pattern limits (identity/spiffe_ids.py): named in the detail.
        (
            {
                "rules": [
                    {
                        "from": f"spiffe://{TD}/ns/**/sa/**",
                        "to": "*",
                        "action": "link",
                        "allow": True,
                    }
                ]
            },
            "invalid_policy",
        ),
        (
            {
                "rules": [
                    {
                        "from": f"spiffe://{TD}/ns/" + "*a" * 17,
                        "to": "*",
                        "action": "link",
                        "allow": True,
                    }
                ]
            },
            "invalid_policy",
        ),
        ({"rules": [], "extra": 1}, "unknown_field"),
        (
            {"rules": [{"from": "*", "to": "*", "action": "link", "allow": "yes"}]},
            "invalid_request",
        ),
        ({"rules": [{"from": "*", "to": "*", "action": "fly", "allow": True}]}, "invalid_request"),
    ):
        r = await client.put("/api/v1/policy", json=bad, headers=ADMIN)
        assert (r.status_code, r.json()["error"]) == (422, reason), bad
    # The reason names the limit that was passed.
    rule = {"from": f"spiffe://{TD}/ns/*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*ab/**", "to": "*"}
    r = await client.put(
        "/api/v1/policy", json={"rules": [{**rule, "action": "join", "allow": True}]}, headers=ADMIN
    )
    assert (r.status_code, r.json()["error"]) == (422, "invalid_policy")
    assert "more than 16 wildcards" in r.json()["detail"]
    # "²" is a digit to str.isdigit() but not to int() (a fuzz finding: it was a 500).
    for if_match in ("abc", '"\u00b2"', "\u00b2"):
        r = await client.put(
            "/api/v1/policy", json=policy, headers={**ADMIN, "If-Match": if_match.encode("latin-1")}
        )
        assert (r.status_code, r.json()["error"]) == (400, "invalid_if_match"), if_match
    assert (await client.get("/api/v1/policy", headers=ADMIN)).json()["revision"] == revision


async def test_policy_join_rules_decide_who_registers(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    policy = {
        "rules": [
            {"from": NODE_B, "to": "*", "action": "join", "allow": False},
            {"from": f"spiffe://{TD}/ns/mesh/**", "to": "*", "action": "join", "allow": True},
            {"from": "*", "to": "*", "action": "link", "allow": True},
        ]
    }
    r = await client.put("/api/v1/policy", json=policy, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["rules"] == policy["rules"]
    assert (await client.get("/api/v1/policy", headers=ADMIN)).json()["rules"] == policy["rules"]
    # The link rule lets everyone link, but the join rules decide who registers.
    r = await _register(client, key, NODE_DEV, "dev-1")  # no join rule: deny
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")
    r = await _register(client, key, NODE_B, "node-b")  # denied first
    assert (r.status_code, r.json()["error"]) == (403, "policy_denied")
    r = await _register(client, key, NODE_A, "node-1")
    assert r.status_code == 200, r.text
    assert [n["node_id"] for n in await _nodes(client)] == ["node-1"]
    # A join rule names no peer: any "to" but "*" is refused and changes nothing.
    revision = (await client.get("/api/v1/policy", headers=ADMIN)).json()["revision"]
    bad = {"rules": [{"from": "*", "to": NODE_A, "action": "join", "allow": True}]}
    r = await client.put("/api/v1/policy", json=bad, headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_policy")
    assert "'to' must be '*'" in r.json()["detail"]
    assert (await client.get("/api/v1/policy", headers=ADMIN)).json()["revision"] == revision


# --------------------------------------------------------------------------- status, topology


async def test_status_and_topology(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    assert (await _register(client, key, NODE_B, "node-b")).status_code == 200
    report = {"links": [{"peer": "node-b", "up": True, "rtt_ms": 1.5}]}
    r = await client.tls(NODE_A).put("/api/v1/nodes/node-1/status", json=report)
    assert r.status_code == 204, r.text
    # Another node may not report for node-1; unknown nodes are 404.
    r = await client.tls(NODE_B).put("/api/v1/nodes/node-1/status", json={"links": []})
    assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")
    r = await client.tls(NODE_B).put("/api/v1/nodes/ghost/status", json={"links": []})
    assert (r.status_code, r.json()["error"]) == (404, "node_not_found")
    topo = (await client.get("/api/v1/topology", headers=bearer(tokens[NODE_B]))).json()
    assert sorted(n["node_id"] for n in topo["nodes"]) == ["node-1", "node-b"]
    assert topo["links"] == [{"from": "node-1", "to": "node-b", "up": True, "rtt_ms": 1.5}]
    one = (await client.get("/api/v1/nodes/node-1", headers=bearer(tokens[NODE_B]))).json()
    assert one["links"] == [{"peer": "node-b", "up": True, "rtt_ms": 1.5}]
    assert one["pq_svid"].startswith("-----BEGIN CERTIFICATE-----")
    r = await client.get("/api/v1/nodes/ghost", headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (404, "node_not_found")


# --------------------------------------------------------------------------- watch


WAIT = 20.0  # a hang guard for awaited conditions, never a performance assertion


async def _watchers(client: httpx.AsyncClient) -> float:
    """The controller's ``x0tta6bl4_watchers`` gauge: watch requests open right now."""
    text = (await client.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("x0tta6bl4_watchers "))
    return float(line.split()[1])


async def _until(value: Callable[[], Awaitable[float]], expected: float) -> None:
    """Wait until ``await value()`` equals ``expected`` (polled every 10 ms; :data:`WAIT` is a
    hang guard)."""
    deadline = time.monotonic() + WAIT
    while await value() != expected:
        assert time.monotonic() < deadline, f"never reached {expected}"
        await asyncio.sleep(0.01)


async def test_watch_sees_registration(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    start = (await client.get("/api/v1/nodes", headers=ADMIN)).json()["revision"]
    waiter = asyncio.create_task(
        client.get(
            f"/api/v1/watch?from_revision={start}&timeout=30", headers=bearer(tokens[NODE_B])
        )
    )
    await _until(lambda: _watchers(client), 1.0)  # the watch is open and waiting
    assert not waiter.done()
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    r = await waiter
    assert r.status_code == 200
    events = r.json()["events"]
    assert events[0]["kind"] == "node_put"
    assert events[0]["node_id"] == "node-1"
    assert events[0]["node"]["spiffe_id"] == NODE_A
    assert r.json()["revision"] == events[-1]["revision"] > start
    # Nothing newer: an empty answer after the timeout.
    r = await client.get(
        f"/api/v1/watch?from_revision={r.json()['revision']}&timeout=0.1", headers=ADMIN
    )
    assert r.json()["events"] == []


async def test_watch_server_sent_events(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str], key: SigningKey
) -> None:
    _, client = ctl
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    headers = {**ADMIN, "Accept": "text/event-stream"}
    async with client.stream(
        "GET", "/api/v1/watch?from_revision=0&timeout=1", headers=headers
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = (await r.aread()).decode()
    assert "event: node_put" in text
    data = next(line for line in text.splitlines() if line.startswith("data: "))
    assert json.loads(data[6:])["node_id"] == "node-1"


async def test_sse_keeps_the_watch_across_keepalives(
    tmp_path: Path, identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    # A real server: the stream is read while it is open.
    async with controller(tmp_path / "ctl", identity, sse_keepalive_seconds=0.02) as (_, clients):
        headers = {**ADMIN, "Accept": "text/event-stream"}
        async with clients.tls().stream(
            "GET", "/api/v1/watch?from_revision=0&timeout=60", headers=headers, timeout=WAIT
        ) as r:
            chunks = r.aiter_text()
            text = ""

            async def read_until(needle: str, after: int = 0) -> None:
                nonlocal text
                while needle not in text[after:]:
                    text += await asyncio.wait_for(anext(chunks), WAIT)

            await read_until(": keep-alive")
            assert "event:" not in text  # nothing happened yet: only keep-alives
            registered = await _register(clients, key, NODE_A, "node-1")
            assert registered.status_code == 200
            await read_until("event: node_put")
            # The watch goes on after the event: more keep-alives, the event not sent again.
            await read_until(": keep-alive", after=text.index("event: node_put"))
    assert text.index(": keep-alive") < text.index("event: node_put")
    assert text.count("event: node_put") == 1


# --------------------------------------------------------------------------- bundle, rotation


async def test_bundle_and_ca_rotation(
    tmp_path: Path, identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    state_dir = tmp_path / "ctl"
    async with controller(state_dir, identity) as (app, client):
        r = await client.get("/api/v1/bundle", headers=bearer(tokens[NODE_A]))
        assert r.status_code == 200
        assert r.json()["trust_domain"] == TD
        assert len(TrustBundle.from_pem(TD, r.json()["ca_bundle"].encode())) == 1
        old = (await _register(client, key, NODE_A, "node-1")).json()
        rotate_ca_dir(state_dir / "ca", trust_domain=TD)
        app.state.controller.ca.load()
        bundle_pem = (await client.get("/api/v1/bundle", headers=ADMIN)).json()["ca_bundle"]
        bundle = TrustBundle.from_pem(TD, bundle_pem.encode())
        assert len(bundle) == 2
        new = (await _register(client, key, NODE_A, "node-1")).json()
        from cryptography.hazmat.primitives import serialization

        for issued in (old, new):
            der = x509.load_pem_x509_certificate(issued["pq_svid"].encode()).public_bytes(
                serialization.Encoding.DER
            )
            assert verify_svid(der, bundle, time.time()).node_id == "node-1"
        assert old["pq_svid"] != new["pq_svid"]
        old_issuer = x509.load_pem_x509_certificate(old["pq_svid"].encode()).issuer
        assert old_issuer == x509.load_pem_x509_certificates(bundle_pem.encode())[1].subject


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mutate", "status", "reason"),
    [
        (lambda b: b | {"extra": 1}, 422, "unknown_field"),
        (lambda b: b | {"node_id": 5}, 422, "invalid_request"),
        (lambda b: b | {"node_id": "bad id!"}, 422, "invalid_request"),
        (lambda b: b | {"node_id": "x" * 65}, 422, "invalid_request"),
        (lambda b: b | {"endpoint": "no-port"}, 422, "invalid_request"),
        (lambda b: b | {"ml_dsa_public_key": "AAAA"}, 422, "invalid_request"),
        (lambda b: b | {"ml_dsa_public_key": "!!!!"}, 422, "invalid_request"),
        (lambda b: {k: v for k, v in b.items() if k != "pop"}, 422, "invalid_request"),
        (
            lambda b: b | {"pop": b["pop"] | {"nonce": base64.b64encode(b"x" * 8).decode() * 3}},
            422,
            "invalid_request",
        ),
        (lambda b: b | {"pop": b["pop"] | {"timestamp": "now"}}, 422, "invalid_request"),
        (lambda b: b | {"pop": b["pop"] | {"signature": "AAAA"}}, 401, "pop_invalid"),
    ],
)
async def test_bad_registration_input(
    ctl: tuple[Any, ControllerClients],
    tokens: dict[str, str],
    key: SigningKey,
    mutate: Any,
    status: int,
    reason: str,
) -> None:
    _, client = ctl
    body = mutate(register_body(key, spiffe_id=NODE_A, node_id="node-1"))
    r = await client.tls(NODE_A).post("/api/v1/nodes/register", json=body)
    assert (r.status_code, r.json()["error"]) == (status, reason), r.text
    assert await _nodes(client) == []


async def test_malformed_and_oversized_bodies(
    ctl: tuple[Any, ControllerClients], tokens: dict[str, str]
) -> None:
    _, clients = ctl
    client = clients.tls(NODE_A)
    headers = {"Content-Type": "application/json"}
    r = await client.post("/api/v1/nodes/register", content=b"{not json", headers=headers)
    assert (r.status_code, r.json()["error"]) == (400, "malformed_json")
    big = b'{"node_id": "' + b"a" * (70 * 1024) + b'"}'
    r = await client.post("/api/v1/nodes/register", content=big, headers=headers)
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    r = await client.post("/api/v1/nodes/register", content=chunks(), headers=headers)
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
    r = await client.get("/api/v1/nope", headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await client.patch("/api/v1/nodes", headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    assert await _nodes(clients) == []


async def test_cidr_exhaustion_is_409_and_writes_nothing(
    tmp_path: Path, identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    async with controller(tmp_path / "ctl", identity, overlay_cidr="100.96.0.0/30") as (_, c):
        for sid, node_id in ((NODE_A, "node-1"), (NODE_B, "node-b")):
            r = await _register(c, key, sid, node_id)
            assert r.status_code == 200
        r = await _register(c, key, NODE_DEV, "dev-1")
        assert (r.status_code, r.json()["error"]) == (409, "cidr_exhausted")
        ips = {n["overlay_ip"] for n in await _nodes(c)}
        assert ips == {"100.96.0.1", "100.96.0.2"}


async def test_jwt_bundle_rotation_is_picked_up(tmp_path: Path, key: SigningKey) -> None:
    """A token signed by a JWT key the controller has not seen yet triggers a bundle refresh
    (the issuer rotated its key), and then validates."""
    ident_dir = tmp_path / "id"
    with running_issuer(ident_dir) as first:
        async with running_controller(controller_settings(tmp_path / "ctl", first), first) as (
            server,
            clients,
        ):
            server.app.state.controller.bundles.min_interval = 0.0
            # A caller without a client certificate (JWT-SVID only) reads the node list; its
            # TLS client keeps trusting the first issuer's CA, which the controller presents.
            client = clients.tls()
            r = await client.get("/api/v1/nodes", headers=bearer(first.token(NODE_A)))
            assert r.status_code == 200, r.text
            first.issuer.stop()
            shutil.rmtree(ident_dir / "state")
            with running_issuer(ident_dir) as second:
                token = second.token(NODE_A)
                r = await client.get("/api/v1/nodes", headers=bearer(token))
                assert r.status_code == 200, r.text


async def test_silent_nodes_expire_under_the_leader(
    tmp_path: Path, identity: Identity, tokens: dict[str, str], key: SigningKey
) -> None:
    async with controller(tmp_path / "ctl", identity, node_ttl=0.5) as (_, client):
        answer = (await _register(client, key, NODE_A, "node-1")).json()
        r = await client.get(
            f"/api/v1/watch?from_revision={answer['revision']}&timeout=30", headers=ADMIN
        )
        events = r.json()["events"]
        assert [(e["kind"], e["node_id"]) for e in events] == [("node_deleted", "node-1")]
        assert await _nodes(client) == []
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "x0tta6bl4_nodes_expired_total") == 1.0
        assert _metric(metrics, "x0tta6bl4_controller_leader") == 1.0
        # The address is free again: a new node may take it.
        again = await _register(client, key, NODE_A, "node-1")
        assert again.status_code == 200


@pytest.mark.slow
def test_bench_api_reports_every_key() -> None:
    from x0tta6bl4.bench.api import run

    result = run(nodes=20, duration=0.5, connections=2, nodes_requests=10, rounds=1)
    for name in ("health_rps", "health_p99_ms", "nodes_p99_ms", "bare_rps", "ratio"):
        assert result[name] > 0, name
    assert result["nodes"] == 20
    assert result["ratio"] == pytest.approx(result["health_rps"] / result["bare_rps"], rel=0.01)
    assert result["nodes_body_bytes"] > 20 * 200


# --------------------------------------------------------------------------- real process


def test_controller_subprocess(tmp_path: Path, identity: Identity, key: SigningKey) -> None:
    """``x0tta6bl4 controller`` as a process on loopback, configured by flags and env: its
    first log line says where TLS is served, the API answers over mutual TLS only."""
    port = free_port()
    tls_port = free_port()
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN)
    ca_dir = tmp_path / "ca"
    out = subprocess.run(
        [*_cli(), "controller", "ca", "init", "--out", str(ca_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ca.crt" in out.stdout
    assert (ca_dir / "ca.key").stat().st_mode & 0o077 == 0
    proc = spawn_controller(
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--store",
            f"sqlite:///{tmp_path / 'ctl.db'}",
            "--ca-cert-file",
            str(ca_dir / "ca.crt"),
            "--ca-key-file",
            str(ca_dir / "ca.key"),
            "--admin-token-file",
            str(token_file),
        ],
        env={
            "X0_STATE_DIR": str(tmp_path / "state"),
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{identity.issuer.socket_path}",
            "X0_LOG_FORMAT": "json",
            "X0_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        },
        log=tmp_path / "controller.log",
    )
    identity.attest(proc.pid, CONTROLLER_ID)
    base = f"http://127.0.0.1:{port}"
    api = f"https://127.0.0.1:{tls_port}"
    token = identity.token(NODE_A)

    async def use() -> None:
        body = register_body(key, spiffe_id=NODE_A, node_id="node-1")
        async with tls_client(api, identity.credentials(NODE_A), CONTROLLER_ID) as node:
            r = await node.post("/api/v1/nodes/register", json=body)
            assert r.status_code == 200, r.text
        async with tls_client(api, identity.credentials(), CONTROLLER_ID) as admin:
            r = await admin.get("/api/v1/nodes", headers=bearer(ADMIN_TOKEN))
            assert [n["node_id"] for n in r.json()["nodes"]] == ["node-1"]
            # The same token over TLS without a client certificate cannot register.
            r = await admin.post("/api/v1/nodes/register", json=body, headers=bearer(token))
            assert (r.status_code, r.json()["error"]) == (401, "client_certificate_required")

    try:
        wait_ready(base, proc)
        asyncio.run(use())
        # Plain HTTP serves the probes and metrics, never the API.
        assert "x0tta6bl4_mesh_nodes_total 1.0" in httpx.get(f"{base}/metrics").text
        r = httpx.get(f"{base}/api/v1/nodes", headers=bearer(ADMIN_TOKEN))
        assert (r.status_code, r.json()["error"]) == (403, "tls_required")
    finally:
        proc.terminate()
        # uvicorn re-raises SIGTERM after its graceful shutdown.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    log = (tmp_path / "controller.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    # The first log line says where TLS is served.
    assert f"TLS (mutual, X.509-SVID; every route) on 127.0.0.1:{tls_port}" in lines[0]["event"]
    assert f"plain HTTP on 127.0.0.1:{port} for /health, /ready, /metrics" in lines[0]["event"]
    assert any(entry.get("event") == "controller stopped" for entry in lines)
    assert any(entry.get("event") == "node registered" for entry in lines)
    assert token not in log
    assert ADMIN_TOKEN not in log
    assert not any("PRIVATE KEY" in line for line in log.splitlines())


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "x0tta6bl4"]


def test_controller_refuses_to_start_without_ca(tmp_path: Path) -> None:
    out = subprocess.run(
        [*_cli(), "controller", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "no mesh CA configured" in out.stderr
    out = subprocess.run(
        [*_cli(), "controller", "--listen", "nope", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "listen" in out.stderr


def test_controller_refuses_a_bad_node_id_mapping(tmp_path: Path) -> None:
    """Checked at start-up, before anything is created: exit 2 naming the setting."""
    for mapping, message in (
        ("spiffe://x0tta6bl4.mesh/ns/mesh", "invalid node-id-mapping"),
        ("spiffe://elsewhere.example/**/node/{node}", "outside the trust domain"),
    ):
        out = subprocess.run(
            [*_cli(), "controller", "--local-ca", "--state-dir", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "X0_NODE_ID_MAPPING": mapping},
        )
        assert out.returncode == 2, out.stderr
        assert message in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "s").exists()


async def test_a_live_node_id_is_bound_to_its_key(
    ctl: tuple[Any, ControllerClients], key: SigningKey
) -> None:
    """Issue 12: the first registration binds node-1 to NODE_A and ``key``. Another identity
    or another key gets 409 node_id_taken and changes nothing; a rotation proof made with the
    previous key hands the node ID over (a proof made with any other key does not); after
    KEY_REBIND_AFTER seconds of silence the same identity may bind a new key (lost state);
    an admin DELETE releases the node ID at once."""
    app, client = ctl
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    record = (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json()
    impostor = SigningKey.generate()
    for sid in (NODE_A_TWIN, NODE_A):  # another identity; the same identity with a fresh key
        r = await _register(client, impostor, sid, "node-1")
        assert (r.status_code, r.json()["error"]) == (409, "node_id_taken"), r.text
    assert (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json() == record
    metrics = (await client.get("/metrics")).text
    assert (
        _metric_labels(metrics, 'x0tta6bl4_registrations_rejected_total{reason="node_id_taken"}')
        == 2
    )
    # A rotation proof by a key that is not the previous one.
    forged = rotation_body(impostor, impostor, spiffe_id=NODE_A, node_id="node-1")
    r = await client.tls(NODE_A).post("/api/v1/nodes/register", json=forged)
    assert (r.status_code, r.json()["error"]) == (401, "pop_invalid")
    # The previous key's proof; replaying the same request is refused (its nonce is spent).
    listing = (await client.get("/api/v1/nodes", headers=ADMIN)).json()
    assert listing["revoked"] == []
    rotated = rotation_body(key, impostor, spiffe_id=NODE_A, node_id="node-1")
    r = await client.tls(NODE_A).post("/api/v1/nodes/register", json=rotated)
    assert r.status_code == 200, r.text
    detail = (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json()
    assert detail["ml_dsa_public_key"] == base64.b64encode(impostor.public_bytes).decode()
    assert detail["overlay_ip"] == record["overlay_ip"]
    # The previous certificate is revoked, in the listing and on the watch stream.
    assert detail["ml_dsa_public_key_sha256"] == hashlib.sha256(impostor.public_bytes).hexdigest()
    assert detail["pq_svid_serial"] == format(
        x509.load_pem_x509_certificate(detail["pq_svid"].encode()).serial_number, "x"
    )
    revoked = {
        "serial": record["pq_svid_serial"],
        "node_id": "node-1",
        "not_after": record["pq_svid_not_after"],
    }
    assert (await client.get("/api/v1/nodes", headers=ADMIN)).json()["revoked"] == [revoked]
    watched = await client.get(
        f"/api/v1/watch?from_revision={listing['revision']}&timeout=5", headers=ADMIN
    )
    events = [(e["kind"], e["revocation"]) for e in watched.json()["events"]]
    assert events == [("node_revoked", revoked), ("node_put", None)]
    r = await client.tls(NODE_A).post("/api/v1/nodes/register", json=rotated)
    assert (r.status_code, r.json()["error"]) == (401, "pop_replayed")
    # Silent for KEY_REBIND_AFTER seconds: the same identity may bind a new key.
    registrar = app.state.controller.registrar
    registrar._clock = lambda: time.time() + KEY_REBIND_AFTER + 1
    assert (await _register(client, key, NODE_A_TWIN, "node-1")).status_code == 409
    assert (await _register(client, key, NODE_A, "node-1")).status_code == 200
    registrar._clock = time.time
    # An admin DELETE releases the node ID (any identity the mapping binds to it may take
    # it) and revokes its certificate.
    current = (await client.get("/api/v1/nodes/node-1", headers=ADMIN)).json()["pq_svid_serial"]
    assert (await client.delete("/api/v1/nodes/node-1", headers=ADMIN)).status_code == 204
    listing = (await client.get("/api/v1/nodes", headers=ADMIN)).json()
    assert current in [r["serial"] for r in listing["revoked"]]
    assert (await _register(client, impostor, NODE_A_TWIN, "node-1")).status_code == 200
