"""Real etcd processes for tests: one member or a cluster on loopback, ephemeral ports.

    with EtcdCluster(tmp_path, size=3, tls=True) as cluster:
        cluster.endpoints            # [("127.0.0.1", port), ...]
        cluster.url()                # etcds://127.0.0.1:port,... (etcd:// without tls)
        cluster.client_tls           # the controllers' EtcdTlsFiles (with tls)
        leader = cluster.leader()    # asks each member over etcd's HTTP gateway
        cluster.kill(leader)         # SIGKILL
        cluster.restart(leader)      # same data dir, rejoins

The binary comes from Debian's ``etcd-server`` package (``scripts/setup-system.sh``);
:func:`etcd_binary` returns None when it is missing so tests can skip with that reason.
The binary lookup, the environment and each member's command line are those of ``up``
(:mod:`x0tta6bl4.local.etcd`), whose fast elections (heartbeat 50 ms, election timeout
500 ms) keep failover tests short. Each member logs to ``<data-dir>.log``; a start failure
reports the log's tail. With ``tls=True`` the members serve client and peer ports over TLS
and require client certificates (a fresh etcd CA under the base directory), as the chart's
and ``up``'s do; the test's own HTTP probes present the client certificate.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from x0tta6bl4.controller.store.etcd_tls import EtcdPki, EtcdTlsFiles, write_etcd_pki
from x0tta6bl4.local.etcd import etcd_binary, etcd_env, member_argv

__all__ = ["ETCD_MISSING_REASON", "EtcdCluster", "EtcdMember", "etcd_binary"]

ETCD_MISSING_REASON = (
    "the etcd binary is not installed (Debian package etcd-server; run scripts/setup-system.sh)"
)
_START_TIMEOUT = 30.0


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class EtcdMember:
    """One etcd member: its name, ports, data directory and (while running) process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.with_suffix(".log")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _post(self, path: str, timeout: float = 2.0) -> dict[str, object]:
        request = urllib.request.Request(self.client_url + path, data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context) as response:
            result: dict[str, object] = json.load(response)
        return result

    def status(self) -> dict[str, object] | None:
        """etcd's maintenance status of this member, or None if it does not answer."""
        if not self.running:
            return None
        try:
            return self._post("/v3/maintenance/status")
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def healthy(self) -> bool:
        """True if the member answers and sees a leader."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(
                self.client_url + "/health", timeout=2.0, context=self.ssl_context
            ) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False


class EtcdCluster:
    """``size`` etcd members on loopback under ``base_dir`` (see the module docstring)."""

    def __init__(self, base_dir: Path, size: int = 1, *, tls: bool = False) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError(ETCD_MISSING_REASON)
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.size = size
        self.members: list[EtcdMember] = []
        self.pki: EtcdPki | None = None
        if tls:
            self.pki = write_etcd_pki(self.base_dir / "pki", ["127.0.0.1", "localhost"], days=2)

    @property
    def client_tls(self) -> EtcdTlsFiles:
        """The client certificate files a controller uses (``tls=True`` only)."""
        if self.pki is None:
            raise RuntimeError("this cluster runs without TLS")
        return self.pki.client

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.pki is None:
            return None
        files = self.pki.client
        ctx = ssl.create_default_context(cafile=str(files.ca_file))
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
        return ctx

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        return {**env, **etcd_env()}

    def start(self) -> None:
        """Start every member and wait until all are healthy."""
        ports = _free_ports(2 * self.size)
        token = f"x0-test-{os.getpid()}-{time.monotonic_ns()}"
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.members = [
            EtcdMember(
                name=f"m{index}",
                client_port=ports[2 * index],
                peer_port=ports[2 * index + 1],
                data_dir=self.base_dir / f"m{index}",
                ssl_context=self._ssl_context(),
            )
            for index in range(self.size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.args = member_argv(
                self.binary,
                name=member.name,
                data_dir=member.data_dir,
                client_url=member.client_url,
                peer_url=member.peer_url,
                initial_cluster=initial,
                token=token,
                tls=None
                if self.pki is None
                else (self.pki.ca, self.pki.server_cert, self.pki.server_key),
            )
            self._spawn(member)
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, member: EtcdMember) -> None:
        with member.log_path.open("ab") as log:
            member.process = subprocess.Popen(
                member.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )

    def wait_healthy(self, timeout: float = _START_TIMEOUT) -> None:
        """Wait until every running member is healthy (has a leader)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.process is not None]
            for member in running:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd member {member.name} exited with {member.process.returncode}:\n"
                        + member.log_tail()
                    )
            if all(member.healthy() for member in running):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in running)
                raise RuntimeError(f"etcd did not become healthy in {timeout} s:\n{tails}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every member cleanly: SIGTERM (SIGKILL after 10 s), the raft leader first.

        A stopping leader hands leadership to a live follower; stopping the followers at the
        same time would make it wait for that hand-over to time out.
        """
        leaders = [m for m in self.members if self._is_leader(m)]
        order = leaders + [m for m in self.members if m not in leaders]
        for member in order:
            if member.process is None:
                continue
            if member.running:
                member.process.send_signal(signal.SIGTERM)
            try:
                member.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
            member.process = None

    @staticmethod
    def _is_leader(member: EtcdMember) -> bool:
        status = member.status()
        if status is None:
            return False
        header = status.get("header")
        return isinstance(header, dict) and status.get("leader") == header.get("member_id")

    # -- chaos ---------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", member.client_port) for member in self.members]

    def url(self, members: list[EtcdMember] | None = None) -> str:
        """An ``etcd://`` (``etcds://`` with TLS) store URL naming ``members`` (default: all)."""
        chosen = self.members if members is None else members
        scheme = "etcd" if self.pki is None else "etcds"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{m.client_port}" for m in chosen)

    def leader(self, timeout: float = _START_TIMEOUT) -> EtcdMember:
        """The member that is currently raft leader (waits for an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for member in self.members:
                if self._is_leader(member):
                    return member
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader elected within {timeout} s")
            time.sleep(0.05)

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL ``member`` and reap it."""
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError):
                member.process.kill()
            member.process.wait()
            member.process = None

    def restart(self, member: EtcdMember) -> None:
        """Start a killed member again on its data dir and wait until the cluster is healthy."""
        if member.running:
            raise RuntimeError(f"etcd member {member.name} is still running")
        self._spawn(member)
        self.wait_healthy()
