"""Property-based fuzzing: every handshake parser and machine input raises only
:class:`RemoteProtocolError` on arbitrary bytes (or accepts them), never anything else."""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol_helpers import ADDR, config_for, node
from x0tta6bl4.protocol.constants import FRAGMENT_HEADER_SIZE, MAX_DATAGRAM_SIZE
from x0tta6bl4.protocol.errors import RemoteProtocolError
from x0tta6bl4.protocol.fragments import Reassembler, parse_fragment
from x0tta6bl4.protocol.handshake import InitiatorHandshake
from x0tta6bl4.protocol.listener import HandshakeListener
from x0tta6bl4.protocol.messages import (
    AuthPayload,
    CookieReply,
    FinishMessage,
    InitMessage,
    RespMessage,
)

PARSERS: dict[str, Callable[[bytes], object]] = {
    "fragment": parse_fragment,
    "init": InitMessage.parse,
    "resp": RespMessage.parse,
    "finish": FinishMessage.parse,
    "auth": AuthPayload.parse,
    "cookie_reply": CookieReply.parse,
}

_HEADER = struct.Struct("!BIIHHHHB")


def _parse_only_remote_errors(parser: Callable[[bytes], object], data: bytes) -> None:
    reason = "accepted"
    try:
        parser(data)
    except RemoteProtocolError as exc:
        reason = exc.reason
    assert reason.replace("_", "").isalpha()


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARSERS)), data=st.binary(max_size=12_000))
def test_parsers_raise_only_remote_errors(name: str, data: bytes) -> None:
    _parse_only_remote_errors(PARSERS[name], data)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(PARSERS)),
    prefix=st.sampled_from([b"\x01\x01", b"\x01\x01\x00\x00\x00\x01", b"\x05", b"\x02", b""]),
    data=st.binary(max_size=4_000),
)
def test_parsers_with_plausible_prefixes(name: str, prefix: bytes, data: bytes) -> None:
    _parse_only_remote_errors(PARSERS[name], prefix + data)


_fragment_headers = st.builds(
    lambda t, s, r, seq, total, off, ln, cl, body: (
        _HEADER.pack(t, s, r, seq, total, off, ln, cl) + body
    ),
    st.sampled_from([1, 2, 3]),
    st.sampled_from([0, 1, 7, 0xFFFFFFFF]),
    st.sampled_from([0, 1, 9, 0xFFFFFFFF]),
    st.integers(0, 3),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 16, 255]),
    st.binary(max_size=MAX_DATAGRAM_SIZE - FRAGMENT_HEADER_SIZE),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_fragment_headers, max_size=30), st.lists(st.floats(0, 20), max_size=30))
def test_reassembler_is_bounded_and_raises_only_remote_errors(
    datagrams: list[bytes], times: list[float]
) -> None:
    reassembler = Reassembler(max_message_size=4_096, max_partials=3, timeout=2.0)
    now = 0.0
    for i, datagram in enumerate(datagrams):
        now += times[i] if i < len(times) else 0.1
        try:
            message = reassembler.add(parse_fragment(datagram), now)
        except RemoteProtocolError:
            continue
        assert len(reassembler) <= 3
        if message is not None:
            assert 0 < len(message) <= 4_096


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(_fragment_headers, st.binary(max_size=1_300)), max_size=12))
def test_machines_never_raise_on_garbage(datagrams: list[bytes]) -> None:
    initiator = InitiatorHandshake(_ALICE, 0.0)
    listener = HandshakeListener(_BOB, 0.0)
    for datagram in datagrams:
        initiator.receive_datagram(datagram, 0.5)
        responder = listener.receive_datagram(datagram, ADDR, 0.5)
        assert responder is None  # garbage never creates a responder
    assert not initiator.failed
    initiator.handle_timer(100.0)
    listener.handle_timer(100.0)


_ALICE = config_for(node("alice"))
_BOB = config_for(node("bob"))
