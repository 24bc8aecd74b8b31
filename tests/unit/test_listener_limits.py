"""The listener under hostile load, with an explicit clock (issue #13, rows 3 to 5).

* anti-amplification: over the 12 s after one INIT from an address that never answers, the
  listener sends that address at most 3x the bytes it received (RFC 9000, section 8.1);
* slowloris: 1,000+ addresses holding partial INITs, one more byte every 2 s, do not keep a
  genuine INIT out, and trickled bytes do not extend a partial's life;
* floods of INITs that echo valid cookies cost at most the responder budget (signatures per
  second), overall and per source, and a genuine INIT from another source still gets a
  responder at once.
"""

from __future__ import annotations

import secrets
import struct

import pytest

from tests.protocol_helpers import (
    Clock,
    CountingSigningKey,
    HandshakeLink,
    config_for,
    counting_config_for,
    node,
)
from x0tta6bl4.crypto.suite import HybridKemKeyPair
from x0tta6bl4.protocol.constants import (
    COOKIE_REPLY_SIZE,
    FRAGMENT_HEADER_SIZE,
    INIT_MESSAGE_SIZE,
    MAX_PARTIAL_MESSAGES,
    MAX_PENDING_INITS,
    MAX_RESPONDERS,
    NONCE_SIZE,
    REASSEMBLY_TIMEOUT,
    RESPONDER_BURST,
    RESPONDER_RATE,
    SOURCE_RESPONDER_BURST,
    SOURCE_RESPONDER_RATE,
    UNDER_LOAD_THRESHOLD,
    MessageType,
)
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.fragments import fragment_message
from x0tta6bl4.protocol.handshake import HandshakeState, ResponderHandshake
from x0tta6bl4.protocol.listener import HandshakeListener
from x0tta6bl4.protocol.messages import CookieReply, InitMessage
from x0tta6bl4.protocol.ratelimit import SourceLimiter, TokenBucket

_SHARE = HybridKemKeyPair().share  # a valid key share the flooders reuse (no keygen each)
_INIT = MessageType.HANDSHAKE_INIT


def _addr(n: int, ip: int = 0x0A000000) -> bytes:
    """Packed IPv4 + port, the way the node keys UDP addresses."""
    return struct.pack("!IH", ip + (n >> 16), 1024 + (n & 0xFFFF))


def _init(index: int) -> bytes:
    return InitMessage(index, secrets.token_bytes(NONCE_SIZE), _SHARE).encode()


def _cookie(listener: HandshakeListener, addr: bytes, index: int, now: float) -> bytes:
    """What an attacker at ``addr`` does first: send a cookie-less fragment, read the reply."""
    probe = fragment_message(_INIT, _init(index), sender_index=index, receiver_index=0)[0]
    assert listener.receive_datagram(probe, addr, now) is None
    replies = [d for d, a in listener.datagrams_to_send() if a == addr]
    assert len(replies) == 1
    return CookieReply.parse(replies[0]).cookie


def _responder_config() -> tuple[object, CountingSigningKey]:
    return counting_config_for(node("bob"))


# --- anti-amplification ------------------------------------------------------------------------


def _run_until(link: HandshakeLink, end: float, *, sent_to_peer: list[bytes]) -> None:
    """Fire the listener's and responders' timers up to ``end``; collect what they send."""
    while True:
        sent_to_peer.extend(link.from_responder())
        timer = link.next_timer()
        if timer is None or timer > end:
            break
        link.clock.now = max(link.clock.now, timer)
        link.fire_timers()
    link.clock.now = end
    link.fire_timers()
    sent_to_peer.extend(link.from_responder())


def test_one_init_from_a_silent_address_draws_at_most_three_times_its_bytes() -> None:
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")), validated=False)
    start = link.clock.now
    init = link.from_initiator()  # one INIT, and the address never answers
    received = sum(map(len, init))
    for d in init:
        link.deliver_to_responder(d)
    sent: list[bytes] = []
    _run_until(link, start + 12.0, sent_to_peer=sent)
    assert received == INIT_MESSAGE_SIZE + 2 * FRAGMENT_HEADER_SIZE == 1290
    assert [len(d) for d in sent] == [COOKIE_REPLY_SIZE] * 2
    assert sum(map(len, sent)) <= 3 * received
    assert link.responder is None


def test_a_validated_address_that_goes_silent_gets_resp_once() -> None:
    """After the cookie, RESP answers the INIT; nothing is retransmitted on a timer."""
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")))
    start = link.clock.now
    link.transfer_to_responder()  # INIT with the cookie; then the initiator goes silent
    sent: list[bytes] = []
    _run_until(link, start + 12.0, sent_to_peer=sent)
    responder = link.responder
    assert responder is not None
    assert responder.retransmissions == 0
    assert [d[0] for d in sent] == [MessageType.HANDSHAKE_RESP] * len(sent)
    assert 8 <= len(sent) <= 10  # one RESP flight (~10 kB), once
    assert responder.failed  # timed out, and forgot


def test_init_retransmissions_bring_resp_at_most_every_100_ms() -> None:
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")))
    init = link.from_initiator()
    for d in init:
        link.deliver_to_responder(d)
    responder = link.responder
    assert responder is not None
    flight = len(responder.datagrams_to_send())
    for _ in range(25):  # a replaying attacker at the initiator's address: 200 INITs/s
        link.clock.advance(0.005)
        for d in init:
            link.deliver_to_responder(d)
    resent = responder.datagrams_to_send()
    assert len(resent) == flight  # once in those 125 ms
    assert responder.dropped["rate_limited"] == 2 * 25 - 1


# --- slowloris ---------------------------------------------------------------------------------


def test_trickled_bytes_do_not_extend_a_partial_init() -> None:
    listener = HandshakeListener(config_for(node("bob")), 0.0)
    addr, index = _addr(1), 77
    cookie = _cookie(listener, addr, index, 0.0)
    message = _init(index)
    for second in range(3):  # one new byte per second
        datagram = fragment_message(
            _INIT,
            message[second : second + 1],
            sender_index=index,
            receiver_index=0,
            cookie=cookie,
        )[0]
        # fragment_message numbers offsets from 0: patch offset and total length in.
        patched = bytearray(datagram)
        struct.pack_into("!HH", patched, 11, INIT_MESSAGE_SIZE, second)
        assert listener.receive_datagram(bytes(patched), addr, float(second)) is None
        assert listener.pending == 1
        assert listener.get_timer() == pytest.approx(REASSEMBLY_TIMEOUT)
    listener.handle_timer(REASSEMBLY_TIMEOUT)
    assert listener.pending == 0
    assert listener.dropped == {}


def _trickle_fragment(message: bytes, index: int, cookie: bytes, offset: int) -> bytes:
    """A 35-byte INIT fragment: header, cookie and one byte of ``message`` at ``offset``."""
    header = struct.pack("!BIIHHHHB", _INIT, index, 0, 0, INIT_MESSAGE_SIZE, offset, 1, len(cookie))
    return header + cookie + message[offset : offset + 1]


def test_slowloris_of_1030_addresses_does_not_keep_a_genuine_init_out() -> None:
    """Row 4: 1,030 sources, each with a partial INIT growing by one byte every 2 s."""
    responder_config, key = _responder_config()
    clock = Clock()
    listener = HandshakeListener(responder_config, clock.now)  # type: ignore[arg-type]
    attackers = []
    for n in range(1030):
        addr = _addr(n)
        index = n + 1
        attackers.append((addr, index, _cookie(listener, addr, index, clock.now), _init(index)))
    offset = 0
    genuine_done_at: list[float] = []
    start = clock.now
    while clock.now - start < 12.0:
        for addr, index, cookie, message in attackers:
            datagram = _trickle_fragment(message, index, cookie, offset)
            listener.receive_datagram(datagram, addr, clock.now)
        assert listener.pending <= MAX_PENDING_INITS
        if not genuine_done_at and clock.now - start >= 6.0:
            # A genuine initiator, a moment after a round of trickles: every flight of its
            # handshake is answered at once (no retransmission, the clock does not move).
            clock.advance(0.05)
            link = _genuine_link(listener, responder_config, clock, _addr(1, ip=0x0B000001))
            link.exchange_cookie()
            link.roundtrip()  # INIT with the cookie -> RESP
            link.roundtrip()  # FINISH -> keepalive
            if link.completed() is not None:
                genuine_done_at.append(clock.now - start - 6.0)
        listener.handle_timer(clock.now)
        clock.advance(2.0)
        offset += 1
    assert genuine_done_at == [pytest.approx(0.05)]
    assert listener.stats["partials_evicted"] > 0
    assert key.signatures == 1  # only the genuine INIT was ever signed for


def test_partials_per_address_are_bounded() -> None:
    listener = HandshakeListener(config_for(node("bob")), 0.0)
    addr = _addr(9)
    for index in range(1, MAX_PARTIAL_MESSAGES + 3):
        cookie = _cookie(listener, addr, index, 0.0)
        listener.receive_datagram(_trickle_fragment(_init(index), index, cookie, 0), addr, 0.0)
    assert listener.pending == MAX_PARTIAL_MESSAGES
    assert listener.dropped == {"too_many_partials": 2}


def test_partial_inits_count_toward_under_load() -> None:
    listener = HandshakeListener(config_for(node("bob")), 0.0)
    for n in range(UNDER_LOAD_THRESHOLD):
        assert not listener.under_load
        addr = _addr(n)
        cookie = _cookie(listener, addr, 1, 0.0)
        listener.receive_datagram(_trickle_fragment(_init(1), 1, cookie, 0), addr, 0.0)
    assert listener.pending == UNDER_LOAD_THRESHOLD
    assert listener.in_progress == 0
    assert listener.under_load


# --- floods of valid-cookie INITs --------------------------------------------------------------


class _Flooder:
    """INITs with valid cookies from ``addrs``: each gets its cookie once, then floods."""

    def __init__(self, listener: HandshakeListener, addrs: list[bytes], now: float) -> None:
        self.listener = listener
        self.next_index = 1
        self.cookies: dict[tuple[bytes, int], bytes] = {}
        self.addrs = addrs
        self.sent = 0
        for addr in addrs:
            for _ in range(8):  # a few indices per address, cookies fetched in advance
                index = self.next_index
                self.next_index += 1
                self.cookies[(addr, index)] = _cookie(listener, addr, index, now)
        self._keys = list(self.cookies)

    def send(self, now: float, source_of: dict[bytes, bytes] | None = None) -> None:
        addr, index = self._keys[self.sent % len(self._keys)]
        self.sent += 1
        cookie = self.cookies[(addr, index)]
        source = None if source_of is None else source_of[addr]
        for d in fragment_message(
            _INIT, _init(index), sender_index=index, receiver_index=0, cookie=cookie
        ):
            responder = self.listener.receive_datagram(d, addr, now, source=source)
            if responder is not None:
                responder.datagrams_to_send()  # the flooder ignores RESP


def _genuine_link(
    listener: HandshakeListener, responder_config: object, clock: Clock, addr: bytes
) -> HandshakeLink:
    link = HandshakeLink.create(
        config_for(node("alice")),
        responder_config,  # type: ignore[arg-type]
        clock=clock,
        validated=False,
    )
    link.listener = listener
    link.addr = addr
    return link


def test_valid_cookie_flood_from_one_host_is_held_to_its_source_budget() -> None:
    """Row 5: 400 INITs/s with valid cookies from one host (8 ports); 5 s of it."""
    responder_config, key = _responder_config()
    clock = Clock()
    listener = HandshakeListener(responder_config, clock.now)  # type: ignore[arg-type]
    attacker_addrs = [_addr(n, ip=0x0C000001) for n in range(8)]
    source_of = {a: a[:4] for a in attacker_addrs}  # the source is the IP address
    flooder = _Flooder(listener, attacker_addrs, clock.now)
    start = clock.now
    genuine_at = start + 2.5
    link: HandshakeLink | None = None
    while clock.now - start < 5.0:
        flooder.send(clock.now, source_of)
        if link is None and clock.now >= genuine_at:
            link = _genuine_link(listener, responder_config, clock, _addr(1, ip=0x0B000001))
            link.transfer_to_responder()  # INIT: cookie replies
            link.transfer_to_initiator()
            link.transfer_to_responder()  # INIT with the cookie: a responder at once
            assert link.responder is not None
        clock.advance(1 / 400)
    elapsed = clock.now - start
    attacker_signatures = key.signatures - 1
    # The first UNDER_LOAD_THRESHOLD responders came before the listener was under load.
    bound = UNDER_LOAD_THRESHOLD + SOURCE_RESPONDER_BURST + SOURCE_RESPONDER_RATE * elapsed
    assert flooder.sent >= 1990
    assert attacker_signatures <= bound
    assert listener.dropped["source_rate_limited"] >= flooder.sent - bound - 1
    assert link is not None
    link.run()
    assert link.completed() is not None


def test_valid_cookie_flood_from_many_hosts_is_held_to_the_global_budget() -> None:
    """400 INITs/s with valid cookies from 400 hosts: each under its own limit."""
    responder_config, key = _responder_config()
    clock = Clock()
    listener = HandshakeListener(responder_config, clock.now)  # type: ignore[arg-type]
    attacker_addrs = [_addr(n, ip=0x0D000000 + (n << 8)) for n in range(400)]
    source_of = {a: a[:4] for a in attacker_addrs}
    flooder = _Flooder(listener, attacker_addrs, clock.now)
    start = clock.now
    while clock.now - start < 3.0:
        flooder.send(clock.now, source_of)
        clock.advance(1 / 400)
    elapsed = clock.now - start
    assert flooder.sent >= 1190
    assert key.signatures <= RESPONDER_BURST + RESPONDER_RATE * elapsed + 1
    assert listener.dropped["over_budget"] > 0
    assert listener.responders <= MAX_RESPONDERS


def test_responders_are_bounded_and_the_oldest_is_evicted() -> None:
    clock = Clock()
    listener = HandshakeListener(
        config_for(node("bob")), clock.now, max_responders=3, responder_burst=10
    )
    made: list[ResponderHandshake] = []
    for n in range(5):
        addr = _addr(n)
        cookie = _cookie(listener, addr, 1, clock.now)
        for d in fragment_message(_INIT, _init(1), sender_index=1, receiver_index=0, cookie=cookie):
            responder = listener.receive_datagram(d, addr, clock.now)
            if responder is not None:
                made.append(responder)
    assert len(made) == 5
    assert listener.responders == 3
    evicted = listener.evicted_responders()
    assert evicted == made[:2]
    assert all(r.failed for r in evicted)
    assert listener.evicted_responders() == []
    assert listener.stats["responders_evicted"] == 2


def test_a_different_init_from_the_same_address_and_index_replaces_the_responder() -> None:
    clock = Clock()
    listener = HandshakeListener(config_for(node("bob")), clock.now)
    addr = _addr(1)
    cookie = _cookie(listener, addr, 5, clock.now)
    responders = []
    for _ in range(2):
        for d in fragment_message(_INIT, _init(5), sender_index=5, receiver_index=0, cookie=cookie):
            responder = listener.receive_datagram(d, addr, clock.now)
        assert responder is not None
        responders.append(responder)
    first, second = responders
    assert first is not second
    assert listener.evicted_responders() == [first]
    assert first.failed
    assert second.state is HandshakeState.WAIT_FINISH
    assert listener.responders == 1


def test_token_bucket_and_source_table() -> None:
    bucket = TokenBucket(2.0, 3, 0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)  # one token per 0.5 s
    bucket.give_back()
    assert bucket.available(0.5) == pytest.approx(1.0)
    assert bucket.available(100.0) == pytest.approx(3.0)  # never above the burst
    table = SourceLimiter(1.0, 1, max_sources=2)
    assert table.take(b"a", 0.0)
    assert not table.take(b"a", 0.0)
    assert table.take(b"b", 0.0)
    assert table.take(b"c", 0.0)  # the table is full: "a", least recently used, goes
    assert len(table) == 2
    assert table.evictions == 1
    assert table.take(b"a", 0.0)  # forgotten: a full bucket again
    with pytest.raises(LocalProtocolError):
        TokenBucket(0.0, 1, 0.0)
    with pytest.raises(LocalProtocolError):
        SourceLimiter(1.0, 1, max_sources=0)
    with pytest.raises(LocalProtocolError):
        HandshakeListener(config_for(node("bob")), 0.0, max_responders=0)


def test_a_known_address_keeps_its_own_budget_when_strangers_spent_the_shared_one() -> None:
    clock = Clock()
    responder_config, key = _responder_config()
    listener = HandshakeListener(responder_config, clock.now)  # type: ignore[arg-type]
    strangers = [_addr(n, ip=0x0D000000 + (n << 8)) for n in range(RESPONDER_BURST + 10)]
    flooder = _Flooder(listener, strangers, clock.now)
    for _ in range(len(strangers) * 2):
        flooder.send(clock.now, {a: a[:4] for a in strangers})
    assert listener.dropped["over_budget"] > 0
    spent = key.signatures
    assert spent == RESPONDER_BURST
    # An unknown genuine initiator gets nothing now ...
    stranger = _genuine_link(listener, responder_config, clock, _addr(1, ip=0x0B000001))
    stranger.exchange_cookie()
    stranger.transfer_to_responder()
    assert stranger.responder is None
    # ... a known one (the owner vouches for its address) gets a responder at once.
    link = _genuine_link(listener, responder_config, clock, _addr(2, ip=0x0B000002))
    link.exchange_cookie()
    for d in link.from_initiator():
        responder = listener.receive_datagram(d, link.addr, clock.now, known=True)
        if responder is not None:
            link.responders[responder.local_index] = responder
    link.run()
    assert link.completed() is not None
    assert listener.stats["known_responders"] == 1
    assert key.signatures == spent + 1
