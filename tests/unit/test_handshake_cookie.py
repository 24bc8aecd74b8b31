"""Address validation: the responder signs and sends nothing big before a cookie is echoed."""

from __future__ import annotations

import pytest

from tests.protocol_helpers import (
    ADDR,
    CountingSigningKey,
    HandshakeLink,
    config_for,
    counting_config_for,
    node,
)
from x0tta6bl4.protocol.constants import COOKIE_REPLY_SIZE, COOKIE_ROTATION_INTERVAL, MessageType
from x0tta6bl4.protocol.cookie import CookieJar
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.events import HandshakeCompleted
from x0tta6bl4.protocol.handshake import HandshakeState
from x0tta6bl4.protocol.listener import HandshakeListener
from x0tta6bl4.protocol.messages import CookieReply


def _fresh_link() -> tuple[HandshakeLink, CountingSigningKey]:
    responder_config, key = counting_config_for(node("bob"))
    link = HandshakeLink.create(config_for(node("alice")), responder_config, validated=False)
    return link, key


def test_unvalidated_init_gets_a_stateless_cookie_reply_and_nothing_is_signed() -> None:
    link, key = _fresh_link()
    assert not link.listener.under_load  # address validation does not wait for load
    init = link.from_initiator()
    for d in init:
        link.deliver_to_responder(d)
    assert link.responder is None
    assert key.signatures == 0
    assert link.listener.stats["cookie_replies"] == len(init)
    assert link.listener.stats["responders"] == 0
    assert link.listener.get_timer() is None  # nothing is being reassembled
    assert link.listener.pending == 0
    replies = link.listener.datagrams_to_send()
    assert [a for _, a in replies] == [ADDR] * len(init)
    for reply, _ in replies:
        assert len(reply) == COOKIE_REPLY_SIZE < min(len(d) for d in init)  # no amplification
        assert reply[0] == MessageType.COOKIE_REPLY
        assert CookieReply.parse(reply).receiver_index == link.initiator.local_index


def test_cookie_echo_unlocks_the_handshake() -> None:
    link, key = _fresh_link()
    link.transfer_to_responder()
    link.transfer_to_initiator()  # cookie replies: the initiator re-sends INIT at once
    assert link.initiator.dropped == {}  # the second reply carries the same cookie: ignored
    assert link.initiator.retransmissions == 0  # an echo is not a retransmission
    echoed = link.from_initiator()
    assert [d[0] for d in echoed] == [MessageType.HANDSHAKE_INIT] * 2
    assert all(d[17] == 16 for d in echoed)  # cookie length in every fragment header
    assert all(len(d) <= 1200 for d in echoed)
    for d in echoed:
        link.deliver_to_responder(d)
    assert link.responder is not None
    assert key.signatures == 1
    link.run()
    done = link.completed()
    assert done is not None
    assert done[0].keys.send_key == done[1].keys.recv_key
    assert key.signatures == 1


def test_cookie_is_bound_to_the_address() -> None:
    link, key = _fresh_link()
    link.transfer_to_responder()
    link.transfer_to_initiator()
    echoed = link.from_initiator()
    for d in echoed:  # the same INIT with the cookie, but from another address
        assert link.listener.receive_datagram(d, b"\x0a\x00\x00\x02\xb7\x98", 0.0) is None
    assert key.signatures == 0
    assert link.listener.stats["cookie_replies"] == 4


def test_init_again_without_the_cookie_does_not_bring_resp() -> None:
    link, _ = _fresh_link()
    first = link.from_initiator()  # INIT without a cookie
    for d in first:
        link.deliver_to_responder(d)
    link.transfer_to_initiator()
    link.transfer_to_responder()  # INIT with the cookie: a responder, RESP queued
    responder = link.responder
    assert responder is not None
    resp = responder.datagrams_to_send()
    assert resp
    link.clock.advance(1.0)
    for d in first:  # a copy of the cookie-less INIT (spoofed, or late): cookie reply only
        assert link.listener.receive_datagram(d, ADDR, link.clock.now) is None
    assert responder.datagrams_to_send() == []
    assert responder.retransmissions == 0
    assert link.listener.stats["cookie_replies"] == 4


def test_stray_and_early_cookie_replies_are_dropped() -> None:
    link, _ = _fresh_link()
    link.transfer_to_responder()
    replies = link.from_responder()
    link.deliver_to_initiator(replies[0])
    link.deliver_to_initiator(replies[1])  # the same cookie again: expected, not a drop
    assert link.initiator.dropped == {}
    assert len(link.from_initiator()) == 2  # INIT re-sent once
    stray = CookieReply(receiver_index=link.initiator.local_index ^ 1, cookie=bytes(16))
    link.deliver_to_initiator(stray.encode())
    assert link.initiator.dropped["unknown_index"] == 1
    other = CookieReply(receiver_index=link.initiator.local_index, cookie=b"\x01" * 16)
    link.deliver_to_initiator(other.encode())  # a new cookie moments later
    assert link.initiator.dropped["rate_limited"] == 1
    assert link.initiator.state is HandshakeState.WAIT_RESP


def test_cookie_reply_after_resp_is_dropped() -> None:
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")))
    link.roundtrip()
    assert isinstance(link.initiator.next_event(), HandshakeCompleted)
    reply = CookieReply(receiver_index=link.initiator.local_index, cookie=b"\x02" * 16)
    link.deliver_to_initiator(reply.encode())
    assert link.initiator.dropped["unexpected_message"] == 1


def test_cookie_jar_rotation_accepts_previous_secret_only() -> None:
    jar = CookieJar(0.0)
    cookie = jar.make(ADDR, 7, 1.0)
    assert jar.check(cookie, ADDR, 7, 2.0)
    assert not jar.check(cookie, ADDR, 8, 2.0)
    assert not jar.check(cookie, ADDR + b"x", 7, 2.0)
    assert not jar.check(cookie[:-1], ADDR, 7, 2.0)
    assert jar.check(cookie, ADDR, 7, COOKIE_ROTATION_INTERVAL + 1)  # previous secret
    assert jar.next_rotation() == pytest.approx(2 * COOKIE_ROTATION_INTERVAL)
    assert not jar.check(cookie, ADDR, 7, 2 * COOKIE_ROTATION_INTERVAL + 1)  # two rotations


def test_cookie_jar_long_idle_forgets_both_secrets() -> None:
    jar = CookieJar(0.0, rotation_interval=10.0)
    cookie = jar.make(ADDR, 1, 0.0)
    assert not jar.check(cookie, ADDR, 1, 25.0)
    assert jar.next_rotation() == pytest.approx(30.0)  # buckets stay aligned


def test_cookie_jar_rejects_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        CookieJar(0.0, rotation_interval=0)
    with pytest.raises(LocalProtocolError):
        CookieJar(0.0).make(bytes(256), 1, 0.0)
    assert "secret" not in repr(CookieJar(0.0))


def test_listener_bounds_are_validated() -> None:
    with pytest.raises(LocalProtocolError):
        HandshakeListener(config_for(node("bob")), 0.0, max_pending_inits=0)
