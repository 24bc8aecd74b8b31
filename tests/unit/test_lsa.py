"""Link-state adverts: canonical encoding, signatures, a parser raising only its own error."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x0tta6bl4.crypto.suite import MLDSA65_SIGNATURE_SIZE, SignatureContext, SigningKey
from x0tta6bl4.protocol.errors import LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.lsa import (
    FLAG_TRANSIT_OFF,
    MAX_ENCODED_SIZE,
    MAX_NEIGHBOURS,
    LinkStateAdvert,
    decode_signed,
    encode_signed,
    encode_unsigned,
    peek,
    verify_signed,
)


@functools.cache
def key(name: str) -> SigningKey:
    return SigningKey.generate()


def sample(**overrides: object) -> LinkStateAdvert:
    fields: dict[str, object] = {
        "origin": "node-a",
        "seq": 7,
        "issued_at_ms": 1_750_000_000_000,
        "neighbours": (("node-c", 30), ("node-b", 10)),
        "flags": 0,
    }
    fields.update(overrides)
    return LinkStateAdvert(**fields)  # type: ignore[arg-type]


def test_round_trip_and_canonical_order() -> None:
    lsa = sample()
    assert lsa.neighbours == (("node-b", 10), ("node-c", 30))
    data = encode_signed(lsa, key("a"))
    decoded, body, signature = decode_signed(data)
    assert decoded == lsa
    assert body == encode_unsigned(lsa)
    assert len(signature) == MLDSA65_SIGNATURE_SIZE
    assert data == body + signature
    public = key("a").key.public_key()
    verify_signed(decoded, body, signature, {"node-a": public}.get)


def test_byte_layout_is_documented_one() -> None:
    lsa = LinkStateAdvert("ab", 0x0102, 0x0304, (("z", 5),), FLAG_TRANSIT_OFF)
    assert encode_unsigned(lsa) == (
        b"\x01\x01\x02ab"
        + (0x0102).to_bytes(8, "big")
        + (0x0304).to_bytes(8, "big")
        + b"\x01\x01z\x00\x00\x00\x05"
    )
    assert lsa.transit_off


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"origin": ""}, "origin"),
        ({"origin": "x" * 65}, "origin"),
        ({"seq": -1}, "seq"),
        ({"seq": 1 << 64}, "seq"),
        ({"issued_at_ms": -1}, "issued_at_ms"),
        ({"flags": 256}, "flags"),
        ({"neighbours": (("node-a", 1),)}, "origin"),
        ({"neighbours": (("b", 0),)}, "cost"),
        ({"neighbours": (("b", 1 << 32),)}, "cost"),
        ({"neighbours": (("b", 1), ("b", 2))}, "duplicate"),
        ({"neighbours": tuple((f"n{i}", 1) for i in range(MAX_NEIGHBOURS + 1))}, "at most"),
    ],
)
def test_unencodable_values_are_local_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        sample(**overrides)


def test_wrong_key_altered_body_and_wrong_context_do_not_verify() -> None:
    lsa = sample()
    data = encode_signed(lsa, key("a"))
    public_a = key("a").key.public_key()
    public_b = key("b").key.public_key()
    decoded, body, signature = decode_signed(data)
    with pytest.raises(RemoteProtocolError) as info:
        verify_signed(decoded, body, signature, {"node-a": public_b}.get)
    assert info.value.reason == "bad_signature"
    with pytest.raises(RemoteProtocolError) as info:
        verify_signed(decoded, body, signature, {}.get)
    assert info.value.reason == "unknown_origin"
    # A cost changed in flight (the last byte of the body is the last cost's low byte).
    altered = bytearray(data)
    altered[len(body) - 1] ^= 0x01
    decoded2, body2, signature2 = decode_signed(bytes(altered))
    assert decoded2.neighbours[-1][1] != lsa.neighbours[-1][1]
    with pytest.raises(RemoteProtocolError) as info:
        verify_signed(decoded2, body2, signature2, {"node-a": public_a}.get)
    assert info.value.reason == "bad_signature"
    # The same key signing the same bytes for another purpose does not make an advert.
    other = body + key("a").sign(SignatureContext.HANDSHAKE_INITIATOR, body)
    d3, b3, s3 = decode_signed(other)
    with pytest.raises(RemoteProtocolError) as info:
        verify_signed(d3, b3, s3, {"node-a": public_a}.get)
    assert info.value.reason == "bad_signature"


SIG = b"\x00" * MLDSA65_SIGNATURE_SIZE


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "lsa_truncated"),
        (b"\x02\x00\x01a" + b"\x00" * 17, "lsa_bad_version"),
        (b"\x01\x00\x00" + b"\x00" * 17, "lsa_bad_node_id"),
        (b"\x01\x00\x41" + b"a" * 65 + b"\x00" * 17, "lsa_bad_node_id"),
        (b"\x01\x00\x01\xff" + b"\x00" * 17, "lsa_bad_node_id"),
        (b"\x01\x00\x01a" + b"\x00" * 16, "lsa_truncated"),
        (b"\x01\x00\x01a" + b"\x00" * 16 + b"\x01\x01b\x00\x00\x00\x00", "lsa_bad_cost"),
        (b"\x01\x00\x01a" + b"\x00" * 16 + b"\x01\x01a\x00\x00\x00\x01", "lsa_not_canonical"),
        (
            b"\x01\x00\x01a" + b"\x00" * 16 + b"\x02\x01c\x00\x00\x00\x01\x01b\x00\x00\x00\x01",
            "lsa_not_canonical",
        ),
        (
            b"\x01\x00\x01a" + b"\x00" * 16 + b"\x02\x01b\x00\x00\x00\x01\x01b\x00\x00\x00\x01",
            "lsa_not_canonical",
        ),
        (b"\x01\x00\x01a" + b"\x00" * 17 + b"\x00", "lsa_truncated"),
    ],
)
def test_malformed_adverts_name_their_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_signed(body + SIG)
    assert info.value.reason == reason


def test_short_and_oversized_inputs() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_signed(b"\x01" * 100)
    assert info.value.reason == "lsa_truncated"
    with pytest.raises(RemoteProtocolError) as info:
        decode_signed(b"\x01" * (MAX_ENCODED_SIZE + 1))
    assert info.value.reason == "lsa_too_large"


def test_largest_advert_fits_the_size_limit() -> None:
    lsa = LinkStateAdvert(
        "o" * 64,
        1,
        1,
        tuple((f"{i:03d}".ljust(64, "n"), 0xFFFF_FFFF) for i in range(MAX_NEIGHBOURS)),
    )
    data = encode_signed(lsa, key("a"))
    assert len(data) == MAX_ENCODED_SIZE
    assert decode_signed(data)[0] == lsa


node_ids = st.text(min_size=1, max_size=16).filter(lambda s: len(s.encode()) <= 64)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    origin=node_ids,
    seq=st.integers(0, (1 << 64) - 1),
    issued=st.integers(0, (1 << 64) - 1),
    flags=st.integers(0, 255),
    neighbours=st.dictionaries(node_ids, st.integers(1, (1 << 32) - 1), max_size=20),
)
def test_encoding_round_trips(
    origin: str, seq: int, issued: int, flags: int, neighbours: dict[str, int]
) -> None:
    neighbours.pop(origin, None)
    lsa = LinkStateAdvert(origin, seq, issued, tuple(neighbours.items()), flags)
    body = encode_unsigned(lsa)
    decoded, got_body, _ = decode_signed(body + SIG)
    assert decoded == lsa
    assert got_body == body


@functools.cache
def valid_advert() -> bytes:
    return encode_signed(sample(), key("a"))


@settings(max_examples=500)
@given(st.binary(max_size=MLDSA65_SIGNATURE_SIZE + 200))
def test_fuzz_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    try:
        decode_signed(data)
    except RemoteProtocolError as exc:
        reason = exc.reason
        assert reason.startswith("lsa_")


@settings(max_examples=500)
@given(st.data())
def test_fuzz_mutated_adverts_raise_only_remote_errors(data: st.DataObject) -> None:
    raw = bytearray(valid_advert())
    body_len = len(raw) - MLDSA65_SIGNATURE_SIZE
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, body_len - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 8))
    mutated = bytes(raw[: body_len - cut]) + bytes(raw[body_len:])
    try:
        lsa, body, _ = decode_signed(mutated)
    except RemoteProtocolError as exc:
        reason = exc.reason
        assert reason.startswith("lsa_")
    else:
        assert encode_unsigned(lsa) == body  # whatever parses is canonical


def test_peek_reads_origin_and_seq_from_an_advert_or_its_first_bytes() -> None:
    data = encode_signed(sample(origin="node-ä", seq=2**64 - 1), key("a"))
    head = peek(data)
    assert head is not None
    assert (head.origin, head.seq) == ("node-ä", 2**64 - 1)
    origin_end = 3 + len("node-ä".encode())
    assert peek(data[: origin_end + 8]) == head  # exactly enough bytes
    assert peek(data[: origin_end + 7]) is None  # the seq is cut
    assert peek(b"") is None
    assert peek(b"\x01\x00\x00" + bytes(20)) is None  # origin length 0
    assert peek(b"\x01\x00\x41" + bytes(80)) is None  # origin length 65
    assert peek(b"\x01\x00\x02\xff\xfe" + bytes(8)) is None  # not UTF-8


@given(st.binary(max_size=100))
def test_peek_never_raises(data: bytes) -> None:
    head = peek(data)
    if head is not None:
        assert 1 <= len(head.origin.encode()) <= 64
        assert 0 <= head.seq < 2**64
