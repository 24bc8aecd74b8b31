"""The controller's TLS listener, as a client sees it: who it is and how the key is agreed.

:func:`probe_controller_tls` opens one TLS connection to the controller's API (the same
client the nodes use, :mod:`x0tta6bl4.tls.client`), requires the certificate to be an
X.509-SVID of the trust domain naming ``expected`` (any other SPIFFE ID fails the
connection), and reports the SPIFFE ID, the certificate serial and the negotiated key-exchange
group. :func:`plain_refuses_api` checks the other half of the contract: the plain-HTTP port
answers an API route ``403 tls_required`` and serves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from x0tta6bl4.tls.client import PEER_INFO, tls_client
from x0tta6bl4.tls.context import PQ_GROUP
from x0tta6bl4.tls.credentials import CredentialSource

__all__ = ["PQ_GROUP", "TlsProbe", "TlsProbeError", "plain_refuses_api", "probe_controller_tls"]


class TlsProbeError(Exception):
    """The controller's TLS listener is not what it must be (the message says how)."""


@dataclass(frozen=True, slots=True)
class TlsProbe:
    """What one TLS connection to the controller showed."""

    spiffe_id: str
    group: str
    serial: int | None

    @property
    def post_quantum(self) -> bool:
        return self.group == PQ_GROUP


async def probe_controller_tls(
    api: str, credentials: CredentialSource, expected: str, *, timeout: float = 10.0
) -> TlsProbe:
    """Connect to ``api`` (``https://…``), verify it is ``expected``; GET ``/health`` over it."""
    try:
        async with tls_client(api, credentials, expected, timeout=timeout) as client:
            response = await client.get("/health")
    except httpx.HTTPError as exc:
        raise TlsProbeError(f"{api}: {exc}") from None
    if response.status_code != 200:
        raise TlsProbeError(f"{api}/health over TLS: HTTP {response.status_code}")
    peer = response.extensions["network_stream"].get_extra_info(PEER_INFO)
    if peer is None or peer.spiffe_id is None:  # pragma: no cover - the transport sets it
        raise TlsProbeError(f"{api}: no verified peer")
    return TlsProbe(spiffe_id=peer.spiffe_id, group=peer.group, serial=peer.serial)


async def plain_refuses_api(client: httpx.AsyncClient, plain_url: str) -> None:
    """Raise :class:`TlsProbeError` unless ``GET /api/v1/nodes`` over plain HTTP is refused
    with ``403 tls_required``."""
    url = plain_url.rstrip("/") + "/api/v1/nodes"
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise TlsProbeError(f"GET {url}: {type(exc).__name__}") from None
    try:
        reason = response.json().get("error")
    except ValueError:
        reason = None
    if response.status_code != 403 or reason != "tls_required":
        raise TlsProbeError(
            f"GET {url} over plain HTTP answered {response.status_code} {reason or ''}: the API "
            "must be served over TLS only (403 tls_required)"
        )
