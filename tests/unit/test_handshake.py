"""The handshake machines, driven in memory with a hand-advanced clock."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.pqfixtures import make_ca, make_node_credential
from tests.protocol_helpers import (
    ADDR,
    KEEPALIVE,
    Clock,
    HandshakeLink,
    Network,
    config_for,
    node,
)
from x0tta6bl4.crypto.suite import SigningKey
from x0tta6bl4.protocol.constants import (
    HANDSHAKE_GIVE_UP_AFTER,
    INITIAL_RETRANSMIT_TIMEOUT,
    MessageType,
)
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.events import (
    FinishRetransmitted,
    HandshakeCompleted,
    HandshakeErrorCode,
    HandshakeFailed,
)
from x0tta6bl4.protocol.fragments import fragment_message
from x0tta6bl4.protocol.handshake import (
    Credential,
    HandshakeState,
    InitiatorHandshake,
    ResponderHandshake,
)
from x0tta6bl4.protocol.listener import HandshakeListener


def _link(**kwargs: object) -> HandshakeLink:
    return HandshakeLink.create(config_for(node("alice")), config_for(node("bob")), **kwargs)  # type: ignore[arg-type]


def _assert_matching(link: HandshakeLink) -> tuple[HandshakeCompleted, HandshakeCompleted]:
    done = link.completed()
    assert done is not None, f"not completed: {link.failures()}"
    ini, res = done
    assert ini.keys.send_key == res.keys.recv_key
    assert ini.keys.recv_key == res.keys.send_key
    assert ini.keys.send_key != ini.keys.recv_key
    assert ini.keys.local_index == res.keys.remote_index
    assert ini.keys.remote_index == res.keys.local_index
    assert ini.keys.handshake_hash == res.keys.handshake_hash
    assert ini.keys.is_initiator
    assert not res.keys.is_initiator
    return ini, res


def test_both_sides_derive_identical_transport_keys() -> None:
    link = _link()
    link.run()
    ini, res = _assert_matching(link)
    assert ini.peer.node_id == "bob"
    assert res.peer.node_id == "alice"
    assert ini.peer.spiffe_id == node("bob").spiffe_id
    assert link.initiator.state is HandshakeState.CONFIRMED
    assert link.initiator.peer == ini.peer
    assert link.failures() == []
    assert link.initiator.dropped == {}
    assert link.initiator.retransmissions == 0


def test_two_handshakes_give_independent_keys() -> None:
    first, second = _link(), _link()
    first.run()
    second.run()
    a, _ = _assert_matching(first)
    b, _ = _assert_matching(second)
    assert a.keys.send_key != b.keys.send_key
    assert a.keys.handshake_hash != b.keys.handshake_hash


def test_message_flow_step_by_step() -> None:
    link = _link()
    init = link.from_initiator()
    assert [d[0] for d in init] == [MessageType.HANDSHAKE_INIT] * 2
    assert all(len(d) <= 1200 for d in init)
    for d in init:
        link.deliver_to_responder(d)
    responder = link.responder
    assert responder is not None
    assert responder.state is HandshakeState.WAIT_FINISH
    resp = responder.datagrams_to_send()
    assert {d[0] for d in resp} == {MessageType.HANDSHAKE_RESP}
    assert all(len(d) <= 1200 for d in resp)
    for d in resp:
        link.deliver_to_initiator(d)
    assert link.initiator.state is HandshakeState.WAIT_CONFIRM
    event = link.initiator.next_event()
    assert isinstance(event, HandshakeCompleted)
    finish = link.from_initiator()
    assert {d[0] for d in finish} == {MessageType.HANDSHAKE_FINISH}
    for d in finish:
        link.deliver_to_responder(d)
    assert responder.state is HandshakeState.COMPLETED
    assert isinstance(responder.next_event(), HandshakeCompleted)
    assert responder.next_event() is None
    # The initiator keeps FINISH on its retransmission timer until confirmed.
    assert link.initiator.get_timer() == pytest.approx(link.clock.now + INITIAL_RETRANSMIT_TIMEOUT)
    link.initiator.confirm(link.clock.now)
    link.initiator.confirm(link.clock.now)  # idempotent
    assert link.initiator.done
    assert link.initiator.get_timer() is None


def test_mitm_with_certificate_from_another_ca_fails() -> None:
    mallory_ca = make_ca(name="mallory")
    mallory = make_node_credential(mallory_ca, "bob")
    # Mallory answers in Bob's place with a certificate her own CA issued.
    link = HandshakeLink.create(config_for(node("alice")), config_for(mallory))
    link.run()
    assert link.completed() is None
    failures = link.failures()
    assert failures[0] == HandshakeFailed(
        HandshakeErrorCode.CERTIFICATE_REJECTED, "certificate_rejected"
    )
    assert link.initiator.failed
    assert link.initiator.datagrams_to_send() == []
    assert link.initiator.get_timer() is None


def test_responder_rejects_initiator_from_another_ca() -> None:
    mallory = make_node_credential(make_ca(name="mallory"), "alice")
    # Mallory trusts the real CA (so she accepts Bob) but her own certificate is foreign.
    link = HandshakeLink.create(config_for(mallory, trusted=make_ca()), config_for(node("bob")))
    link.run()
    responder = link.responder
    assert responder is not None
    assert responder.failed
    assert link.responder_events == [
        HandshakeFailed(HandshakeErrorCode.CERTIFICATE_REJECTED, "certificate_rejected")
    ]
    # The initiator sent FINISH and is never confirmed: its owner drops the keys.
    assert [type(e) for e in link.initiator_events] == [HandshakeCompleted, HandshakeFailed]
    assert responder.dropped["closed"] > 0


def test_key_not_matching_certificate_is_a_bad_signature() -> None:
    bob = node("bob")
    # Bob's certificate, but signed with another key: the signature cannot verify.
    impostor = SigningKey.generate()
    config = config_for(bob)
    forged = type(config)(
        credential=Credential.__new__(Credential),
        verify_peer=config.verify_peer,
        authorize=config.authorize,
    )
    object.__setattr__(forged.credential, "cert_der", bob.cert_der)
    object.__setattr__(forged.credential, "signing_key", impostor)
    link = HandshakeLink.create(config_for(node("alice")), forged)
    link.run()
    assert link.initiator_events == [
        HandshakeFailed(HandshakeErrorCode.BAD_SIGNATURE, "bad_signature")
    ]
    assert link.completed() is None


def test_credential_checks_key_belongs_to_certificate() -> None:
    with pytest.raises(LocalProtocolError):
        Credential(cert_der=node("bob").cert_der, signing_key=node("alice").key)


@pytest.mark.parametrize("refusing_side", ["initiator", "responder"])
def test_authorization_callback_can_refuse(refusing_side: str) -> None:
    seen: list[str] = []

    def refuse(peer: object) -> bool:
        seen.append(peer.spiffe_id)  # type: ignore[attr-defined]
        return False

    alice, bob = node("alice"), node("bob")
    ini = config_for(alice, authorize=refuse if refusing_side == "initiator" else None)
    res = config_for(bob, authorize=refuse if refusing_side == "responder" else None)
    link = HandshakeLink.create(ini, res)
    link.run()
    assert link.completed() is None
    refuser = link.initiator_events if refusing_side == "initiator" else link.responder_events
    assert refuser[-1] == HandshakeFailed(HandshakeErrorCode.UNAUTHORIZED, "unauthorized")
    assert seen == [bob.spiffe_id if refusing_side == "initiator" else alice.spiffe_id]


def test_authorization_sees_the_spiffe_id() -> None:
    allowed = {node("alice").spiffe_id}
    other = make_node_credential(make_ca(), "carol", spiffe_id="spiffe://x0tta6bl4.mesh/ns/x/sa/y")
    ok = HandshakeLink.create(
        config_for(node("alice")),
        config_for(node("bob"), authorize=lambda p: p.spiffe_id in allowed),
    )
    ok.run()
    _assert_matching(ok)
    refused = HandshakeLink.create(
        config_for(other), config_for(node("bob"), authorize=lambda p: p.spiffe_id in allowed)
    )
    refused.run()
    assert refused.responder_events[-1].error_code is HandshakeErrorCode.UNAUTHORIZED  # type: ignore[union-attr]


def test_expected_peer_mismatch_fails_initiator() -> None:
    link = _link(expected_node_id="carol")
    link.run()
    assert link.failures()[0].error_code is HandshakeErrorCode.UNEXPECTED_PEER
    good = _link(expected_node_id="bob")
    good.run()
    _assert_matching(good)


@pytest.mark.parametrize("seed", range(6))
def test_completes_under_loss_reordering_and_duplication(seed: int) -> None:
    link = _link()
    network = Network(random.Random(seed), loss=0.3, duplicate=0.2, reorder=True)
    link.run(network)
    _assert_matching(link)
    assert network.lost > 0
    assert link.clock.now - 1000.0 < HANDSHAKE_GIVE_UP_AFTER + 1


def test_loss_makes_retransmissions() -> None:
    link = _link()
    link.drop_from_initiator()  # INIT lost
    assert link.next_timer() == pytest.approx(link.clock.now + INITIAL_RETRANSMIT_TIMEOUT)
    link.advance_to_next_timer()
    assert link.initiator.retransmissions == 1
    link.transfer_to_responder()
    link.drop_from_responder()  # RESP lost: the responder has no timer of its own ...
    responder = link.responder
    assert responder is not None
    assert responder.get_timer() == pytest.approx(link.clock.now + HANDSHAKE_GIVE_UP_AFTER)
    link.advance_to_next_timer()  # ... the initiator retransmits INIT, which brings RESP again
    assert link.initiator.retransmissions == 2
    link.transfer_to_responder()
    assert responder.retransmissions == 1
    link.run()
    _assert_matching(link)


def test_backoff_doubles_and_gives_up() -> None:
    link = _link()
    sent_at: list[float] = []
    while link.initiator.get_timer() is not None:
        if link.drop_from_initiator():
            sent_at.append(link.clock.now)
        link.clock.now = link.initiator.get_timer()  # type: ignore[assignment]
        link.initiator.handle_timer(link.clock.now)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert gaps[:4] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert max(gaps) == pytest.approx(2.0)
    assert link.initiator.next_event() == HandshakeFailed(HandshakeErrorCode.TIMEOUT, "timeout")
    assert link.clock.now == pytest.approx(1000.0 + HANDSHAKE_GIVE_UP_AFTER)
    assert link.initiator.failed


def test_unconfirmed_initiator_fails_with_not_confirmed() -> None:
    link = _link()
    link.roundtrip()
    link.transfer_to_responder()  # FINISH arrives; the responder completes
    link.drop_from_responder()  # ... but every keepalive is lost
    while link.advance_to_next_timer():
        link.transfer_to_responder()
        link.drop_from_responder()
    kinds = [type(e) for e in link.initiator_events]
    assert kinds == [HandshakeCompleted, HandshakeFailed]
    failed = link.initiator_events[-1]
    assert isinstance(failed, HandshakeFailed)
    assert failed.error_code is HandshakeErrorCode.NOT_CONFIRMED
    # The responder saw the retransmitted FINISH and asked its owner for keepalives.
    assert any(isinstance(e, FinishRetransmitted) for e in link.responder_events)
    assert [type(e) for e in link.responder_events].count(HandshakeCompleted) == 1


def test_duplicate_finish_after_completion_is_idempotent() -> None:
    link = _link()
    link.roundtrip()
    finish = link.from_initiator()
    for d in finish:
        link.deliver_to_responder(d)
    responder = link.responder
    assert responder is not None
    assert isinstance(responder.next_event(), HandshakeCompleted)
    link.clock.advance(0.5)
    for d in finish:
        link.deliver_to_responder(d)
    assert responder.next_event() == FinishRetransmitted(responder.local_index)
    assert responder.next_event() is None  # one request per FINISH, no new keys
    assert responder.state is HandshakeState.COMPLETED
    # Compared as a whole message: its fragments are neither drops nor extra requests.
    assert responder.dropped == {}
    # Cut differently (smaller datagrams), the same FINISH is still the same message.
    link.clock.advance(0.5)
    message = bytearray()
    for d in finish:
        message += d[18:]
    recut = fragment_message(
        MessageType.HANDSHAKE_FINISH,
        bytes(message),
        sender_index=link.initiator.local_index,
        receiver_index=responder.local_index,
        max_datagram_size=700,
    )
    assert len(recut) > len(finish)
    for d in reversed(recut):
        link.deliver_to_responder(d)
    assert responder.next_event() == FinishRetransmitted(responder.local_index)
    assert responder.next_event() is None
    assert responder.dropped == {}


def test_confirm_misuse_is_a_local_error() -> None:
    link = _link()
    with pytest.raises(LocalProtocolError):
        link.initiator.confirm(link.clock.now)
    link.initiator.abort()
    assert link.initiator.next_event() == HandshakeFailed(HandshakeErrorCode.ABORTED, "aborted")
    with pytest.raises(LocalProtocolError):
        link.initiator.confirm(link.clock.now)


def test_replayed_init_gives_the_attacker_nothing() -> None:
    link = _link()
    captured_init = link.from_initiator()
    for d in captured_init:
        link.deliver_to_responder(d)
    link.run()
    _assert_matching(link)
    # Much later, after the real responder is gone, an attacker replays INIT.
    link.clock.advance(60)
    link.fire_timers()
    assert link.listener.in_progress == 0
    for d in captured_init:
        link.deliver_to_responder(d)
    replay = link.responder
    assert replay is not None
    assert replay.state is HandshakeState.WAIT_FINISH
    resp_to_attacker = replay.datagrams_to_send()
    assert resp_to_attacker  # costs the responder a RESP ...
    # ... but without the initiator's ephemeral keys nobody can produce FINISH. Replaying
    # the old FINISH does not decrypt under the new handshake keys.
    link.initiator_events.clear()
    while replay.get_timer() is not None:
        link.clock.now = replay.get_timer()  # type: ignore[assignment]
        replay.handle_timer(link.clock.now)
    events = []
    while (e := replay.next_event()) is not None:
        events.append(e)
    assert events == [HandshakeFailed(HandshakeErrorCode.TIMEOUT, "timeout")]


def test_replayed_finish_is_rejected() -> None:
    link = _link()
    init = link.from_initiator()
    for d in init:
        link.deliver_to_responder(d)
    link.transfer_to_initiator()
    old_finish = link.from_initiator()
    for d in old_finish:
        link.deliver_to_responder(d)
    # A second handshake between the same nodes (a rekey): the old FINISH is replayed into it.
    link2 = _link()
    link2.responders = {}
    for d in link2.from_initiator():
        link2.deliver_to_responder(d)
    responder2 = link2.responder
    assert responder2 is not None
    forged = [
        d[:1] + d[1:5] + responder2.local_index.to_bytes(4, "big") + d[9:] for d in old_finish
    ]
    for d in forged:
        responder2.receive_datagram(d, link2.clock.now)
    assert responder2.state is HandshakeState.WAIT_FINISH
    assert sum(responder2.dropped.values()) >= 1
    assert responder2.next_event() is None
    # And a FINISH that differs from the accepted one is not taken as a retransmission.
    first = link.responder
    assert first is not None
    assert isinstance(first.next_event(), HandshakeCompleted)
    link.clock.advance(1)
    tampered = old_finish[-1][:-1] + bytes([old_finish[-1][-1] ^ 1])
    first.receive_datagram(tampered, link.clock.now)  # one fragment: not a whole message yet
    assert sum(first.dropped.values()) == 0
    for d in old_finish[:-1]:
        first.receive_datagram(d, link.clock.now)  # the whole message differs: rejected
    assert first.dropped == {"replayed_finish": 1}
    assert first.next_event() is None
    for d in old_finish:  # the genuine retransmission is still answered
        first.receive_datagram(d, link.clock.now)
    assert first.next_event() == FinishRetransmitted(first.local_index)


@pytest.mark.parametrize(("offset", "reason"), [(0, "bad_version"), (1, "bad_suite")])
def test_version_and_suite_tampering_is_detected(offset: int, reason: str) -> None:
    link = _link()
    init = link.from_initiator()
    header = 18 + 16  # after the header and the cookie: the message's version and suite
    tampered = bytearray(init[0])
    tampered[header + offset] ^= 0x02
    link.deliver_to_responder(bytes(tampered))
    link.deliver_to_responder(init[1])
    assert link.responder is None
    assert link.listener.dropped[reason] == 1
    # The genuine retransmission still completes the handshake.
    link.run()
    _assert_matching(link)


def test_resp_version_tampering_is_detected() -> None:
    link = _link()
    link.transfer_to_responder()
    resp = link.from_responder()
    first = bytearray(resp[0])
    first[18] ^= 0x01
    link.deliver_to_initiator(bytes(first))
    for d in resp[1:]:
        link.deliver_to_initiator(d)
    assert link.initiator.dropped["bad_version"] == 1
    assert link.initiator.state is HandshakeState.WAIT_RESP
    link.run()
    _assert_matching(link)


def test_misaddressed_and_garbage_datagrams_are_counted_not_fatal() -> None:
    link = _link()
    link.initiator.receive_datagram(b"", link.clock.now)
    link.initiator.receive_datagram(b"\x02" + bytes(40), link.clock.now)
    link.initiator.receive_datagram(b"\x05" + bytes(20), link.clock.now)
    link.initiator.receive_datagram(bytes(range(200)), link.clock.now)
    assert sum(link.initiator.dropped.values()) == 4
    assert not link.initiator.failed
    link.run()
    _assert_matching(link)


def test_responder_constructor_rejects_bad_init() -> None:
    config = config_for(node("bob"))
    with pytest.raises(Exception) as info:
        ResponderHandshake(config, b"\x01" * 10, 0.0)
    assert type(info.value).__name__ == "RemoteProtocolError"


def test_invalid_local_index_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        InitiatorHandshake(config_for(node("alice")), 0.0, local_index=0)
    with pytest.raises(LocalProtocolError):
        InitiatorHandshake(config_for(node("alice")), 0.0, local_index=2**32)


def test_listener_routes_init_retransmission_to_existing_responder() -> None:
    link = _link()
    init = link.from_initiator()
    for d in init:
        link.deliver_to_responder(d)
    responder = link.responder
    assert responder is not None
    first_resp = responder.datagrams_to_send()
    link.clock.advance(0.2)
    for d in init:
        link.deliver_to_responder(d)
    assert len(link.responders) == 1
    assert link.listener.stats["init_retransmissions"] == 2
    assert responder.datagrams_to_send() == first_resp  # re-sent once, not per fragment
    assert responder.retransmissions == 1


def test_listener_rejects_non_init() -> None:
    listener = HandshakeListener(config_for(node("bob")), 0.0)
    assert listener.receive_datagram(KEEPALIVE + bytes(30), ADDR, 0.0) is None
    assert listener.receive_datagram(b"", ADDR, 0.0) is None
    assert sum(listener.dropped.values()) == 2
    with pytest.raises(LocalProtocolError):
        listener.receive_datagram(b"", bytes(256), 0.0)


def test_handshake_clock_is_only_what_we_pass() -> None:
    clock = Clock(start=-5000.0)  # any monotonic origin works
    link = HandshakeLink.create(config_for(node("alice")), config_for(node("bob")), clock=clock)
    link.run()
    _assert_matching(link)
