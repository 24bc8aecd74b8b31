"""Fragmentation and bounded reassembly of handshake messages."""

from __future__ import annotations

import random

import pytest

from x0tta6bl4.protocol.constants import (
    FRAGMENT_HEADER_SIZE,
    MAX_DATAGRAM_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MessageType,
)
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.fragments import Reassembler, fragment_message, parse_fragment

RESP = MessageType.HANDSHAKE_RESP


def _message(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _frags(message: bytes, **kwargs: int) -> list[bytes]:
    return fragment_message(RESP, message, sender_index=7, receiver_index=9, **kwargs)


def _reason(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> str:
    return exc.value.reason


def test_fragments_fit_a_datagram_and_reassemble() -> None:
    message = _message(10_000)
    datagrams = _frags(message)
    assert len(datagrams) == 9
    assert all(len(d) <= MAX_DATAGRAM_SIZE for d in datagrams)
    first = parse_fragment(datagrams[0])
    assert (first.msg_type, first.sender_index, first.receiver_index) == (RESP, 7, 9)
    assert (first.message_seq, first.total_length, first.offset) == (1, 10_000, 0)
    reassembler = Reassembler()
    results = [reassembler.add(parse_fragment(d), 0.0) for d in datagrams]
    assert results[:-1] == [None] * 8
    assert results[-1] == message
    assert len(reassembler) == 0


@pytest.mark.parametrize("seed", range(5))
def test_reordering_and_duplicates_are_tolerated(seed: int) -> None:
    rng = random.Random(seed)
    message = _message(7_000, seed)
    datagrams = _frags(message) * 2
    rng.shuffle(datagrams)
    reassembler = Reassembler()
    out = [r for d in datagrams if (r := reassembler.add(parse_fragment(d), 0.0)) is not None]
    # The message completes once; later duplicates start a fresh partial copy.
    assert out[0] == message


def test_differently_cut_overlapping_fragments_reassemble() -> None:
    message = _message(5_000)
    small = _frags(message, max_datagram_size=500)
    large = _frags(message, max_datagram_size=1200)
    reassembler = Reassembler()
    assert reassembler.add(parse_fragment(large[0]), 0.0) is None
    for d in small[1:]:
        result = reassembler.add(parse_fragment(d), 0.0)
    assert result == message


def test_single_fragment_message_needs_no_buffer() -> None:
    reassembler = Reassembler()
    [datagram] = _frags(b"short")
    assert reassembler.add(parse_fragment(datagram), 0.0) == b"short"
    assert len(reassembler) == 0


def test_inconsistent_overlap_is_rejected_and_the_partial_discarded() -> None:
    message = _message(3_000)
    datagrams = _frags(message)
    reassembler = Reassembler()
    reassembler.add(parse_fragment(datagrams[0]), 0.0)
    forged = bytearray(datagrams[0])
    forged[-1] ^= 0xFF
    with pytest.raises(RemoteProtocolError) as info:
        reassembler.add(parse_fragment(bytes(forged)), 0.0)
    assert _reason(info) == "fragment_mismatch"
    assert len(reassembler) == 0
    # A complete retransmission rebuilds it.
    results = [reassembler.add(parse_fragment(d), 0.0) for d in datagrams]
    assert results[-1] == message


def test_message_too_big_for_the_bound() -> None:
    reassembler = Reassembler(max_message_size=2_000)
    with pytest.raises(RemoteProtocolError) as info:
        reassembler.add(parse_fragment(_frags(_message(3_000))[0]), 0.0)
    assert _reason(info) == "message_too_large"
    assert len(reassembler) == 0


def test_too_many_partial_messages_evicts_the_oldest() -> None:
    reassembler = Reassembler(max_partials=2)
    firsts = {}
    for sender in (1, 2, 3):
        datagrams = fragment_message(
            RESP, _message(3_000, sender), sender_index=sender, receiver_index=9
        )
        firsts[sender] = datagrams
        reassembler.add(parse_fragment(datagrams[0]), float(sender))
    assert len(reassembler) == 2
    assert reassembler.evictions == 1
    # Sender 1's partial was the oldest and went; 2 and 3 still complete.
    for sender in (2, 3):
        results = [reassembler.add(parse_fragment(d), 4.0) for d in firsts[sender][1:]]
        assert results[-1] == _message(3_000, sender)
    assert reassembler.add(parse_fragment(firsts[1][1]), 4.0) is None  # starts over
    assert len(reassembler) == 1


def test_partials_expire_after_the_timeout_whatever_arrives() -> None:
    reassembler = Reassembler(timeout=3.0)
    datagrams = _frags(_message(4_000))
    reassembler.add(parse_fragment(datagrams[0]), 10.0)
    assert reassembler.next_deadline() == pytest.approx(13.0)
    reassembler.add(parse_fragment(datagrams[1]), 12.0)  # new bytes do not move the deadline
    assert reassembler.next_deadline() == pytest.approx(13.0)
    assert reassembler.expire(12.9) == 0
    assert reassembler.expire(13.0) == 1
    assert reassembler.next_deadline() is None
    # Expired partials free their slot for new messages; stale fragments start over.
    assert reassembler.add(parse_fragment(datagrams[2]), 14.0) is None
    assert len(reassembler) == 1


def test_tampered_header_starts_its_own_partial_instead_of_spoiling() -> None:
    message = _message(3_000)
    datagrams = _frags(message)
    forged = bytearray(datagrams[0])
    forged[1] ^= 0x80  # sender index
    reassembler = Reassembler()
    reassembler.add(parse_fragment(bytes(forged)), 0.0)
    results = [reassembler.add(parse_fragment(d), 0.0) for d in datagrams]
    assert results[-1] == message


def test_init_carries_the_cookie_in_every_fragment() -> None:
    message = _message(1_254)
    cookie = b"C" * 16
    datagrams = fragment_message(
        MessageType.HANDSHAKE_INIT, message, sender_index=5, receiver_index=0, cookie=cookie
    )
    assert len(datagrams) == 2
    assert all(len(d) <= MAX_DATAGRAM_SIZE for d in datagrams)
    assert [parse_fragment(d).cookie for d in datagrams] == [cookie, cookie]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: bytes([4]) + d[1:], "bad_type"),
        (lambda d: bytes([9]) + d[1:], "bad_type"),
        (lambda d: d[:9] + b"\x00\x02" + d[11:], "bad_message_seq"),
        (lambda d: d[:11] + b"\x00\x00" + d[13:], "message_too_large"),
        (lambda d: d[:11] + b"\x40\x01" + d[13:], "message_too_large"),
        (lambda d: d[:15] + b"\x00\x05" + d[17:], "bad_length"),
        (lambda d: d[:-1], "bad_length"),
        (lambda d: d[:13] + b"\x0b\xb0" + d[15:], "bad_offset"),
        (lambda d: d[:17] + b"\x10" + d[18:], "bad_cookie_length"),
        (lambda d: d[:17] + b"\x03" + d[18:], "bad_cookie_length"),
        (lambda d: d[:5] + bytes(4) + d[9:], "bad_index"),
        (lambda d: d + bytes(MAX_DATAGRAM_SIZE), "datagram_too_large"),
    ],
)
def test_parse_fragment_rejects_malformed_headers(mutate: object, reason: str) -> None:
    datagram = _frags(_message(3_000))[0]
    with pytest.raises(RemoteProtocolError) as info:
        parse_fragment(mutate(datagram))  # type: ignore[operator]
    assert _reason(info) == reason


def test_init_with_nonzero_receiver_is_rejected() -> None:
    datagram = fragment_message(
        MessageType.HANDSHAKE_INIT, _message(100), sender_index=5, receiver_index=3
    )[0]
    with pytest.raises(RemoteProtocolError) as info:
        parse_fragment(datagram)
    assert _reason(info) == "bad_index"


def test_fragment_message_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        fragment_message(MessageType.TRANSPORT, b"x", sender_index=1, receiver_index=2)
    with pytest.raises(LocalProtocolError):
        _frags(b"")
    with pytest.raises(LocalProtocolError):
        _frags(bytes(MAX_HANDSHAKE_MESSAGE_SIZE + 1))
    with pytest.raises(LocalProtocolError):
        _frags(b"x", max_datagram_size=FRAGMENT_HEADER_SIZE)
    with pytest.raises(LocalProtocolError):
        fragment_message(RESP, b"x", sender_index=1, receiver_index=2, cookie=bytes(16))
    with pytest.raises(LocalProtocolError):
        Reassembler(max_partials=0)
