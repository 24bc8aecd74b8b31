"""A real node process under a flood of spoofed-source datagrams (issue #13, row 2).

The node (a :class:`~x0tta6bl4.node.udp.MeshEndpoint` on a loopback UDP socket, in its own
process) receives 300,000 datagrams, each from a different forged 127.x.y.z source, sent
through a raw socket: one-byte datagrams starting with 0x01 (the issue's case), well-formed
INIT fragments without a cookie or with a wrong one (each draws a 21-byte cookie reply and
nothing else), RESP/FINISH fragments, COOKIE_REPLYs and transport packets for indices that
do not exist, and unknown types. Nothing may be kept per source: the node's RSS must grow by
less than 30 MB (docs/node.md states the bound), it writes no log line, and every datagram
is accounted for in its drop counters or answered with a cookie.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from x0tta6bl4.protocol.constants import FRAGMENT_HEADER_SIZE, INIT_MESSAGE_SIZE, MessageType

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a raw socket forges sources)"),
]

ROOT = Path(__file__).resolve().parents[2]

FLOOD = 300_000
RSS_BOUND_MB = 30

_NODE = r"""
import asyncio, json, sys, time
from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.udp import open_endpoint

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

async def main():
    ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
    ep = await open_endpoint(issue_identity(ca, "victim"), ("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    def report():
        core = ep.core
        return {
            "port": ep.local_addr[1],
            "rss_kb": rss_kb(),
            "received": ep.datagrams_received,
            "dropped": dict(core.dropped),
            "cookie_replies": core.links._listener.stats["cookie_replies"],
            "pending": core.links._listener.pending,
            "responders": core.links._listener.responders,
        }
    print(json.dumps(report()), flush=True)
    while await reader.readline():
        await asyncio.sleep(0.01)  # let queued datagrams be read first
        print(json.dumps(report()), flush=True)
    ep.close()

asyncio.run(main())
"""


class _Node:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _NODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        self.first = self._line()

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the node process exited"
        result: dict[str, Any] = json.loads(line)
        return result

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"?\n")
        self.proc.stdin.flush()
        return self._line()

    def stop(self) -> bytes:
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def node() -> Iterator[_Node]:
    running = _Node()
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def _payloads(rng: random.Random) -> list[bytes]:
    """One of each kind of unauthenticated datagram, fresh random fields."""
    index = rng.randrange(1, 2**32)
    init_head = struct.pack(
        "!BIIHHHHB", MessageType.HANDSHAKE_INIT, index, 0, 0, INIT_MESSAGE_SIZE, 0, 1, 0
    )
    cookie = rng.randbytes(16)
    room = 1200 - FRAGMENT_HEADER_SIZE - 16
    init_big = (
        struct.pack(
            "!BIIHHHHB", MessageType.HANDSHAKE_INIT, index, 0, 0, INIT_MESSAGE_SIZE, 0, room, 16
        )
        + cookie
        + rng.randbytes(room)
    )
    resp = struct.pack("!BIIHHHHB", MessageType.HANDSHAKE_RESP, index, index, 1, 9000, 0, 8, 0)
    return [
        b"\x01",  # the one-byte datagram
        init_head + b"\x01",  # a 19-byte INIT fragment without a cookie
        init_big,  # a full-size INIT fragment with a wrong cookie
        resp + rng.randbytes(8),  # RESP for an index nobody has
        bytes([MessageType.HANDSHAKE_FINISH]) + rng.randbytes(40),
        bytes([MessageType.COOKIE_REPLY]) + rng.randbytes(20),
        bytes([MessageType.TRANSPORT]) + rng.randbytes(40),
        bytes([0x09]) + rng.randbytes(10),
    ]


def _packet(src: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    # The kernel fills in the IP checksum (IPPROTO_RAW implies IP_HDRINCL); UDP checksum 0
    # means "none" over IPv4.
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, bytes([127, 0, 0, 1])
    )
    return ip + udp


def test_spoofed_source_flood_leaves_no_state_behind(node: _Node) -> None:
    port = node.first["port"]
    rss_before = node.first["rss_kb"]
    rng = random.Random(13)
    kinds = _payloads(rng)
    sources: set[tuple[bytes, int]] = set()
    sent = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        report = node.report()
        while report["received"] < FLOOD:
            # Bursts the node can drain before its socket buffer fills: the point is that
            # the node processes the datagrams, not that the kernel drops them.
            for _ in range(2_000):
                src = bytes([127, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
                sport = rng.randrange(1024, 65536)
                sources.add((src, sport))
                # Half of them the one-byte 0x01 datagram; the rest one of each kind
                # (a full-size INIT fragment twice in 16).
                kind = sent % 16
                payload = kinds[0] if kind < 8 else kinds[(kind - 8) or 2]
                if kind == 15:
                    kinds = _payloads(rng)  # fresh indices and cookies now and then
                raw.sendto(_packet(src, sport, port, payload), ("127.0.0.1", 0))
                sent += 1
            report = node.report()
    rss_after = report["rss_kb"]
    growth_mb = (rss_after - rss_before) / 1024
    err = node.stop()
    dropped = report["dropped"]
    print(
        f"flood: {sent} sent, {report['received']} received from {len(sources)} sources "
        f"in {time.monotonic() - started:.1f} s, "
        f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB (+{growth_mb:.1f} MB), "
        f"{report['cookie_replies']} cookie replies, drops {dropped}"
    )
    assert report["received"] >= FLOOD
    assert len(sources) > 0.9 * FLOOD
    assert growth_mb < RSS_BOUND_MB
    # Every datagram is a counted drop or was answered with a cookie reply, nothing else.
    assert sum(dropped.values()) + report["cookie_replies"] == report["received"]
    assert report["cookie_replies"] > 0
    assert report["pending"] == 0
    assert report["responders"] == 0
    assert set(dropped) <= {
        "handshake_truncated",
        "unknown_index",
        "bad_type",
        "bad_length",
    }
    assert err == b""  # not one log line
