"""Real SPIRE: finding its binaries, rendering its configuration, administering its server.

- :mod:`~x0tta6bl4.identity.spire.binaries`: ``find_spire()`` / ``require_spire()``;
- :mod:`~x0tta6bl4.identity.spire.config`: ``ServerConfig`` / ``AgentConfig`` → HCL files;
- :mod:`~x0tta6bl4.identity.spire.admin`: ``SpireServerAdmin`` (entries, join tokens, bundle,
  CA rotation) over ``spire-server``'s admin socket.

Running server and agent locally is :mod:`x0tta6bl4.local.spire`; the cluster deployment is
the chart ``charts/x0tta6bl4-spire``. See docs/identity.md.
"""

from __future__ import annotations

from x0tta6bl4.identity.spire.admin import Authority, EntrySpec, SpireServerAdmin
from x0tta6bl4.identity.spire.binaries import (
    SPIRE_BIN_ENV,
    SpireBinaries,
    find_spire,
    require_spire,
)
from x0tta6bl4.identity.spire.config import AgentConfig, ServerConfig

__all__ = [
    "SPIRE_BIN_ENV",
    "AgentConfig",
    "Authority",
    "EntrySpec",
    "ServerConfig",
    "SpireBinaries",
    "SpireServerAdmin",
    "find_spire",
    "require_spire",
]
