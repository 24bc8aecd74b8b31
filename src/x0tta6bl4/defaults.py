"""Defaults that several components share, defined once.

Kept free of imports so that the CLI can use them as option defaults without loading what
they name (the identity package pulls in py-spiffe and gRPC).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_TRUST_DOMAIN"]

DEFAULT_TRUST_DOMAIN: Final = "x0tta6bl4.mesh"
"""The mesh's SPIFFE trust domain unless ``--trust-domain`` names another."""
