"""Defaults that several components share, defined once.

Kept free of imports so that the CLI can use them as option defaults (and show them in
``--help``) without loading what they configure (the identity package pulls in py-spiffe and
gRPC, the settings models pydantic).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_CONTROLLER",
    "DEFAULT_NODE_HTTP",
    "DEFAULT_NODE_LISTEN_UDP",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TRUST_DOMAIN",
]

DEFAULT_TRUST_DOMAIN: Final = "x0tta6bl4.mesh"
"""The mesh's SPIFFE trust domain unless ``--trust-domain`` names another."""

DEFAULT_CONTROLLER: Final = "https://x0tta6bl4-api:8443"
"""Where a node finds the controller API (the chart's Service, its TLS port)."""
DEFAULT_NODE_LISTEN_UDP: Final = "0.0.0.0:7810"
"""The node's mesh UDP socket."""
DEFAULT_NODE_HTTP: Final = "0.0.0.0:7811"
"""The node's HTTP server (health, readiness, metrics, status)."""
DEFAULT_STATE_DIR: Final = "/var/lib/x0tta6bl4"
"""Where the controller and the node keep their local state (keys, the SQLite store)."""
