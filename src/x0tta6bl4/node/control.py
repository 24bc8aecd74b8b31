"""The node's controller client: register, renew, report status, list and watch.

Every call goes over TLS to the controller's TLS listener (``https://…:8443``) with mutual
TLS: the node presents its X.509-SVID from the Workload API (rotated by SPIRE, and every new
connection uses the current one) and accepts the controller only if its certificate is an
X.509-SVID of the trust domain naming ``expected_controller`` — the SPIFFE ID it expects
(:mod:`x0tta6bl4.tls.client`; the key exchange is X25519MLKEM768 with a controller built from
this package). No bearer token travels. Registration and renewal carry the ML-DSA-65 public
key and a proof of possession over (SPIFFE ID, node ID, a fresh random nonce, the SHA-256
of the X.509-SVID presented as client certificate, the current time): bound to the
connection's credential, it is worth nothing sent with another one. Errors are
:class:`ControllerError` with the HTTP status (0 when the controller could not be reached, or
is not the controller we expect) and the API's machine-readable ``error``. Retrying is the
caller's business (the agent backs off and keeps the data plane running).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx

from x0tta6bl4.crypto.pqsvid import proof_of_possession, rotation_proof
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.tls.client import PeerIdentityError, tls_client
from x0tta6bl4.tls.credentials import CredentialSource

__all__ = ["Admission", "ControlClient", "ControllerError"]


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

    def __init__(
        self,
        base_url: str,
        credentials: CredentialSource,
        expected_controller: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self.expected_controller = expected_controller
        self._client = tls_client(self.base_url, credentials, expected_controller, timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    def _spiffe_id(self) -> tuple[str, bytes]:
        """Our SPIFFE ID and the SHA-256 of the X.509-SVID the next connection presents (the
        credential the proofs of possession are bound to)."""
        _, credentials = self._credentials.current()
        spiffe_id, presented = credentials.spiffe_id, credentials.leaf_sha256
        if spiffe_id is None or presented is None:
            raise ControllerError(0, "no_identity", "no X.509-SVID to present")
        return str(spiffe_id), presented

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        try:
            response = await self._client.request(
                method,
                path,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except PeerIdentityError as exc:
            raise ControllerError(0, "wrong_controller", f"{self.base_url}: {exc}") from None
        except httpx.HTTPError as exc:
            detail = f"{self.base_url}: {type(exc).__name__}"
            if isinstance(exc, httpx.ConnectError) and "SPIFFE ID" in str(exc):
                detail = f"{self.base_url}: {exc}"
            raise ControllerError(0, "unreachable", detail) from None
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

    def _pop(self, key: SigningKey, spiffe_id: str, node_id: str, bound: bytes) -> dict[str, Any]:
        nonce = secrets.token_bytes(32)
        timestamp = int(time.time())
        signature = proof_of_possession(
            key,
            spiffe_id=spiffe_id,
            node_id=node_id,
            nonce=nonce,
            timestamp=timestamp,
            credential_sha256=bound,
        )
        return {
            "nonce": base64.b64encode(nonce).decode(),
            "timestamp": timestamp,
            "signature": base64.b64encode(signature).decode(),
            "credential_sha256": bound.hex(),
        }

    async def register(
        self,
        node_id: str,
        endpoint: str,
        key: SigningKey,
        *,
        previous_key: SigningKey | None = None,
    ) -> Admission:
        """Register ``key`` for ``node_id``; with ``previous_key``, the rotation proof that
        hands the node ID over from it (docs/api.md, "Key binding")."""
        spiffe_id, bound = self._spiffe_id()
        body: dict[str, Any] = {
            "node_id": node_id,
            "endpoint": endpoint,
            "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
            "pop": self._pop(key, spiffe_id, node_id, bound),
        }
        if previous_key is not None:
            pop = body["pop"]
            signature = rotation_proof(
                previous_key,
                key.public_bytes,
                spiffe_id=spiffe_id,
                node_id=node_id,
                nonce=base64.b64decode(pop["nonce"]),
                timestamp=pop["timestamp"],
                credential_sha256=bound,
            )
            body["rotation"] = {"signature": base64.b64encode(signature).decode()}
        return Admission.from_json(await self._request("POST", "/api/v1/nodes/register", json=body))

    async def renew(self, node_id: str, endpoint: str, key: SigningKey) -> Admission:
        spiffe_id, bound = self._spiffe_id()
        body = {
            "ml_dsa_public_key": base64.b64encode(key.public_bytes).decode(),
            "pop": self._pop(key, spiffe_id, node_id, bound),
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
