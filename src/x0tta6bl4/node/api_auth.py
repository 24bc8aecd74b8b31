"""Who may use the node's HTTP API routes that make the node act: ``GET /v1/ping``.

``/v1/ping`` makes the node send mesh pings (up to 100, each an end-to-end exchange) for
whoever calls it; issue 13 found it open to any caller on port 7811. It is now answered for

- **loopback callers** (``127.0.0.0/8``, ``::1``): ``x0tta6bl4 ping`` run on the node (in
  Kubernetes ``kubectl exec``; in ``up`` every node listens on loopback), and
- callers presenting a **JWT-SVID** of the mesh's trust domain for the audience
  :data:`NODE_API_AUDIENCE` (``Authorization: Bearer …``), verified with the JWT bundles of
  the node's Workload API: the ``helm test`` check pod fetches one from its SPIRE agent.

Anyone else gets 401 (no or a bad token) or 403 (another trust domain) with a JSON reason, and
the node sends nothing. ``/health``, ``/ready``, ``/metrics`` and ``/v1/status`` stay open
(probes, Prometheus): they only read.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable

from spiffe import JwtBundleSet
from starlette.requests import Request
from starlette.responses import JSONResponse

from x0tta6bl4.identity.errors import (
    IdentityError,
    InvalidJwtSvidError,
    JwtAudienceError,
    JwtExpiredError,
    WrongTrustDomainError,
)
from x0tta6bl4.identity.verify import NODE_API_AUDIENCE, validate_jwt_svid

__all__ = ["BUNDLE_MAX_AGE", "BUNDLE_MIN_REFRESH", "NODE_API_AUDIENCE", "ApiAuth", "is_loopback"]

BUNDLE_MAX_AGE = 300.0
"""Seconds the node reuses fetched JWT bundles before fetching them again."""
BUNDLE_MIN_REFRESH = 10.0
"""A token signed by an unknown key fetches the bundles again at most this often."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a client address) is a loopback address (IPv4-mapped included)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _refuse(status: int, reason: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


class ApiAuth:
    """The gate of ``/v1/ping`` (see the module docstring). ``fetch_bundles`` returns the JWT
    bundles of the node's Workload API."""

    def __init__(
        self,
        fetch_bundles: Callable[[], Awaitable[JwtBundleSet]],
        trust_domain: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch_bundles
        self._trust_domain = trust_domain
        self._clock = clock
        self._bundles: JwtBundleSet | None = None
        self._fetched_at = float("-inf")

    async def _current(self, *, stale: bool = False) -> JwtBundleSet:
        age = self._clock() - self._fetched_at
        if self._bundles is None or age > BUNDLE_MAX_AGE or (stale and age > BUNDLE_MIN_REFRESH):
            self._bundles = await self._fetch()
            self._fetched_at = self._clock()
        return self._bundles

    async def refuse(self, request: Request) -> JSONResponse | None:
        """None when the caller may use the route, else the answer to send."""
        if request.client is not None and is_loopback(request.client.host):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _refuse(
                401,
                "missing_credentials",
                f"send a JWT-SVID for audience {NODE_API_AUDIENCE!r} as 'Authorization: "
                "Bearer …' (callers on loopback need none)",
            )
        for stale in (False, True):
            try:
                bundles = await self._current(stale=stale)
            except IdentityError as exc:
                return _refuse(503, "identity_unavailable", f"no JWT bundles: {exc}")
            try:
                validate_jwt_svid(
                    token, NODE_API_AUDIENCE, bundles, trust_domain=self._trust_domain
                )
            except JwtExpiredError:
                return _refuse(401, "token_expired", "the JWT-SVID has expired")
            except JwtAudienceError:
                return _refuse(
                    401, "wrong_audience", f"the JWT-SVID is not for {NODE_API_AUDIENCE!r}"
                )
            except WrongTrustDomainError:
                return _refuse(
                    403, "wrong_trust_domain", f"callers must be in {self._trust_domain!r}"
                )
            except InvalidJwtSvidError as exc:
                if not stale:
                    continue  # perhaps signed by a key newer than our bundles: fetch again
                return _refuse(401, "invalid_token", str(exc))
            return None
        return _refuse(401, "invalid_token", "the JWT-SVID did not verify")  # pragma: no cover
