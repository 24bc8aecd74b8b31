"""The local staging mesh: identity provider, etcd (optional), controllers and nodes as OS
processes.

:class:`Staging` starts the components in dependency order, waits for each one's own
readiness signal, and stops everything again::

    identity, one of (--identity, local/identity.py):
      spire-server + spire-agent   (--identity spire)     ready: their /ready health endpoints
      identity issuer              (--identity embedded)  ready: its Workload API socket accepts
    etcd × 3         (--store etcd)              ready: /health on each client port (TLS)
    controller × M   (x0tta6bl4 controller)      ready: GET /ready = 200
    node × N         (x0tta6bl4 node)            ready: GET /ready = 200 (registered, linked)

Every controller and node has a SPIFFE ID of its own (docs/identity.md, "Names"):
``spiffe://<td>/ns/local/sa/x0tta6bl4-app/node/<node-id>`` and ``…/controller``. The local
processes all run as one uid, so neither provider can tell them apart by uid:

- SPIRE: each process runs with a group id of its own, which its registration entry selects
  (``unix:uid`` + ``unix:gid``; :mod:`x0tta6bl4.local.workloads`);
- the embedded issuer: right after starting each process ``up`` writes a process entry
  (``pid:PID@START``) into the issuer's entries file (``STATE_DIR/identity-entries``), and
  removes it when the process is killed or restarted.

One mesh CA (created under the state directory on first use, reused later) signs for every
controller.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from x0tta6bl4.identity.issuer.entries import process_start_time
from x0tta6bl4.identity.node_ids import node_spiffe_id, role_spiffe_id
from x0tta6bl4.local.config import UpConfig
from x0tta6bl4.local.descriptor import MeshDescriptor, remove_descriptor, write_descriptor
from x0tta6bl4.local.errors import StartupError
from x0tta6bl4.local.etcd import EtcdPlan
from x0tta6bl4.local.identity import ProviderChoice, resolve_provider
from x0tta6bl4.local.observe import NodeView, fetch_nodes, routed_pairs
from x0tta6bl4.local.ports import PortAllocator
from x0tta6bl4.local.spire import LocalSpire, SpireSettings
from x0tta6bl4.local.statedir import StateDir
from x0tta6bl4.local.supervisor import Managed, ProcessSpec, Supervisor, x0_command
from x0tta6bl4.local.workloads import LocalWorkload, local_workloads
from x0tta6bl4.tls.client import tls_client
from x0tta6bl4.tls.credentials import StaticCredentials, TlsCredentials, load_bundle_pem

__all__ = ["STOP_ORDER", "NodeHandle", "Staging", "StartProgress", "StopRequested"]

#: Kinds in the order they are stopped (the reverse of starting).
STOP_ORDER = ("node", "controller", "etcd", "issuer", "spire-agent", "spire-server")
#: SIGTERM grace per kind before SIGKILL. A controller waits for open long-poll watches when
#: it shuts down; by then every node is gone and its store is either disposable or etcd.
STOP_GRACE = {
    "node": 5.0,
    "controller": 2.0,
    "etcd": 8.0,
    "issuer": 5.0,
    "spire-agent": 5.0,
    "spire-server": 5.0,
}
_POLL = 0.1


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Ctrl-C / SIGTERM arrived while starting."""


class StartProgress(Protocol):
    """Where start-up reports its progress (a rich progress bar, or plain lines)."""

    def phase(self, name: str, total: int) -> None:
        """A phase with ``total`` steps begins."""

    def advance(self, name: str, label: str) -> None:
        """One step of phase ``name`` is done."""


@dataclass(frozen=True)
class NodeHandle:
    """Where one node listens."""

    node_id: str
    udp_port: int
    http_port: int
    controller_url: str
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Staging:
    """One local mesh (see the module docstring). Use :meth:`start`, then :meth:`close`."""

    def __init__(self, config: UpConfig, stop: asyncio.Event) -> None:
        config.check()
        self.config = config
        self.stop_event = stop
        self.supervisor = Supervisor(
            {k: v for k, v in os.environ.items() if not k.startswith(("X0_", "SPIFFE_"))}
        )
        self.ports = PortAllocator(config.host)
        self.state: StateDir | None = None
        self.controller_urls: list[str] = []
        #: The controllers' TLS API URLs (``https://``), in the same order.
        self.api_urls: list[str] = []
        self.nodes: dict[str, NodeHandle] = {}
        self.spiffe_socket: Path | None = None
        self.etcd: EtcdPlan | None = None
        self._entries: dict[str, str] = {}
        self.identity: ProviderChoice = resolve_provider(config.identity)
        self.spire: LocalSpire | None = None
        self.workloads: dict[str, LocalWorkload] = {}
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.startup_s = 0.0
        # Fail on a taken port before creating anything.
        self._controller_ports = [
            self.ports.take(config.port + i if config.port else 0, "tcp", f"controller-{i}")
            for i in range(config.controllers)
        ]
        self._controller_tls_ports = [self.ports.free("tcp") for _ in range(config.controllers)]

    # ----------------------------------------------------------------- names and urls

    @property
    def spiffe_id(self) -> str:
        """The namespace/service-account prefix every local identity shares."""
        return f"spiffe://{self.config.trust_domain}/ns/local/sa/x0tta6bl4-app"

    def node_spiffe_id(self, node_id: str) -> str:
        """The SPIFFE ID of local node ``node_id``."""
        return str(node_spiffe_id(self.config.trust_domain, "local", "x0tta6bl4-app", node_id))

    @property
    def controller_spiffe_id(self) -> str:
        """The SPIFFE ID of every local controller replica."""
        return str(role_spiffe_id(self.config.trust_domain, "local", "x0tta6bl4-app", "controller"))

    # ----------------------------------------------------------------- identities

    @property
    def entries_path(self) -> Path:
        """The issuer's entries file (``STATE_DIR/identity-entries``)."""
        assert self.state is not None
        return self.state.root / "identity-entries"

    def _attest(self, name: str, managed: Managed, spiffe_id: str) -> None:
        """Give exactly the process of ``managed`` the identity ``spiffe_id`` (embedded issuer;
        under SPIRE the process's group id already selects its entry)."""
        if self.spire is not None:
            return
        pid = managed.pid
        start = None if pid is None else process_start_time(pid)
        if pid is None or start is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = f"pid:{pid}@{start}={spiffe_id}"
        self._write_entries()

    def _write_entries(self) -> None:
        path = self.entries_path
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# written by x0tta6bl4 up: one process entry per controller and node\n")
            out.writelines(f"{line}\n" for _, line in sorted(self._entries.items()))
        os.replace(tmp, path)

    @property
    def controller_url(self) -> str:
        return self.controller_urls[0] if self.controller_urls else ""

    @property
    def ui_url(self) -> str:
        return f"{self.controller_url}/ui" if self.controller_url else ""

    @property
    def node_urls(self) -> dict[str, str]:
        return {name: handle.url for name, handle in self.nodes.items()}

    def node_ids(self) -> list[str]:
        width = max(2, len(str(self.config.nodes)))
        return [f"node-{i:0{width}d}" for i in range(1, self.config.nodes + 1)]

    # ----------------------------------------------------------------- start

    async def start(self, progress: StartProgress) -> None:
        """Start every component and wait until all are ready and every pair is routed."""
        self.state = StateDir(self.config.state_dir)
        remove_descriptor(self.state.root)  # left by an up that was SIGKILLed
        async with httpx.AsyncClient() as client:
            if self.identity.provider == "spire":
                await self._start_spire(progress)
            else:
                await self._start_issuer(progress)
            store_url = None
            if self.config.store == "etcd":
                store_url = await self._start_etcd(progress, client)
            self._ensure_mesh_ca()
            await self._start_controllers(progress, client, store_url)
            await self._start_nodes(progress, client)
            await self._wait_routed(progress, client)
        self.startup_s = time.monotonic() - self.started_at
        self.write_descriptor()

    def descriptor(self) -> MeshDescriptor:
        """Where this mesh can be reached (``STATE_DIR/mesh.json``, docs/up.md)."""
        pids = {n: self.supervisor.processes[n].pid for n in self.nodes}
        return MeshDescriptor(
            up_pid=os.getpid(),
            controller=self.controller_url,
            controllers=tuple(self.controller_urls),
            ui=self.ui_url,
            store=self.config.store,
            nodes=self.node_urls,
            node_pids={n: pid for n, pid in pids.items() if pid is not None},
            started_at=self.started_wall,
            api=tuple(self.api_urls),
            trust_bundle=str(self.trust_bundle.absolute()) if self.state is not None else "",
            identity=self.identity_json(),
            controller_spiffe_id=self.controller_spiffe_id,
        )

    def identity_json(self) -> dict[str, object]:
        """The descriptor's ``identity`` object: provider, sockets, and (SPIRE) each workload's
        SPIFFE ID and selectors."""
        info: dict[str, object] = {
            "provider": self.identity.provider,
            "trust_domain": self.config.trust_domain,
            "agent_socket": str(self.spiffe_socket) if self.spiffe_socket else None,
        }
        if self.spire is not None:
            info["server_socket"] = str(self.spire.server_socket)
            info["bundle"] = str(self.spire.bundle_path)
            info["workloads"] = {n: w.to_json() for n, w in sorted(self.workloads.items())}
        return info

    def write_descriptor(self) -> None:
        """Write (or rewrite, after a node restart) ``STATE_DIR/mesh.json``."""
        if self.state is not None:
            write_descriptor(self.state.root, self.descriptor())

    def _spec(
        self, name: str, kind: str, argv: list[str], workload: str | None = None
    ) -> ProcessSpec:
        assert self.state is not None
        chosen = self.workloads.get(workload) if workload else None
        return ProcessSpec(
            name=name,
            kind=kind,
            argv=argv,
            log=self.state.log(name),
            gid=None if chosen is None else chosen.gid,
        )

    async def _start_spire(self, progress: StartProgress) -> None:
        assert self.state is not None
        assert self.identity.binaries is not None
        progress.phase("SPIRE", 2)
        ttl = self.config.svid_ttl
        spire = LocalSpire(
            self.identity.binaries,
            trust_domain=self.config.trust_domain,
            base=self.state.sub("spire"),
            runtime=self.state.runtime,
            logs=self.state.sub("logs"),
            ports=self.ports,
            settings=SpireSettings(x509_svid_ttl=ttl, jwt_svid_ttl=min(ttl, 300.0)),
        )
        self.spire = spire
        self.workloads = local_workloads(self.config.trust_domain, self.node_ids())
        server = self.supervisor.start(spire.server_spec())

        async def server_ready() -> bool:
            return await asyncio.to_thread(spire.server_ready)

        await self._wait(
            {"spire-server": server_ready}, {"spire-server": server}, progress, "SPIRE"
        )
        await asyncio.to_thread(spire.bootstrap_agent)
        await asyncio.to_thread(spire.register, self.workloads.values())
        agent = self.supervisor.start(spire.agent_spec())

        async def agent_ready() -> bool:
            return await asyncio.to_thread(spire.agent_ready)

        await self._wait({"spire-agent": agent_ready}, {"spire-agent": agent}, progress, "SPIRE")
        self.spiffe_socket = spire.agent_socket
        self._write_trust_bundle(spire.bundle_path)

    async def _start_issuer(self, progress: StartProgress) -> None:
        assert self.state is not None
        progress.phase("identity issuer", 1)
        self.spiffe_socket = self.state.socket("workload.sock")
        self._write_entries()  # none yet: each process gets its entry once started
        managed = self.supervisor.start(
            self._spec(
                "issuer",
                "issuer",
                x0_command(
                    "identity",
                    "serve",
                    "--socket",
                    str(self.spiffe_socket),
                    "--trust-domain",
                    self.config.trust_domain,
                    "--entries-file",
                    str(self.entries_path),
                    "--state-dir",
                    str(self.state.root),
                ),
            )
        )
        socket_path = self.spiffe_socket

        async def accepting() -> bool:
            if not socket_path.exists():
                return False
            try:
                _, writer = await asyncio.open_unix_connection(str(socket_path))
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await self._wait({"issuer": accepting}, {"issuer": managed}, progress, "identity issuer")
        self._write_trust_bundle(self.state.root / "identity" / "ca.crt.pem")

    async def _start_etcd(self, progress: StartProgress, client: httpx.AsyncClient) -> str:
        assert self.state is not None
        plan = EtcdPlan(self.state.sub("etcd"), self.state.sub("logs"), self.ports, size=3)
        self.etcd = plan
        progress.phase("etcd", len(plan.members))
        token = f"x0up-{os.getpid()}-{time.time_ns()}"
        started = {spec.name: self.supervisor.start(spec) for spec in plan.specs(token)}
        files = plan.pki.client
        tls = ssl.create_default_context(cafile=str(files.ca_file))
        tls.load_cert_chain(str(files.cert_file), str(files.key_file))

        async with httpx.AsyncClient(verify=tls) as etcd_client:

            def healthy(url: str) -> Callable[[], Awaitable[bool]]:
                async def probe() -> bool:
                    try:
                        answer = await etcd_client.get(f"{url}/health", timeout=2.0)
                        return bool(
                            answer.status_code == 200 and answer.json().get("health") == "true"
                        )
                    except (httpx.HTTPError, ValueError):
                        return False

                return probe

            await self._wait(
                {m.name: healthy(m.client_url) for m in plan.members}, started, progress, "etcd"
            )
        return plan.store_url

    def _ensure_mesh_ca(self) -> None:
        from x0tta6bl4.controller.ca import init_ca_dir

        assert self.state is not None
        ca_dir = self.state.sub("mesh-ca")
        if not (ca_dir / "ca.crt").exists() or not (ca_dir / "ca.key").exists():
            init_ca_dir(ca_dir, trust_domain=self.config.trust_domain)

    async def _start_controllers(
        self, progress: StartProgress, client: httpx.AsyncClient, store_url: str | None
    ) -> None:
        assert self.state is not None
        assert self.spiffe_socket is not None
        progress.phase("controllers", self.config.controllers)
        ca_dir = self.state.sub("mesh-ca")
        started: dict[str, Managed] = {}
        probes: dict[str, Callable[[], Awaitable[bool]]] = {}
        trust = self._trust_only()
        for index, port in enumerate(self._controller_ports):
            name = f"controller-{index}"
            state_dir = self.state.sub(name)
            url = f"http://{self.config.host}:{port}"
            tls_port = self._controller_tls_ports[index]
            api = f"https://{self.config.host}:{tls_port}"
            self.controller_urls.append(url)
            self.api_urls.append(api)
            store = store_url or f"sqlite:///{state_dir / 'controller.db'}"
            started[name] = managed = self.supervisor.start(
                self._spec(
                    name,
                    "controller",
                    x0_command(
                        "controller",
                        "--listen",
                        f"{self.config.host}:{port}",
                        "--tls-listen",
                        f"{self.config.host}:{tls_port}",
                        "--store",
                        store,
                        "--state-dir",
                        str(state_dir),
                        "--trust-domain",
                        self.config.trust_domain,
                        "--spiffe-socket",
                        str(self.spiffe_socket),
                        "--ca-cert-file",
                        str(ca_dir / "ca.crt"),
                        "--ca-key-file",
                        str(ca_dir / "ca.key"),
                        "--log-format",
                        "json",
                        *self._etcd_client_args(),
                        # up starts its etcd anew on every run (local/etcd.py): an empty
                        # store is expected there, not a lost one.
                        *(("--fresh-store",) if store_url else ()),
                    ),
                    workload="controller",
                )
            )
            self._attest(name, managed, self.controller_spiffe_id)
            probes[name] = self._controller_ready(client, url, api, trust)
        await self._wait(probes, started, progress, "controllers")

    # ----------------------------------------------------------------- TLS towards controllers

    @property
    def trust_bundle(self) -> Path:
        """The PEM bundle that verifies the controllers' X.509-SVIDs
        (``STATE_DIR/trust-bundle.pem``: a copy of the embedded issuer's CA certificate, or of
        the SPIRE server's bundle)."""
        assert self.state is not None
        return self.state.root / "trust-bundle.pem"

    def _write_trust_bundle(self, source: Path) -> None:
        tmp = self.trust_bundle.with_name(f".{self.trust_bundle.name}.tmp")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, self.trust_bundle)

    def _trust_only(self) -> StaticCredentials:
        return StaticCredentials(
            TlsCredentials.trust_only(load_bundle_pem(self.trust_bundle), self.config.trust_domain)
        )

    def _controller_ready(
        self, client: httpx.AsyncClient, url: str, api: str, trust: StaticCredentials
    ) -> Callable[[], Awaitable[bool]]:
        """Ready: ``/ready`` = 200 on plain HTTP, and its TLS listener answers as the
        controller's SPIFFE ID (verified against the trust bundle)."""
        plain = self._http_ready(client, url)

        async def probe() -> bool:
            if not await plain():
                return False
            try:
                async with tls_client(api, trust, self.controller_spiffe_id) as tls:
                    answer = await tls.get("/health", timeout=5.0)
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        return probe

    def _etcd_client_args(self) -> list[str]:
        """The controllers' etcd client certificate flags (with --store etcd)."""
        if self.etcd is None:
            return []
        files = self.etcd.pki.client
        return [
            "--etcd-ca-file",
            str(files.ca_file),
            "--etcd-cert-file",
            str(files.cert_file),
            "--etcd-key-file",
            str(files.key_file),
        ]

    def _node_spec(self, handle: NodeHandle) -> ProcessSpec:
        assert self.spiffe_socket is not None
        host = self.config.host
        argv = x0_command(
            "node",
            "--controller",
            handle.controller_url,
            "--listen-udp",
            f"{host}:{handle.udp_port}",
            "--advertise",
            f"{host}:{handle.udp_port}",
            "--http",
            f"{host}:{handle.http_port}",
            "--node-id",
            handle.node_id,
            "--state-dir",
            str(handle.state_dir),
            "--spiffe-socket",
            str(self.spiffe_socket),
            "--trust-domain",
            self.config.trust_domain,
            "--heartbeat-interval",
            f"{self.config.heartbeat_interval:g}",
            "--dead-after",
            str(self.config.dead_after),
            "--log-format",
            "json",
        )
        if self.config.tun:
            argv.append("--tun")
        return self._spec(handle.node_id, "node", argv, workload=handle.node_id)

    async def _start_nodes(self, progress: StartProgress, client: httpx.AsyncClient) -> None:
        assert self.state is not None
        progress.phase("nodes", self.config.nodes)
        started: dict[str, Managed] = {}
        probes: dict[str, Callable[[], Awaitable[bool]]] = {}
        for index, node_id in enumerate(self.node_ids()):
            handle = NodeHandle(
                node_id=node_id,
                udp_port=self.ports.free("udp"),
                http_port=self.ports.free("tcp"),
                controller_url=self.api_urls[index % len(self.api_urls)],
                state_dir=self.state.sub("nodes", node_id),
            )
            self.nodes[node_id] = handle
            started[node_id] = self.supervisor.start(self._node_spec(handle))
            self._attest(node_id, started[node_id], self.node_spiffe_id(node_id))
            probes[node_id] = self._http_ready(client, handle.url)
        await self._wait(probes, started, progress, "nodes")

    async def _wait_routed(self, progress: StartProgress, client: httpx.AsyncClient) -> None:
        names = list(self.nodes)
        total = len(names) * (len(names) - 1)
        progress.phase("routes", total)
        done = 0
        deadline = time.monotonic() + self.config.ready_timeout
        while True:
            self._check_stop()
            views = await fetch_nodes(client, self.node_urls)
            routed, _ = routed_pairs(views, names)
            for _ in range(done, routed):
                progress.advance("routes", "pair routed")
            done = max(done, routed)
            if routed == total:
                return
            self._check_exited({n: self.supervisor.processes[n] for n in names})
            if time.monotonic() > deadline:
                raise StartupError(
                    f"only {routed} of {total} node pairs had a route after "
                    f"{self.config.ready_timeout:g} s; logs: {self._logs_dir()}"
                )
            await asyncio.sleep(0.2)

    # ----------------------------------------------------------------- waiting

    @staticmethod
    def _http_ready(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            try:
                answer = await client.get(f"{url}/ready", timeout=2.0)
            except httpx.HTTPError:
                return False
            return answer.status_code == 200

        return probe

    def _logs_dir(self) -> str:
        return str(self.state.root / "logs") if self.state is not None else "?"

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise StopRequested

    def _check_exited(self, processes: Mapping[str, Managed]) -> None:
        for name, managed in processes.items():
            if not managed.running:
                raise StartupError(
                    f"{name} exited with status {managed.returncode} while starting; "
                    f"its log ({managed.spec.log}) ends with:\n{managed.log_tail()}"
                )

    async def _wait(
        self,
        probes: Mapping[str, Callable[[], Awaitable[bool]]],
        processes: Mapping[str, Managed],
        progress: StartProgress,
        phase: str,
    ) -> None:
        pending = dict(probes)
        deadline = time.monotonic() + self.config.ready_timeout
        while pending:
            self._check_stop()
            names = list(pending)
            results = await asyncio.gather(*(pending[n]() for n in names))
            for name, ok in zip(names, results, strict=True):
                if ok:
                    del pending[name]
                    progress.advance(phase, name)
            if not pending:
                return
            self._check_exited({n: processes[n] for n in pending})
            if time.monotonic() > deadline:
                raise StartupError(
                    f"not ready after {self.config.ready_timeout:g} s: "
                    f"{', '.join(sorted(pending))}; logs: {self._logs_dir()}"
                )
            await asyncio.sleep(_POLL)

    # ----------------------------------------------------------------- running

    async def observe(self, client: httpx.AsyncClient) -> dict[str, NodeView]:
        """Every node's view of itself (``/ready`` + ``/v1/status``)."""
        return await fetch_nodes(client, self.node_urls)

    def kill_node(self, node_id: str) -> None:
        """SIGKILL a node's process group (chaos)."""
        self.supervisor.kill(node_id)
        self._entries.pop(node_id, None)
        self._write_entries()

    def restart_node(self, node_id: str) -> None:
        """Start a killed node again: same identity, same ports."""
        managed = self.supervisor.restart(node_id)
        self._attest(node_id, managed, self.node_spiffe_id(node_id))
        self.write_descriptor()  # its pid changed

    # ----------------------------------------------------------------- stop

    def close(self) -> tuple[list[int], list[str]]:
        """Stop everything; remove sockets and (unless kept) state.

        Returns (pids that survived, paths left in the runtime directory) — both normally
        empty; the caller reports them.
        """
        if self.state is not None:
            remove_descriptor(self.state.root)  # before stopping: nothing to reach any more
        survivors = self.supervisor.stop_all(STOP_ORDER, timeouts=STOP_GRACE)
        leftovers: list[str] = []
        if self.state is not None:
            runtime = self.state.runtime
            if runtime.exists():
                leftovers = sorted(str(p) for p in runtime.iterdir())
            self.state.cleanup()
        return survivors, leftovers
