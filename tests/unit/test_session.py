"""Transport session: two in-memory sessions, an explicit clock, a hand-made network.

Keys come from :func:`paired_keys`, which builds the matching initiator/responder
TransportKeys a handshake would produce (random keys, chosen indices); the handshake's own
tests check that it derives such pairs.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.crypto.suite import counter_nonce
from x0tta6bl4.protocol.constants import (
    MAX_TRANSPORT_DATAGRAM_SIZE,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    RESPONDER_REKEY_DELAY,
)
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.keys import TransportKeys
from x0tta6bl4.protocol.replay import WINDOW_SIZE
from x0tta6bl4.protocol.session import (
    MIN_TRANSPORT_DATAGRAM_SIZE,
    TRANSPORT_DROPS,
    OpenResult,
    Session,
)

REASONS = {r.value for r in TRANSPORT_DROPS}


def paired_keys(
    initiator_index: int = 0x11111111, responder_index: int = 0x22222222
) -> tuple[TransportKeys, TransportKeys]:
    """Matching (initiator, responder) TransportKeys from fresh random keys."""
    i2r, r2i, transcript = os.urandom(32), os.urandom(32), os.urandom(32)
    initiator = TransportKeys(
        send_key=i2r,
        recv_key=r2i,
        local_index=initiator_index,
        remote_index=responder_index,
        is_initiator=True,
        handshake_hash=transcript,
    )
    responder = TransportKeys(
        send_key=r2i,
        recv_key=i2r,
        local_index=responder_index,
        remote_index=initiator_index,
        is_initiator=False,
        handshake_hash=transcript,
    )
    return initiator, responder


def establish(now: float = 0.0, **limits: float) -> tuple[Session, Session]:
    """(initiator, responder) after a handshake, following the rekey contract."""
    initiator, responder = Session(**limits), Session(**limits)  # type: ignore[arg-type]
    ikeys, rkeys = paired_keys()
    initiator.install(ikeys, now)  # sent FINISH: waits in `next`
    assert initiator.can_send is False
    responder.install(rkeys, now)  # got FINISH: current, must send at once
    assert responder.needs_keepalive(now)
    result = initiator.open(responder.seal(b"", now), now)
    assert result == OpenResult(b"", keypair_promoted=True)
    assert initiator.keypairs.current is not None  # can_send
    assert not responder.needs_keepalive(now)
    return initiator, responder


def reason_of(session: Session, datagram: bytes, now: float) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        session.open(datagram, now)
    assert info.value.reason in REASONS
    return info.value.reason


# --- basics -----------------------------------------------------------------------------------


def test_round_trip_both_directions() -> None:
    a, b = establish()
    assert a.can_send
    assert b.can_send
    for i in range(50):
        payload = os.urandom(i * 20)
        assert b.open(a.seal(payload, 1.0), 1.0) == OpenResult(payload, False)
        assert a.open(b.seal(payload[::-1], 1.0), 1.0).plaintext == payload[::-1]
    assert a.stats.packets_sent == 50
    assert a.stats.packets_received == 51  # and the responder's confirming keepalive
    assert a.stats.dropped == {}
    assert b.stats.dropped == {}


def test_wire_format_is_header_counter_nonce_and_aad() -> None:
    a, b = establish()
    ikeys = paired_keys()[0]  # only to learn the default indices
    a.seal(b"first", 1.0)
    datagram = a.seal(b"second", 1.0)
    assert len(datagram) == 13 + len(b"second") + 16
    msg_type, index, counter = struct.unpack_from("!BIQ", datagram)
    assert (msg_type, index, counter) == (4, ikeys.remote_index, 1)
    assert b.open(datagram, 1.0).plaintext == b"second"


def test_independent_decryption_with_bare_aesgcm() -> None:
    ikeys, rkeys = paired_keys()
    responder = Session()
    responder.install(rkeys, 0.0)
    datagram = responder.seal(b"payload", 0.0)
    header, body = datagram[:13], datagram[13:]
    assert AESGCM(ikeys.recv_key).decrypt(counter_nonce(0), body, header) == b"payload"
    # And the other way: a packet built by hand opens in the session.
    initiator = Session()
    initiator.install(ikeys, 0.0)
    hand = struct.pack("!BIQ", 4, ikeys.local_index, 41)
    hand += AESGCM(rkeys.send_key).encrypt(counter_nonce(41), b"by hand", hand)
    assert initiator.open(hand, 0.0) == OpenResult(b"by hand", True)


def test_initiator_cannot_send_before_confirmation() -> None:
    ikeys, _ = paired_keys()
    initiator = Session()
    assert initiator.get_timer() is None
    with pytest.raises(LocalProtocolError, match="no current keypair"):
        initiator.seal(b"x", 0.0)
    initiator.install(ikeys, 0.0)
    assert not initiator.can_send
    assert not initiator.needs_rekey(0.0)
    with pytest.raises(LocalProtocolError):
        initiator.seal(b"x", 0.0)


def test_seal_rejects_oversized_plaintext() -> None:
    a, _b = establish()
    assert a.max_plaintext_size == MAX_TRANSPORT_DATAGRAM_SIZE - MIN_TRANSPORT_DATAGRAM_SIZE
    assert len(a.seal(bytes(a.max_plaintext_size), 0.0)) == MAX_TRANSPORT_DATAGRAM_SIZE
    with pytest.raises(LocalProtocolError, match="exceeds"):
        a.seal(bytes(a.max_plaintext_size + 1), 0.0)
    sent = a.stats.packets_sent
    assert sent == 1


def test_configurable_datagram_size() -> None:
    a, b = establish(max_datagram_size=9000)
    assert b.open(a.seal(bytes(8971), 0.0), 0.0).plaintext == bytes(8971)
    _, small = establish()
    big = a.seal(bytes(2000), 0.0)
    # A receiver configured for 1472 drops it before touching keys.
    assert reason_of(small, big, 0.0) == "bad_length"


def test_bad_length_type_and_index() -> None:
    a, b = establish()
    datagram = a.seal(b"hello", 1.0)
    assert reason_of(b, datagram[: MIN_TRANSPORT_DATAGRAM_SIZE - 1], 1.0) == "bad_length"
    assert reason_of(b, b"", 1.0) == "bad_length"
    assert reason_of(b, datagram + bytes(1500), 1.0) == "bad_length"
    assert reason_of(b, b"\x01" + datagram[1:], 1.0) == "bad_type"
    assert reason_of(b, datagram[:1] + b"\x99\x99\x99\x99" + datagram[5:], 1.0) == ("unknown_index")
    assert b.stats.dropped == {"bad_length": 3, "bad_type": 1, "unknown_index": 1}
    # None of it changed anything: the genuine datagram still opens.
    assert b.open(datagram, 1.0).plaintext == b"hello"


def test_replayed_packets_rejected() -> None:
    a, b = establish()
    datagram = a.seal(b"once", 1.0)
    assert b.open(datagram, 1.0).plaintext == b"once"
    assert reason_of(b, datagram, 1.0) == "replay"
    assert reason_of(b, datagram, 2.0) == "replay"
    assert b.stats.dropped == {"replay": 2}
    assert b.stats.packets_received == 1


def test_every_single_bit_flip_is_rejected() -> None:
    a, b = establish()
    datagram = a.seal(b"forty-two bytes of transport plaintext..", 1.0)
    flips = 0
    for bit in range(len(datagram) * 8):
        tampered = bytearray(datagram)
        tampered[bit // 8] ^= 1 << (bit % 8)
        reason = reason_of(b, bytes(tampered), 1.0)
        assert reason in {"bad_type", "unknown_index", "decrypt_failed", "expired"}, bit
        flips += 1
    assert sum(b.stats.dropped.values()) == flips
    # The genuine packet is still fresh: nothing the tampering did reached the window.
    assert b.open(datagram, 1.0).plaintext.startswith(b"forty-two")


def test_reordering_within_window_accepted_below_window_rejected() -> None:
    a, b = establish()
    datagrams = [a.seal(i.to_bytes(4, "big"), 1.0) for i in range(WINDOW_SIZE + 2)]
    newest = datagrams[-1]  # counter WINDOW_SIZE + 1
    assert b.open(newest, 1.0).plaintext == (WINDOW_SIZE + 1).to_bytes(4, "big")
    assert reason_of(b, datagrams[0], 1.0) == "replay"  # WINDOW_SIZE + 1 behind: too old
    shuffled = datagrams[1:-1]
    random.Random(3).shuffle(shuffled)
    for datagram in shuffled:
        b.open(datagram, 1.0)
    assert b.stats.packets_received == WINDOW_SIZE + 1


@pytest.mark.parametrize("distance", [2047, 2048, 2049])
def test_window_distances(distance: int) -> None:
    a, b = establish()
    datagrams = [a.seal(b"", 1.0) for _ in range(distance + 1)]
    b.open(datagrams[-1], 1.0)
    assert b.open(datagrams[0], 1.0).plaintext == b""
    assert reason_of(b, datagrams[0], 1.0) == "replay"


# --- time and message limits ------------------------------------------------------------------


def test_reject_after_time() -> None:
    a, b = establish(now=10.0)
    late = 10.0 + REJECT_AFTER_TIME
    datagram = a.seal(b"in time", late - 0.001)
    assert b.open(datagram, late - 0.001).plaintext == b"in time"
    sealed_late = a.seal(b"still", late - 0.0005)
    with pytest.raises(LocalProtocolError, match="expired"):
        a.seal(b"too late", late)
    assert reason_of(b, sealed_late, late) == "expired"
    rekey = 10.0 + REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY
    assert b.get_timer() == rekey
    b.handle_timer(rekey)
    assert b.get_timer() == late
    b.handle_timer(late)
    assert b.stats.keypairs_expired == 1
    assert not b.can_send
    assert b.get_timer() is None
    assert reason_of(b, sealed_late, late) == "unknown_index"


def test_message_limits() -> None:
    a, b = establish(rekey_after_messages=3, reject_after_messages=5)
    for _ in range(3):
        assert not a.needs_rekey(0.0)
        b.open(a.seal(b"m", 0.0), 0.0)
    assert a.needs_rekey(0.0)
    b.open(a.seal(b"m", 0.0), 0.0)
    b.open(a.seal(b"m", 0.0), 0.0)  # counter 4, the last one allowed
    with pytest.raises(LocalProtocolError, match="maximum of messages"):
        a.seal(b"m", 0.0)


def test_receiver_rejects_counters_at_its_limit() -> None:
    ikeys, rkeys = paired_keys()
    sender, receiver = Session(), Session(rekey_after_messages=2, reject_after_messages=5)
    sender.install(rkeys, 0.0)
    receiver.install(ikeys, 0.0)
    datagrams = [sender.seal(b"", 0.0) for _ in range(6)]
    assert reason_of(receiver, datagrams[5], 0.0) == "expired"
    assert receiver.open(datagrams[4], 0.0).keypair_promoted


def test_rekey_deadlines_initiator_and_responder() -> None:
    a, b = establish(now=100.0)
    # The initiator's rekey deadline comes first, then the responder's (later by a delay).
    assert a.get_timer() == 100.0 + REKEY_AFTER_TIME
    assert b.get_timer() == 100.0 + REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY
    assert not a.needs_rekey(100.0 + REKEY_AFTER_TIME - 0.001)
    assert a.needs_rekey(100.0 + REKEY_AFTER_TIME)
    assert not b.needs_rekey(100.0 + REKEY_AFTER_TIME)
    assert b.needs_rekey(100.0 + REKEY_AFTER_TIME + RESPONDER_REKEY_DELAY)
    # After handle_timer the rekey deadline is reported once; then the expiry is next.
    a.handle_timer(100.0 + REKEY_AFTER_TIME)
    assert a.needs_rekey(100.0 + REKEY_AFTER_TIME)
    assert a.get_timer() == 100.0 + REJECT_AFTER_TIME


def test_passive_keepalive() -> None:
    a, b = establish()
    assert not a.needs_keepalive(0.0)
    b.open(a.seal(b"data", 1.0), 1.0)
    assert not b.needs_keepalive(1.0)
    assert b.get_timer() == 11.0
    assert b.needs_keepalive(11.0)
    a.open(b.seal(b"", 11.0), 11.0)  # the keepalive
    assert not b.needs_keepalive(20.0)
    # Receiving a keepalive does not ask for one back.
    assert not a.needs_keepalive(30.0)


def test_install_validation() -> None:
    _ikeys, rkeys = paired_keys()
    session = Session()
    bad_size = TransportKeys(b"k" * 16, b"k" * 32, 1, 2, False, b"")
    with pytest.raises(LocalProtocolError, match="32-byte"):
        session.install(bad_size, 0.0)
    bad_index = TransportKeys(b"k" * 32, b"k" * 32, 2**32, 2, False, b"")
    with pytest.raises(LocalProtocolError, match="u32"):
        session.install(bad_index, 0.0)
    session.install(rkeys, 0.0)
    again = TransportKeys(b"j" * 32, b"j" * 32, rkeys.local_index, 9, False, b"")
    with pytest.raises(LocalProtocolError, match="already used"):
        session.install(again, 0.0)
    assert session.stats.keypairs_installed == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rekey_after_time": 200.0},
        {"rekey_after_time": 0.0, "responder_rekey_delay": 0.0},
        {"responder_rekey_delay": -1.0},
        {"rekey_after_messages": 10, "reject_after_messages": 5},
        {"reject_after_messages": 2**64},
        {"keepalive_timeout": 0.0},
        {"max_datagram_size": 28},
        {"max_datagram_size": 70_000},
    ],
)
def test_constructor_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        Session(**kwargs)  # type: ignore[arg-type]


def test_keys_never_in_repr() -> None:
    ikeys, _ = paired_keys()
    session = Session()
    session.install(ikeys, 0.0)
    text = repr(ikeys) + repr(session.keypairs.next)
    assert ikeys.send_key.hex() not in text
    assert ikeys.send_key.hex()[:16] not in text
    assert repr(ikeys.send_key) not in text


# --- rekey with zero loss ---------------------------------------------------------------------


@dataclass
class Peer:
    session: Session
    name: str
    next_seq: int = 0
    received: list[int] = field(default_factory=list)
    late_under_previous: int = 0


@dataclass(order=True)
class InFlight:
    arrival: float
    order: int
    datagram: bytes = field(compare=False)
    dst: str = field(compare=False)
    kind: str = field(compare=False)  # "data", or "finish" (the handshake's last message)


class Network:
    """Delivers datagrams after a random delay (so they reorder); never loses them."""

    def __init__(self, seed: int, max_delay: float) -> None:
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.queue: list[InFlight] = []
        self.order = 0

    def send(self, now: float, dst: str, datagram: bytes, kind: str = "data") -> None:
        self.order += 1
        delay = self.rng.uniform(0.0, self.max_delay)
        self.queue.append(InFlight(now + delay, self.order, datagram, dst, kind))
        self.queue.sort()

    def due(self, now: float) -> list[InFlight]:
        ready = [p for p in self.queue if p.arrival <= now]
        self.queue = [p for p in self.queue if p.arrival > now]
        return ready


def _deliver(peer: Peer, packet: InFlight, now: float) -> bool:
    session = peer.session
    index = struct.unpack_from("!I", packet.datagram, 1)[0]
    previous = session.keypairs.previous
    under_previous = previous is not None and previous.local_index == index
    result = session.open(packet.datagram, now)
    if result.plaintext:
        peer.received.append(int.from_bytes(result.plaintext, "big"))
        peer.late_under_previous += under_previous
    return result.keypair_promoted


@pytest.mark.parametrize("seed", range(6))
def test_rekeys_during_bidirectional_traffic_lose_nothing(seed: int) -> None:
    """Three rekeys while both sides send every tick; packets reorder across each switch."""
    rng = random.Random(seed)
    a, b = establish()
    peers = {"a": Peer(a, "a"), "b": Peer(b, "b")}
    net = Network(seed, max_delay=0.05)
    tick = 0.002
    now = 0.0
    pending_finish: dict[str, TransportKeys] = {}
    promotions = 0
    rekey_at = [0.3, 0.6, 0.9]
    indices = iter(range(100, 200))
    for step in range(700):
        now = round(step * tick, 6)
        if rekey_at and now >= rekey_at[0]:
            rekey_at.pop(0)
            # Either side may start the rekey; the initiator installs `next` as it sends FINISH.
            initiator, responder = rng.sample(["a", "b"], 2)
            ikeys, rkeys = paired_keys(next(indices), next(indices))
            peers[initiator].session.install(ikeys, now)
            pending_finish[responder] = rkeys
            net.send(now, responder, b"FINISH", kind="finish")
        for name, peer in peers.items():
            other = "b" if name == "a" else "a"
            peer.next_seq += 1
            net.send(now, other, peer.session.seal(peer.next_seq.to_bytes(4, "big"), now))
        for packet in net.due(now):
            peer = peers[packet.dst]
            if packet.kind == "finish":
                peer.session.install(pending_finish.pop(packet.dst), now)
                assert peer.session.needs_keepalive(now)
                other = "b" if packet.dst == "a" else "a"
                net.send(now, other, peer.session.seal(b"", now))  # confirms at once
            else:
                promotions += _deliver(peer, packet, now)
    # Drain what is still in flight.
    while net.queue:
        now += tick
        for packet in net.due(now):
            promotions += _deliver(peers[packet.dst], packet, now)
    assert promotions == 3
    for name, peer in peers.items():
        sender = peers["b" if name == "a" else "a"]
        assert sorted(peer.received) == list(range(1, sender.next_seq + 1)), name
        assert peer.session.stats.dropped == {}, name
    # Reordering across the switches did deliver packets under the previous keypair.
    assert peers["a"].late_under_previous + peers["b"].late_under_previous > 0
    ka, kb = a.keypairs, b.keypairs
    assert ka.current is not None
    assert kb.current is not None
    assert ka.current.local_index == kb.current.remote_index
    assert ka.next is None
    assert kb.next is None


def test_packets_under_previous_decrypt_until_it_expires() -> None:
    a, b = establish(now=0.0)
    old = a.seal(b"old keypair", 50.0)
    ikeys, rkeys = paired_keys(7, 8)
    a.install(ikeys, 100.0)
    b.install(rkeys, 100.0)
    assert a.open(b.seal(b"", 100.0), 100.0).keypair_promoted
    assert b.open(old, 150.0).plaintext == b"old keypair"
    late = a.seal(b"new", 170.0)
    assert b.open(late, 170.0).plaintext == b"new"
    # The previous keypair was made at t=0; it expires at REJECT_AFTER_TIME.
    old2 = old  # replay is caught first while it lives
    assert reason_of(b, old2, 170.0) == "replay"
    b.handle_timer(REJECT_AFTER_TIME)
    assert b.keypairs.previous is None
    assert b.stats.keypairs_expired == 1
    assert reason_of(b, old, REJECT_AFTER_TIME) == "unknown_index"


def test_a_second_initiated_rekey_replaces_an_unconfirmed_next() -> None:
    a, b = establish()
    first_i, _ = paired_keys(31, 32)
    second_i, second_r = paired_keys(41, 42)
    a.install(first_i, 1.0)
    a.install(second_i, 2.0)  # the first handshake never completed on the other side
    b.install(second_r, 2.0)
    assert a.keypairs.next is not None
    assert a.keypairs.next.local_index == 41
    assert a.open(b.seal(b"", 2.0), 2.0).keypair_promoted
    assert b.open(a.seal(b"x", 2.0), 2.0).plaintext == b"x"


def test_responder_install_drops_an_unconfirmed_next() -> None:
    a, _b = establish()
    mine, _ = paired_keys(51, 52)
    _, theirs = paired_keys(62, 61)
    a.install(mine, 1.0)  # a initiated a handshake, not yet confirmed
    a.install(theirs, 1.5)  # meanwhile b's handshake completed with a as responder
    assert a.keypairs.next is None
    current = a.keypairs.current
    assert current is not None
    assert current.local_index == 61


# --- fuzzing ----------------------------------------------------------------------------------


_FUZZ_PAIR = establish()


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=1600))
def test_fuzz_open_arbitrary_bytes(data: bytes) -> None:
    _, b = _FUZZ_PAIR
    with pytest.raises(RemoteProtocolError) as info:
        b.open(data, 1.0)
    assert info.value.reason in REASONS


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=200))
def test_fuzz_open_with_a_valid_index(counter: int, body: bytes) -> None:
    a, b = _FUZZ_PAIR
    current = a.keypairs.current
    assert current is not None
    data = struct.pack("!BIQ", 4, current.remote_index, counter) + body
    with pytest.raises(RemoteProtocolError) as info:
        b.open(data, 1.0)
    assert info.value.reason in {"decrypt_failed", "expired"}


# --- benchmark --------------------------------------------------------------------------------


def test_bench_session_reports_every_key() -> None:
    from x0tta6bl4.bench.session import format_table, run

    result = run(packets=30, rounds=2)
    for key in ("packets_per_second", "bare_packets_per_second", "packets", "rounds"):
        assert isinstance(result[key], int), key
        assert result[key] > 0, key
    assert result["packets"] == 60
    for key in ("ratio", "ratio_median_of_rounds", "session_us_per_packet"):
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    choice = result["aead_choice"]
    assert choice["chosen"] == "AES-256-GCM"
    assert isinstance(choice["chacha20_poly1305_packets_per_second"], int)
    assert isinstance(choice["aes_over_chacha"], float)
    assert "ratio (session ÷ bare)" in format_table(result)
    with pytest.raises(ValueError, match="packet_size"):
        run(packets=1, rounds=1, packet_size=5000)


def test_bench_session_command_json() -> None:
    import json

    from typer.testing import CliRunner

    from x0tta6bl4.cli import app

    out = CliRunner().invoke(app, ["bench", "session", "--json", "--packets", "20"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["packets"] == 20 * data["rounds"]
    assert {"packets_per_second", "ratio", "bare_packets_per_second", "aead_choice"} <= set(data)
    table = CliRunner().invoke(app, ["bench", "session", "--packets", "20"])
    assert table.exit_code == 0
    assert "pkt/s" in table.output
