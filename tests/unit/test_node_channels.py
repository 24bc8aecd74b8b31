""":class:`Channels` (handshakes plus sessions per peer) moved by hand: no sockets, no clock.

Two (or three) ``Channels[str]`` exchange datagrams through :func:`transfer`; the "address"
of each is its name, as the end-to-end use of ``Channels`` keys peers by node id.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import pytest

from x0tta6bl4.crypto.pqsvid import MeshCA, PeerIdentity, verify_svid
from x0tta6bl4.crypto.suite import HybridKemKeyPair
from x0tta6bl4.defaults import DEFAULT_TRUST_DOMAIN
from x0tta6bl4.node.channels import ChannelData, ChannelEvent, Channels, ChannelUp, HandshakeDone
from x0tta6bl4.node.localmesh import issue_identity
from x0tta6bl4.protocol.constants import NONCE_SIZE, MessageType
from x0tta6bl4.protocol.fragments import fragment_message
from x0tta6bl4.protocol.handshake import Credential, HandshakeConfig
from x0tta6bl4.protocol.messages import CookieReply, InitMessage
from x0tta6bl4.protocol.session import Session

T0 = 10.0
_SHARE = HybridKemKeyPair().share


def _allow(peer: PeerIdentity) -> bool:
    return True


class Pair:
    """Named ``Channels`` sharing one CA, a wire, and a clock."""

    def __init__(
        self,
        names: tuple[str, ...] = ("alpha", "bravo"),
        *,
        authorize: Callable[[PeerIdentity], bool] = _allow,
        rekey_after_time: float = 120.0,
    ) -> None:
        ca = MeshCA.create(DEFAULT_TRUST_DOMAIN, now=time.time())
        self.now = T0
        offset = time.time() - T0
        self.ends: dict[str, Channels[str]] = {}
        for name in names:
            identity = issue_identity(ca, name)

            def verify(der: bytes) -> PeerIdentity:
                return verify_svid(der, ca.bundle(), self.now + offset)

            config = HandshakeConfig(
                credential=Credential(identity.cert_der, identity.signing_key),
                verify_peer=verify,
                authorize=authorize,
            )
            self.ends[name] = Channels(
                name,
                config,
                T0,
                session_factory=lambda _node, _addr: Session(
                    rekey_after_time=rekey_after_time, reject_after_time=600.0
                ),
                addr_key=lambda addr: addr.encode(),
            )
        self.events: dict[str, list[ChannelEvent]] = {n: [] for n in names}
        self.held: list[tuple[str, bytes, str]] = []

    def transfer(self, *, hold: bool = False) -> int:
        """Deliver every queued datagram (and the answers); ``hold`` keeps them instead."""
        moved = 0
        while True:
            batch = [
                (src, data, dst)
                for src, end in self.ends.items()
                for data, dst in end.datagrams_to_send()
            ]
            if not batch:
                break
            if hold:
                self.held.extend(batch)
                break
            for src, data, dst in batch:
                moved += 1
                self.ends[dst].receive(data, src, self.now)
        for name, end in self.ends.items():
            while (event := end.next_event()) is not None:
                self.events[name].append(event)
        return moved

    def tick(self, seconds: float) -> None:
        self.now += seconds
        for end in self.ends.values():
            deadline = end.get_timer()
            if deadline is not None and deadline <= self.now:
                end.handle_timer(self.now)
        self.transfer()

    def data(self, name: str) -> list[bytes]:
        return [
            e.plaintext for e in self.events[name] if isinstance(e, ChannelData) and e.plaintext
        ]


def test_handshake_brings_both_ends_up_and_carries_data() -> None:
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    assert a.connect("bravo", "bravo", pair.now)
    assert not a.connect("bravo", "bravo", pair.now), "a second initiator while one is in flight"
    pair.transfer()
    assert a.can_send("bravo")
    assert b.can_send("alpha")
    ups = [e for e in pair.events["bravo"] if isinstance(e, ChannelUp)]
    assert [u.node_id for u in ups] == ["alpha"]
    assert ups[0].identity.node_id == "alpha"
    assert HandshakeDone(True, "ok") in pair.events["alpha"]
    assert a.send("bravo", b"hello", pair.now)
    assert b.send("alpha", b"back", pair.now)
    pair.transfer()
    assert pair.data("bravo") == [b"hello"]
    assert pair.data("alpha") == [b"back"]
    assert len(a) == len(b) == 1
    assert a.get("bravo") is not None


def test_send_without_keys_sends_nothing() -> None:
    pair = Pair()
    a = pair.ends["alpha"]
    assert not a.send("bravo", b"x", pair.now)
    assert a.datagrams_to_send() == []


def test_simultaneous_connect_settles_on_one_session() -> None:
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    b.connect("alpha", "alpha", pair.now)
    pair.transfer()
    for _ in range(20):
        pair.tick(0.1)
    assert a.can_send("bravo")
    assert b.can_send("alpha")
    a.send("bravo", b"one", pair.now)
    b.send("alpha", b"two", pair.now)
    pair.transfer()
    assert pair.data("bravo") == [b"one"]
    assert pair.data("alpha") == [b"two"]
    # The smaller id's handshake won: the larger dropped nothing of its own it needed.
    assert a.dropped["init_collision"] >= 1


def test_lost_handshake_is_retransmitted() -> None:
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer(hold=True)
    assert pair.held, "the INIT was queued"
    pair.held.clear()  # lost on the wire
    for _ in range(40):
        pair.tick(0.1)
        if a.can_send("bravo") and b.can_send("alpha"):
            break
    assert a.can_send("bravo")
    assert b.can_send("alpha")


def test_unauthorized_peer_gets_no_channel() -> None:
    pair = Pair(authorize=lambda peer: peer.node_id != "alpha")
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    for _ in range(5):
        pair.tick(0.2)
    assert not b.can_send("alpha")
    assert not any(isinstance(e, ChannelUp) for e in pair.events["bravo"])


def test_garbage_is_dropped_by_reason() -> None:
    pair = Pair()
    a = pair.ends["alpha"]
    for data in (b"", b"\xee", b"\x04\x00", b"\x04\x00\x00\x00\x09" + bytes(40), b"\x02\x00"):
        a.receive(data, "mallory", pair.now)
    assert a.dropped["empty"] == 1
    assert a.dropped["bad_type"] == 1
    assert a.dropped["bad_length"] == 2
    assert a.dropped["unknown_index"] == 1
    assert a.next_event() is None
    assert a.datagrams_to_send() == []


def test_rekey_keeps_old_packets_decryptable() -> None:
    pair = Pair(rekey_after_time=1.0)
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    a.send("bravo", b"before", pair.now)
    pair.transfer(hold=True)
    in_flight = list(pair.held)
    pair.held.clear()
    ups = sum(isinstance(e, ChannelUp) for e in pair.events["alpha"])
    pair.tick(1.5)  # due for rekey: a new handshake runs and new keys are installed
    for _ in range(10):
        pair.tick(0.1)
    assert sum(isinstance(e, ChannelUp) for e in pair.events["alpha"]) > ups
    for src, data, dst in in_flight:  # the packet sealed under the old keys arrives late
        pair.ends[dst].receive(data, src, pair.now)
    a.send("bravo", b"after", pair.now)
    pair.transfer()
    assert pair.data("bravo") == [b"before", b"after"]
    assert b.can_send("alpha")


def test_forget_drops_every_state() -> None:
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    b.send("alpha", b"x", pair.now)
    a.forget("bravo")
    assert a.get("bravo") is None
    assert not a.can_send("bravo")
    pair.transfer()
    assert a.dropped["unknown_index"] == 1


def test_stale_session_is_rehandshaken() -> None:
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.stale_after = 1.0
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    hello = sum(isinstance(e, HandshakeDone) for e in pair.events["alpha"])
    b.forget("alpha")  # the peer restarted and lost its keys
    a.send("bravo", b"lost", pair.now)
    pair.transfer()
    for _ in range(20):
        pair.tick(0.1)
    assert sum(isinstance(e, HandshakeDone) for e in pair.events["alpha"]) > hello
    assert b.can_send("alpha")


@pytest.mark.parametrize("offset", [0, 1])
def test_three_peers_each_get_their_own_channel(offset: int) -> None:
    pair = Pair(("alpha", "bravo", "charlie"))
    names = list(pair.ends)
    for i, name in enumerate(names):
        other = names[(i + 1 + offset) % 3]
        pair.ends[name].connect(other, other, pair.now)
    pair.transfer()
    for _ in range(10):
        pair.tick(0.1)
    for name, end in pair.ends.items():
        for other in names:
            if other != name:
                end.send(other, f"{name}>{other}".encode(), pair.now)
    pair.transfer()
    for name in names:
        assert sorted(pair.data(name)) == sorted(
            f"{other}>{name}".encode() for other in names if other != name
        )


def test_cached_timer_still_wakes_for_the_passive_keepalive() -> None:
    # get_timer() caches a scan of every session; data that arrives later makes a keepalive
    # due keepalive_timeout (10 s) after it, which the cached deadline must not skip.
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    pair.tick(3.0)
    assert b.get_timer() is not None
    sent_at = pair.now
    assert a.send("bravo", b"data", pair.now)
    pair.transfer()
    for _ in range(100):
        deadline = b.get_timer()
        assert deadline is not None
        pair.now = max(pair.now, deadline)
        b.handle_timer(pair.now)
        if b.datagrams_to_send():
            break
    else:
        raise AssertionError("bravo never sent its keepalive")
    assert pair.now <= sent_at + 10.0


# --- the unauthenticated (issue #13) -----------------------------------------------------------


def _init_fragments(index: int) -> list[bytes]:
    """A cookie-less INIT (what any sender can produce), fragmented."""
    init = InitMessage(index, bytes(NONCE_SIZE), _SHARE).encode()
    return fragment_message(MessageType.HANDSHAKE_INIT, init, sender_index=index, receiver_index=0)


def test_inits_from_ever_new_addresses_leave_no_state() -> None:
    """Row 2: nothing is kept per source address before the listener validates it."""
    pair = Pair()
    b = pair.ends["bravo"]
    probes = [b"\x01", _init_fragments(7)[1]]
    b.receive(probes[0], "warm-up", pair.now)
    b.receive(probes[1], "warm-up", pair.now)
    b.datagrams_to_send()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(20_000):
            b.receive(probes[n % 2], f"spoofed-{n}", pair.now)
            assert len(b.datagrams_to_send()) == n % 2  # a cookie reply, sent at once
        growth = sum(
            stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        )
    finally:
        tracemalloc.stop()
    assert growth < 64 * 1024  # bytes, for 20,000 sources (it was ~200 bytes per source)
    assert b.listener.pending == 0
    assert b.listener.responders == 0
    assert b.dropped == {"handshake_truncated": 10_001}


def test_one_init_from_a_silent_address_draws_at_most_three_times_its_bytes() -> None:
    """Row 3 at the node's channel layer: over 12 s, bytes out <= 3x bytes in."""
    pair = Pair()
    b = pair.ends["bravo"]
    received = 0
    sent = 0
    for datagram in _init_fragments(9):
        received += len(datagram)
        b.receive(datagram, "victim-of-spoofing", pair.now)
    end = pair.now + 12.0
    while True:
        sent += sum(len(d) for d, addr in b.datagrams_to_send() if addr == "victim-of-spoofing")
        timer = b.get_timer()
        if timer is None or timer > end:
            break
        pair.now = max(pair.now, timer)
        b.handle_timer(pair.now)
    assert received == 1290
    assert sent == 2 * 21
    assert sent <= 3 * received


def test_a_datagram_from_another_address_does_not_redirect_a_handshake() -> None:
    pair = Pair()
    a = pair.ends["alpha"]
    a.connect("bravo", "bravo", pair.now)
    init = [d for d, _ in a.datagrams_to_send()]
    index = int.from_bytes(init[0][1:5], "big")
    # A forged cookie reply for the initiator's index, from an address of the attacker's
    # choosing: it may make the initiator re-send INIT, but only to bravo.
    forged = CookieReply(receiver_index=index, cookie=b"\x07" * 16).encode()
    a.receive(forged, "victim-of-spoofing", pair.now)
    pair.tick(0.5)
    for _ in range(10):
        pair.now += 0.5
        a.handle_timer(pair.now)
        assert {addr for _, addr in a.datagrams_to_send()} <= {"bravo"}


def test_finish_rejections_count_distinct_reasons() -> None:
    """A tampered FINISH and a different late FINISH are told apart in the counters."""
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    for _ in range(10):  # INIT -> cookie -> INIT with the cookie -> RESP; FINISH held
        batch = [
            (data, dst, src)
            for src, end in pair.ends.items()
            for data, dst in end.datagrams_to_send()
        ]
        for data, dst, src in batch:
            if data[0] == MessageType.HANDSHAKE_FINISH:
                pair.held.append((src, data, dst))
            else:
                pair.ends[dst].receive(data, src, pair.now)
    finish = [data for _, data, _ in pair.held]
    assert finish
    tampered = bytearray(finish[-1])
    tampered[-1] ^= 1
    for data in [*finish[:-1], bytes(tampered)]:
        b.receive(data, "alpha", pair.now)
    assert b.dropped == {"handshake_decrypt_failed": 1}
    for data in finish:  # the genuine FINISH completes the handshake
        b.receive(data, "alpha", pair.now)
    assert b.can_send("alpha")
    pair.now += 1.0
    for data in [*finish[:-1], bytes(tampered)]:  # late, and not the accepted one
        b.receive(data, "alpha", pair.now)
    assert b.dropped == {"handshake_decrypt_failed": 1, "handshake_replayed_finish": 1}
    b.datagrams_to_send()
    for data in finish:  # late and identical: one keepalive, no drop
        b.receive(data, "alpha", pair.now)
    assert len(b.datagrams_to_send()) == 1
    assert b.dropped == {"handshake_decrypt_failed": 1, "handshake_replayed_finish": 1}


def test_a_peer_with_a_channel_is_known_to_the_listener() -> None:
    """A neighbour's INIT (a rekey, or a restart on its endpoint) draws on the listener's
    known budget: strangers that spend the shared budget do not keep it out."""
    pair = Pair()
    a, b = pair.ends["alpha"], pair.ends["bravo"]
    a.connect("bravo", "bravo", pair.now)
    pair.transfer()
    assert b.listener.stats["known_responders"] == 0  # a stranger the first time
    pair.now += 1.0
    a.connect("bravo", "bravo", pair.now)  # again: bravo has a channel for alpha now
    pair.transfer()
    assert b.listener.stats["known_responders"] == 1
    assert b.listener.stats["responders"] == 2
