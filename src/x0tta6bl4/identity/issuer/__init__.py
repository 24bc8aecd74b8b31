"""The embedded development SPIFFE Workload API (``x0tta6bl4 identity serve``).

It serves the real Workload API (gRPC over a Unix socket, ``workload.proto``) so that the same
client code runs against SPIRE in a cluster and against this issuer on a laptop and in tests.
See ``docs/identity.md`` for the design (attestation by ``SO_PEERCRED`` through a relay).
"""

from __future__ import annotations

from x0tta6bl4.identity.issuer.authority import Authority, IssuedX509Svid
from x0tta6bl4.identity.issuer.entries import Entry, parse_entry
from x0tta6bl4.identity.issuer.peercred import PeerCredentials
from x0tta6bl4.identity.issuer.server import (
    DEFAULT_SVID_TTL,
    EmbeddedIssuer,
    IssuerConfig,
)

__all__ = [
    "DEFAULT_SVID_TTL",
    "Authority",
    "EmbeddedIssuer",
    "Entry",
    "IssuedX509Svid",
    "IssuerConfig",
    "PeerCredentials",
    "parse_entry",
]
