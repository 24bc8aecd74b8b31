"""schemathesis against the controller's own /openapi.json: no input makes it fail (5xx), and
every refusal is the documented JSON error shape.

The controller runs on its real listeners in a thread of this process (its lifespan opens a
real SQLite store and mesh CA, its X.509-SVID and JWT bundles come from a real embedded
issuer). Requests go to the TLS listener with a node's X.509-SVID as client certificate (the
standard library's TLS: a client without a post-quantum OpenSSL is still served, with X25519)
and carry the admin token, so generated inputs reach the handlers instead of stopping at
authentication (the node-only operations take the certificate's identity).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    CONTROLLER_ID,
    NODE_A,
    controller_settings,
    running_issuer,
)
from x0tta6bl4.controller.app import openapi_document
from x0tta6bl4.controller.server import build_server

pytestmark = pytest.mark.timeout(300)

_NODE_ONLY = (
    "/api/v1/nodes/register",
    "/api/v1/nodes/{node_id}/renew",
    "/api/v1/nodes/{node_id}/status",
)


class _MutualTls(HTTPAdapter):
    """requests over TLS with a client certificate, verifying the server's chain (its name is
    a SPIFFE ID, not a host name: the host name check is off)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        kwargs["assert_hostname"] = False
        super().init_poolmanager(*args, **kwargs)


def _session(identity: Any, directory: Path) -> requests.Session:
    svid = identity.svid(NODE_A)
    assert svid.key is not None
    pem = serialization.Encoding.PEM
    (directory / "node.crt").write_bytes(b"".join(c.public_bytes(pem) for c in svid.chain))
    (directory / "node.key").write_bytes(
        svid.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "ca.crt").write_bytes(b"".join(c.public_bytes(pem) for c in svid.authorities))
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(directory / "node.crt"), str(directory / "node.key"))
    session = requests.Session()
    session.mount("https://", _MutualTls(context))
    return session


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("schemathesis")
    with running_issuer(base / "id") as identity:
        ctl = build_server(
            # Long-polls end after 0.2 s whatever timeout is generated.
            controller_settings(base / "ctl", identity, watch_max_timeout=0.2),
            graceful_timeout=2,
            tls_credentials=identity.credentials(CONTROLLER_ID),
        )
        thread = threading.Thread(target=lambda: asyncio.run(ctl.serve()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not ctl.server.started:
            assert thread.is_alive(), "the controller stopped while starting"
            assert time.monotonic() < deadline, "the controller did not start"
            time.sleep(0.02)
        session = _session(identity, base)
        try:
            yield {"base_url": f"https://127.0.0.1:{ctl.tls_port}", "session": session}
        finally:
            session.close()
            ctl.server.should_exit = True
            thread.join(timeout=30)
            ctl.close()


# The operations are generated from exactly the document the server publishes (the same
# routers); requests go to the real server over HTTP.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: Any, server: dict[str, Any]) -> None:
    headers = {} if case.path in _NODE_ONLY else {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = case.call(
        base_url=server["base_url"], session=server["session"], headers=headers, timeout=30
    )
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str)
