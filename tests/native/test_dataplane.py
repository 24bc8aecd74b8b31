"""The native data plane's packet path on real loopback UDP sockets: tables, forwarding,
PROBE answers, end-to-end echo, hand-up of control traffic, hostile input.

Three data planes A – B – C, each with its own socket and I/O thread; link sessions are native
``Session`` objects keyed as a handshake would key them (the handshake itself is Python's and
is tested with the node); Python seals control frames with them and sends through
``Dataplane.send``, as the node does.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit.test_session import paired_keys
from x0tta6bl4.dataplane import native_module
from x0tta6bl4.protocol.frames import (
    AppData,
    Heartbeat,
    LinkStateAdvert,
    Routed,
    decode_frames,
    encode_frames,
)

native: Any = native_module()
PING = struct.Struct("!BIQ")


def _bound() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock.detach()


class Node:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.dp = native.Dataplane(_bound(), node_id)
        self.links: dict[str, Any] = {}
        self.e2e: dict[str, Any] = {}
        self.events: list[tuple[Any, ...]] = []

    @property
    def addr(self) -> tuple[str, int]:
        return tuple(self.dp.local_addr)  # type: ignore[return-value]

    def collect(self) -> list[tuple[Any, ...]]:
        self.events.extend(self.dp.drain())
        return self.events

    def send_link(self, peer: str, frames: list[Any], addr: tuple[str, int]) -> None:
        datagram = self.links[peer].seal(encode_frames(frames), native.monotonic())
        assert self.dp.send([(datagram, addr)]) == 1


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def link(a: Node, b: Node, index: int) -> None:
    """A link a (initiator) – b (responder), confirmed by b's keepalive."""
    ikeys, rkeys = paired_keys(index, index + 1)
    a.links[b.node_id], b.links[a.node_id] = native.Session(), native.Session()
    a.dp.attach_link(b.node_id, a.links[b.node_id], b.addr)
    b.dp.attach_link(a.node_id, b.links[a.node_id], a.addr)
    now = native.monotonic()
    a.links[b.node_id].install(ikeys, now)
    b.links[a.node_id].install(rkeys, now)
    b.send_link(a.node_id, [], a.addr)
    wait_for(lambda: any(e[0] == 1 and e[1] == b.node_id and e[3] for e in a.collect()))
    assert a.links[b.node_id].can_send


def e2e(a: Node, c: Node, index: int) -> None:
    ikeys, rkeys = paired_keys(index, index + 1)
    a.e2e[c.node_id], c.e2e[a.node_id] = native.Session(), native.Session()
    a.dp.attach_e2e(c.node_id, a.e2e[c.node_id])
    c.dp.attach_e2e(a.node_id, c.e2e[a.node_id])
    now = native.monotonic()
    # Both as responders, so each can send at once (the e2e handshake itself is Python's).
    a.e2e[c.node_id].install(rkeys, now)
    c.e2e[a.node_id].install(dataclasses.replace(ikeys, is_initiator=False), now)


@pytest.fixture
def line() -> Iterator[tuple[Node, Node, Node]]:
    a, b, c = Node("node-a"), Node("node-b"), Node("node-c")
    try:
        link(a, b, 100)
        link(b, c, 200)
        a.dp.set_routes({"node-b": "node-b", "node-c": "node-b"})
        b.dp.set_routes({"node-a": "node-a", "node-c": "node-c"})
        c.dp.set_routes({"node-b": "node-b", "node-a": "node-b"})
        yield a, b, c
    finally:
        for node in (a, b, c):
            node.dp.close()


def test_control_frames_are_handed_up_and_liveness_is_stamped(
    line: tuple[Node, Node, Node],
) -> None:
    a, b, _ = line
    before = native.monotonic()
    a.send_link("node-b", [LinkStateAdvert(b"advert"), Heartbeat(seq=5)], b.addr)
    event = wait_for(lambda: next((e for e in b.collect() if e[0] == 1 and e[2]), None))
    kind, peer, frames, promoted, stamped, answered = event
    assert (kind, peer, promoted, answered) == (1, "node-a", False, False)
    assert decode_frames(frames) == [LinkStateAdvert(b"advert"), Heartbeat(seq=5)]
    assert before <= stamped <= native.monotonic()
    assert b.dp.last_received()["node-a"] >= stamped


def test_probe_is_answered_natively_with_an_echo(line: tuple[Node, Node, Node]) -> None:
    a, b, _ = line
    a.events.clear()
    a.send_link("node-b", [Heartbeat(seq=77, probe=True)], b.addr)
    # b's data plane answers at once; the answer's echo carries our seq.
    answer = wait_for(
        lambda: next(
            (
                f
                for e in a.collect()
                if e[0] == 1
                for f in decode_frames(e[2])
                if isinstance(f, Heartbeat) and f.echo_seq == 77
            ),
            None,
        )
    )
    assert answer.seq >= 0x80000000
    # b's answer probes too (its detector has not said the link is up), so a's data plane
    # answers it once; b does not answer an answer to its own answer: no ping-pong.
    time.sleep(0.2)
    assert b.dp.counters()["probes_answered"] == 1
    assert a.dp.counters()["probes_answered"] == 1
    handed = [e for e in b.collect() if e[0] == 1 and e[5]]
    assert handed  # Python still sees the heartbeat, marked as answered, without its PROBE bit
    assert decode_frames(handed[0][2]) == [Heartbeat(seq=77)]


def test_routed_frames_are_forwarded_natively(line: tuple[Node, Node, Node]) -> None:
    a, b, c = line
    payload = b"\x01opaque end-to-end handshake bytes"
    a.send_link("node-b", [Routed("node-a", "node-c", 8, 0, payload)], b.addr)
    event = wait_for(lambda: next((e for e in c.collect() if e[0] == 2), None))
    assert event[:3] == (2, "node-a", payload)
    assert b.dp.counters()["forwarded"] == 1
    assert not [e for e in b.collect() if e[0] == 1 and e[2]]  # nothing for b's Python
    # TTL and routing rules.
    a.send_link("node-b", [Routed("node-a", "node-c", 1, 0, payload)], b.addr)
    a.send_link("node-b", [Routed("node-a", "node-x", 8, 0, payload)], b.addr)
    wait_for(lambda: {"ttl_expired", "no_route"} <= set(b.dp.counters()))


def test_end_to_end_echo_and_app_data(line: tuple[Node, Node, Node]) -> None:
    a, _, c = line
    e2e(a, c, 300)
    done, seconds, rtts = a.dp.echo_bench("node-c", 4, 0.5, 1000)
    assert done > 10
    assert seconds == pytest.approx(0.5)
    assert len(rtts) == min(done, 1000)
    assert all(0 < rtt < 1.0 for rtt in rtts)
    assert c.dp.counters()["pings_answered"] >= done
    # Other channels go up to Python, authenticated by the session.
    now = native.monotonic()
    datagram = a.e2e["node-c"].seal(encode_frames([AppData(7, b"hello")]), now)
    a.send_link("node-b", [Routed("node-a", "node-c", 8, 0, datagram)], line[1].addr)
    event = wait_for(lambda: next((e for e in c.collect() if e[0] == 3), None))
    assert event[1] == "node-a"
    assert decode_frames(event[2]) == [AppData(7, b"hello")]


def test_raw_echo_baseline() -> None:
    done, seconds, rtts = native.raw_echo_bench(4, 0.3, 13, 100)
    assert done > 10
    assert seconds == pytest.approx(0.3)
    assert 0 < len(rtts) <= 100


def test_remove_peer_stops_its_keys(line: tuple[Node, Node, Node]) -> None:
    a, b, _ = line
    b.dp.remove_peer("node-a")
    a.send_link("node-b", [LinkStateAdvert(b"x")], b.addr)
    wait_for(lambda: b.dp.counters().get("unknown_index", 0) >= 1)
    assert not [e for e in b.collect() if e[0] == 1 and e[2]]


def test_hostile_floods_stay_bounded(line: tuple[Node, Node, Node]) -> None:
    a, b, _ = line
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        index = b.links["node-a"].keypairs.current.local_index
        sent = 0
        for i in range(3000):
            junk = os.urandom(i % 200)
            forged = struct.pack("!BIQ", 4, index, i) + os.urandom(16 + i % 100)
            for datagram in (junk, forged, b"\x04" + os.urandom(40)):
                sock.sendto(datagram, b.addr)
                sent += 1
        wait_for(lambda: b.dp.counters().get("rx_datagrams", 0) > 1000)
        time.sleep(0.3)
        counters = b.dp.counters()
        assert counters.get("decrypt_failed", 0) > 0
        assert counters.get("unknown_index", 0) > 0
        # Non-transport junk goes up to Python (handshake parsing), bounded by the queue.
        events = b.collect()
        assert len(events) <= 16_384
    finally:
        sock.close()
    # The link still works after the flood.
    b.events.clear()
    a.send_link("node-b", [LinkStateAdvert(b"after")], b.addr)
    wait_for(
        lambda: any(e[0] == 1 and b"after" in e[2] for e in b.collect()),
    )


def test_blocked_ports_partition(line: tuple[Node, Node, Node]) -> None:
    a, b, _ = line
    b.dp.set_blocked_ports({a.addr[1]})
    a.send_link("node-b", [LinkStateAdvert(b"blocked")], b.addr)
    time.sleep(0.2)
    assert not any(e[0] == 1 and b"blocked" in e[2] for e in b.collect())
    b.dp.set_blocked_ports(set())
    a.send_link("node-b", [LinkStateAdvert(b"open")], b.addr)
    wait_for(lambda: any(e[0] == 1 and b"open" in e[2] for e in b.collect()))


def test_ping_request_is_answered_to_python_origin(line: tuple[Node, Node, Node]) -> None:
    a, b, c = line
    e2e(a, c, 400)
    now = native.monotonic()
    request = a.e2e["node-c"].seal(encode_frames([AppData(0xFFFF, PING.pack(0, 9, 123))]), now)
    a.send_link("node-b", [Routed("node-a", "node-c", 8, 0, request)], b.addr)
    reply = wait_for(lambda: next((e for e in a.collect() if e[0] == 3), None))
    assert decode_frames(reply[2]) == [AppData(0xFFFF, PING.pack(1, 9, 123))]


def test_every_native_drop_counter_is_a_documented_drop_label() -> None:
    from x0tta6bl4.node.core import _NATIVE_NOT_DROPS
    from x0tta6bl4.node.drops import is_drop_label

    drops = [name for name in native.DATAPLANE_COUNTERS if name not in _NATIVE_NOT_DROPS]
    assert drops
    assert [name for name in drops if not is_drop_label(name)] == []


def test_drain_takes_a_bounded_batch_and_stays_readable(line: tuple[Node, Node, Node]) -> None:
    import select

    _, b, _ = line
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(20):
            sock.sendto(b"\x01handshake-ish" + bytes([i]), b.addr)  # handed up as datagrams
    wait_for(lambda: b.dp.counters().get("rx_datagrams", 0) >= 20)
    first = b.dp.drain(5)
    assert len(first) == 5
    readable, _, _ = select.select([b.dp.notify_fd], [], [], 0)
    assert readable  # the rest is still waiting: the event loop comes back
    rest = b.dp.drain()
    assert len(rest) >= 15
