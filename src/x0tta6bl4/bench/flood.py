"""``x0tta6bl4 bench flood``: what a node sustains under handshake floods, and what a
legitimate peer sees meanwhile (time to link).

Three kinds of processes on loopback UDP, all real:

* the **victim**: one node (:class:`~x0tta6bl4.node.udp.MeshEndpoint`, the sans-IO core
  behind a UDP socket) in its own process, its PQ SVID from a throw-away mesh CA;
* a **flooder** process per scenario, from addresses 127.0.x.y (never 127.0.0.1):

  - ``slowloris``: ``--partials`` sources (one UDP socket each, each its own IP address)
    fetch a cookie, then each holds a partial INIT open and sends one more byte every 2 s
    (issue #13, row 4);
  - ``cookie_flood``: INITs that echo valid cookies at ``--rate`` per second from
    ``--hosts`` IP addresses (default 100, 8 ports each, sent round-robin so that each host
    stays as far under its per-source limit as it can), each with a valid key share, so that
    every one that gets through costs the victim a KEM encapsulation and an ML-DSA-65
    signature (row 5);
  - ``spoofed`` (root only: a raw socket forges the sources): ``--spoofed-rate`` datagrams per
    second of unauthenticated junk and cookie-less INIT fragments, each from a different
    127.x.y.z source (row 2);

* the **legitimate peer** (this process): a node that restarts ``--trials`` times on the
  same port and links with the victim. ``time_to_link`` is from the peer's start (socket
  bound, membership given) to the peer's failure detector declaring the link up (PQ
  handshake with the cookie round trip, the victim's keepalive, first heartbeats); the peer's
  node id sorts first, so the peer initiates and the victim is the responder — the side the
  floods attack. The peer is a member the victim links with, so after its first link it is
  a *known* address at the victim (a neighbour restarting on its endpoint).

The **baseline** is the same trials with no flood, in the same run; each scenario reports
``ratio`` = its median time to link ÷ the baseline's. Per scenario also: what the flooder
offered (datagrams/s), what the victim read from its socket (``victim_pps``: the rate it
sustained), the victim's CPU share (process CPU time ÷ wall time), the handshakes it signed
for (``responders``) and its drop counters. Targets (issue #13): a genuine handshake within
10 s under each flood; aim 2 s.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import resource
import secrets
import selectors
import socket
import statistics
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.crypto.suite import HybridKemKeyPair
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.model import CoreConfig, Member, NodeIdentity
from x0tta6bl4.node.udp import MeshEndpoint, bind_udp, open_endpoint
from x0tta6bl4.protocol.constants import (
    FRAGMENT_HEADER_SIZE,
    INIT_MESSAGE_SIZE,
    NONCE_SIZE,
    MessageType,
)
from x0tta6bl4.protocol.fragments import fragment_message
from x0tta6bl4.protocol.messages import CookieReply, InitMessage

__all__ = ["TARGETS", "format_table", "run"]

#: Issue #13: a genuine handshake completes within 10 s under each flood (aim: 2 s).
TARGETS: dict[str, float] = {"time_to_link_s": 10.0, "aim_s": 2.0}

_VICTIM = "victim"
_PEER = "a-peer"  # sorts before the victim: the peer initiates, the victim responds
_REPLY_TIMEOUT = 60.0
_TRIAL_TIMEOUT = 15.0
_TRIAL_GAP = 1.0
_SETTLE = 2.0
_TRICKLE_INTERVAL = 2.0
_PORTS_PER_HOST = 8
_INDICES_PER_PORT = 8
_INIT = MessageType.HANDSHAKE_INIT
_HEADER = struct.Struct("!BIIHHHHB")


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # pragma: no cover - Linux always has it


def _host(n: int) -> str:
    """The n-th flooding address: 127.0.x.y, never 127.0.0.1 (the peer's)."""
    return f"127.{1 + n // 62500}.{n // 250 % 250}.{2 + n % 250}"


# --- victim -------------------------------------------------------------------------------


class _Victim:
    """The flooded node, driven by commands from the coordinator's pipe."""

    def __init__(self, conn: Connection, ca: MeshCA, config: CoreConfig) -> None:
        self.conn = conn
        self.ca = ca
        self.config = config
        self.endpoint: MeshEndpoint | None = None
        self.done: asyncio.Future[None] | None = None

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        identity = issue_identity(self.ca, _VICTIM)
        self.endpoint = await open_endpoint(identity, ("127.0.0.1", 0), config=self.config)
        loop.add_reader(self.conn.fileno(), self._on_readable)
        row = (identity.spiffe_id, self.endpoint.local_addr[1], identity.cert_der)
        self.conn.send(("ready", row))
        await self.done
        loop.remove_reader(self.conn.fileno())
        self.endpoint.close()

    def _set_members(self, members: list[Member]) -> None:
        assert self.endpoint is not None
        self.endpoint.call(lambda core, now: core.set_members(members, now))

    def _on_readable(self) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        while self.conn.poll():
            command = self.conn.recv()
            if command[0] == "members":
                self._set_members(command[1])
                self.conn.send(("ok", None))
            elif command[0] == "stats":
                core = endpoint.core
                listener = core.links.listener
                self.conn.send(
                    (
                        "stats",
                        {
                            "cpu_s": time.process_time(),
                            "wall_s": time.monotonic(),
                            "received": endpoint.datagrams_received,
                            "dropped": dict(core.dropped),
                            "listener": dict(listener.stats),
                            "rss_kb": _rss_kb(),
                        },
                    )
                )
            else:
                assert self.done is not None
                self.done.set_result(None)
                return


def _victim_main(
    conn: Connection, ca_cert: bytes, ca_key: bytes, config: CoreConfig
) -> None:  # pragma: no cover - runs in a child process
    asyncio.run(_Victim(conn, MeshCA.load(ca_cert, ca_key), config).main())


# --- flooders -----------------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def _cookies(
    socks: list[socket.socket], probes: list[list[bytes]], target: tuple[str, int]
) -> list[dict[int, bytes]]:
    """Send each socket's cookie-less INIT probes; collect the cookie replies (index ->
    cookie per socket). Missing ones are asked again, for up to 10 s."""
    found: list[dict[int, bytes]] = [{} for _ in socks]
    selector = selectors.DefaultSelector()
    for n, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, n)
    deadline = time.monotonic() + 10.0
    try:
        while time.monotonic() < deadline:
            for n, sock in enumerate(socks):
                for probe in probes[n]:
                    index = int.from_bytes(probe[1:5], "big")
                    if index not in found[n]:
                        sock.sendto(probe, target)
            round_end = time.monotonic() + 0.5
            while time.monotonic() < round_end:
                for key, _ in selector.select(0.05):
                    n = key.data
                    sock = socks[n]
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        if data[:1] == bytes([MessageType.COOKIE_REPLY]):
                            reply = CookieReply.parse(data)
                            found[n][reply.receiver_index] = reply.cookie
            if all(len(found[n]) == len(probes[n]) for n in range(len(socks))):
                break
    finally:
        selector.close()
    return found


def _probe(index: int) -> bytes:
    """A 19-byte INIT fragment without a cookie: enough to be sent a cookie."""
    return _HEADER.pack(_INIT, index, 0, 0, INIT_MESSAGE_SIZE, 0, 1, 0) + b"\x01"


def _slowloris(conn: Connection, target: tuple[str, int], sources: int) -> dict[str, Any]:
    _raise_fd_limit(sources + 64)
    socks = []
    for n in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((_host(n), 0))
        sock.setblocking(False)
        socks.append(sock)
    try:
        probes = [[_probe(n + 1)] for n in range(sources)]
        cookies = _cookies(socks, probes, target)
        held = [(sock, n + 1, cookies[n][n + 1]) for n, sock in enumerate(socks) if cookies[n]]
        conn.send(("ready", {"sources": len(held)}))
        sent = 0
        sent_bytes = 0
        offset = 0
        filler = secrets.token_bytes(INIT_MESSAGE_SIZE)
        started = time.monotonic()
        while not conn.poll():
            round_start = time.monotonic()
            for k, (sock, index, cookie) in enumerate(held):
                datagram = (
                    _HEADER.pack(_INIT, index, 0, 0, INIT_MESSAGE_SIZE, offset, 1, len(cookie))
                    + cookie
                    + filler[offset : offset + 1]
                )
                try:
                    sock.sendto(datagram, target)
                except OSError:
                    continue
                sent += 1
                sent_bytes += len(datagram)
                if k % 50 == 49:  # spread each round over the interval
                    time.sleep(_TRICKLE_INTERVAL / max(1, len(held) / 50) * 0.9)
            offset = (offset + 1) % (INIT_MESSAGE_SIZE - 1)  # never the last byte
            rest = _TRICKLE_INTERVAL - (time.monotonic() - round_start)
            if rest > 0 and not conn.poll(rest):
                continue
        return {"sent": sent, "bytes": sent_bytes, "seconds": time.monotonic() - started}
    finally:
        for sock in socks:
            sock.close()


def _cookie_flood(
    conn: Connection, target: tuple[str, int], rate: float, hosts: int
) -> dict[str, Any]:
    _raise_fd_limit(hosts * _PORTS_PER_HOST + 64)
    socks = []
    for n in range(hosts):
        for _ in range(_PORTS_PER_HOST):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((_host(n), 0))
            sock.setblocking(False)
            socks.append(sock)
    share = HybridKemKeyPair().share  # a valid key share: every INIT costs a signature
    try:
        probes = [
            [_probe(1 + s * _INDICES_PER_PORT + i) for i in range(_INDICES_PER_PORT)]
            for s in range(len(socks))
        ]
        cookies = _cookies(socks, probes, target)
        # Round-robin over the sockets (and so the hosts): each host sends evenly, which
        # gets the most past the per-source budgets.
        order = [h * _PORTS_PER_HOST + k for k in range(_PORTS_PER_HOST) for h in range(hosts)]
        pool = [
            (socks[n], index, cookie)
            for i in range(_INDICES_PER_PORT)
            for n in order
            for index, cookie in list(cookies[n].items())[i : i + 1]
        ]
        conn.send(("ready", {"hosts": hosts, "ports": len(socks), "indices": len(pool)}))
        if not pool:
            conn.recv()
            return {"sent": 0, "bytes": 0, "seconds": 0.0}
        sent = 0
        inits = 0
        sent_bytes = 0
        started = time.monotonic()
        tick = 0.01
        while not conn.poll():
            due = int((time.monotonic() - started) * rate) - inits
            for _ in range(max(0, due)):
                sock, index, cookie = pool[inits % len(pool)]
                init = InitMessage(index, secrets.token_bytes(NONCE_SIZE), share).encode()
                for datagram in fragment_message(
                    _INIT, init, sender_index=index, receiver_index=0, cookie=cookie
                ):
                    try:
                        sock.sendto(datagram, target)
                    except OSError:
                        continue
                    sent += 1
                    sent_bytes += len(datagram)
                inits += 1
            for sock in socks:  # RESPs are not read by the attacker: drop them here
                try:
                    while sock.recv(2048):
                        pass
                except BlockingIOError:
                    pass
            time.sleep(tick)
        return {
            "sent": sent,
            "bytes": sent_bytes,
            "inits": inits,
            "seconds": time.monotonic() - started,
        }
    finally:
        for sock in socks:
            sock.close()


def _spoofed_packet(src: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return (
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, bytes([127, 0, 0, 1])
        )
        + udp
    )


def _spoofed(conn: Connection, target: tuple[str, int], rate: float) -> dict[str, Any]:
    rng = random.Random(13)  # noqa: S311 - junk fields, not secrets
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        conn.send(("ready", {}))
        sent = 0
        sent_bytes = 0
        started = time.monotonic()
        room = 1200 - FRAGMENT_HEADER_SIZE
        while not conn.poll():
            due = int((time.monotonic() - started) * rate) - sent
            for _ in range(max(0, min(due, 2000))):
                index = rng.randrange(1, 2**32)
                kind = sent % 8
                if kind == 0:  # a full-size INIT fragment without a cookie
                    payload = _HEADER.pack(
                        _INIT, index, 0, 0, INIT_MESSAGE_SIZE, 0, room, 0
                    ) + rng.randbytes(room)
                elif kind in (1, 2):
                    payload = _probe(index)
                elif kind == 3:
                    payload = b"\x01"
                else:
                    payload = bytes([kind % 4 + 2]) + rng.randbytes(40)
                src = bytes([127, rng.randrange(1, 256), rng.randrange(256), rng.randrange(1, 255)])
                packet = _spoofed_packet(src, rng.randrange(1024, 65536), target[1], payload)
                raw.sendto(packet, (target[0], 0))
                sent += 1
                sent_bytes += len(payload)
            time.sleep(0.001)
        return {"sent": sent, "bytes": sent_bytes, "seconds": time.monotonic() - started}
    finally:
        raw.close()


def _flooder_main(
    conn: Connection, kind: str, target: tuple[str, int], params: dict[str, Any]
) -> None:  # pragma: no cover - runs in a child process
    try:
        if kind == "slowloris":
            result = _slowloris(conn, target, params["sources"])
        elif kind == "cookie_flood":
            result = _cookie_flood(conn, target, params["rate"], params["hosts"])
        else:
            result = _spoofed(conn, target, params["rate"])
    except Exception as exc:  # reported to the coordinator, which fails the run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("done", result))


# --- coordinator --------------------------------------------------------------------------


class _Process:
    """A child process and its pipe."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True, name=name)
        self.proc.start()
        child.close()

    def recv(self, timeout: float = _REPLY_TIMEOUT) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.proc.name} did not answer (overloaded or crashed)")
        try:
            reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.proc.name} exited unexpectedly") from None
        if reply[0] == "error":
            raise RuntimeError(f"{self.proc.name}: {reply[1]}")
        return reply

    def ask(self, *command: Any) -> Any:
        self.conn.send(command)
        return self.recv()[1]

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():  # pragma: no cover - a wedged child
            self.proc.kill()
            self.proc.join()
        self.conn.close()


async def _time_to_link(
    identity: NodeIdentity, port: int, members: list[Member], config: CoreConfig
) -> float | None:
    """Start the peer, give it the membership, wait for the link to the victim to be up."""
    loop = asyncio.get_running_loop()
    endpoint = await open_endpoint(identity, ("127.0.0.1", port), config=config)
    try:
        start = loop.time()
        endpoint.call(lambda core, now: core.set_members(members, now))
        while loop.time() - start < _TRIAL_TIMEOUT:
            if endpoint.core.link_state(_VICTIM) == "up":
                return loop.time() - start
            await asyncio.sleep(0.002)
        return None
    finally:
        endpoint.close()


def _summary(samples: list[float | None]) -> dict[str, Any]:
    done = sorted(s * 1000 for s in samples if s is not None)
    return {
        "linked": len(done),
        "trials": len(samples),
        "time_to_link_p50_ms": round(statistics.median(done), 1) if done else None,
        "time_to_link_max_ms": round(done[-1], 1) if done else None,
    }


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    wall = after["wall_s"] - before["wall_s"]
    drops = {
        k: v - before["dropped"].get(k, 0)
        for k, v in after["dropped"].items()
        if v != before["dropped"].get(k, 0)
    }
    listener = {
        k: v - before["listener"].get(k, 0)
        for k, v in after["listener"].items()
        if v != before["listener"].get(k, 0)
    }
    return {
        "victim_wall_s": round(wall, 3),
        "victim_pps": round((after["received"] - before["received"]) / wall) if wall else 0,
        "victim_cpu": round((after["cpu_s"] - before["cpu_s"]) / wall, 3) if wall else 0.0,
        "victim_rss_mb": round(after["rss_kb"] / 1024, 1),
        "victim_rss_growth_mb": round((after["rss_kb"] - before["rss_kb"]) / 1024, 1),
        "responders": listener.get("responders", 0),
        "cookie_replies": listener.get("cookie_replies", 0),
        "drops": drops,
    }


def run(
    *,
    trials: int = 5,
    partials: int = 1030,
    rate: float = 400.0,
    hosts: int = 100,
    spoofed_rate: float = 20_000.0,
    scenarios: tuple[str, ...] = ("slowloris", "cookie_flood", "spoofed"),
    config: CoreConfig | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return the JSON-ready result."""
    if trials < 1 or partials < 1 or rate <= 0 or hosts < 1 or spoofed_rate <= 0:
        raise ValueError("trials, partials, rate, hosts and spoofed_rate must be positive")
    unknown = set(scenarios) - {"slowloris", "cookie_flood", "spoofed"}
    if unknown:
        raise ValueError(f"unknown scenarios: {sorted(unknown)}")
    config = config or CoreConfig()
    ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
    victim = _Process(_victim_main, (ca.cert_pem(), ca.key_pem(), config), "x0-bench-victim")
    try:
        return asyncio.run(
            _run(victim, ca, config, trials, partials, rate, hosts, spoofed_rate, scenarios)
        )
    finally:
        victim.conn.send(("stop",))
        victim.stop()


async def _run(  # noqa: PLR0917 - the benchmark's parameters, passed through
    victim: _Process,
    ca: MeshCA,
    config: CoreConfig,
    trials: int,
    partials: int,
    rate: float,
    hosts: int,
    spoofed_rate: float,
    scenarios: tuple[str, ...],
) -> dict[str, Any]:
    spiffe_id, victim_port, victim_cert = victim.recv()[1]
    peer = issue_identity(ca, _PEER)
    with bind_udp(("127.0.0.1", 0)) as probe:
        peer_port = probe.getsockname()[1]
    members = [
        Member(_VICTIM, spiffe_id, ("127.0.0.1", victim_port), cert_der=victim_cert),
        Member(_PEER, peer.spiffe_id, ("127.0.0.1", peer_port), cert_der=peer.cert_der),
    ]
    victim.ask("members", members)
    target = ("127.0.0.1", victim_port)

    async def measure() -> tuple[list[float | None], dict[str, Any], dict[str, Any]]:
        before = victim.ask("stats")
        samples = []
        for _ in range(trials):
            samples.append(await _time_to_link(peer, peer_port, members, config))
            await asyncio.sleep(_TRIAL_GAP)
        return samples, before, victim.ask("stats")

    samples, before, after = await measure()
    baseline = _summary(samples) | _delta(before, after)
    result: dict[str, Any] = {
        "trials": trials,
        "baseline": baseline,
        "targets": TARGETS,
    }
    base_p50 = baseline["time_to_link_p50_ms"]
    params = {
        "slowloris": {"sources": partials},
        "cookie_flood": {"rate": rate, "hosts": hosts},
        "spoofed": {"rate": spoofed_rate},
    }
    meets = baseline["linked"] == trials
    for kind in scenarios:
        if kind == "spoofed" and os.geteuid() != 0:
            result[kind] = {"skipped": "needs root (a raw socket forges the sources)"}
            continue
        flooder = _Process(_flooder_main, (kind, target, params[kind]), f"x0-bench-{kind}")
        try:
            info = flooder.recv()[1]
            await asyncio.sleep(_SETTLE)
            samples, before, after = await measure()
            flooder.conn.send(("stop",))
            offered = flooder.recv()[1]
        finally:
            flooder.stop()
        entry = {"flood": params[kind] | info} | _summary(samples) | _delta(before, after)
        seconds = offered.get("seconds") or 1.0
        entry["offered_pps"] = round(offered["sent"] / seconds)
        entry["offered_bytes_per_s"] = round(offered["bytes"] / seconds)
        if "inits" in offered:
            entry["offered_inits_per_s"] = round(offered["inits"] / seconds, 1)
        p50 = entry["time_to_link_p50_ms"]
        entry["ratio"] = round(p50 / base_p50, 2) if p50 and base_p50 else None
        result[kind] = entry
        worst = entry["time_to_link_max_ms"]
        meets = (
            meets
            and entry["linked"] == trials
            and worst is not None
            and worst <= TARGETS["time_to_link_s"] * 1000
        )
    result["meets_targets"] = meets
    return result


def format_table(result: dict[str, Any]) -> str:
    """A readable table of :func:`run`'s result."""
    lines = [
        f"{'scenario':<13} {'offered/s':>10} {'victim/s':>9} {'cpu':>5} {'signed':>6} "
        f"{'linked':>7} {'p50 ms':>8} {'max ms':>8} {'ratio':>6}"
    ]
    for name in ("baseline", "slowloris", "cookie_flood", "spoofed"):
        entry = result.get(name)
        if entry is None:
            continue
        if "skipped" in entry:
            lines.append(f"{name:<13} skipped: {entry['skipped']}")
            continue
        lines.append(
            f"{name:<13} {entry.get('offered_pps', 0):>10} {entry['victim_pps']:>9} "
            f"{entry['victim_cpu']:>5.2f} {entry['responders']:>6} "
            f"{entry['linked']:>3}/{entry['trials']:<3} "
            f"{entry['time_to_link_p50_ms'] or '-':>8} {entry['time_to_link_max_ms'] or '-':>8} "
            f"{entry.get('ratio') or '-':>6}"
        )
    lines.append(f"meets targets (link within 10 s under every flood): {result['meets_targets']}")
    return "\n".join(lines)
