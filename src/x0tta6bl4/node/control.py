"""The node's controller client: register, renew, report status, list and watch.

Every call authenticates with a fresh JWT-SVID (audience ``x0tta6bl4-controller``) from the
Workload API, sent as ``Authorization: Bearer …`` (never logged). Registration and renewal
carry the ML-DSA-65 public key and a proof of possession over (SPIFFE ID, node ID, a fresh
random nonce, the current time). Errors are :class:`ControllerError` with the HTTP status
(0 when the controller could not be reached) and the API's machine-readable ``error``.
Retrying is the caller's business (the agent backs off and keeps the data plane running).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from x0tta6bl4.crypto.pqsvid import proof_of_possession
from x0tta6bl4.crypto.suite import SigningKey

__all__ = ["Admission", "ControlClient", "ControllerError", "TokenProvider"]

#: Returns ``(jwt_svid_token, spiffe_id)`` for the controller audience.
TokenProvider = Callable[[], Awaitable[tuple[str, str]]]


class ControllerError(Exception):
    """A controller call failed: ``status`` 0 means unreachable."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(f"controller answered {status} {error}: {detail}" if status else detail)
        self.status = status
        self.error = error


@dataclass(frozen=True, slots=True)
class Admission:
    """A registration or renewal answer."""

    node_id: str
    spiffe_id: str
    overlay_ip: str
    pq_svid_pem: bytes
    pq_svid_not_after: float
    renew_after: float
    ca_bundle_pem: bytes
    trust_domain: str
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Admission:
        try:
            return cls(
                node_id=str(data["node_id"]),
                spiffe_id=str(data["spiffe_id"]),
                overlay_ip=str(data["overlay_ip"]),
                pq_svid_pem=str(data["pq_svid"]).encode(),
                pq_svid_not_after=float(data["pq_svid_not_after"]),
                renew_after=float(data["renew_after"]),
                ca_bundle_pem=str(data["ca_bundle"]).encode(),
                trust_domain=str(data["trust_domain"]),
                revision=int(data["revision"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ControllerError(200, "bad_response", f"registration answer: {exc}") from None


class ControlClient:
    """Talks to one controller base URL (a Service in the cluster balances replicas)."""

    def __init__(self, base_url: str, tokens: TokenProvider, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        token, _ = await self._tokens()
        headers = {"Authorization": f"Bearer {token}"}
        try:
            response = await self._client.request(
                method,
                path,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise ControllerError(
                0, "unreachable", f"{self.base_url}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                error, detail = str(body.get("error", "")), str(body.get("detail", ""))
            except ValueError:
                error, detail = "http_error", response.text[:200]
            raise ControllerError(response.status_code, error, detail)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _pop(self, key: SigningKey, spiffe_id: str, node_id: str) -> dict[str, Any]:
        nonce = secrets.token_bytes(32)
        timestamp = int(time.time())
        signature = proof_of_possession(
            key, spiffe_id=spiffe_id, node_id=node_id, nonce=nonce, timestamp=timestamp
        )
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "timestamp": timestamp,
            "signature": base64.b64encode(signature).decode(),
        }

    async def register(self, node_id: str, endpoint: str, key: SigningKey) -> Admission:
        _, spiffe_id = await self._tokens()
        body = {
            "node_id": node_id,
            "endpoint": endpoint,
            "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
            "pop": self._pop(key, spiffe_id, node_id),
        }
        return Admission.from_json(await self._request("POST", "/api/v1/nodes/register", json=body))

    async def renew(self, node_id: str, endpoint: str, key: SigningKey) -> Admission:
        _, spiffe_id = await self._tokens()
        body = {
            "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
            "pop": self._pop(key, spiffe_id, node_id),
            "endpoint": endpoint,
        }
        data = await self._request("POST", f"/api/v1/nodes/{node_id}/renew", json=body)
        return Admission.from_json(data)

    async def put_status(self, node_id: str, links: list[dict[str, Any]]) -> None:
        await self._request("PUT", f"/api/v1/nodes/{node_id}/status", json={"links": links})

    async def list_nodes(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._request("GET", "/api/v1/nodes")
        return data

    async def get_node(self, node_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._request("GET", f"/api/v1/nodes/{node_id}")
        return data

    async def get_policy(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._request("GET", "/api/v1/policy")
        return data

    async def watch(self, from_revision: int, timeout: float) -> dict[str, Any]:
        data: dict[str, Any] = await self._request(
            "GET",
            "/api/v1/watch",
            params={"from_revision": from_revision, "timeout": timeout},
            timeout=timeout + 10,
        )
        return data
