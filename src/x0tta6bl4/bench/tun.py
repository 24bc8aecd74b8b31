"""``x0tta6bl4 bench tun``: TCP throughput and round trips through the TUN overlay, side by
side with wireguard-go on the same namespaces and veths.

Underlay: three network namespaces in a line, ``a – r – b`` (veth pairs, a random
``10.X.0.0/16`` no route of the host overlaps; no IP forwarding anywhere). Three mesh nodes
(:mod:`x0tta6bl4.bench.tun_node`, one process per namespace, ``--dataplane`` as chosen, native
by default when built) run in TUN mode with identities from the benchmark's own mesh CA and a
static membership; ``a`` and ``b`` can only link through the relay ``r``. Then, in rounds with
the contenders in rotated order:

* ``mbps_1hop``: iperf3 (TCP, one stream, ``seconds`` long) from ``a`` to ``r``'s overlay
  address; ``mbps_2hop`` from ``a`` to ``b`` through ``r`` (end-to-end encrypted, relayed);
* ``wireguard_go_mbps``: the same iperf3 run between ``a`` and ``r`` over a wireguard-go tunnel
  (``golang.zx2c4.com/wireguard`` built by ``scripts/components/build wireguard-go``, configured
  with ``wg``) on the same veth;
* ``latency_us_p50_1hop`` / ``p99``: ``ping`` round trips ``a`` → ``r`` over the overlay
  (``count`` echoes 5 ms apart); the same over wireguard-go as ``wireguard_go_latency_us_*``.

Each throughput is its best round (noise on a shared machine only slows things);
``ratio_vs_wireguard_go`` = ``mbps_1hop`` ÷ ``wireguard_go_mbps`` (goal ≥ 1.0, first step ≥ 0.5).

With the native data plane the nodes run with every offload the kernel allows (``offload``:
node ``a``'s TUN offloads — checksum, TCP and UDP segmentation — and its socket's UDP GSO/GRO;
``offload_counters``: the segments and runs they moved on ``a`` and ``r``). ``breakdown``
adds, to every round, the 1-hop iperf3 run with offloads switched off at run time
(``tun_node``'s ``offload.json``): ``breakdown_mbps_1hop`` maps ``none`` (no offload),
``udp`` (UDP GSO/GRO only), ``tun`` (TUN offloads only) and ``all`` (= ``mbps_1hop``) to their
best round, so what each one buys is measured side by side in the same run.
Needs root, ``/dev/net/tun``, ``ip``, ``iperf3``, ``ping``, ``wg`` and the wireguard-go binary;
tears down everything it made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from x0tta6bl4.bench.tun_node import write_offload
from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.dataplane import resolve
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN as TRUST_DOMAIN
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.overlay import TUN_MTU

__all__ = ["TunBenchError", "find_wireguard_go", "format_table", "run"]

_NODES = ("a", "r", "b")
_LINKS = (("a", "r"), ("r", "b"))
_MESH_PORT = 7810
_WG_PORT = 51820
_WG_MTU = 1420
#: ``bench tun --breakdown``: offload settings measured next to ``all`` (the default).
BREAKDOWN: dict[str, dict[str, bool]] = {
    "none": {"tun": False, "gso": False, "gro": False},
    "udp": {"tun": False, "gso": True, "gro": True},
    "tun": {"tun": True, "gso": False, "gro": False},
}
_ALL_ON = {"tun": True, "gso": True, "gro": True}
#: Native counters reported in ``offload_counters`` (node a sends, r receives and acks).
_OFFLOAD_COUNTERS = (
    "tun_gso_reads",
    "tun_gso_segments",
    "tun_writes",
    "tun_coalesced",
    "tun_packets_in",
    "tun_packets_out",
    "udp_gso_sends",
    "udp_gso_datagrams",
    "udp_gro_runs",
    "udp_gro_datagrams",
    "udp_gso_disabled",
    "rx_datagrams",
    "tx_datagrams",
)


class TunBenchError(RuntimeError):
    """A prerequisite is missing or a step failed (the message says which)."""


def find_wireguard_go(explicit: str | None = None) -> str:
    """The wireguard-go binary: ``explicit``, ``$X0_WIREGUARD_GO``, the components cache
    (``scripts/components/build --path wireguard-go`` in this checkout), or ``PATH``."""
    for candidate in (explicit, os.environ.get("X0_WIREGUARD_GO")):
        if candidate:
            return candidate
    build = Path.cwd() / "scripts" / "components" / "build"
    if build.exists():
        out = subprocess.run(
            [str(build), "--path", "wireguard-go"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            return str(Path(out.stdout.strip()) / "wireguard-go")
    found = shutil.which("wireguard-go")
    if found:
        return found
    raise TunBenchError(
        "wireguard-go not found: run `scripts/components/build wireguard-go` "
        "or pass --wireguard-go PATH"
    )


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise TunBenchError("bench tun needs root (network namespaces, TUN interfaces)")
    if not os.path.exists("/dev/net/tun"):
        raise TunBenchError("bench tun needs /dev/net/tun")
    for tool, package in (
        ("ip", "iproute2"),
        ("iperf3", "iperf3"),
        ("wg", "wireguard-tools"),
        ("ping", "iputils-ping"),
    ):
        if shutil.which(tool) is None:
            raise TunBenchError(f"bench tun needs `{tool}` (Debian: {package}; make system)")


def _run(*args: str, ns: str | None = None, timeout: float = 30, input_: str | None = None) -> str:
    command = list(args) if ns is None else ["ip", "netns", "exec", ns, *args]
    out = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=timeout, input=input_
    )
    if out.returncode != 0:
        raise TunBenchError(f"{' '.join(command)} failed: {out.stderr.strip()[:500]}")
    return out.stdout


def _free_prefix() -> str:
    routes = json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    used = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst, strict=False))
    for _ in range(100):
        candidate = ipaddress.ip_network(f"10.{64 + secrets.randbelow(187)}.0.0/16")
        if not any(candidate.overlaps(net) for net in used):
            return str(candidate.network_address).rsplit(".", 2)[0]
    raise TunBenchError("no free 10.X.0.0/16 for the benchmark underlay")


class _Lab:
    """Namespaces, veths and processes of one run; :meth:`close` removes all of them."""

    def __init__(self, workdir: Path, dataplane: str) -> None:
        self.dir = workdir
        self.dataplane = dataplane
        self.tag = secrets.token_hex(3)
        self.ns = {n: f"x0b-{self.tag}-{n}" for n in _NODES}
        p = _free_prefix()
        self.underlay: dict[str, str] = {}
        self.link_addr: dict[tuple[str, str], str] = {}
        for i, (x, y) in enumerate(_LINKS):
            self.link_addr[(x, y)] = f"{p}.1.{4 * i + 1}"
            self.link_addr[(y, x)] = f"{p}.1.{4 * i + 2}"
        self.mesh_addr = {n: f"{p}.2.{i + 1}" for i, n in enumerate(_NODES)}
        self.overlay = {n: f"{p}.9.{i + 1}" for i, n in enumerate(_NODES)}
        self.wg_addr = {"a": f"{p}.8.1", "r": f"{p}.8.2"}
        self.procs: list[subprocess.Popen[Any]] = []
        self.nodes: dict[str, subprocess.Popen[str]] = {}
        # The nodes' status lines, read as they come (a full pipe would block a node's loop).
        self._latest: dict[str, tuple[int, dict[str, Any]]] = {}
        self._status_cv = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._offload_generation = 0

    def build(self) -> None:
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        for name, ns in self.ns.items():
            _run("ip", "-n", ns, "addr", "add", f"{self.mesh_addr[name]}/32", "dev", "lo")
        for x, y in _LINKS:
            x_if, y_if = f"x0b{self.tag}{x}{y}", f"x0b{self.tag}{y}{x}"
            _run(
                "ip",
                "link",
                "add",
                x_if,
                "netns",
                self.ns[x],
                "type",
                "veth",
                "peer",
                "name",
                y_if,
                "netns",
                self.ns[y],
            )
            for me, other, ifname in ((x, y, x_if), (y, x, y_if)):
                ns = self.ns[me]
                _run(
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    f"{self.link_addr[(me, other)]}/30",
                    "dev",
                    ifname,
                )
                _run("ip", "-n", ns, "link", "set", ifname, "up")
                _run(
                    "ip",
                    "-n",
                    ns,
                    "route",
                    "add",
                    f"{self.mesh_addr[other]}/32",
                    "via",
                    self.link_addr[(other, me)],
                    "src",
                    self.mesh_addr[me],
                )

    # --- the mesh -------------------------------------------------------------------------------

    def start_mesh(self) -> None:
        ca = MeshCA.create(TRUST_DOMAIN, now=time.time())
        (self.dir / "ca.pem").write_bytes(ca.bundle().to_pem())
        members = []
        for name in _NODES:
            identity = issue_identity(ca, name)
            key_path = self.dir / f"{name}.key.pem"
            key_path.write_bytes(identity.signing_key.to_pem())
            key_path.chmod(0o600)
            (self.dir / f"{name}.cert.der").write_bytes(identity.cert_der)
            members.append(
                {
                    "node_id": name,
                    "spiffe_id": identity.spiffe_id,
                    "host": self.mesh_addr[name],
                    "port": _MESH_PORT,
                    "overlay_ip": self.overlay[name],
                }
            )
        spec = {
            "trust_domain": TRUST_DOMAIN,
            "dataplane": self.dataplane,
            "members": members,
            "links": [list(pair) for pair in _LINKS],
        }
        (self.dir / "members.json").write_text(json.dumps(spec))
        for name in _NODES:
            log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns[name],
                    sys.executable,
                    "-m",
                    "x0tta6bl4.bench.tun_node",
                    str(self.dir),
                    name,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            log.close()
            self.nodes[name] = proc
            self.procs.append(proc)
            reader = threading.Thread(target=self._read_status, args=(name, proc), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read_status(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                latest = json.loads(line)
                if isinstance(latest, dict) and latest.get("node_id") == name:
                    with self._status_cv:
                        seq = self._latest.get(name, (0, {}))[0] + 1
                        self._latest[name] = (seq, latest)
                        self._status_cv.notify_all()
        with self._status_cv:
            self._status_cv.notify_all()

    def status(
        self,
        name: str,
        accept: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """A status line of node ``name`` printed after this call (and ``accept``-ed)."""
        deadline = time.monotonic() + timeout
        with self._status_cv:
            seen = self._latest.get(name, (0, {}))[0]
            while True:
                seq, latest = self._latest.get(name, (0, {}))
                if seq > seen and (accept is None or accept(latest)):
                    return latest
                if self.nodes[name].poll() is not None:
                    raise TunBenchError(f"mesh node {name} exited:\n{self.logs()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TunBenchError(f"no status from mesh node {name} in {timeout:.0f} s")
                self._status_cv.wait(min(left, 0.5))

    def set_offload(self, settings: dict[str, bool]) -> None:
        """Switch every node's native offloads and wait until all three applied it."""
        self._offload_generation += 1
        generation = self._offload_generation
        write_offload(self.dir, generation, settings)
        for name in _NODES:
            self.status(name, lambda s: s.get("offload", {}).get("generation") == generation)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n{(self.dir / f'{n}.log').read_text(errors='replace')[-2000:]}"
            for n in _NODES
            if (self.dir / f"{n}.log").exists()
        )

    def wait_converged(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = {n: self.status(n) for n in _NODES}
            if all(set(s["routes"]) == set(_NODES) - {n} for n, s in statuses.items()):
                return
        raise TunBenchError(f"the mesh did not converge within {timeout:.0f} s\n{self.logs()}")

    # --- wireguard-go ------------------------------------------------------------------------

    def start_wireguard(self, binary: str) -> None:
        keys = {}
        for name in ("a", "r"):
            private = _run("wg", "genkey").strip()
            keys[name] = (private, _run("wg", "pubkey", input_=private + "\n").strip())
        for me, other in (("a", "r"), ("r", "a")):
            ns, ifname = self.ns[me], f"wg{self.tag}{me}"  # one UAPI socket each
            log = open(self.dir / f"wg-{me}.log", "ab")  # noqa: SIM115 - the process owns it
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, binary, "-f", ifname],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "LOG_LEVEL": "error"},
            )
            log.close()
            self.procs.append(proc)
            deadline = time.monotonic() + 10
            while (
                subprocess.run(
                    ["ip", "-n", ns, "link", "show", ifname], capture_output=True, check=False
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline or proc.poll() is not None:
                    text = (self.dir / f"wg-{me}.log").read_text(errors="replace")[-1500:]
                    raise TunBenchError(f"wireguard-go did not create its interface:\n{text}")
                time.sleep(0.05)
            key_file = self.dir / f"wg-{me}.key"
            key_file.write_text(keys[me][0] + "\n")
            key_file.chmod(0o600)
            _run(
                "wg",
                "set",
                ifname,
                "private-key",
                str(key_file),
                "listen-port",
                str(_WG_PORT),
                "peer",
                keys[other][1],
                "allowed-ips",
                f"{self.wg_addr[other]}/32",
                "endpoint",
                f"{self.link_addr[(other, me)]}:{_WG_PORT}",
                ns=ns,
            )
            _run("ip", "-n", ns, "addr", "add", f"{self.wg_addr[me]}/32", "dev", ifname)
            _run("ip", "-n", ns, "link", "set", ifname, "mtu", str(_WG_MTU), "up")
            _run("ip", "-n", ns, "route", "add", f"{self.wg_addr[other]}/32", "dev", ifname)

    # --- measurements ------------------------------------------------------------------------

    def iperf(
        self, client: str, server: str, server_ip: str, client_ip: str, seconds: float
    ) -> float:
        port = str(5201 + secrets.randbelow(1000))
        srv = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns[server],
                "iperf3",
                "-s",
                "-1",
                "-B",
                server_ip,
                "-p",
                port,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(srv)
        try:
            data: dict[str, Any] = {}
            for _ in range(100):  # the server needs a moment to listen
                command = [
                    "ip",
                    "netns",
                    "exec",
                    self.ns[client],
                    "iperf3",
                    "-c",
                    server_ip,
                    "-B",
                    client_ip,
                    "-p",
                    port,
                    "-t",
                    str(seconds),
                    "-J",
                ]
                out = subprocess.run(
                    command, capture_output=True, text=True, check=False, timeout=seconds + 30
                )
                with contextlib.suppress(ValueError):
                    data = json.loads(out.stdout or "{}")
                if "unable to connect" not in str(data.get("error", "")):
                    break
                time.sleep(0.1)
            if "error" in data or "sum_received" not in data.get("end", {}):
                raise TunBenchError(
                    f"iperf3 {client} -> {server_ip}: {data.get('error', 'no result')}"
                    f"\n{self.logs()}"
                )
            return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
        finally:
            if srv.poll() is None:
                srv.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                srv.wait(5)

    def ping(self, client: str, target: str, count: int) -> list[float]:
        out = _run(
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            "0.005",
            "-W",
            "1",
            target,
            ns=self.ns[client],
            timeout=count * 0.05 + 30,
        )
        return [
            float(part.split("=")[1]) * 1000
            for line in out.splitlines()
            for part in line.split()
            if part.startswith("time=")
        ]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for reader in self._readers:  # they end at the nodes' end of file
            reader.join(10)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextlib.contextmanager
def _lab(dataplane: str) -> Iterator[_Lab]:
    with tempfile.TemporaryDirectory(prefix="x0-bench-tun-") as tmp:
        lab = _Lab(Path(tmp), dataplane)
        try:
            lab.build()
            yield lab
        finally:
            lab.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    *,
    seconds: float = 5.0,
    rounds: int = 3,
    count: int = 200,
    dataplane: str | None = None,
    wireguard_go: str | None = None,
    breakdown: bool = False,
) -> dict[str, Any]:
    """Measure (see the module docstring); raises :class:`TunBenchError` without prerequisites."""
    if seconds <= 0 or rounds < 1 or count < 1:
        raise ValueError("seconds must be positive, rounds and count at least 1")
    _check_prerequisites()
    binary = find_wireguard_go(wireguard_go)
    chosen = resolve(dataplane)
    if breakdown and chosen != "native":
        raise TunBenchError("--breakdown switches the native data plane's offloads: needs native")
    best: dict[str, float] = {}
    samples: dict[str, list[float]] = {"mesh": [], "wg": []}
    with _lab(chosen) as lab:
        lab.start_mesh()
        lab.wait_converged()
        lab.start_wireguard(binary)
        # Warm: the end-to-end sessions (the first packet starts a handshake), the wg handshake.
        for target in (lab.overlay["r"], lab.overlay["b"]):
            with contextlib.suppress(TunBenchError):
                lab.ping("a", target, 3)
        lab.ping("a", lab.wg_addr["r"], 3)
        one_hop = ("r", lab.overlay["r"], lab.overlay["a"])
        contenders: dict[str, tuple[tuple[str, str, str], dict[str, bool] | None]] = {
            "mesh_1hop": (one_hop, _ALL_ON),
            "wg": (("r", lab.wg_addr["r"], lab.wg_addr["a"]), None),
            "mesh_2hop": (("b", lab.overlay["b"], lab.overlay["a"]), _ALL_ON),
        }
        if breakdown:
            for variant, variant_settings in BREAKDOWN.items():
                contenders[f"offload_{variant}"] = (one_hop, variant_settings)
        applied: dict[str, bool] | None = None
        names = list(contenders)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                (server, server_ip, client_ip), settings = contenders[name]
                if breakdown and settings is not None and settings != applied:
                    lab.set_offload(settings)
                    applied = settings
                mbps = lab.iperf("a", server, server_ip, client_ip, seconds)
                best[name] = max(best.get(name, 0.0), mbps)
                best[f"{name}_min"] = min(best.get(f"{name}_min", mbps), mbps)
        if breakdown and applied != _ALL_ON:
            lab.set_offload(_ALL_ON)
        samples["mesh"] = lab.ping("a", lab.overlay["r"], count)
        samples["wg"] = lab.ping("a", lab.wg_addr["r"], count)
        final = {n: lab.status(n) for n in ("a", "r")}
    if not samples["mesh"] or not samples["wg"]:
        raise TunBenchError("no ping round trip came back")
    extra: dict[str, Any] = {
        "offload": {k: v for k, v in final["a"].get("offload", {}).items() if k != "generation"},
        "offload_counters": {
            n: {k: final[n].get("counters", {}).get(k, 0) for k in _OFFLOAD_COUNTERS}
            for n in ("a", "r")
        },
    }
    if breakdown:
        extra["breakdown_mbps_1hop"] = {
            **{v: round(best[f"offload_{v}"], 1) for v in BREAKDOWN},
            "all": round(best["mesh_1hop"], 1),
        }
        extra["breakdown_mbps_1hop_min"] = {
            **{v: round(best[f"offload_{v}_min"], 1) for v in BREAKDOWN},
            "all": round(best["mesh_1hop_min"], 1),
        }
    return {
        "dataplane": chosen,
        "seconds": seconds,
        "rounds": rounds,
        "mbps_1hop": round(best["mesh_1hop"], 1),
        "mbps_2hop": round(best["mesh_2hop"], 1),
        "wireguard_go_mbps": round(best["wg"], 1),
        "ratio_vs_wireguard_go": round(best["mesh_1hop"] / best["wg"], 3),
        "mbps_1hop_min": round(best["mesh_1hop_min"], 1),
        "mbps_2hop_min": round(best["mesh_2hop_min"], 1),
        "wireguard_go_mbps_min": round(best["wg_min"], 1),
        "latency_us_p50_1hop": round(statistics.median(samples["mesh"]), 1),
        "latency_us_p99_1hop": round(_percentile(samples["mesh"], 0.99), 1),
        "wireguard_go_latency_us_p50": round(statistics.median(samples["wg"]), 1),
        "wireguard_go_latency_us_p99": round(_percentile(samples["wg"], 0.99), 1),
        "pings": count,
        "mtu": TUN_MTU,
        "wireguard_go_mtu": _WG_MTU,
        "wireguard_go": binary,
        **extra,
    }


def format_table(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run`'s result."""
    return "\n".join(
        [
            f"data plane: {result['dataplane']}, iperf3 TCP {result['seconds']} s x "
            f"{result['rounds']} rounds (best)",
            f"mesh 1 hop      {result['mbps_1hop']:>9} Mbit/s  rtt p50 "
            f"{result['latency_us_p50_1hop']} µs, p99 {result['latency_us_p99_1hop']} µs",
            f"mesh 2 hops     {result['mbps_2hop']:>9} Mbit/s",
            f"wireguard-go    {result['wireguard_go_mbps']:>9} Mbit/s  rtt p50 "
            f"{result['wireguard_go_latency_us_p50']} µs",
            f"ratio 1 hop / wireguard-go: {result['ratio_vs_wireguard_go']} (goal >= 1.0)",
        ]
        + [
            f"offloads: tun {','.join(result['offload'].get('tun', [])) or '-'}, "
            f"udp {','.join(result['offload'].get('udp', [])) or '-'}"
        ]
        + [
            f"1 hop, offloads {variant:<5} {mbps:>9} Mbit/s"
            for variant, mbps in result.get("breakdown_mbps_1hop", {}).items()
        ]
    )
