"""The overlay IPv4 network of TUN mode, sans-IO: which node an IP packet goes to, and
whether a packet that arrived may be delivered.

Every mesh node owns one overlay address (allocated by the controller, listed in the
membership). An IP packet read from the TUN interface travels as one application datagram on
channel :data:`TUN_CHANNEL` over the end-to-end session to the node that owns its destination
address; relays see only ciphertext.

**MTU.** One packet must fit one end-to-end datagram: the session's largest plaintext
(:data:`~x0tta6bl4.node.core.E2E_MAX_DATAGRAM` minus the transport header and tag) minus the
APP_DATA frame's header and channel number is :data:`~x0tta6bl4.node.core.MAX_APP_PAYLOAD`
(1274 bytes), so that is the TUN MTU (:data:`TUN_MTU`). The kernel never hands us a larger
packet that it generated itself (TCP's MSS follows from the MTU; UDP fragments). A larger one
(forwarded by the kernel, or a raw socket) is dropped and counted ``tun_too_big``; if it has
the Don't Fragment bit we answer with ICMP "fragmentation needed" carrying the MTU, so path
MTU discovery adapts.

**Anti-spoofing.** A packet that arrives from node ``N`` (authenticated by the end-to-end
session) is delivered only if its source address is ``N``'s overlay address and its
destination is ours.

Drops are counted by reason in the ``dropped`` counter passed in (the node's
``x0tta6bl4_node_packets_dropped_total``): ``tun_short_packet``, ``tun_not_ipv4``,
``tun_bad_header``, ``tun_bad_length``, ``tun_too_big``, ``tun_no_destination`` (no member
owns the address), ``tun_bad_source`` (a local packet not from our address),
``tun_spoofed_source``, ``tun_not_for_us``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from x0tta6bl4.node.core import MAX_APP_PAYLOAD
from x0tta6bl4.node.drops import NodeDrop
from x0tta6bl4.node.model import Member

__all__ = [
    "TUN_CHANNEL",
    "TUN_MTU",
    "IPv4Header",
    "Outbound",
    "Overlay",
    "PacketError",
    "frag_needed",
    "parse_ipv4",
]

#: The application channel that carries IP packets (0x0800, IPv4's EtherType).
TUN_CHANNEL = 0x0800
#: The overlay interface's MTU: one IP packet per end-to-end datagram.
TUN_MTU = MAX_APP_PAYLOAD

_IPV4_MIN_HEADER = 20
_DF = 0x4000
_PROTO_ICMP = 1
_ICMP_ECHO_TYPES = (0, 8)


class PacketError(ValueError):
    """A packet that is not a well-formed IPv4 packet; ``reason`` is the drop counter key."""

    def __init__(self, reason: NodeDrop, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """What the overlay needs of an IPv4 header."""

    src: bytes
    dst: bytes
    header_length: int
    total_length: int
    protocol: int
    dont_fragment: bool
    first_fragment: bool


def parse_ipv4(packet: bytes) -> IPv4Header:
    """Check ``packet`` is IPv4 with consistent lengths; raise :class:`PacketError` if not."""
    if len(packet) < _IPV4_MIN_HEADER:
        raise PacketError(
            NodeDrop.TUN_SHORT_PACKET, f"{len(packet)} bytes is shorter than an IPv4 header"
        )
    version, ihl = packet[0] >> 4, packet[0] & 0x0F
    if version != 4:
        raise PacketError(NodeDrop.TUN_NOT_IPV4, f"IP version {version}, expected 4")
    header_length = ihl * 4
    if header_length < _IPV4_MIN_HEADER or header_length > len(packet):
        raise PacketError(NodeDrop.TUN_BAD_HEADER, f"IPv4 header length {header_length} is invalid")
    (total_length,) = struct.unpack_from("!H", packet, 2)
    (flags_offset,) = struct.unpack_from("!H", packet, 6)
    if total_length < header_length or total_length > len(packet):
        raise PacketError(
            NodeDrop.TUN_BAD_LENGTH,
            f"IPv4 total length {total_length} does not match {len(packet)}",
        )
    return IPv4Header(
        src=bytes(packet[12:16]),
        dst=bytes(packet[16:20]),
        header_length=header_length,
        total_length=total_length,
        protocol=packet[9],
        dont_fragment=bool(flags_offset & _DF),
        first_fragment=(flags_offset & 0x1FFF) == 0,
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frag_needed(packet: bytes, header: IPv4Header, local_ip: bytes, mtu: int) -> bytes | None:
    """ICMP "fragmentation needed" (type 3 code 4, next-hop ``mtu``) from ``local_ip`` to
    the sender of ``packet``; None where RFC 1122 forbids an answer (to an ICMP error, a
    non-first fragment)."""
    if not header.first_fragment:
        return None
    start = header.header_length
    if header.protocol == _PROTO_ICMP and (
        len(packet) <= start or packet[start] not in _ICMP_ECHO_TYPES
    ):
        return None
    quoted = bytes(packet[: header.header_length + 8])
    icmp = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quoted
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    total = _IPV4_MIN_HEADER + len(icmp)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, total, 0, 0, 64, _PROTO_ICMP, 0, local_ip, header.src
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + icmp


@dataclass(frozen=True, slots=True)
class Outbound:
    """What to do with a packet read from the TUN: send ``packet`` to node ``dest``, and/or
    write ``reply`` back to the TUN (an ICMP error)."""

    dest: str | None = None
    packet: bytes = b""
    reply: bytes | None = None


_DROP = Outbound()


class Overlay:
    """Maps overlay addresses to node ids; checks packets in both directions."""

    def __init__(
        self, local_ip: str, *, mtu: int = TUN_MTU, dropped: Counter[str] | None = None
    ) -> None:
        if not 68 <= mtu <= TUN_MTU:
            raise ValueError(f"overlay MTU must be 68..{TUN_MTU}, got {mtu}")
        self.mtu = mtu
        self.local_ip = _pack_ip(local_ip)
        self._by_ip: dict[bytes, str] = {}
        self._ip_of: dict[str, bytes] = {}
        #: Drops by reason (pass the core's ``dropped`` to export them as metrics).
        self.dropped: Counter[str] = Counter() if dropped is None else dropped
        #: ``packets_out``, ``bytes_out``, ``packets_in``, ``bytes_in``, ``icmp_sent``.
        self.counters: Counter[str] = Counter()

    def set_local_ip(self, local_ip: str) -> None:
        self.local_ip = _pack_ip(local_ip)

    def set_members(self, members: Iterable[Member]) -> None:
        """The membership: every member with a valid overlay IPv4 address."""
        by_ip: dict[bytes, str] = {}
        for member in members:
            if member.overlay_ip is None:
                continue
            try:
                packed = _pack_ip(member.overlay_ip)
            except ValueError:
                continue
            by_ip[packed] = member.node_id
        self._by_ip = by_ip
        self._ip_of = {node_id: ip for ip, node_id in by_ip.items()}

    def addresses(self) -> list[str]:
        """Every member's overlay address (what to route into the TUN)."""
        return sorted(_unpack_ip(ip) for ip in self._by_ip)

    def outbound(self, packet: bytes) -> Outbound:
        """A packet read from the TUN: where it goes (counts and drops bad ones)."""
        try:
            header = parse_ipv4(packet)
        except PacketError as exc:
            self.dropped[exc.reason] += 1
            return _DROP
        if header.src != self.local_ip:
            self.dropped[NodeDrop.TUN_BAD_SOURCE] += 1
            return _DROP
        if header.total_length > self.mtu:
            self.dropped[NodeDrop.TUN_TOO_BIG] += 1
            if not header.dont_fragment:
                return _DROP
            reply = frag_needed(packet, header, self.local_ip, self.mtu)
            if reply is not None:
                self.counters["icmp_sent"] += 1
            return Outbound(reply=reply)
        dest = self._by_ip.get(header.dst)
        if dest is None:
            self.dropped[NodeDrop.TUN_NO_DESTINATION] += 1
            return _DROP
        body = bytes(packet[: header.total_length])
        self.counters["packets_out"] += 1
        self.counters["bytes_out"] += len(body)
        return Outbound(dest=dest, packet=body)

    def inbound(self, src_node: str, packet: bytes) -> bytes | None:
        """A packet from node ``src_node`` (authenticated): the packet to write, or None."""
        try:
            header = parse_ipv4(packet)
        except PacketError as exc:
            self.dropped[exc.reason] += 1
            return None
        expected = self._ip_of.get(src_node)
        if expected is None or header.src != expected:
            self.dropped[NodeDrop.TUN_SPOOFED_SOURCE] += 1
            return None
        if header.dst != self.local_ip:
            self.dropped[NodeDrop.TUN_NOT_FOR_US] += 1
            return None
        body = bytes(packet[: header.total_length])
        self.counters["packets_in"] += 1
        self.counters["bytes_in"] += len(body)
        return body


def _pack_ip(text: str) -> bytes:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"not an IPv4 address: {text!r:.40}") from None
    return address.packed


def _unpack_ip(packed: bytes) -> str:
    return ".".join(str(b) for b in packed)
