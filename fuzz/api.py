"""Fuzz harness: the controller's HTTP API, through the real ASGI app in process.

One controller app (``create_app``: SQLite store and local mesh CA in a temporary directory,
the JWT bundle of the fixture issuer, the admin token, a clock fixed at ``fuzzlib.NOW``) runs
its lifespan once; every input becomes one HTTP request handed straight to the ASGI app
(the ``_Edge`` body limit and metrics, FastAPI routing and validation against the schemas, the
authenticator, the registrar, the store). A request arrives as the TLS listener hands it over
(``x0tta6bl4.tls.server``: the verified peer in the scope, the node's client certificate with
the node's JWT-SVID, none otherwise), or, when bit 7 of byte 1 is set, as the plain-HTTP
listener does (no TLS peer: only the probes, metrics and UI are served).

Input: byte 0 picks the route (the API's routes with a fuzzed path parameter, or a raw
``METHOD path?query`` request line), byte 1 the credential (none, the admin token, a node's
JWT-SVID, the admin's JWT-SVID, or a fuzzed ``Authorization`` value), then up to three parts
separated by :data:`fuzzlib.SEP`: the path parameter (or request line), the body, and a header
value (``If-Match``, ``Content-Type`` or ``Authorization``).

Checked: every answer is below 500; an error answer of the API (4xx) is a JSON object with an
``error`` reason; the app never raises out of the ASGI call.

    python fuzz/api.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

import fuzzlib

with fuzzlib.instrumented():
    from spiffe import JwtBundleSet, SpiffeId

    from x0tta6bl4.controller.app import create_app
    from x0tta6bl4.controller.config import ControllerSettings
    from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials
    from x0tta6bl4.tls.server import PEER_EXTENSION, TlsPeer

AUTHORITY = fuzzlib.jwt_authority()
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
ADMIN_ID = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/ops/sa/admin"
# A node identity of the scheme (docs/identity.md, "Names"): the controller's default node ID
# mapping binds it to node ID "node-a", so registrations of "node-a" reach the proof of
# possession and beyond; any other node ID is refused 403 node_id_not_bound up front.
NODE_ID = f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0tta6bl4/sa/x0tta6bl4-app/node/node-a"
AUDIENCE = "x0tta6bl4-controller"

#: (method, path template); ``{p}`` is the fuzzed path parameter.
ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/api/v1/nodes/register"),
    ("POST", "/api/v1/nodes/{p}/renew"),
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/{p}"),
    ("DELETE", "/api/v1/nodes/{p}"),
    ("PUT", "/api/v1/nodes/{p}/status"),
    ("GET", "/api/v1/topology"),
    ("GET", "/api/v1/policy"),
    ("PUT", "/api/v1/policy"),
    ("GET", "/api/v1/watch?from_revision={p}&timeout=0"),
    ("GET", "/api/v1/bundle"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/ui/topology.json"),
    ("GET", "/health"),
    ("RAW", "{p}"),
)


def _token(spiffe_id: str) -> str:
    # Valid for a day after the fixture instant (PyJWT checks exp against the real clock).
    return AUTHORITY.sign_jwt_svid(SpiffeId(spiffe_id), [AUDIENCE], 86400 * 365 * 5, fuzzlib.NOW)


def _svid_credentials(spiffe_id: str) -> Any:
    """An X.509-SVID of the fixture authority as TLS credentials (the controller's own)."""
    from cryptography.hazmat.primitives import serialization
    from spiffe import X509Bundle, X509BundleSet, X509Svid

    # Issued now (they are verified against the real clock), valid past fuzzlib.NOW.
    issued = AUTHORITY.issue_x509_svid(SpiffeId(spiffe_id), 86400 * 365 * 5, time.time())
    key = serialization.load_der_private_key(issued.key_der, None)
    svid = X509Svid(SpiffeId(spiffe_id), [issued.certificate], key)
    td = SpiffeId(spiffe_id).trust_domain
    bundle = X509BundleSet.of([X509Bundle(td, set(AUTHORITY.x509_bundle().x509_authorities))])
    return TlsCredentials.from_svid(svid, bundle, td), issued


CONTROLLER_TLS, _ = _svid_credentials(f"spiffe://{fuzzlib.TRUST_DOMAIN}/ns/x0/sa/app/controller")
_, NODE_CERT = _svid_credentials(NODE_ID)
#: The node's client certificate as the TLS listener reports it.
NODE_PEER = TlsPeer(
    spiffe_id=NODE_ID,
    cert_sha256=hashlib.sha256(NODE_CERT.certificate.public_bytes(Encoding.DER)).digest(),
    not_after=NODE_CERT.certificate.not_valid_after_utc.timestamp(),
    group="X25519MLKEM768",
    serial=NODE_CERT.certificate.serial_number,
)
ANONYMOUS_PEER = TlsPeer(spiffe_id=None, cert_sha256=None, not_after=None, group="X25519MLKEM768")

CREDENTIALS: tuple[str | None, ...] = (
    None,
    f"Bearer {ADMIN_TOKEN}",
    f"Bearer {_token(NODE_ID)}",
    f"Bearer {_token(ADMIN_ID)}",
)


def _build() -> tuple[asyncio.AbstractEventLoop, Any, Any]:
    state = fuzzlib.scratch("api")
    (state / "admin-token").write_text(ADMIN_TOKEN + "\n")
    settings = ControllerSettings(
        listen="127.0.0.1:0",
        state_dir=state,
        trust_domain=fuzzlib.TRUST_DOMAIN,
        local_ca=True,
        admin_token_file=state / "admin-token",
        admin_spiffe_ids=(ADMIN_ID,),
        log_level="error",
    )
    bundles = JwtBundleSet.of([AUTHORITY.jwt_bundle()])
    app = create_app(
        settings,
        jwt_bundle_fetch=lambda: bundles,
        clock=lambda: fuzzlib.NOW,
        expiry=False,
        tls_credentials=StaticCredentials(CONTROLLER_TLS),
    )
    loop = asyncio.new_event_loop()
    lifespan = app.router.lifespan_context(app)  # kept referenced: it closes the store on exit
    loop.run_until_complete(lifespan.__aenter__())
    return loop, app, lifespan


LOOP, APP, _LIFESPAN = _build()


async def request(
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    peer: TlsPeer | None = None,
) -> tuple[int, bytes]:
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "headers": [(b"host", b"controller"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 7800),
    }
    if peer is not None:
        scope["scheme"] = "https"
        scope["extensions"] = {PEER_EXTENSION: peer}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects within one request
        return {"type": "http.disconnect"}

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
    if len(data) < 2:
        return
    method, template = ROUTES[data[0] % len(ROUTES)]
    parts = fuzzlib.split(data[2:], 3)
    param = parts[0].decode("latin-1") if parts else ""
    body = parts[1] if len(parts) > 1 else b""
    extra = parts[2] if len(parts) > 2 else b""
    if method == "RAW":
        method, _, target = param.partition(" ")
        if not method or not target.startswith("/"):
            return
    else:
        target = template.replace("{p}", param.replace("/", "%2F").replace("?", "%3F"))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    choice = data[1] % 6
    if choice < len(CREDENTIALS):
        credential = CREDENTIALS[choice]
        if credential is not None:
            headers.append((b"authorization", credential.encode()))
    elif choice == 4:
        headers.append((b"authorization", extra))
    else:
        headers = [(b"content-type", extra), (b"authorization", CREDENTIALS[1].encode())]  # type: ignore[union-attr]
    if method == "PUT" and extra:
        headers.append((b"if-match", extra))
    if data[1] & 0x80:
        peer = None  # the plain-HTTP listener
    elif choice == 2:
        peer = NODE_PEER  # a node: its certificate and its JWT-SVID
    else:
        peer = ANONYMOUS_PEER
    status, answer = LOOP.run_until_complete(request(method, target, headers, body, peer))
    assert 200 <= status < 500, f"{method} {target} answered {status}: {answer[:300]!r}"
    if status >= 400 and (target.startswith("/api/") or status not in (404, 405)):
        document = json.loads(answer)
        assert isinstance(document, dict) and isinstance(document.get("error"), str), answer[:300]


if __name__ == "__main__":
    fuzzlib.run(test_one_input)
