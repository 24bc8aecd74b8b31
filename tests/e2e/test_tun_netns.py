"""TUN mode across real network namespaces: an HTTP download between two overlay IPs through
a relay; the relay is killed mid-transfer and the download completes over the other path.

Underlay (veth pairs, addresses only inside the namespaces this test creates)::

        B
      /   \\
    A       D        A and D share no link: every packet between them is relayed.
      \\   /
        C

Each node's mesh address is a /32 on its loopback, routed only to its direct neighbours (no
forwarding anywhere), so a node reaches exactly its underlay neighbours over UDP; the nodes
that cannot reach each other simply never link. A management veth per namespace connects it
to the root namespace, where the SPIFFE issuer (Unix socket, shared filesystem) and the
controller run; the controller listens on the root end of the first management veth.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.controller_support import (
    NODE_A,
    Identity,
    free_port,
    mesh_node_id,
    running_issuer,
    spawn_controller,
    wait_ready,
)

pytestmark = pytest.mark.timeout(180)

NAMES = ("a", "b", "c", "d")
UNDERLAY = (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"))
FILE_SIZE = 24 * 1024 * 1024
HTTP_PORT = 7811
SERVE_PORT = 8000

_CLIENT = r"""
import hashlib, sys, time, urllib.error, urllib.request
url = sys.argv[1]
deadline = time.monotonic() + 30
while True:  # the first connection may race the mesh's first end-to-end handshake
    try:
        response = urllib.request.urlopen(url, timeout=30)
        break
    except (urllib.error.URLError, OSError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
digest, size, mark, start = hashlib.sha256(), 0, 0, time.monotonic()
# Read at most RATE bytes/s (TCP's window then paces the sender): the download lasts a few
# seconds at any data plane speed, so the relay kill lands mid-transfer.
RATE = 6 * 1024 * 1024
with response:
    while chunk := response.read(65536):
        digest.update(chunk)
        size += len(chunk)
        ahead = size / RATE - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        if size >= mark:
            print(f"progress {time.monotonic() - start:.3f} {size}", flush=True)
            mark += 256 * 1024
print(f"done {time.monotonic() - start:.3f} {size} {digest.hexdigest()}", flush=True)
"""


def _why_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, TUN interfaces)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs the iproute2 'ip' command"
    return None


_SKIP = _why_skip()


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *args] if ns is None else ["ip", "-n", ns, *args]
    out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=20)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {out.stderr.strip()}")


def _free_prefix() -> str:
    """A random 10.X.0.0/16 that no root-namespace route overlaps (X = 64..250)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    )
    used = []
    for route in json.loads(out.stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst, strict=False))
    for _ in range(100):
        candidate = ipaddress.ip_network(f"10.{64 + secrets.randbelow(187)}.0.0/16")
        if not any(candidate.overlaps(net) for net in used):
            return str(candidate.network_address).rsplit(".", 2)[0]
    raise AssertionError("no free 10.X.0.0/16 for the test underlay")


class Lab:
    """The namespaces, veths and processes of one run (torn down by :meth:`close`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tag = secrets.token_hex(3)
        self.tag = tag
        self.ns = {n: f"x0t-{tag}-{n}" for n in NAMES}
        self.prefix = _free_prefix()
        p = self.prefix
        self.mgmt = {n: f"{p}.0.{4 * i + 2}" for i, n in enumerate(NAMES)}
        self.mgmt_root = {n: f"{p}.0.{4 * i + 1}" for i, n in enumerate(NAMES)}
        self.mesh_addr = {n: f"{p}.2.{i + 1}" for i, n in enumerate(NAMES)}
        self.controller_addr = self.mgmt_root["a"]
        self.controller_port = free_port()
        self.controller_tls_port = free_port()
        self.root_links: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.others: list[subprocess.Popen[Any]] = []

    # --- network ------------------------------------------------------------------------------

    def build(self) -> None:
        p = self.prefix
        for name, ns in self.ns.items():
            _ip("netns", "add", ns)
            _ip("link", "set", "lo", "up", ns=ns)
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True
            )
            _ip("addr", "add", f"{self.mesh_addr[name]}/32", "dev", "lo", ns=ns)
            # Management: root <-> namespace, for the controller and the node HTTP API.
            root_end, ns_end = f"x0m{self.tag}{name}", f"x0n{self.tag}{name}"
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            self.root_links.append(root_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("addr", "add", f"{self.mgmt_root[name]}/30", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("addr", "add", f"{self.mgmt[name]}/30", "dev", ns_end, ns=ns)
            _ip("link", "set", ns_end, "up", ns=ns)
            if name != "a":
                via = self.mgmt_root[name]
                _ip("route", "add", f"{self.controller_addr}/32", "via", via, ns=ns)
        for i, (x, y) in enumerate(UNDERLAY):
            x_if, y_if = f"x0u{self.tag}{x}{y}", f"x0u{self.tag}{y}{x}"
            x_addr, y_addr = f"{p}.1.{4 * i + 1}", f"{p}.1.{4 * i + 2}"
            _ip("link", "add", x_if, "netns", self.ns[x], "type", "veth", "peer", "name", y_if,
                "netns", self.ns[y])  # fmt: skip
            for node, ifname, addr in ((x, x_if, x_addr), (y, y_if, y_addr)):
                _ip("addr", "add", f"{addr}/30", "dev", ifname, ns=self.ns[node])
                _ip("link", "set", ifname, "up", ns=self.ns[node])
            _ip("route", "add", f"{self.mesh_addr[y]}/32", "via", y_addr, "src",
                self.mesh_addr[x], ns=self.ns[x])  # fmt: skip
            _ip("route", "add", f"{self.mesh_addr[x]}/32", "via", x_addr, "src",
                self.mesh_addr[y], ns=self.ns[y])  # fmt: skip

    # --- processes ----------------------------------------------------------------------------

    def env(self, socket_path: Path) -> dict[str, str]:
        return {
            **os.environ,
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}",
            "X0_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def controller_url(self) -> str:
        return f"http://{self.controller_addr}:{self.controller_port}"

    @property
    def controller_api(self) -> str:
        return f"https://{self.controller_addr}:{self.controller_tls_port}"

    def start_node(self, name: str, env: dict[str, str], identity: Identity) -> None:
        mesh = f"{self.mesh_addr[name]}:7810"
        args = [
            "ip", "netns", "exec", self.ns[name],
            sys.executable, "-m", "x0tta6bl4", "node", "--tun",
            "--controller", self.controller_api,
            "--listen-udp", mesh, "--advertise", mesh,
            "--http", f"{self.mgmt[name]}:{HTTP_PORT}",
            "--node-id", name,
            "--state-dir", str(self.tmp / name),
        ]  # fmt: skip
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        # `ip netns exec` execs in place: the pid is the node's.
        identity.attest(self.procs[name].pid, mesh_node_id(name))

    def spawn(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[name], *args], **kwargs
        )
        self.others.append(proc)
        return proc

    def status(self, name: str) -> dict[str, Any]:
        answer = httpx.get(f"http://{self.mgmt[name]}:{HTTP_PORT}/v1/status", timeout=5)
        data: dict[str, Any] = answer.json()
        return data

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n{(self.tmp / f'{n}.log').read_text(errors='replace')[-3000:]}"
            for n in NAMES
            if (self.tmp / f"{n}.log").exists()
        )

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"node {name} exited\n{self.logs()}"
            try:
                if predicate():
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout} s\n{self.logs()}")

    def close(self) -> None:
        for proc in [*self.others, *self.procs.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.others, *self.procs.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for link in self.root_links:  # gone with their peers; make sure
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if _SKIP is not None:
        pytest.skip(_SKIP)
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def _route(lab: Lab, src: str, dest: str) -> list[str] | None:
    for route in lab.status(src).get("routes", []):
        if route["dest"] == dest:
            return list(route["path"])
    return None


def test_http_download_survives_relay_kill(lab: Lab, tmp_path: Path) -> None:
    with running_issuer(tmp_path / "id", ids=(NODE_A,)) as identity:
        socket_path = identity.issuer.socket_path
        env = lab.env(socket_path)
        controller = spawn_controller(
            [
                "--listen", f"{lab.controller_addr}:{lab.controller_port}",
                "--tls-listen", f"{lab.controller_addr}:{lab.controller_tls_port}",
                "--store", f"sqlite:///{tmp_path / 'ctl.db'}",
                "--local-ca", "--state-dir", str(tmp_path / "ctl"),
            ],
            env={"SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}"},
            log=tmp_path / "controller.log",
            identity=identity,
        )  # fmt: skip
        lab.others.append(controller)
        wait_ready(lab.controller_url, controller)
        started = time.monotonic()
        for name in NAMES:
            lab.start_node(name, env, identity)

        def converged() -> bool:
            for name in NAMES:
                status = lab.status(name)
                tun = status.get("tun") or {}
                if tun.get("address") != status["overlay_ip"] or tun.get("routes") != 3:
                    return False
                if {r["dest"] for r in status["routes"]} != set(NAMES) - {name}:
                    return False
            return True

        lab.wait(converged, "TUN up and full routes on every node", timeout=90)
        # The underlay is not a full mesh: A and D never link, B and C neither.
        for x, y in (("a", "d"), ("b", "c")):
            links = {link["peer"] for link in lab.status(x)["links"] if link["state"] == "up"}
            assert y not in links
        path = _route(lab, "a", "d")
        assert path is not None
        assert len(path) == 2, path  # one relay
        assert path[0] in ("b", "c"), path
        print(f"\nconverged {time.monotonic() - started:.1f} s after the nodes started")

        # D serves a file on its overlay address.
        served = tmp_path / "www"
        served.mkdir()
        blob = os.urandom(FILE_SIZE)
        (served / "blob.bin").write_bytes(blob)
        expected = hashlib.sha256(blob).hexdigest()
        overlay_d = lab.status("d")["overlay_ip"]
        server = lab.spawn(
            "d",
            [sys.executable, "-m", "http.server", str(SERVE_PORT), "--bind", overlay_d,
             "--directory", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert server.poll() is None

        # A downloads it through the overlay; progress lines arrive as the bytes do.
        client = lab.spawn(
            "a",
            [sys.executable, "-c", _CLIENT, f"http://{overlay_d}:{SERVE_PORT}/blob.bin"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[tuple[float, str]] = []
        assert client.stdout is not None
        stdout = client.stdout

        def read() -> None:
            for line in stdout:
                lines.append((time.monotonic(), line.strip()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def received() -> int:
            for _, line in reversed(lines):
                if line.startswith("progress"):
                    return int(line.split()[2])
            return 0

        def quarter_done() -> bool:
            assert client.poll() is None, f"client ended early: {lines} {client.stderr}"
            return received() >= FILE_SIZE // 4

        lab.wait(quarter_done, "a quarter of the download", timeout=60)
        path = _route(lab, "a", "d")
        assert path is not None
        assert len(path) == 2, path
        relay = path[0]
        survivor = ({"b", "c"} - {relay}).pop()
        before = received()
        killed_at = time.monotonic()
        lab.procs[relay].send_signal(signal.SIGKILL)
        lab.procs.pop(relay).wait(10)

        client.wait(90)
        reader.join(10)
        stderr = client.stderr.read() if client.stderr else ""
        assert client.returncode == 0, f"download failed: {stderr}\n{lab.logs()}"
        done = [line for _, line in lines if line.startswith("done")]
        assert done, lines
        _, seconds, size, digest = done[0].split()
        assert int(size) == FILE_SIZE
        assert digest == expected
        assert before < FILE_SIZE  # the kill really happened mid-transfer

        # The traffic now flows through the surviving relay.
        assert _route(lab, "a", "d") == [survivor, "d"]
        status_a, status_d = lab.status("a"), lab.status("d")
        tun_a = status_a["tun"]["counters"]
        assert tun_a["bytes_in"] >= FILE_SIZE
        offload = ""
        if status_a.get("dataplane") == "native":
            # The download rode the TUN offloads: D's kernel handed its data plane TCP
            # super-packets to cut, A's data plane wrote merged ones, nothing was refused.
            assert "tso4" in status_a["tun"]["offload"], status_a["tun"]
            native_a, native_d = status_a["native"], status_d["native"]
            assert native_d.get("tun_gso_reads", 0) > 0, native_d
            assert native_d["tun_gso_segments"] > native_d["tun_gso_reads"], native_d
            assert native_a.get("tun_coalesced", 0) > 0, native_a
            for native in (native_a, native_d):
                for drop in ("tun_bad_gso", "tun_unsupported_gso", "tun_gso_oversize"):
                    assert native.get(drop, 0) == 0, native
            offload = (
                f"; D cut {native_d['tun_gso_reads']} super-packets into "
                f"{native_d['tun_gso_segments']} segments, A merged {native_a['tun_coalesced']}"
            )

        # The longest pause in the byte stream around the kill (the TCP receive buffer can
        # hide part of the outage; this is what the application saw).
        stamps = [killed_at] + [t for t, line in lines if t > killed_at]
        stall = max(b - a for a, b in itertools.pairwise(stamps))
        first = next(float(line.split()[1]) for _, line in lines if line.startswith("progress"))
        print(
            f"\nTUN download {FILE_SIZE / 1e6:.1f} MB in {float(seconds):.2f} s "
            f"({FILE_SIZE * 8 / float(seconds) / 1e6:.1f} Mbit/s overall, first progress at "
            f"{first:.2f} s); relay {relay} killed at {before / 1e6:.1f} MB; "
            f"longest stall after the kill {stall:.2f} s; now via {survivor}{offload}"
        )
