"""Link-layer fragmentation: split_frame and the bounded FrameReassembler."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.node.reassembly import (
    FRAGMENT_OVERHEAD,
    MAX_REASSEMBLED_SIZE,
    FrameReassembler,
    split_frame,
)
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.frames import Fragment, LinkStateAdvert, decode_frames, encode_frames

BUDGET = 1443  # the link session's largest plaintext (1472-byte datagrams)


def fragments(encoded: bytes, msg_id: int = 1, budget: int = BUDGET) -> list[Fragment]:
    out = []
    for piece in split_frame(encoded, msg_id, budget):
        assert len(piece) <= budget
        (frame,) = decode_frames(piece)
        assert isinstance(frame, Fragment)
        out.append(frame)
    return out


def test_an_advert_travels_in_packets_of_at_most_the_budget() -> None:
    encoded = encode_frames([LinkStateAdvert(bytes(range(256)) * 15)])  # 3843 bytes
    parts = fragments(encoded)
    assert len(parts) == 3
    assert max(len(p.data) for p in parts) == BUDGET - FRAGMENT_OVERHEAD
    reassembler = FrameReassembler()
    results = [reassembler.add(p, 0.0) for p in reversed(parts)]  # any order
    assert results[:-1] == [None, None]
    assert results[-1] == encoded
    assert decode_frames(encoded) == [LinkStateAdvert(bytes(range(256)) * 15)]
    assert len(reassembler) == 0
    assert not reassembler.dropped


def test_split_rejects_what_cannot_be_fragmented() -> None:
    with pytest.raises(LocalProtocolError, match=r"1\.\.65535"):
        split_frame(bytes(MAX_REASSEMBLED_SIZE + 1), 0, BUDGET)
    with pytest.raises(LocalProtocolError, match=r"1\.\.65535"):
        split_frame(b"", 0, BUDGET)
    with pytest.raises(LocalProtocolError, match="cannot hold"):
        split_frame(b"abc", 0, FRAGMENT_OVERHEAD)


def test_bounds_size_partials_and_timeout() -> None:
    r = FrameReassembler(max_size=1000, max_partials=2, timeout=2.0)
    assert r.add(Fragment(1, 1001, 0, b"x"), 0.0) is None
    assert r.dropped["fragment_too_large"] == 1
    for msg_id in (1, 2, 3):  # the third evicts the oldest
        assert r.add(Fragment(msg_id, 10, 0, b"abc"), 0.1 * msg_id) is None
    assert len(r) == 2
    assert r.dropped["fragment_evicted"] == 1
    assert r.add(Fragment(1, 10, 3, b"defghij"), 0.5) is None  # 1 was evicted: starts over
    assert r.dropped["fragment_evicted"] == 2
    assert r.add(Fragment(9, 4, 0, b"ab"), 5.0) is None  # the others expired
    assert r.dropped["fragment_expired"] == 2
    assert len(r) == 1
    assert r.add(Fragment(9, 4, 2, b"cd"), 5.1) == b"abcd"
    r.clear()
    assert len(r) == 0
    with pytest.raises(ValueError, match="max_partials"):
        FrameReassembler(max_partials=0)


@pytest.mark.parametrize(
    "second",
    [
        Fragment(1, 9, 4, b"efgh"),  # another total
        Fragment(1, 8, 0, b"abcd"),  # an offset seen before
        Fragment(1, 8, 3, b"xyzuv"),  # more bytes than total
    ],
)
def test_inconsistent_fragments_discard_the_message(second: Fragment) -> None:
    r = FrameReassembler()
    assert r.add(Fragment(1, 8, 0, b"abcd"), 0.0) is None
    assert r.add(second, 0.0) is None
    assert r.dropped["fragment_inconsistent"] == 1
    assert len(r) == 0


def test_pieces_that_do_not_tile_are_rejected() -> None:
    r = FrameReassembler()
    assert r.add(Fragment(1, 6, 0, b"ab"), 0.0) is None
    assert r.add(Fragment(1, 6, 1, b"cd"), 0.0) is None  # overlaps the first
    assert r.add(Fragment(1, 6, 4, b"ef"), 0.0) is None  # 6 bytes, a gap at 3
    assert r.dropped["fragment_inconsistent"] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=6000), st.integers(64, 1500), st.randoms())
def test_round_trip_in_any_order(payload: bytes, budget: int, rng: random.Random) -> None:
    parts = fragments(payload, 7, budget)
    rng.shuffle(parts)
    r = FrameReassembler()
    results = [r.add(p, 0.0) for p in parts]
    assert results[-1] == payload
    assert all(x is None for x in results[:-1])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(1, 40),
            st.integers(0, 40),
            st.binary(min_size=1, max_size=20),
        ),
        max_size=30,
    )
)
def test_fuzz_arbitrary_fragments_stay_bounded(items: list[tuple[int, int, int, bytes]]) -> None:
    r = FrameReassembler(max_size=32, max_partials=2)
    for i, (msg_id, total, offset, data) in enumerate(items):
        try:
            (frame,) = decode_frames(encode_frames([Fragment(msg_id, total, offset, data)]))
        except (LocalProtocolError, RemoteProtocolError):
            continue
        assert isinstance(frame, Fragment)
        out = r.add(frame, i * 0.1)
        assert out is None or len(out) == frame.total <= 32
        assert len(r) <= 2


def test_discarded_message_skips_its_other_fragments() -> None:
    parts = fragments(bytes(range(200)) * 20, msg_id=3)
    r = FrameReassembler(max_partials=2)
    assert r.add(parts[1], 0.0) is None  # out of order: held until discarded
    r.discard(3)
    assert len(r) == 0
    assert all(r.add(p, 0.0) is None for p in parts)
    assert r.skipped == len(parts)
    assert not r.dropped
    r.clear()
    assert r.add(parts[0], 0.0) is None  # after clear() the id is a new message again
    assert len(r) == 1
