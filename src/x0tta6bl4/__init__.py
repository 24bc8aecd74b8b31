"""x0tta6bl4: a post-quantum, zero-trust, self-healing overlay mesh for Kubernetes."""

from __future__ import annotations

from x0tta6bl4._version import __version__

__all__ = ["__version__"]
