"""The sans-IO overlay of TUN mode: IPv4 checks, destination lookup, MTU, anti-spoofing,
ICMP "fragmentation needed"."""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.node.core import E2E_MAX_DATAGRAM
from x0tta6bl4.node.model import Member
from x0tta6bl4.node.overlay import (
    TUN_CHANNEL,
    TUN_MTU,
    Overlay,
    PacketError,
    frag_needed,
    parse_ipv4,
)
from x0tta6bl4.protocol.frames import AppData, encode_frames
from x0tta6bl4.protocol.session import MIN_TRANSPORT_DATAGRAM_SIZE

LOCAL = "100.96.0.1"
PEER = "100.96.0.2"


def _checksum_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def packet(
    src: str = LOCAL,
    dst: str = PEER,
    size: int = 60,
    *,
    df: bool = True,
    proto: int = 17,
    payload: bytes | None = None,
) -> bytes:
    body = payload if payload is not None else bytes(size - 20)
    flags = 0x4000 if df else 0
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        1,
        flags,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + body


def overlay(dropped: Counter[str] | None = None) -> Overlay:
    ov = Overlay(LOCAL, dropped=dropped)
    ov.set_members(
        [
            Member("peer", "spiffe://td/ns/a/sa/b", ("10.0.0.2", 7810), PEER),
            Member("other", "spiffe://td/ns/a/sa/b", ("10.0.0.3", 7810), "100.96.0.3"),
            Member("noip", "spiffe://td/ns/a/sa/b", ("10.0.0.4", 7810), None),
            Member("badip", "spiffe://td/ns/a/sa/b", ("10.0.0.5", 7810), "not-an-ip"),
        ]
    )
    return ov


def test_mtu_is_what_fits_one_end_to_end_datagram() -> None:
    # One IP packet of TUN_MTU bytes in an APP_DATA frame, sealed, is exactly the largest
    # end-to-end datagram; one byte more would not fit.
    plaintext = encode_frames([AppData(TUN_CHANNEL, bytes(TUN_MTU))])
    assert len(plaintext) + MIN_TRANSPORT_DATAGRAM_SIZE == E2E_MAX_DATAGRAM
    assert TUN_MTU == 1274


def test_parse_ipv4_reads_addresses_and_flags() -> None:
    header = parse_ipv4(packet(size=100))
    assert header.src == ipaddress.IPv4Address(LOCAL).packed
    assert header.dst == ipaddress.IPv4Address(PEER).packed
    assert (header.total_length, header.header_length, header.protocol) == (100, 20, 17)
    assert header.dont_fragment
    assert header.first_fragment


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "tun_short_packet"),
        (bytes(19), "tun_short_packet"),
        (b"\x60" + bytes(39), "tun_not_ipv4"),  # IPv6
        (b"\x44" + bytes(19), "tun_bad_header"),  # IHL 4 (16 bytes)
        (b"\x4f" + bytes(19), "tun_bad_header"),  # IHL 15 (60 bytes) > packet
        (packet()[:2] + struct.pack("!H", 19) + packet()[4:], "tun_bad_length"),
        (packet()[:2] + struct.pack("!H", 61) + packet()[4:], "tun_bad_length"),
    ],
)
def test_parse_ipv4_rejects_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as err:
        parse_ipv4(data)
    assert err.value.reason == reason


@given(st.binary(max_size=80))
def test_parse_ipv4_never_raises_anything_else(data: bytes) -> None:
    try:
        header = parse_ipv4(data)
    except PacketError:
        return
    assert 20 <= header.header_length <= header.total_length <= len(data)


def test_outbound_finds_the_owner_and_trims_padding() -> None:
    ov = overlay()
    decision = ov.outbound(packet(size=80) + b"\0\0\0\0")  # link-layer style padding
    assert decision.dest == "peer"
    assert len(decision.packet) == 80
    assert decision.reply is None
    assert ov.counters["packets_out"] == 1
    assert ov.counters["bytes_out"] == 80
    assert ov.addresses() == ["100.96.0.2", "100.96.0.3"]


def test_outbound_drops_and_counts() -> None:
    dropped: Counter[str] = Counter()
    ov = overlay(dropped)
    assert ov.outbound(packet(dst="100.96.0.9")).dest is None
    assert ov.outbound(packet(src="100.96.0.7")).dest is None
    assert ov.outbound(b"\x60" + bytes(39)).dest is None
    assert ov.outbound(packet(size=TUN_MTU + 1, df=False)).dest is None
    assert dropped == Counter(tun_no_destination=1, tun_bad_source=1, tun_not_ipv4=1, tun_too_big=1)
    assert ov.counters["packets_out"] == 0


def test_too_big_with_df_answers_icmp_fragmentation_needed() -> None:
    ov = overlay()
    big = packet(size=1400, proto=6)
    decision = ov.outbound(big)
    assert decision.dest is None
    reply = decision.reply
    assert reply is not None
    header = parse_ipv4(reply)
    assert header.protocol == 1
    assert header.src == ipaddress.IPv4Address(LOCAL).packed
    assert header.dst == ipaddress.IPv4Address(LOCAL).packed  # back to the sender
    assert _checksum_ok(reply[:20])
    icmp = reply[20:]
    assert _checksum_ok(icmp)
    kind, code, _, _, mtu = struct.unpack_from("!BBHHH", icmp)
    assert (kind, code, mtu) == (3, 4, TUN_MTU)
    assert icmp[8:] == big[:28]  # the offending header and 8 bytes of its payload
    assert ov.counters["icmp_sent"] == 1
    assert ov.dropped["tun_too_big"] == 1


def test_no_icmp_error_about_an_icmp_error_or_a_later_fragment() -> None:
    error = packet(proto=1, payload=bytes([3, 1]) + bytes(1400))
    assert frag_needed(error, parse_ipv4(error), bytes(4), TUN_MTU) is None
    echo = packet(proto=1, payload=bytes([8, 0]) + bytes(1400))
    assert frag_needed(echo, parse_ipv4(echo), bytes(4), TUN_MTU) is not None
    later = bytearray(packet(size=1400))
    later[6:8] = struct.pack("!H", 0x4000 | 100)
    assert frag_needed(bytes(later), parse_ipv4(bytes(later)), bytes(4), TUN_MTU) is None


def test_inbound_delivers_only_from_the_owner_to_us() -> None:
    dropped: Counter[str] = Counter()
    ov = overlay(dropped)
    good = packet(src=PEER, dst=LOCAL, size=100)
    assert ov.inbound("peer", good) == good
    assert ov.inbound("peer", good + b"\0\0") == good
    # "other" is authenticated but claims peer's address: spoofed.
    assert ov.inbound("other", good) is None
    assert ov.inbound("stranger", good) is None
    assert ov.inbound("peer", packet(src=PEER, dst="100.96.0.3")) is None
    assert ov.inbound("peer", b"junk") is None
    assert dropped == Counter(tun_spoofed_source=2, tun_not_for_us=1, tun_short_packet=1)
    assert ov.counters["packets_in"] == 2


def test_local_address_change_and_bad_arguments() -> None:
    ov = overlay()
    ov.set_local_ip("100.96.0.50")
    assert ov.outbound(packet(src="100.96.0.50")).dest == "peer"
    assert ov.outbound(packet()).dest is None
    with pytest.raises(ValueError, match="not an IPv4 address"):
        Overlay("fe80::1")
    with pytest.raises(ValueError, match="MTU"):
        Overlay(LOCAL, mtu=TUN_MTU + 1)
