"""The control channel over TLS (issue #12, point 4), against a real controller on its real
listeners and a real embedded SPIFFE issuer:

- every authenticated route over plain HTTP is refused ``403 tls_required`` and not served;
- the wrong SPIFFE ID on either side of the handshake is refused (a server that is not the
  controller, a client certificate of another trust domain or of another CA);
- a captured token without the client certificate is refused; a token of another identity
  next to a certificate is refused;
- the key exchange is the post-quantum hybrid X25519MLKEM768 (seen from the client), and a
  standard-library client (OpenSSL 3.0, no ML-KEM) still gets classical X25519;
- the controller's certificate rotates without dropping an open connection (an in-flight
  watch completes, the kept-alive connection keeps working) while new connections get the
  new certificate;
- an expired client certificate is refused; handshakes that never complete are closed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, X509Bundle, X509BundleSet, X509Svid

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    CONTROLLER_ID,
    NODE_A,
    NODE_B,
    TD,
    Identity,
    bearer,
    controller_settings,
    register_body,
    running_controller,
    running_issuer,
)
from x0tta6bl4.controller.app import openapi_document
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.identity.issuer.authority import Authority
from x0tta6bl4.identity.spiffe_ids import parse_trust_domain
from x0tta6bl4.tls.client import PEER_INFO, PeerIdentityError, tls_client
from x0tta6bl4.tls.context import PQ_GROUP
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    with running_issuer(tmp_path_factory.mktemp("id")) as ident:
        yield ident


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    """Another issuer: another trust domain, same paths."""
    ids = ("spiffe://evil.example/ns/mesh/sa/node-a",)
    with running_issuer(tmp_path_factory.mktemp("evil"), "evil.example", ids) as ident:
        yield ident


@pytest.fixture(scope="module")
def impostor_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    """Another issuer of the same trust domain (another CA): it can name any SPIFFE ID."""
    with running_issuer(tmp_path_factory.mktemp("impostor"), TD, (CONTROLLER_ID, NODE_A)) as ident:
        yield ident


def _issued(
    identity: Identity, spiffe_id: str, ttl: float, now: float | None = None
) -> TlsCredentials:
    """A fresh X.509-SVID for ``spiffe_id`` signed by ``identity``'s issuer CA (a new serial)."""
    authority = Authority.load_or_create(
        identity.issuer.config.state_dir, parse_trust_domain(identity.issuer.trust_domain.name)
    )
    issued = authority.issue_x509_svid(
        SpiffeId(spiffe_id), ttl, time.time() if now is None else now
    )
    key = serialization.load_der_private_key(issued.key_der, None)
    svid = X509Svid(SpiffeId(spiffe_id), [issued.certificate], key)  # type: ignore[arg-type]
    bundle = X509BundleSet.of(
        [
            X509Bundle(
                identity.issuer.trust_domain, set(identity.issuer.x509_bundle().x509_authorities)
            )
        ]
    )
    return TlsCredentials.from_svid(svid, bundle, identity.issuer.trust_domain)


# --------------------------------------------------------------------------- plain HTTP


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) of the API document, with path parameters filled in."""
    out = []
    for path, operations in openapi_document()["paths"].items():
        concrete = path.replace("{node_id}", "node-1")
        out.extend((method.upper(), concrete) for method in operations)
    return sorted(out)


async def test_plain_http_refuses_every_authenticated_route(
    tmp_path: Path, identity: Identity
) -> None:
    settings = controller_settings(tmp_path / "ctl", identity)
    key = SigningKey.generate()
    async with running_controller(settings, identity) as (server, clients):
        refused = []
        for method, path in _routes():
            if path in ("/health", "/ready", "/metrics"):
                continue
            body = (
                register_body(key, spiffe_id=NODE_A, node_id="node-1") if method != "GET" else None
            )
            r = await clients.plain.request(method, path, json=body, headers=bearer(ADMIN_TOKEN))
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"] == "tls_required", (method, path)
            assert str(server.tls_port) in r.json()["detail"]
            refused.append(path)
        # The watch and the node routes are among them; the API document is not served either.
        assert {"/api/v1/watch", "/api/v1/nodes/register", "/api/v1/policy"} <= set(refused)
        r = await clients.plain.get("/openapi.json")
        assert (r.status_code, r.json()["error"]) == (403, "tls_required")
        assert (await clients.get("/openapi.json")).status_code == 200
        for path in ("/health", "/ready", "/metrics", "/ui", "/ui/topology.json"):
            assert (await clients.plain.get(path)).status_code == 200, path
        # Nothing was served: the store is empty, over TLS.
        r = await clients.get("/api/v1/nodes", headers=bearer(ADMIN_TOKEN))
        assert r.json()["nodes"] == []
        metrics = (await clients.plain.get("/metrics")).text
        # Counted as refused registrations: register and renew.
        assert 'x0tta6bl4_registrations_rejected_total{reason="tls_required"} 2.0' in metrics


# --------------------------------------------------------------------------- SPIFFE IDs


async def test_a_server_with_another_spiffe_id_is_refused(
    tmp_path: Path, identity: Identity, impostor_ca: Identity
) -> None:
    """The client side: a TLS server presenting NODE_A's SVID (a node posing as the
    controller), or the controller's ID from another CA, never gets the request."""
    settings = controller_settings(tmp_path / "ctl", identity)
    async with running_controller(settings, identity, controller_id=NODE_A) as (_, clients):
        client = tls_client(clients.api, identity.credentials(NODE_B), CONTROLLER_ID)
        async with client:
            with pytest.raises(
                httpx.ConnectError, match=r"presented SPIFFE ID .*node/node-1, expected"
            ):
                await client.get("/health")
        # The same server is accepted by a client that expects exactly that ID: the refusal
        # above is about the name, not the chain.
        async with tls_client(clients.api, identity.credentials(NODE_B), NODE_A) as ok:
            assert (await ok.get("/health")).status_code == 200
    # A controller whose certificate is the right SPIFFE ID but from another CA.
    settings = controller_settings(tmp_path / "ctl2", identity)
    creds = impostor_ca.credentials(CONTROLLER_ID)
    from x0tta6bl4.controller.server import build_server

    server = build_server(settings, graceful_timeout=1, tls_credentials=creds)
    task = asyncio.create_task(server.serve())
    try:
        while not server.server.started:
            await asyncio.sleep(0.02)
        api = f"https://127.0.0.1:{server.tls_port}"
        async with tls_client(api, identity.credentials(NODE_A), CONTROLLER_ID) as client:
            with pytest.raises(httpx.ConnectError, match="TLS handshake failed"):
                await client.get("/health")
    finally:
        server.server.should_exit = True
        await task
        server.close()
    assert issubclass(PeerIdentityError, Exception)


async def test_a_client_certificate_of_another_trust_domain_or_ca_is_refused(
    tmp_path: Path, identity: Identity, foreign: Identity, impostor_ca: Identity
) -> None:
    settings = controller_settings(tmp_path / "ctl", identity)
    key = SigningKey.generate()
    async with running_controller(settings, identity) as (_, clients):
        ours = identity.credentials().current()[1]
        for other, sid in (
            (foreign, "spiffe://evil.example/ns/mesh/sa/node-a"),
            (impostor_ca, NODE_A),
        ):
            theirs = other.svid(sid)
            presenting = StaticCredentials(
                TlsCredentials(ours.trust_domain, ours.authorities, theirs.chain, theirs.key)
            )
            body = register_body(key, spiffe_id=sid, node_id="node-1")
            async with tls_client(clients.api, presenting, CONTROLLER_ID) as client:
                # TLS 1.3: the client may finish first and learn of the refusal on read.
                with pytest.raises(httpx.HTTPError):
                    await client.post("/api/v1/nodes/register", json=body)
        r = await clients.get("/api/v1/nodes", headers=bearer(ADMIN_TOKEN))
        assert r.json()["nodes"] == []
        metrics = (await clients.plain.get("/metrics")).text
        assert 'x0tta6bl4_api_tls_handshakes_total{group="' in metrics
        failed = [
            line
            for line in metrics.splitlines()
            if line.startswith("x0tta6bl4_api_tls_handshakes_total") and 'result="failed"' in line
        ]
        assert failed, metrics


async def test_a_captured_token_is_worth_nothing_without_the_certificate(
    tmp_path: Path, identity: Identity
) -> None:
    settings = controller_settings(tmp_path / "ctl", identity)
    key = SigningKey.generate()
    token = identity.token(NODE_A)
    body = register_body(key, spiffe_id=NODE_A, node_id="node-1")
    async with running_controller(settings, identity) as (_, clients):
        # Replayed over TLS without any client certificate.
        r = await clients.post("/api/v1/nodes/register", json=body, headers=bearer(token))
        assert (r.status_code, r.json()["error"]) == (401, "client_certificate_required")
        # Replayed next to another identity's certificate.
        r = await clients.tls(NODE_B).post(
            "/api/v1/nodes/register", json=body, headers=bearer(token)
        )
        assert (r.status_code, r.json()["error"]) == (401, "identity_conflict")
        # Status reports need the certificate too.
        r = await clients.put(
            "/api/v1/nodes/node-1/status", json={"links": []}, headers=bearer(token)
        )
        assert (r.status_code, r.json()["error"]) == (401, "client_certificate_required")
        r = await clients.get("/api/v1/nodes", headers=bearer(ADMIN_TOKEN))
        assert r.json()["nodes"] == []
        # With the certificate (no token at all) the same node registers.
        r = await clients.tls(NODE_A).post(
            "/api/v1/nodes/register", json=register_body(key, spiffe_id=NODE_A, node_id="node-1")
        )
        assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- post-quantum


def _stdlib_get(port: int, ca_pem: bytes, chain_pem: bytes, key_pem: bytes, tmp: Path) -> str:
    """GET /health with Python's ssl module (system OpenSSL); the negotiated group name."""
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "c.pem").write_bytes(chain_pem)
    (tmp / "k.pem").write_bytes(key_pem)
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return ssl.OPENSSL_VERSION


async def test_the_key_exchange_is_x25519mlkem768(tmp_path: Path, identity: Identity) -> None:
    settings = controller_settings(tmp_path / "ctl", identity)
    async with running_controller(settings, identity) as (server, clients):
        r = await clients.tls(NODE_A).get("/health")
        peer = r.extensions["network_stream"].get_extra_info(PEER_INFO)
        assert peer.group == PQ_GROUP == "X25519MLKEM768"
        assert peer.spiffe_id == CONTROLLER_ID
        # A client on the system OpenSSL (3.0 here, no ML-KEM) is still served, classically.
        svid = identity.svid(NODE_B)
        assert svid.key is not None
        pem = serialization.Encoding.PEM
        await asyncio.to_thread(
            _stdlib_get,
            server.tls_port,
            b"".join(c.public_bytes(pem) for c in svid.authorities),
            b"".join(c.public_bytes(pem) for c in svid.chain),
            svid.key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            tmp_path,
        )
        metrics = (await clients.plain.get("/metrics")).text
        groups = {
            line.split('group="')[1].split('"')[0]
            for line in metrics.splitlines()
            if line.startswith("x0tta6bl4_api_tls_handshakes_total{") and 'result="ok"' in line
        }
        assert PQ_GROUP in groups
        if not ssl.OPENSSL_VERSION.startswith("OpenSSL 3.0"):
            pytest.skip(f"system {ssl.OPENSSL_VERSION} may negotiate ML-KEM itself")
        assert groups - {PQ_GROUP}, groups  # x25519 for the stdlib client


# --------------------------------------------------------------------------- rotation, expiry


async def test_the_controller_certificate_rotates_without_dropping_sessions(
    tmp_path: Path, identity: Identity
) -> None:
    settings = controller_settings(tmp_path / "ctl", identity)
    rotating = StaticCredentials(_issued(identity, CONTROLLER_ID, 3600))
    from x0tta6bl4.controller.server import build_server

    server = build_server(settings, graceful_timeout=1, tls_credentials=rotating)
    task = asyncio.create_task(server.serve())
    key = SigningKey.generate()
    try:
        while not server.server.started:
            await asyncio.sleep(0.02)
        api = f"https://127.0.0.1:{server.tls_port}"
        async with tls_client(api, identity.credentials(NODE_A), CONTROLLER_ID) as node:
            first = await node.get("/health")
            old = first.extensions["network_stream"].get_extra_info(PEER_INFO)
            start = (await node.get("/api/v1/nodes")).json()["revision"]
            # A long-poll watch in flight on a second connection of the same client.
            watch = asyncio.create_task(node.get(f"/api/v1/watch?from_revision={start}&timeout=20"))
            await asyncio.sleep(0.3)
            rotating.replace(
                _issued(identity, CONTROLLER_ID, 3600)
            )  # the controller's SVID rotates
            # New connections get the new certificate...
            async with tls_client(api, identity.credentials(NODE_B), CONTROLLER_ID) as fresh:
                r = await fresh.get("/health")
                new = r.extensions["network_stream"].get_extra_info(PEER_INFO)
            assert new.serial != old.serial
            # ... while the node's open connections carry on: the in-flight watch answers the
            # registration made after the rotation, on the connection it was opened on.
            r = await node.post(
                "/api/v1/nodes/register",
                json=register_body(key, spiffe_id=NODE_A, node_id="node-1"),
            )
            assert r.status_code == 200, r.text
            answer = await watch
            assert answer.status_code == 200
            assert [e["node_id"] for e in answer.json()["events"]] == ["node-1"]
            again = await node.get("/health")
            assert again.extensions["network_stream"].get_extra_info(PEER_INFO).serial == old.serial
    finally:
        server.server.should_exit = True
        await task
        server.close()


async def test_an_expired_client_certificate_is_refused(tmp_path: Path, identity: Identity) -> None:
    """A client certificate that expires: the kept-alive connection is not reused past its
    notAfter (the client reconnects), and the controller refuses it at the handshake, so an
    expired certificate authenticates nothing."""
    settings = controller_settings(tmp_path / "ctl", identity)
    async with running_controller(settings, identity) as (_, clients):
        # The issuer backdates SVIDs 10 s: a 12 s TTL leaves about 2 s of validity.
        short = StaticCredentials(_issued(identity, NODE_A, 12))
        not_after = short.current()[1].not_after
        assert not_after is not None
        async with tls_client(clients.api, short, CONTROLLER_ID) as client:
            assert (await client.get("/api/v1/nodes")).status_code == 200
            await asyncio.sleep(max(0.0, not_after - time.time()) + 1.0)
            with pytest.raises(httpx.HTTPError):
                await client.get("/api/v1/nodes")


async def test_handshakes_that_never_complete_are_closed_and_bounded(
    tmp_path: Path, identity: Identity
) -> None:
    settings = controller_settings(
        tmp_path / "ctl", identity, tls_handshake_timeout=1.0, tls_max_handshakes=4
    )
    async with running_controller(settings, identity) as (server, clients):
        idle = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.tls_port)
            idle.append((reader, writer))
        # Over the limit: closed at once; the others after the handshake timeout.
        closed = 0
        for reader, writer in idle:
            try:
                data = await asyncio.wait_for(reader.read(1), 5.0)
            except (ConnectionError, TimeoutError):
                data = b""
            closed += data == b""
            writer.close()
        assert closed == 8
        metrics = (await clients.plain.get("/metrics")).text
        assert 'x0tta6bl4_api_tls_handshakes_total{group="none",result="refused"} 4.0' in metrics
        assert 'x0tta6bl4_api_tls_handshakes_total{group="none",result="timeout"} 4.0' in metrics
        # The listener still serves real clients.
        assert (await clients.tls(NODE_A).get("/health")).status_code == 200
