"""A real SPIRE on this machine: one ``spire-server`` and one ``spire-agent`` on loopback.

Used by ``x0tta6bl4 up --identity spire`` and by the SPIFFE integration suite. The steps, in
order (each waits for the previous one)::

    server   spire-server run -config <base>/server.conf      ready: GET /ready on its health port
    agent    (bootstrap_agent) the server's bundle → <base>/bundle.pem, a join token → a 0600
             file, entries of the previous run forgotten; (register) one entry per workload
    agent    spire-agent run -config <base>/agent.conf         ready: GET /ready on its health port

The agent attests with the join token, which also names it: ``token generate -spiffeID
spiffe://<td>/agent/local`` makes that ID an alias of the agent, and every workload entry is
its child. Workloads are told apart by ``unix:uid`` and ``unix:gid`` (see
:mod:`x0tta6bl4.local.workloads`). Both processes run under the
:class:`~x0tta6bl4.local.supervisor.Supervisor` like every other component; their data
(``<base>/server``: SQLite datastore and CA keys; ``<base>/agent``: the agent's key and SVID)
lives in the state directory, their sockets in the short runtime directory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from x0tta6bl4.identity.spire.admin import EntrySpec, SpireServerAdmin
from x0tta6bl4.identity.spire.binaries import SpireBinaries
from x0tta6bl4.identity.spire.config import AgentConfig, ServerConfig
from x0tta6bl4.local.errors import StartupError
from x0tta6bl4.local.ports import PortAllocator
from x0tta6bl4.local.supervisor import Managed, ProcessSpec, Supervisor
from x0tta6bl4.local.workloads import LocalWorkload

__all__ = ["AGENT_ALIAS_PATH", "LocalSpire", "SpireSettings"]

AGENT_ALIAS_PATH = "/agent/local"
_TOKEN_TTL = 600


@dataclass(frozen=True)
class SpireSettings:
    """SVID lifetimes and sync periods (seconds); docs/identity.md explains each.

    The sync periods are 1 s here (SPIRE's default is 5 s): with a handful of entries the
    load is nothing, and a new entry is served within about 2 s instead of 7 s (the server
    reloads its entry cache, then the agent syncs), a deleted one refused within 1-2 s.
    """

    x509_svid_ttl: float = 3600.0
    jwt_svid_ttl: float = 300.0
    sync_interval: float = 1.0
    cache_reload_interval: float = 1.0
    ca_ttl: float = 86400.0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


class LocalSpire:
    """One server and one agent (see the module docstring)."""

    def __init__(
        self,
        binaries: SpireBinaries,
        *,
        trust_domain: str,
        base: Path,
        runtime: Path,
        logs: Path,
        ports: PortAllocator,
        settings: SpireSettings | None = None,
    ) -> None:
        self.binaries = binaries
        self.trust_domain = trust_domain
        self.settings = settings or SpireSettings()
        self.base = base
        self.logs = logs
        self.server_dir = base / "server"
        self.agent_dir = base / "agent"
        self.bundle_path = base / "bundle.pem"
        self.token_path = base / "join-token"
        self.server_socket = runtime / "spire-server.sock"
        self.agent_socket = runtime / "spire-agent.sock"
        self.server_port = ports.free("tcp")
        self.server_health = ports.free("tcp")
        self.agent_health = ports.free("tcp")
        self.admin = SpireServerAdmin(binaries.server, self.server_socket)
        self.entry_ids: dict[str, str] = {}
        for directory in (base, self.server_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)

    @property
    def agent_id(self) -> str:
        """The agent's alias SPIFFE ID, parent of every workload entry."""
        return f"spiffe://{self.trust_domain}{AGENT_ALIAS_PATH}"

    # ------------------------------------------------------------------ server

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            trust_domain=self.trust_domain,
            data_dir=self.server_dir,
            socket_path=self.server_socket,
            bind_port=self.server_port,
            health_port=self.server_health,
            ca_ttl=self.settings.ca_ttl,
            default_x509_svid_ttl=self.settings.x509_svid_ttl,
            default_jwt_svid_ttl=self.settings.jwt_svid_ttl,
            cache_reload_interval=self.settings.cache_reload_interval,
        )

    def server_spec(self) -> ProcessSpec:
        """Writes ``server.conf`` and returns the server's process spec."""
        path = self.base / "server.conf"
        _write_private(path, self.server_config().render())
        return ProcessSpec(
            name="spire-server",
            kind="spire-server",
            argv=[str(self.binaries.server), "run", "-config", str(path)],
            log=self.logs / "spire-server.log",
        )

    def server_ready(self) -> bool:
        return _ready(self.server_health)

    # ------------------------------------------------------------------ agent

    def bootstrap_agent(self) -> None:
        """Prepare a fresh agent: forget the previous run's entries and agents (a kept state
        directory), write the server's bundle and a new join token."""
        stale = [str(e["id"]) for e in self.admin.entries() if e.get("id")]
        self.admin.delete_entries(stale)
        for agent in self.admin.agents():
            sid = agent.get("id", {})
            if isinstance(sid, dict) and sid.get("path"):
                self.admin.evict_agent(f"spiffe://{sid.get('trust_domain')}{sid['path']}")
        shutil.rmtree(self.agent_dir, ignore_errors=True)
        self.agent_dir.mkdir(mode=0o700)
        _write_private(self.bundle_path, self.admin.bundle_pem())
        token = self.admin.generate_token(spiffe_id=self.agent_id, ttl=_TOKEN_TTL)
        _write_private(self.token_path, token)

    def register(self, workloads: Iterable[LocalWorkload]) -> dict[str, str]:
        """One registration entry per workload; returns name → entry ID."""
        chosen = list(workloads)
        specs = [self.entry_spec(w) for w in chosen]
        ids = self.admin.create_entries(specs)
        for workload, entry_id in zip(chosen, ids, strict=True):
            self.entry_ids[workload.name] = entry_id
        return dict(self.entry_ids)

    def entry_spec(self, workload: LocalWorkload) -> EntrySpec:
        return EntrySpec(
            spiffe_id=workload.spiffe_id,
            parent_id=self.agent_id,
            selectors=workload.selectors,
            x509_svid_ttl=round(self.settings.x509_svid_ttl),
            jwt_svid_ttl=round(self.settings.jwt_svid_ttl),
            entry_id=f"x0-{workload.name}",
        )

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            trust_domain=self.trust_domain,
            data_dir=self.agent_dir,
            socket_path=self.agent_socket,
            server_port=self.server_port,
            health_port=self.agent_health,
            trust_bundle_path=self.bundle_path,
            join_token_file=self.token_path,
            sync_interval=self.settings.sync_interval,
        )

    def agent_spec(self) -> ProcessSpec:
        """Writes ``agent.conf`` and returns the agent's process spec."""
        path = self.base / "agent.conf"
        _write_private(path, self.agent_config().render())
        return ProcessSpec(
            name="spire-agent",
            kind="spire-agent",
            argv=[str(self.binaries.agent), "run", "-config", str(path)],
            log=self.logs / "spire-agent.log",
        )

    def agent_ready(self) -> bool:
        return _ready(self.agent_health) and self.agent_socket.exists()

    # ------------------------------------------------------------------ blocking helper

    def start(
        self,
        supervisor: Supervisor,
        workloads: Iterable[LocalWorkload],
        *,
        timeout: float = 60.0,
    ) -> None:
        """Start server and agent under ``supervisor`` and register ``workloads``, blocking
        until the agent serves (tests; ``up`` runs the same steps on its event loop)."""
        _wait(self.server_ready, supervisor.start(self.server_spec()), timeout)
        self.bootstrap_agent()
        self.register(workloads)
        _wait(self.agent_ready, supervisor.start(self.agent_spec()), timeout)


def _ready(port: int) -> bool:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2.0)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


def _wait(ready: Callable[[], bool], managed: Managed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not managed.running:
            raise StartupError(
                f"{managed.name} exited with status {managed.returncode} while starting; "
                f"its log ends with:\n{managed.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise StartupError(
                f"{managed.name} not ready after {timeout:g} s; its log ends with:\n"
                f"{managed.log_tail()}"
            )
        time.sleep(0.1)
