"""Where the ``spire-server`` and ``spire-agent`` binaries are.

SPIRE is not packaged by Debian; ``scripts/components/build spire`` builds it from its Go
module (the version pinned in ``scripts/components/versions.env``) into the machine-wide cache
``${X0_CACHE:-/var/cache/x0tta6bl4}/spire/<version>/bin``. :func:`find_spire` looks, in order:

1. the directory given explicitly, else ``$X0_SPIRE_BIN_DIR``;
2. ``PATH`` (both binaries must be there);
3. the component cache: the newest complete build (its ``.complete`` stamp exists).

:func:`require_spire` is the same but raises :class:`SpireNotFoundError` saying how to get them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from x0tta6bl4.identity.errors import SpireNotFoundError

__all__ = [
    "SPIRE_BIN_ENV",
    "SPIRE_INSTALL_HINT",
    "SpireBinaries",
    "component_cache",
    "find_spire",
    "require_spire",
]

SPIRE_BIN_ENV = "X0_SPIRE_BIN_DIR"
SPIRE_INSTALL_HINT = (
    "build them with `scripts/components/build spire` (from the checkout; `make test` does it), "
    f"or point {SPIRE_BIN_ENV} at a directory holding spire-server and spire-agent"
)


@dataclass(frozen=True)
class SpireBinaries:
    """Paths of the two SPIRE executables."""

    server: Path
    agent: Path

    def version(self) -> str:
        """``spire-server --version`` (e.g. ``1.13.3``)."""
        out = subprocess.run(  # noqa: S603 - our own binary, fixed argv
            [str(self.server), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return (out.stdout or out.stderr).strip()


def component_cache(env: Mapping[str, str] | None = None) -> Path:
    """The machine-wide component cache (``$X0_CACHE`` or ``/var/cache/x0tta6bl4``)."""
    env = os.environ if env is None else env
    return Path(env.get("X0_CACHE") or "/var/cache/x0tta6bl4")


def _pair(directory: Path) -> SpireBinaries | None:
    server, agent = directory / "spire-server", directory / "spire-agent"
    if os.access(server, os.X_OK) and os.access(agent, os.X_OK):
        return SpireBinaries(server=server, agent=agent)
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name))


def find_spire(
    bin_dir: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> SpireBinaries | None:
    """The SPIRE binaries (see the module docstring for the search order), or None."""
    env = os.environ if env is None else env
    explicit = bin_dir if bin_dir is not None else env.get(SPIRE_BIN_ENV)
    if explicit:
        return _pair(Path(explicit))
    server, agent = shutil.which("spire-server"), shutil.which("spire-agent")
    if server and agent:
        return SpireBinaries(server=Path(server), agent=Path(agent))
    builds = component_cache(env) / "spire"
    if builds.is_dir():
        complete = [d for d in builds.iterdir() if (d / ".complete").is_file()]
        for build in sorted(complete, key=_version_key, reverse=True):
            found = _pair(build / "bin")
            if found is not None:
                return found
    return None


def require_spire(
    bin_dir: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> SpireBinaries:
    """:func:`find_spire`, or :class:`SpireNotFoundError` naming where it looked."""
    found = find_spire(bin_dir, env)
    if found is not None:
        return found
    env = os.environ if env is None else env
    explicit = bin_dir if bin_dir is not None else env.get(SPIRE_BIN_ENV)
    where = (
        f"{explicit} (from {'the argument' if bin_dir is not None else SPIRE_BIN_ENV})"
        if explicit
        else f"PATH and {component_cache(env) / 'spire'}"
    )
    raise SpireNotFoundError(
        f"spire-server and spire-agent not found in {where}: {SPIRE_INSTALL_HINT}"
    )
