"""The sans-IO :class:`NodeCore` on an in-memory network with a hand-advanced clock.

No sockets and no real time: :class:`Net` moves the datagrams each core wants to send to the
core that owns the destination address (``transfer``) and advances a simulated clock from
timer to timer (``advance``). Dead nodes and cut links drop datagrams, so failure detection,
routing around a dead relay, rekeying and end-to-end sessions run in milliseconds of CPU.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from x0tta6bl4.crypto.pqsvid import MeshCA
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.core import MAX_APP_PAYLOAD, NodeCore
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.node.model import (
    PING_CHANNEL,
    Addr,
    AppMessage,
    CoreConfig,
    LinkFilter,
    Member,
    RevokedCert,
)
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.frames import Fragment, LinkStateAdvert, Routed, encode_frames
from x0tta6bl4.protocol.lsa import LinkStateAdvert as Lsa
from x0tta6bl4.protocol.lsa import encode_signed

START = 100.0


def _edges(*pairs: tuple[int, int]) -> LinkFilter:
    allowed = {frozenset(p) for p in pairs}

    def allow(a: str, b: str) -> bool:
        return frozenset((int(a[-3:]), int(b[-3:]))) in allowed

    return allow


class Net:
    """N cores, an in-memory wire and a simulated clock."""

    def __init__(self, n: int, *, config: CoreConfig | None = None) -> None:
        self.ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
        self.now = START
        self.offset = time.time() - START
        self.ids = [f"node-{i:03d}" for i in range(n)]
        self.addr: dict[str, Addr] = {n: (f"10.0.0.{i + 1}", 7810) for i, n in enumerate(self.ids)}
        self.owner = {a: n for n, a in self.addr.items()}
        self.config = config or CoreConfig()
        self.cores = {
            n: NodeCore(
                issue_identity(self.ca, n), START, wall_offset=self.offset, config=self.config
            )
            for n in self.ids
        }
        self.dead: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.wire: list[tuple[float, str, bytes, Addr]] = []
        #: One-way delay of every datagram (0: delivered within the same instant).
        self.latency = 0.0
        self.delivered = 0
        self.lost = 0

    def members(self) -> list[Member]:
        return [
            Member(n, c.identity.spiffe_id, self.addr[n], cert_der=c.identity.cert_der)
            for n, c in self.cores.items()
        ]

    def live(self) -> list[NodeCore]:
        return [c for n, c in self.cores.items() if n not in self.dead]

    def announce(self) -> None:
        members = self.members()
        for core in self.live():
            core.set_members(members, self.now)
        self.transfer()

    def collect(self) -> None:
        for core in self.live():
            for data, addr in core.datagrams_to_send():
                self.wire.append((self.now + self.latency, core.node_id, data, addr))

    def transfer(self) -> None:
        """Deliver everything due on the wire, and what the receivers send in turn."""
        self.collect()
        while self.wire and min(w[0] for w in self.wire) <= self.now:
            item = min(self.wire, key=lambda w: w[0])
            self.wire.remove(item)
            _, src, data, addr = item
            dst = self.owner.get(addr)
            if (
                dst is None
                or dst in self.dead
                or src in self.dead
                or frozenset((src, dst)) in self.cut
            ):
                self.lost += 1
                continue
            self.delivered += 1
            self.cores[dst].receive_datagram(data, self.addr[src], self.now)
            self.collect()

    def advance(self, seconds: float) -> None:
        """Run every timer and delivery due in the next ``seconds`` of simulated time."""
        end = self.now + seconds
        while True:
            due = min(c.get_timer() for c in self.live())
            if self.wire:
                due = min(due, *(w[0] for w in self.wire))
            if due > end:
                self.now = end
                return
            self.now = max(self.now, due)
            for core in self.live():
                if core.get_timer() <= self.now:
                    core.handle_timer(self.now)
            self.transfer()

    def converged(self) -> bool:
        live = [c.node_id for c in self.live()]
        return all(
            other == c.node_id or c.router.route(other) is not None
            for c in self.live()
            for other in live
        )

    def run_until(self, predicate: object, limit: float = 20.0, step: float = 0.05) -> float:
        """Advance in ``step`` slices until ``predicate()`` holds; the simulated time taken."""
        assert callable(predicate)
        start = self.now
        while not predicate():
            if self.now - start > limit:
                raise AssertionError(f"condition not reached within {limit} simulated seconds")
            self.advance(step)
        return self.now - start


def _line(n: int, config: CoreConfig | None = None) -> Net:
    edges = _edges(*((i, i + 1) for i in range(n - 1)))
    net = Net(n, config=dataclasses.replace(config or CoreConfig(), link_filter=edges))
    net.announce()
    net.run_until(net.converged)
    return net


def test_two_nodes_link_up_and_route_to_each_other() -> None:
    net = Net(2)
    net.announce()
    net.run_until(net.converged)
    a, b = net.cores.values()
    assert a.link_state("node-001") == b.link_state("node-000") == "up"
    assert a.up_links() == ["node-001"]
    route = a.router.route("node-001")
    assert route is not None
    assert route.path == ("node-001",)
    assert a.counters["handshakes_ok"] + b.counters["handshakes_ok"] >= 2
    status = a.status()
    assert [link["state"] for link in status["links"]] == ["up"]
    assert status["routes"][0]["dest"] == "node-001"


def test_heartbeats_keep_a_quiet_link_up() -> None:
    net = Net(2)
    net.announce()
    net.run_until(net.converged)
    a = net.cores["node-000"]
    net.latency = 0.005
    net.advance(1.0)
    before = net.delivered
    net.advance(5.0)
    assert a.link_state("node-001") == "up"
    assert a.counters["link_down_events"] == 0
    # One heartbeat per direction per interval, each carrying the echo of the other's: the
    # RTT is measured without separate acks.
    beats = 5.0 / net.config.heartbeat_interval
    assert beats * 2 * 0.9 <= net.delivered - before <= beats * 2 * 1.1
    rtt = a.status()["links"][0]["rtt_ms"]
    assert rtt == pytest.approx(10.0, abs=0.5)  # 2 x 5 ms, not the peer's holding time


def test_link_declared_down_after_missed_heartbeats_and_up_again() -> None:
    net = Net(2)
    net.announce()
    net.run_until(net.converged)
    a = net.cores["node-000"]
    net.cut.add(frozenset(net.ids))
    limit = net.config.heartbeat_interval * net.config.dead_after
    net.advance(limit * 0.5)
    assert a.link_state("node-001") == "up", "declared down before dead_after intervals"
    taken = net.run_until(lambda: a.link_state("node-001") == "down", step=0.01)
    # Silence started at most one interval before the cut; detection waits dead_after of them.
    assert limit * 0.5 <= limit * 0.5 + taken <= limit + net.config.heartbeat_interval + 0.02
    assert a.counters["link_down_events"] == 1
    net.advance(net.config.router.spf_max_delay + 0.05)
    assert a.router.route("node-001") is None  # our advert no longer lists the link
    net.cut.clear()
    net.run_until(lambda: a.link_state("node-001") == "up")
    net.run_until(net.converged)


def test_dead_relay_is_routed_around() -> None:
    # Diamond 0-1-3, 0-2-3: node-000 reaches node-003 through a relay.
    edges = _edges((0, 1), (1, 3), (0, 2), (2, 3))
    net = Net(4, config=CoreConfig(link_filter=edges))
    net.announce()
    net.run_until(net.converged)
    src = net.cores["node-000"]
    first = src.router.route("node-003")
    assert first is not None
    relay = first.path[0]
    net.dead.add(relay)

    def rerouted() -> bool:
        route = src.router.route("node-003")
        return route is not None and relay not in route.path

    net.run_until(rerouted, step=0.01)
    route = src.router.route("node-003")
    assert route is not None
    assert route.path[-1] == "node-003"
    assert len(route.path) == 2


def test_end_to_end_session_through_a_relay_hides_the_payload() -> None:
    net = _line(3)
    a, relay, c = net.cores.values()
    seen: list[Routed] = []
    relay.on_transit = seen.append
    secret = b"relay must not read this " * 4
    a.send_app("node-002", 7, secret, net.now)
    net.transfer()
    net.run_until(lambda: bool(c.e2e.can_send("node-000")) and a.e2e.can_send("node-002"))
    net.transfer()
    message = c.next_app()
    assert message == AppMessage("node-000", 7, secret)
    assert relay.counters["forwarded"] >= 3  # handshake both ways plus data
    assert seen
    assert all(frame.dst in {"node-000", "node-002"} for frame in seen)
    assert not any(secret[:16] in frame.payload for frame in seen)
    assert relay.next_app() is None
    # A reply travels back over the same session, and mesh ping works.
    c.send_app("node-000", 8, b"pong", net.now)
    net.transfer()
    assert a.next_app() == AppMessage("node-002", 8, b"pong")
    a.ping("node-002", 42, net.now)
    net.transfer()
    pong = a.next_pong()
    assert pong is not None
    assert pong[:2] == ("node-002", 42)


def test_rekey_replaces_link_and_end_to_end_keys_without_loss() -> None:
    config = CoreConfig(rekey_after_time=2.0, reject_after_time=60.0)
    net = _line(3, config)
    a, _, c = net.cores.values()
    handshakes = sum(core.counters["handshakes_ok"] for core in net.cores.values())
    received: list[bytes] = []
    for i in range(60):  # 6 simulated seconds: several rekeys of every session
        a.send_app("node-002", 1, i.to_bytes(2, "big"), net.now)
        net.advance(0.1)
        while (message := c.next_app()) is not None:
            received.append(message.payload)
    net.transfer()
    while (message := c.next_app()) is not None:
        received.append(message.payload)
    assert received == [i.to_bytes(2, "big") for i in range(60)]
    assert sum(core.counters["handshakes_ok"] for core in net.cores.values()) > handshakes
    assert a.counters["e2e_handshakes_ok"] >= 2
    assert a.counters["link_down_events"] == 0


def test_renewed_identity_rekeys_every_link() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    before = a.counters["handshakes_ok"]
    renewed = issue_identity(net.ca, "node-000", key=a.identity.signing_key)
    a.set_identity(renewed, net.now)
    net.transfer()
    net.advance(0.5)
    assert a.counters["handshakes_ok"] > before
    assert a.link_state("node-001") == "up"
    with pytest.raises(LocalProtocolError, match="node id"):
        a.set_identity(issue_identity(net.ca, "node-009"), net.now)


def test_garbage_datagrams_are_dropped_and_counted() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    stranger: Addr = ("10.9.9.9", 4000)
    junk = [b"", b"\xff" * 40, b"\x04\x00", b"\x04" + bytes(60), b"\x01" + bytes(10)]
    for data in junk:
        a.receive_datagram(data, stranger, net.now)
    assert a.datagrams_to_send() == []
    dropped = a.status()["dropped"]
    assert dropped["empty"] == 1
    assert dropped["bad_type"] == 1
    assert dropped["bad_length"] == 1
    assert dropped["unknown_index"] == 1
    assert sum(dropped.values()) >= len(junk)
    net.advance(1.0)
    assert a.link_state("node-001") == "up"


def test_send_app_rejects_bad_input_and_changes_nothing() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    for dest, channel, payload, match in [
        ("nobody", 1, b"x", "unknown destination"),
        ("node-001", PING_CHANNEL, b"x", "channel"),
        ("node-001", -1, b"x", "channel"),
        ("node-001", 1, bytes(MAX_APP_PAYLOAD + 1), "exceeds"),
        ("node-000", 1, b"x", "ourselves"),
    ]:
        with pytest.raises(ValueError, match=match):
            a.send_app(dest, channel, payload, net.now)
    assert a.datagrams_to_send() == []
    assert len(a.e2e) == 0


def test_forged_replayed_and_early_adverts() -> None:
    net = _line(3)
    a, b, c = net.cores.values()
    counters = a.router.all_counters()
    # node-001 (b) forges an advert for node-002 with its own key and with a random key.
    forged = Lsa(origin="node-002", seq=2**62, issued_at_ms=0, neighbours=(("node-000", 1),))
    for key in (b.identity.signing_key, SigningKey.generate()):
        b.send_frame("node-000", LinkStateAdvert(encode_signed(forged, key)), net.now)
        net.transfer()
    after = a.router.all_counters()
    assert after["lsa_bad_signature"] == counters["lsa_bad_signature"] + 2
    route = a.router.route("node-002")
    assert route is not None
    assert route.path == ("node-001", "node-002")
    # A replay of an older genuine advert of node-002 is stale.
    old = Lsa(origin="node-002", seq=1, issued_at_ms=0, neighbours=(("node-001", 10),))
    b.send_frame("node-000", LinkStateAdvert(encode_signed(old, c.identity.signing_key)), net.now)
    net.transfer()
    assert a.router.all_counters()["lsa_stale_seq"] > after["lsa_stale_seq"]
    # Garbage in an advert frame is malformed, not a crash.
    b.send_frame("node-000", LinkStateAdvert(b"\x01\x00\x05abc"), net.now)
    net.transfer()
    assert a.router.all_counters()["lsa_malformed"] > after["lsa_malformed"]


def test_advert_from_an_unknown_origin_waits_for_its_key() -> None:
    net = Net(3, config=CoreConfig(link_filter=_edges((0, 1), (1, 2))))
    a, b, c = net.cores.values()
    everyone = net.members()
    # node-000 knows node-001 only (no certificate for node-002 yet).
    partial = [m for m in everyone if m.node_id != "node-002"]
    a.set_members(partial, net.now)
    b.set_members(everyone, net.now)
    c.set_members(everyone, net.now)
    net.transfer()
    net.run_until(lambda: a.counters["lsa_waiting_for_key"] > 0)
    assert a.router.route("node-002") is None
    a.set_members(everyone, net.now)
    net.transfer()
    net.run_until(net.converged)
    route = a.router.route("node-002")
    assert route is not None
    assert route.path == ("node-001", "node-002")


def test_departed_member_link_is_closed() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    a.set_members([m for m in net.members() if m.node_id != "node-001"], net.now)
    assert a.link_state("node-001") == "none"
    assert a.link_peers() == []


def test_link_cost_changes_reach_the_router_batched() -> None:
    config = CoreConfig(cost_update_interval=5.0)
    net = Net(2, config=config)
    net.announce()
    net.run_until(net.converged)
    a = net.cores["node-000"]

    def cost() -> int:
        route = a.router.route("node-001")
        assert route is not None
        return route.cost

    assert cost() == 10  # the floor: instant delivery
    net.latency = 0.005  # RTT 10 ms: cost 100 once the windowed minimum RTT follows
    net.run_until(lambda: cost() >= 50, limit=30.0, step=0.1)
    first = net.now
    originated = a.router.all_counters()["originated"]
    net.latency = 0.05  # RTT 100 ms: the detector reports new costs at once ...
    net.advance(3.0)
    assert cost() < 500  # ... but the router hears of them only 5 s after the last update
    net.run_until(lambda: cost() >= 500, limit=30.0, step=0.1)
    assert net.now - first >= config.cost_update_interval - 0.2  # observed in 0.1 s steps
    # One batched advert per interval, not one per cost step (plus the 10 s refreshes).
    refreshes = (net.now - first) // config.router.refresh_interval + 1
    assert a.router.all_counters()["originated"] - originated <= 2 + refreshes
    assert a.link_state("node-001") == "up"


def test_cost_changes_wait_an_interval_after_start_with_per_node_jitter() -> None:
    config = CoreConfig(cost_update_interval=5.0)
    net = Net(2, config=config)
    net.latency = 0.005  # the first RTTs are slow (10 ms: cost 100) ...
    net.announce()
    net.run_until(net.converged)
    a = net.cores["node-000"]
    route = a.router.route("node-001")
    assert route is not None
    assert route.cost >= 50
    net.latency = 0.0  # ... then fast: the detector lowers the cost at once
    net.run_until(lambda: (r := a.router.route("node-001")) is not None and r.cost == 10)
    # The router heard of it no sooner than an interval after start, and no later than the
    # interval plus a quarter of jitter (observed in 0.1 s steps).
    assert START + config.cost_update_interval <= net.now
    assert net.now <= START + 1.25 * config.cost_update_interval + 0.2


def test_cost_update_interval_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="cost_update_interval"):
        CoreConfig(cost_update_interval=-1.0)


class _SizeNet(Net):
    """Records the largest datagram any core sent."""

    largest = 0

    def collect(self) -> None:
        for core in self.live():
            for data, addr in core.datagrams_to_send():
                self.largest = max(self.largest, len(data))
                self.wire.append((self.now + self.latency, core.node_id, data, addr))


def test_adverts_are_fragmented_so_no_datagram_exceeds_1472_bytes() -> None:
    net = _SizeNet(4)
    net.announce()
    net.run_until(net.converged)
    net.advance(11.0)  # a refresh round too
    assert net.converged()
    assert 1400 < net.largest <= 1472
    for core in net.cores.values():
        assert core.counters["frames_fragmented"] > 0
        assert core.counters["advert_copies_skipped"] == 0  # announce, then pull: one copy
        assert not any(reason.startswith("fragment") for reason in core.dropped)
        assert core.dropped["bad_length"] == 0
    # Copies of adverts a node holds (a database sync racing an announce, a retried
    # request) are recognised by their first fragment and the rest is skipped.
    first, second = sorted(net.cores)[:2]
    receiver = net.cores[second]
    duplicates = receiver.router.lsdb.counters["duplicate"]
    net.cores[first].router.full_sync(second)
    net.cores[first].handle_timer(net.now)
    net.collect()
    net.advance(0.5)
    assert receiver.counters["advert_copies_skipped"] == 3  # the adverts of the other three
    assert receiver.router.lsdb.counters["duplicate"] == duplicates + 3


def test_nested_and_inconsistent_fragments_are_dropped_and_counted() -> None:
    net = Net(2)
    net.announce()
    net.run_until(net.converged)
    a, b = net.cores["node-000"], net.cores["node-001"]
    inner = encode_frames([Fragment(5, 3, 0, b"abc")])
    a.send_frame("node-001", Fragment(9, len(inner), 0, inner), net.now)
    a.send_frame("node-001", Fragment(10, 8, 0, b"abcd"), net.now)
    a.send_frame("node-001", Fragment(10, 9, 4, b"efgh"), net.now)
    net.transfer()
    assert b.dropped["fragment_nested"] == 1
    assert b.dropped["fragment_inconsistent"] == 1
    assert b.link_state("node-000") == "up"


# --- who may handshake: only current members (docs/protocol.md, "Who may handshake") ---------


def test_a_mesh_ca_certificate_for_an_unregistered_node_id_does_not_link() -> None:
    net = Net(2)
    a, b = net.cores.values()
    # node-001's PQ SVID is signed by the mesh CA, but node-000's membership does not list it.
    a.set_members([], net.now)
    b.set_members(net.members(), net.now)
    net.transfer()
    net.advance(10.0)
    assert a.link_state("node-001") != "up"
    assert b.link_state("node-000") != "up"
    assert a.counters["handshakes_failed"] > 0
    assert a.counters["handshakes_ok"] == 0
    # Once the membership lists it, the same certificate links.
    a.set_members(net.members(), net.now)
    net.transfer()
    net.run_until(lambda: a.link_state("node-001") == "up")


def test_a_rekeyed_member_loses_its_link_at_once_and_its_old_key_no_longer_links() -> None:
    net = _line(2)
    a, b = net.cores.values()
    assert a.link_state("node-001") == "up"
    rotated = issue_identity(net.ca, "node-001")  # a new key, as after a rotation
    members = [
        dataclasses.replace(m, cert_der=rotated.cert_der) if m.node_id == "node-001" else m
        for m in net.members()
    ]
    a.set_members(members, net.now)
    # Dropped in the same step as the membership change (no time passes).
    assert a.link_state("node-001") == "none"
    # node-001 still holds the old key and certificate: its handshakes are refused.
    failed = a.counters["handshakes_failed"]
    net.transfer()
    net.advance(10.0)
    assert a.link_state("node-001") != "up"
    assert a.counters["handshakes_failed"] > failed
    # The holder of the new key links.
    b.set_identity(rotated, net.now)
    b.set_members(members, net.now)
    net.transfer()
    net.run_until(lambda: a.link_state("node-001") == "up")


def test_a_renewed_certificate_with_the_same_key_keeps_the_link() -> None:
    net = _line(2)
    a, b = net.cores.values()
    renewed = issue_identity(net.ca, "node-001", key=b.identity.signing_key)
    b.set_identity(renewed, net.now)
    members = [
        dataclasses.replace(m, cert_der=renewed.cert_der) if m.node_id == "node-001" else m
        for m in net.members()
    ]
    a.set_members(members, net.now)
    assert a.link_state("node-001") == "up"
    net.transfer()
    net.advance(2.0)
    assert a.link_state("node-001") == "up"


def _serial(cert_der: bytes) -> int:
    from cryptography import x509

    return int(x509.load_der_x509_certificate(cert_der).serial_number)


def test_a_revoked_serial_drops_its_link_at_once_and_never_links_again() -> None:
    """The controller revokes node-001's certificate (e.g. deleted and re-admitted, or a
    stolen key re-bound) while the membership still names it: the link made with it closes
    in the same step, and node-001's handshakes with it are refused as ``cert_revoked``."""
    net = _line(2)
    a, b = net.cores.values()
    assert a.link_state("node-001") == "up"
    serial = _serial(b.identity.cert_der)
    wall_not_after = b.identity.not_after
    a.set_members(net.members(), net.now, [RevokedCert(serial, "node-001", wall_not_after)])
    assert a.link_state("node-001") == "none"
    assert a.revoked_serials() == {serial: wall_not_after}
    net.transfer()
    net.advance(10.0)
    assert a.link_state("node-001") != "up"
    assert a.all_dropped()["cert_revoked"] >= 1
    # The membership without revocations (None: a refresh that did not list them, e.g. an
    # older controller) keeps what is known; an empty list clears it.
    a.set_members(net.members(), net.now)
    assert a.revoked_serials() == {serial: wall_not_after}
    a.set_members(net.members(), net.now, [])
    net.run_until(lambda: a.link_state("node-001") == "up")


def test_a_revocation_is_forgotten_at_its_not_after() -> None:
    net = _line(2)
    a, b = net.cores.values()
    serial = _serial(b.identity.cert_der)
    wall_now = net.now + net.offset
    a.set_members(net.members(), net.now, [RevokedCert(serial, "node-001", wall_now + 30)])
    assert a.revoked_serials() == {serial: wall_now + 30}
    net.advance(31.0)  # the explicit clock passes the revocation's notAfter
    a.set_members(net.members(), net.now)
    assert a.revoked_serials() == {}
    # An entry already past its notAfter is not even kept.
    a.set_members(net.members(), net.now, [RevokedCert(serial + 1, "x", wall_now)])
    assert a.revoked_serials() == {}


def test_an_older_certificate_of_the_current_key_is_not_current() -> None:
    """Only the membership's current certificate of a node ID handshakes — an older one
    (same key, still valid, not revoked) is refused as ``cert_not_current``; a newer one
    for the same key (a renewal the membership has not shown yet) is accepted."""
    net = _line(2)
    a, b = net.cores.values()
    old = b.identity

    def issued(later: float) -> bytes:  # valid from ``later`` - 60 s: after node-001's own
        return net.ca.issue(
            spiffe_id=old.spiffe_id, node_id="node-001",
            public_key=old.signing_key.public_bytes, now=time.time() + later, ttl_seconds=3600,
        )  # fmt: skip

    renewed = dataclasses.replace(old, cert_der=issued(30.0))
    newer = dataclasses.replace(old, cert_der=issued(45.0))
    members = [
        dataclasses.replace(m, cert_der=renewed.cert_der) if m.node_id == "node-001" else m
        for m in net.members()
    ]
    a.set_members(members, net.now)
    assert a.link_state("node-001") == "up"  # a link made with the older one stays up
    a.neighbourhood.close("node-001", net.now)
    net.transfer()
    net.advance(5.0)  # node-001 still presents the older certificate: refused
    assert a.link_state("node-001") != "up"
    assert a.all_dropped()["cert_not_current"] >= 1
    b.set_identity(newer, net.now)  # newer than the membership's: accepted
    net.transfer()
    net.run_until(lambda: a.link_state("node-001") == "up")


def test_a_deleted_member_cannot_link_again_with_its_still_valid_certificate() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    a.set_members([m for m in net.members() if m.node_id != "node-001"], net.now)
    assert a.link_state("node-001") == "none"
    net.transfer()
    net.advance(10.0)
    assert a.link_state("node-001") != "up"


def test_a_member_whose_certificate_names_another_spiffe_id_is_not_linked() -> None:
    net = _line(2)
    a = net.cores["node-000"]
    members = [
        dataclasses.replace(m, spiffe_id=m.spiffe_id + "-other") if m.node_id == "node-001" else m
        for m in net.members()
    ]
    a.set_members(members, net.now)
    assert a.link_state("node-001") == "none"
    assert a.all_dropped()["member_cert_rejected"] >= 1
    net.transfer()
    net.advance(10.0)
    assert a.link_state("node-001") != "up"
