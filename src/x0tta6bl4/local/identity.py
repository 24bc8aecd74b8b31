"""Which identity provider an ``up`` run uses: real SPIRE or the embedded issuer.

``--identity spire`` runs a real ``spire-server`` and ``spire-agent``
(:mod:`x0tta6bl4.local.spire`); it needs their binaries and root (each local workload gets a
group id of its own, :mod:`x0tta6bl4.local.workloads`), and says plainly which is missing.
``--identity embedded`` runs ``x0tta6bl4 identity serve``. ``--identity auto`` (the default)
picks SPIRE when both conditions hold and the embedded issuer otherwise, with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from x0tta6bl4.identity.errors import SpireNotFoundError
from x0tta6bl4.identity.spire.binaries import SpireBinaries, require_spire
from x0tta6bl4.local.errors import PrerequisiteError

__all__ = ["ProviderChoice", "resolve_provider"]

_NEEDS_ROOT = (
    "SPIRE's unix attestor tells the local processes apart by group id, and only root may "
    "start them with group ids of their own"
)


@dataclass(frozen=True)
class ProviderChoice:
    """The provider, why it was chosen, and (for SPIRE) its binaries."""

    provider: Literal["spire", "embedded"]
    reason: str
    binaries: SpireBinaries | None = None


def resolve_provider(wanted: str, *, euid: int | None = None) -> ProviderChoice:
    """Resolve ``--identity`` (``auto``, ``spire`` or ``embedded``).

    :class:`PrerequisiteError` when ``spire`` was asked for and cannot run.
    """
    euid = os.geteuid() if euid is None else euid
    if wanted == "embedded":
        return ProviderChoice("embedded", "--identity embedded")
    try:
        binaries = require_spire()
    except SpireNotFoundError as err:
        if wanted == "spire":
            raise PrerequisiteError(
                f"--identity spire: {err}; or use --identity embedded"
            ) from None
        return ProviderChoice(
            "embedded", "SPIRE binaries not found (scripts/components/build spire)"
        )
    if euid != 0:
        if wanted == "spire":
            raise PrerequisiteError(
                f"--identity spire needs root: {_NEEDS_ROOT}; run as root or use "
                "--identity embedded"
            )
        return ProviderChoice("embedded", "not root (SPIRE needs per-process group ids)")
    reason = "--identity spire" if wanted == "spire" else "SPIRE binaries found, running as root"
    return ProviderChoice("spire", reason, binaries)
