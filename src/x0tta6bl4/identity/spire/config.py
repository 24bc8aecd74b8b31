"""SPIRE server and agent configuration files, rendered from typed settings.

The project runs SPIRE with the settings below locally (``x0tta6bl4 up --identity spire``,
the integration suite); the chart ``charts/x0tta6bl4-spire`` renders the same settings for the
cluster. docs/identity.md ("SPIRE settings") explains each value and why.

Server: trust domain ``x0tta6bl4.mesh``; SQLite datastore (``sqlite3``: one server, no external
database); ``disk`` key manager (the CA and JWT signing keys survive a restart, so a kept state
directory keeps its trust bundle); ``join_token`` node attestation; EC P-256 CA and SVID keys.
``require_pq_kem`` stays off: SPIRE 1.13.3 pins the pre-standard Kyber draft group (0x6399)
that Go ≥ 1.24 no longer implements, so requiring it fails every handshake; agent and server
built with Go 1.26 offer and pick X25519MLKEM768 by default anyway (docs/identity.md, "SPIRE
settings").

Agent: ``join_token`` node attestation with the token in a file (never on a command line),
``disk`` key manager (a restarted agent re-authenticates with its own SVID, no new token),
``unix`` workload attestor (``unix:uid``, ``unix:gid``, … selectors from the caller's
``SO_PEERCRED``), the server's bundle from a file (no insecure bootstrap).

Durations are seconds here and Go durations (``"90s"``) in the files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentConfig", "ServerConfig", "go_duration", "render_hcl"]

_Value = str | int | bool | float | list[str] | Mapping[str, object]


def go_duration(seconds: float) -> str:
    """``90`` → ``"90s"``, ``0.5`` → ``"500ms"`` (Go's ``time.ParseDuration`` syntax)."""
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # HCL strings take JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} in HCL")


def render_hcl(body: Mapping[str, object], indent: int = 0) -> str:
    """HCL text of ``body``: a nested mapping is a block (its key may carry labels, e.g.
    ``'DataStore "sql"'``), anything else an attribute."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in body.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            inner = render_hcl(value, indent + 1)
            if inner:
                lines.append(inner)
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key} = {_scalar(value)}")
    return "\n".join(lines)


def _plugin(kind: str, name: str, data: Mapping[str, object]) -> dict[str, object]:
    return {f'{kind} "{name}"': {"plugin_data": dict(data)}}


def _health(port: int) -> dict[str, object]:
    return {
        "listener_enabled": True,
        "bind_address": "127.0.0.1",
        "bind_port": str(port),
        "live_path": "/live",
        "ready_path": "/ready",
    }


@dataclass(frozen=True)
class ServerConfig:
    """A ``spire-server run -config`` file (see the module docstring)."""

    trust_domain: str
    data_dir: Path
    socket_path: Path
    bind_port: int
    health_port: int
    bind_address: str = "127.0.0.1"
    ca_ttl: float = 86400.0
    default_x509_svid_ttl: float = 3600.0
    default_jwt_svid_ttl: float = 300.0
    agent_ttl: float = 3600.0
    cache_reload_interval: float = 5.0
    require_pq_kem: bool = False
    log_level: str = "INFO"

    def render(self) -> str:
        """The HCL text."""
        server: dict[str, object] = {
            "bind_address": self.bind_address,
            "bind_port": str(self.bind_port),
            "socket_path": str(self.socket_path),
            "trust_domain": self.trust_domain,
            "data_dir": str(self.data_dir),
            "log_level": self.log_level,
            "log_format": "json",
            "ca_key_type": "ec-p256",
            "jwt_key_type": "ec-p256",
            "ca_ttl": go_duration(self.ca_ttl),
            "default_x509_svid_ttl": go_duration(self.default_x509_svid_ttl),
            "default_jwt_svid_ttl": go_duration(self.default_jwt_svid_ttl),
            "agent_ttl": go_duration(self.agent_ttl),
            "ca_subject": {"country": ["ZZ"], "organization": ["x0tta6bl4"], "common_name": ""},
            "experimental": {
                "cache_reload_interval": go_duration(self.cache_reload_interval),
                "require_pq_kem": self.require_pq_kem,
            },
        }
        plugins: dict[str, object] = {
            **_plugin(
                "DataStore",
                "sql",
                {
                    "database_type": "sqlite3",
                    "connection_string": str(self.data_dir / "datastore.sqlite3"),
                },
            ),
            **_plugin("KeyManager", "disk", {"keys_path": str(self.data_dir / "keys.json")}),
            **_plugin("NodeAttestor", "join_token", {}),
        }
        return (
            render_hcl(
                {"server": server, "plugins": plugins, "health_checks": _health(self.health_port)}
            )
            + "\n"
        )


@dataclass(frozen=True)
class AgentConfig:
    """A ``spire-agent run -config`` file (see the module docstring)."""

    trust_domain: str
    data_dir: Path
    socket_path: Path
    server_port: int
    health_port: int
    trust_bundle_path: Path
    join_token_file: Path
    server_address: str = "127.0.0.1"
    sync_interval: float = 5.0
    require_pq_kem: bool = False
    log_level: str = "INFO"

    def render(self) -> str:
        """The HCL text."""
        agent: dict[str, object] = {
            "data_dir": str(self.data_dir),
            "log_level": self.log_level,
            "log_format": "json",
            "server_address": self.server_address,
            "server_port": self.server_port,
            "socket_path": str(self.socket_path),
            "trust_domain": self.trust_domain,
            "trust_bundle_path": str(self.trust_bundle_path),
            "join_token_file": str(self.join_token_file),
            "workload_x509_svid_key_type": "ec-p256",
            "experimental": {
                "sync_interval": go_duration(self.sync_interval),
                "require_pq_kem": self.require_pq_kem,
            },
        }
        plugins: dict[str, object] = {
            **_plugin("NodeAttestor", "join_token", {}),
            **_plugin("KeyManager", "disk", {"directory": str(self.data_dir)}),
            **_plugin("WorkloadAttestor", "unix", {}),
        }
        return (
            render_hcl(
                {"agent": agent, "plugins": plugins, "health_checks": _health(self.health_port)}
            )
            + "\n"
        )
