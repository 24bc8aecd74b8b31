"""schemathesis against the controller's own /openapi.json: no input makes it fail (5xx), and
every refusal is the documented JSON error shape.

The app runs on a real uvicorn server in a thread of this process (its lifespan opens a real
SQLite store and mesh CA, its JWT bundles come from a real embedded issuer). Requests carry the
admin token, or a node's JWT-SVID on the node-only operations, so generated inputs reach the
handlers instead of stopping at authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.integration.controller_support import (
    ADMIN_TOKEN,
    NODE_A,
    ServerThread,
    controller_settings,
    running_issuer,
)
from x0tta6bl4.controller.app import create_app, openapi_document

pytestmark = pytest.mark.timeout(300)

_NODE_ONLY = (
    "/api/v1/nodes/register",
    "/api/v1/nodes/{node_id}/renew",
    "/api/v1/nodes/{node_id}/status",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("schemathesis")
    with running_issuer(base / "id") as identity:
        app = create_app(
            # Long-polls end after 0.2 s whatever timeout is generated.
            controller_settings(base / "ctl", identity, watch_max_timeout=0.2),
            jwt_bundle_fetch=identity.source.fetch_jwt_bundles,
        )
        with ServerThread(app) as srv:
            yield {"base_url": srv.base_url, "node_token": identity.token(NODE_A)}


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
    token = server["node_token"] if case.path in _NODE_ONLY else ADMIN_TOKEN
    response = case.call(
        base_url=server["base_url"], headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str)
