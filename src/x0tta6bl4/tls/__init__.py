"""TLS of the control channel: SPIFFE X.509-SVIDs over pyOpenSSL (post-quantum hybrid key
exchange on cryptography's OpenSSL). See ``docs/api.md`` ("Transport") and
:mod:`x0tta6bl4.tls.context`."""

from __future__ import annotations

from x0tta6bl4.tls.client import PEER_INFO, PeerIdentityError, SpiffeTlsTransport, tls_client
from x0tta6bl4.tls.context import PQ_GROUP, client_context, server_context, verified_peer
from x0tta6bl4.tls.credentials import (
    CredentialSource,
    StaticCredentials,
    TlsCredentials,
    WorkloadCredentials,
    load_bundle_pem,
)
from x0tta6bl4.tls.server import (
    PEER_EXTENSION,
    ListenerOptions,
    ServerContexts,
    TlsPeer,
    listener_protocol,
)

__all__ = [
    "PEER_EXTENSION",
    "PEER_INFO",
    "PQ_GROUP",
    "CredentialSource",
    "ListenerOptions",
    "PeerIdentityError",
    "ServerContexts",
    "SpiffeTlsTransport",
    "StaticCredentials",
    "TlsCredentials",
    "TlsPeer",
    "WorkloadCredentials",
    "client_context",
    "listener_protocol",
    "load_bundle_pem",
    "server_context",
    "tls_client",
    "verified_peer",
]
