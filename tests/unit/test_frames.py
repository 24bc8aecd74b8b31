"""Inner frame codec: round trips, strict length checks, unknown types, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.frames import (
    MAX_NODE_ID_SIZE,
    AppData,
    Fragment,
    Frame,
    FrameType,
    Heartbeat,
    LinkStateAdvert,
    LsdbAnnounce,
    LsdbRequest,
    LsdbSummary,
    Padding,
    Routed,
    decode_frames,
    encode_frames,
)

SAMPLE: list[Frame] = [
    Heartbeat(seq=7),
    Heartbeat(seq=0xFFFFFFFF, echo_seq=0xFFFFFFFF, echo_delay_us=0xFFFFFFFF, probe=True),
    Heartbeat(seq=0, echo_seq=0, echo_delay_us=0),
    LinkStateAdvert(b"\x01signed advert"),
    Routed(src="node-a", dst="nöde-ß", ttl=16, flags=0, payload=b"\x04end-to-end"),
    AppData(channel=443, payload=b"hello"),
    Padding(5),
    AppData(channel=0, payload=b""),
    Fragment(msg_id=0xFFFFFFFF, total=0xFFFF, offset=0xFFFE, data=b"z"),
    Fragment(msg_id=0, total=3, offset=0, data=b"abc"),
    LsdbSummary((("node-a", 2**64 - 1), ("nöde-ß", 0))),
    LsdbSummary(()),
    LsdbAnnounce((("node-a", 7),)),
    LsdbRequest((("node-a", 7), ("node-b", 0))),
]


def test_round_trip_of_every_frame_type_together() -> None:
    assert decode_frames(encode_frames(SAMPLE)) == SAMPLE


def test_empty_plaintext_is_no_frames() -> None:
    assert encode_frames([]) == b""
    assert decode_frames(b"") == []


def test_byte_layout() -> None:
    assert encode_frames([Heartbeat(1)]) == b"\x01\x00\x0d" + struct.pack("!IBII", 1, 0, 0, 0)
    assert encode_frames([Heartbeat(1, 2, 3)]) == b"\x01\x00\x0d" + struct.pack("!IBII", 1, 1, 2, 3)
    assert encode_frames([Heartbeat(1, probe=True)]) == b"\x01\x00\x0d" + struct.pack(
        "!IBII", 1, 2, 0, 0
    )
    assert encode_frames([AppData(0x1234, b"xy")]) == b"\x05\x00\x04\x12\x34xy"
    assert encode_frames([Routed("a", "bc", 3, 1, b"p")]) == (
        b"\x04\x00\x08" + b"\x01a" + b"\x02bc" + b"\x03\x01" + b"p"
    )
    assert encode_frames([Padding(2)]) == b"\x00\x00\x02\x00\x00"
    assert encode_frames([LinkStateAdvert(b"")]) == b"\x03\x00\x00"


def test_frame_type_values_are_the_specification() -> None:
    assert {t.name: t.value for t in FrameType} == {
        "PADDING": 0,
        "HEARTBEAT": 1,
        "LINK_STATE_ADVERT": 3,
        "ROUTED": 4,
        "APP_DATA": 5,
        "FRAGMENT": 6,
        "LSDB_SUMMARY": 7,
        "LSDB_ANNOUNCE": 8,
        "LSDB_REQUEST": 9,
    }


def test_every_truncation_inside_a_frame_is_rejected() -> None:
    data = encode_frames(SAMPLE)
    boundaries = {0}
    pos = 0
    for frame in SAMPLE:
        pos += len(encode_frames([frame]))
        boundaries.add(pos)
    for cut in range(len(data)):
        if cut in boundaries:
            assert len(decode_frames(data[:cut])) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(RemoteProtocolError) as info:
                decode_frames(data[:cut])
            assert info.value.reason == "bad_frame"


def test_length_running_past_the_end() -> None:
    with pytest.raises(RemoteProtocolError, match="runs past"):
        decode_frames(b"\x05\xff\xff\x00\x01")


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x0c" + bytes(12),  # heartbeat one byte short
        b"\x01\x00\x0e" + bytes(14),  # heartbeat one byte long
        b"\x05\x00\x01\x00",  # app data without a full channel
        b"\x00\x00\x02\x00\x01",  # padding that is not zero
        b"\x04\x00\x00",  # routed without anything
        b"\x04\x00\x05\x00\x01a\x01\x00",  # empty source id
        b"\x04\x00\x04\x01a\x01b",  # no ttl and flags
        b"\x04\x00\x05\x01a\x01b\x07",  # only ttl
        b"\x04\x00\x03\x05abc",  # source id longer than the body
        b"\x04\x00\x08\x01\xff\x01b\x01\x00x",  # source id is not UTF-8
        b"\x04\x00\x08\x01a\x01\xc3\x01\x00x",  # destination id is not UTF-8
        b"\x04\x00\x43" + b"\x41" + b"a" * 65 + b"\x01",  # source id of 65 bytes
        b"\x01",  # truncated header
        b"\x01\x00",  # truncated header
    ],
)
def test_malformed_frames(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames(data)
    assert info.value.reason == "bad_frame"


def test_longest_node_ids_round_trip() -> None:
    frame = Routed("a" * MAX_NODE_ID_SIZE, "é" * (MAX_NODE_ID_SIZE // 2), 255, 255, b"")
    assert decode_frames(encode_frames([frame])) == [frame]


def test_unknown_critical_type_rejects_the_plaintext() -> None:
    data = encode_frames([AppData(1, b"a")]) + b"\x0a\x00\x01z"
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames(data)
    assert info.value.reason == "unknown_frame"


def test_unknown_ignorable_type_is_skipped() -> None:
    data = b"\x86\x00\x03abc" + encode_frames([AppData(1, b"a")]) + b"\xff\x00\x00"
    assert decode_frames(data) == [AppData(1, b"a")]


def test_accepts_bytearray_and_memoryview() -> None:
    data = encode_frames(SAMPLE)
    assert decode_frames(bytearray(data)) == SAMPLE
    assert decode_frames(memoryview(data)) == SAMPLE


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (AppData(70_000, b""), "channel"),
        (AppData(-1, b""), "channel"),
        (Heartbeat(2**32), "seq"),
        (Heartbeat(0, 2**32), "echo seq"),
        (Heartbeat(0, -1), "echo seq"),
        (Heartbeat(0, 1, 2**32), "echo delay"),
        (Heartbeat(0, None, 5), "without an echo seq"),
        (Routed("", "b", 1, 0, b""), "source"),
        (Routed("a", "b" * 65, 1, 0, b""), "destination"),
        (Routed("a", "b", 256, 0, b""), "ttl"),
        (Routed("a", "b", 1, -1, b""), "flags"),
        (Padding(70_000), "padding"),
        (LsdbSummary((("a", 1), ("a", 2))), "twice"),
        (LsdbSummary((("", 1),)), "summary origin"),
        (LsdbSummary((("a", 2**64),)), "summary seq"),
        (Fragment(2**32, 5, 0, b"x"), "msg_id"),
        (Fragment(1, 2**16, 0, b"x"), "total"),
        (Fragment(1, 5, 0, b""), "non-empty"),
        (Fragment(1, 5, 4, b"xy"), "within total"),
        (Fragment(1, 5, -1, b"x"), "within total"),
        (LinkStateAdvert(bytes(70_000)), "u16"),
        (AppData(1, bytes(65_534)), "u16"),
    ],
)
def test_encoding_out_of_range_is_a_local_error(frame: Frame, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_frames([frame])


def test_encoding_something_else_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="not a frame"):
        encode_frames([b"raw"])  # type: ignore[list-item]


def _decode_or_reason(data: bytes) -> list[Frame] | str:
    """The frames, or the reason of the RemoteProtocolError (any other exception escapes)."""
    try:
        return decode_frames(data)
    except RemoteProtocolError as exc:
        return exc.reason


_node_ids = st.text(min_size=1, max_size=16).filter(lambda s: len(s.encode()) <= 64)
_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Padding, st.integers(0, 64)),
    st.builds(Heartbeat, st.integers(0, 2**32 - 1), probe=st.booleans()),
    st.builds(
        Heartbeat,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    ),
    st.builds(LinkStateAdvert, st.binary(max_size=64)),
    st.builds(
        Routed,
        _node_ids,
        _node_ids,
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=64),
    ),
    st.builds(AppData, st.integers(0, 0xFFFF), st.binary(max_size=64)),
    st.builds(
        lambda d: LsdbSummary(tuple(d.items())),
        st.dictionaries(_node_ids, st.integers(0, 2**64 - 1), max_size=6),
    ),
    st.builds(
        lambda msg_id, total, offset, data: Fragment(
            msg_id, total, min(offset, total - len(data)), data
        ),
        st.integers(0, 2**32 - 1),
        st.integers(64, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(min_size=1, max_size=64),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=8))
def test_round_trip_property(frames: list[Frame]) -> None:
    assert decode_frames(encode_frames(frames)) == frames


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    outcome = _decode_or_reason(data)
    if isinstance(outcome, str):
        assert outcome in {"bad_frame", "unknown_frame"}
    else:
        # Whatever decodes re-encodes to at most the input (ignorable frames are dropped).
        assert len(encode_frames(outcome)) <= len(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=4), st.data())
def test_fuzz_mutated_valid_plaintexts(frames: list[Frame], data: st.DataObject) -> None:
    encoded = bytearray(encode_frames(frames))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    outcome = _decode_or_reason(bytes(encoded))
    assert isinstance(outcome, list) or outcome in {"bad_frame", "unknown_frame"}


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (struct.pack("!IBII", 1, 0x04, 0, 0), "reserved flags"),
        (struct.pack("!IBII", 1, 0x80, 0, 0), "reserved flags"),
        (struct.pack("!IBII", 1, 0, 5, 0), "without the ECHO flag"),
        (struct.pack("!IBII", 1, 2, 0, 9), "without the ECHO flag"),
        (struct.pack("!IQ", 1, 2), "12 bytes"),
    ],
)
def test_heartbeat_decoding_is_strict(body: bytes, what: str) -> None:
    with pytest.raises(RemoteProtocolError, match=what) as info:
        decode_frames(bytes((FrameType.HEARTBEAT,)) + struct.pack("!H", len(body)) + body)
    assert info.value.reason == "bad_frame"


def test_former_heartbeat_ack_type_is_unknown() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames(b"\x02\x00\x0c" + bytes(12))
    assert info.value.reason == "unknown_frame"


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("!IHH", 1, 5, 0),  # no data
        struct.pack("!IHH", 1, 5, 3) + b"abc",  # runs past total
        struct.pack("!IHH", 1, 0, 0) + b"a",  # total 0
        struct.pack("!IH", 1, 5),  # truncated header
    ],
)
def test_fragment_decoding_is_strict(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames(bytes((FrameType.FRAGMENT,)) + struct.pack("!H", len(body)) + body)
    assert info.value.reason == "bad_frame"


@pytest.mark.parametrize(
    "body",
    [
        b"\x00" + bytes(8),  # empty origin
        b"\x41" + b"a" * 65 + bytes(8),  # origin of 65 bytes
        b"\x01a" + bytes(7),  # seq one byte short
        b"\x01\xff" + bytes(8),  # origin not UTF-8
        (b"\x01a" + bytes(8)) * 2,  # an origin twice
    ],
)
def test_summary_decoding_is_strict(body: bytes) -> None:
    for kind in (FrameType.LSDB_SUMMARY, FrameType.LSDB_ANNOUNCE, FrameType.LSDB_REQUEST):
        with pytest.raises(RemoteProtocolError) as info:
            decode_frames(bytes((kind,)) + struct.pack("!H", len(body)) + body)
        assert info.value.reason == "bad_frame"
