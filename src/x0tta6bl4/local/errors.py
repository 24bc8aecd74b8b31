"""Errors of ``x0tta6bl4 up``: each names what is wrong and what to do about it.

::

    LocalStagingError
    ├── PortInUseError        a requested port is taken by another process
    ├── PrerequisiteError     a binary, device or privilege ``up`` needs is missing
    ├── StartupError          a component exited or did not become ready in time
    └── StateDirError         the state directory cannot be used
"""

from __future__ import annotations

__all__ = [
    "LocalStagingError",
    "PortInUseError",
    "PrerequisiteError",
    "StartupError",
    "StateDirError",
]


class LocalStagingError(Exception):
    """Base class: ``up`` could not start or run the local mesh."""


class PortInUseError(LocalStagingError):
    """A port ``up`` was asked to use is already bound by another process."""

    def __init__(self, host: str, port: int, proto: str, what: str) -> None:
        self.host = host
        self.port = port
        self.proto = proto
        super().__init__(
            f"port {port}/{proto} on {host} is already in use (wanted for {what}); "
            "stop whatever listens there or choose another --port (0 picks free ports)"
        )


class PrerequisiteError(LocalStagingError):
    """Something ``up`` needs on this machine is missing (a binary, a device, root)."""


class StartupError(LocalStagingError):
    """A component exited early or did not become ready in time."""


class StateDirError(LocalStagingError):
    """The state directory cannot be created or used."""
