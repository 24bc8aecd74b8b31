"""The configuration of one ``up`` run, checked before anything starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.local.errors import LocalStagingError, PrerequisiteError
from x0tta6bl4.protocol.failure import DEFAULT_DEAD_AFTER, DEFAULT_INTERVAL

__all__ = ["IDENTITY_PROVIDERS", "MAX_NODES", "UpConfig"]

#: More node processes than this would not fit a developer machine (each is a Python process).
MAX_NODES = 200
#: ``--identity`` values: ``auto`` picks ``spire`` when it can run, else ``embedded``.
IDENTITY_PROVIDERS = ("auto", "spire", "embedded")


@dataclass(frozen=True)
class UpConfig:
    """Flags of ``x0tta6bl4 up`` (see docs/up.md)."""

    nodes: int = 10
    controllers: int = 1
    store: Literal["sqlite", "etcd"] = "sqlite"
    tun: bool = False
    duration: float | None = None
    chaos: bool = False
    chaos_interval: float = 5.0
    state_dir: Path | None = None
    port: int = 0
    host: str = "127.0.0.1"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    heartbeat_interval: float = DEFAULT_INTERVAL
    dead_after: int = DEFAULT_DEAD_AFTER
    ready_timeout: float = 120.0
    identity: Literal["auto", "spire", "embedded"] = "auto"
    svid_ttl: float = 3600.0

    def check(self) -> None:
        """Raise :class:`LocalStagingError` (or a subclass) for an unusable combination."""
        if not 1 <= self.nodes <= MAX_NODES:
            raise LocalStagingError(f"--nodes must be 1..{MAX_NODES}, not {self.nodes}")
        if not 1 <= self.controllers <= 10:
            raise LocalStagingError(f"--controllers must be 1..10, not {self.controllers}")
        if self.store not in ("sqlite", "etcd"):
            raise LocalStagingError(f"--store must be sqlite or etcd, not {self.store!r}")
        if self.controllers > 1 and self.store != "etcd":
            raise LocalStagingError(
                f"--controllers {self.controllers} needs a shared store: add --store etcd "
                "(SQLite serves one controller)"
            )
        if self.duration is not None and self.duration <= 0:
            raise LocalStagingError(
                f"--for must be a positive number of seconds, not {self.duration}"
            )
        if self.chaos_interval <= 0:
            raise LocalStagingError("--chaos-interval must be positive")
        if not 0 <= self.port <= 65535:
            raise LocalStagingError(f"--port must be 0..65535, not {self.port}")
        if not 0.01 <= self.heartbeat_interval <= 10:
            raise LocalStagingError("--heartbeat-interval must be 0.01..10 seconds")
        if not 1 <= self.dead_after <= 100:
            raise LocalStagingError("--dead-after must be 1..100")
        if self.ready_timeout <= 0:
            raise LocalStagingError("--ready-timeout must be positive")
        if self.identity not in IDENTITY_PROVIDERS:
            raise LocalStagingError(
                f"--identity must be one of {', '.join(IDENTITY_PROVIDERS)}, not {self.identity!r}"
            )
        if not 10 <= self.svid_ttl <= 30 * 86400:
            raise LocalStagingError(
                "--svid-ttl must be 10 s .. 30 days (SVIDs rotate at half-life), "
                f"not {self.svid_ttl:g}"
            )
        if self.tun:
            if os.geteuid() != 0:
                raise PrerequisiteError(
                    "--tun needs root (each node creates a TUN interface): run as root or "
                    "drop --tun"
                )
            if not os.path.exists("/dev/net/tun"):
                raise PrerequisiteError(
                    "--tun needs /dev/net/tun, which this machine lacks (in a container: "
                    "--device /dev/net/tun --cap-add NET_ADMIN); or drop --tun"
                )
