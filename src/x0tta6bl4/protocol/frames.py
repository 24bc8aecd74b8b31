"""Inner frames: what a transport packet's plaintext carries (sans-IO codec).

A plaintext is zero or more frames back to back; zero frames (an empty plaintext) is a
keepalive. Every frame is ``type u8 ‖ length u16 ‖ body[length]`` (big-endian)::

    type  name               body
    0x00  PADDING            length zero bytes (fills a packet; a keepalive with a size)
    0x01  HEARTBEAT          seq u32 ‖ flags u8 ‖ echo_seq u32 ‖ echo_delay_us u32
                             flags bit 0 ECHO: echo_seq is the last heartbeat received from
                             the peer, held echo_delay_us before this one was sent (RTT);
                             without it both echo fields are 0. Bit 1 PROBE: the sender's
                             link is down, answer at once. Other bits: 0.
    (0x02 was HEARTBEAT_ACK: echoes ride on heartbeats now; the type is unknown)
    0x03  LINK_STATE_ADVERT  opaque: a signed link-state advert (defined by the router)
    0x04  ROUTED             src_len u8 ‖ src ‖ dst_len u8 ‖ dst ‖ ttl u8 ‖ flags u8 ‖ payload
                             (node ids: 1..64 bytes of UTF-8; payload: an end-to-end
                             handshake or transport datagram, opaque to relays)
    0x05  APP_DATA           channel u16 ‖ payload
    0x06  FRAGMENT           msg_id u32 ‖ total u16 ‖ offset u16 ‖ data (1.. bytes):
                             a piece of an encoded frame sequence too large for one packet
                             (offset + len(data) <= total); node/reassembly.py rebuilds it
    0x07  LSDB_SUMMARY       (origin_len u8 ‖ origin ‖ seq u64)*: the (origin, seq) of every
                             advert the sender holds, sent when a link comes up; origins
                             1..64 bytes of UTF-8, each at most once
    0x08  LSDB_ANNOUNCE      same body as LSDB_SUMMARY: adverts the sender just accepted
                             (flooding announces; the receiver asks for those it lacks)
    0x09  LSDB_REQUEST       same body: adverts the sender asks for (answered with
                             LINK_STATE_ADVERT frames)

Unknown types: a type with the high bit set (``0x80..0xFF``) is *ignorable* — a receiver
that does not know it skips it, so later versions can add optional frames. An unknown type
without that bit is an error (``unknown_frame``): the whole plaintext is rejected, because
skipping a frame the sender considered essential would silently change its meaning.

Decoding is strict: a length that runs past the end, a body of the wrong size, non-zero
padding, a bad node id → :class:`~x0tta6bl4.protocol.errors.RemoteProtocolError` with
reason ``bad_frame`` (or ``unknown_frame``); nothing else escapes, and memory use is bounded
by the input. Encoding a field out of range raises
:class:`~x0tta6bl4.protocol.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError

__all__ = [
    "FRAME_HEADER_SIZE",
    "HEARTBEAT_ECHO",
    "HEARTBEAT_PROBE",
    "IGNORABLE_FRAME_BIT",
    "MAX_FRAME_BODY_SIZE",
    "MAX_NODE_ID_SIZE",
    "AppData",
    "Fragment",
    "Frame",
    "FrameType",
    "Heartbeat",
    "LinkStateAdvert",
    "LsdbAnnounce",
    "LsdbRequest",
    "LsdbSummary",
    "Padding",
    "Routed",
    "decode_frames",
    "encode_frames",
]

#: ``type u8 ‖ length u16``.
FRAME_HEADER_SIZE = 3
#: The length field is a u16.
MAX_FRAME_BODY_SIZE = 0xFFFF
#: Frame types with this bit set may be skipped by receivers that do not know them.
IGNORABLE_FRAME_BIT = 0x80
#: Largest node id (UTF-8 bytes) in a ROUTED frame.
MAX_NODE_ID_SIZE = 64

_FRAME_HEADER = struct.Struct("!BH")
_HEARTBEAT = struct.Struct("!IBII")
#: HEARTBEAT flag: the echo fields are set.
HEARTBEAT_ECHO = 0x01
#: HEARTBEAT flag: the sender's link is down; the receiver answers with a heartbeat at once.
HEARTBEAT_PROBE = 0x02
_HEARTBEAT_FLAGS = HEARTBEAT_ECHO | HEARTBEAT_PROBE
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_U64_MAX = 0xFFFFFFFFFFFFFFFF
_FRAGMENT = struct.Struct("!IHH")
_U32_MAX = 0xFFFFFFFF
_BAD = DropReason.BAD_FRAME


class FrameType(enum.IntEnum):
    """First byte of an inner frame."""

    PADDING = 0x00
    HEARTBEAT = 0x01
    LINK_STATE_ADVERT = 0x03
    ROUTED = 0x04
    APP_DATA = 0x05
    FRAGMENT = 0x06
    LSDB_SUMMARY = 0x07
    LSDB_ANNOUNCE = 0x08
    LSDB_REQUEST = 0x09


@dataclass(frozen=True, slots=True)
class Padding:
    """``length`` zero bytes; carries nothing."""

    length: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness of a link, carrying the echo of the peer's last heartbeat (RTT)."""

    seq: int
    #: The seq of the peer's heartbeat echoed here, or None.
    echo_seq: int | None = None
    #: Microseconds the sender held that heartbeat before sending this one (0 without echo).
    echo_delay_us: int = 0
    #: The sender's link is down: answer with a heartbeat at once.
    probe: bool = False


@dataclass(frozen=True, slots=True)
class LinkStateAdvert:
    """A link-state advert, opaque here (the router encodes, signs and verifies it)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Routed:
    """A datagram relayed hop by hop from ``src`` to ``dst`` (node ids)."""

    src: str
    dst: str
    #: Decremented by each relay; a frame whose TTL would reach zero is not forwarded.
    ttl: int
    #: Reserved for the router (u8); 0 today.
    flags: int
    #: End-to-end handshake or transport datagram: relays cannot read it.
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppData:
    """Application datagram on a channel (a port of the mesh's own datagram service)."""

    channel: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Fragment:
    """A piece of message ``msg_id`` (encoded frames of ``total`` bytes) at ``offset``."""

    msg_id: int
    total: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LsdbSummary:
    """``(origin, seq)`` of every link-state advert the sender holds (database sync)."""

    entries: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class LsdbAnnounce:
    """``(origin, seq)`` of adverts the sender just accepted: ask for the ones you lack."""

    entries: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class LsdbRequest:
    """``(origin, seq)`` of adverts the sender asks for (after an announce)."""

    entries: tuple[tuple[str, int], ...]


_ENTRY_FRAMES: dict[type, FrameType] = {
    LsdbSummary: FrameType.LSDB_SUMMARY,
    LsdbAnnounce: FrameType.LSDB_ANNOUNCE,
    LsdbRequest: FrameType.LSDB_REQUEST,
}

Frame = (
    Padding
    | Heartbeat
    | Fragment
    | LsdbSummary
    | LsdbAnnounce
    | LsdbRequest
    | LinkStateAdvert
    | Routed
    | AppData
)


# --- encoding ---------------------------------------------------------------------------------


def _node_id(node_id: str, what: str) -> bytes:
    raw = node_id.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NODE_ID_SIZE:
        raise LocalProtocolError(f"{what} node id must be 1..{MAX_NODE_ID_SIZE} bytes of UTF-8")
    return raw


def _check_range(value: int, maximum: int, what: str) -> None:
    if not 0 <= value <= maximum:
        raise LocalProtocolError(f"{what} {value} is out of range 0..{maximum}")


def _encode_body(frame: Frame) -> tuple[int, bytes]:
    if isinstance(frame, AppData):
        _check_range(frame.channel, 0xFFFF, "channel")
        return FrameType.APP_DATA, _U16.pack(frame.channel) + frame.payload
    if isinstance(frame, Heartbeat):
        _check_range(frame.seq, _U32_MAX, "heartbeat seq")
        flags = HEARTBEAT_PROBE if frame.probe else 0
        if frame.echo_seq is None:
            if frame.echo_delay_us:
                raise LocalProtocolError("heartbeat echo delay without an echo seq")
            return FrameType.HEARTBEAT, _HEARTBEAT.pack(frame.seq, flags, 0, 0)
        _check_range(frame.echo_seq, _U32_MAX, "heartbeat echo seq")
        _check_range(frame.echo_delay_us, _U32_MAX, "heartbeat echo delay")
        body = _HEARTBEAT.pack(
            frame.seq, flags | HEARTBEAT_ECHO, frame.echo_seq, frame.echo_delay_us
        )
        return FrameType.HEARTBEAT, body
    if isinstance(frame, Routed):
        src = _node_id(frame.src, "source")
        dst = _node_id(frame.dst, "destination")
        _check_range(frame.ttl, 0xFF, "ttl")
        _check_range(frame.flags, 0xFF, "flags")
        body = b"".join(
            (
                bytes((len(src),)),
                src,
                bytes((len(dst),)),
                dst,
                bytes((frame.ttl, frame.flags)),
                frame.payload,
            )
        )
        return FrameType.ROUTED, body
    if isinstance(frame, LinkStateAdvert):
        return FrameType.LINK_STATE_ADVERT, bytes(frame.body)
    if isinstance(frame, LsdbSummary | LsdbAnnounce | LsdbRequest):
        parts: list[bytes] = []
        seen: set[str] = set()
        for origin, seq in frame.entries:
            if origin in seen:
                raise LocalProtocolError(f"origin {origin!r} twice in a database summary")
            seen.add(origin)
            raw = _node_id(origin, "summary origin")
            _check_range(seq, _U64_MAX, "summary seq")
            parts += (bytes((len(raw),)), raw, _U64.pack(seq))
        return _ENTRY_FRAMES[type(frame)], b"".join(parts)
    if isinstance(frame, Fragment):
        _check_range(frame.msg_id, _U32_MAX, "fragment msg_id")
        _check_range(frame.total, 0xFFFF, "fragment total")
        if not frame.data or frame.offset < 0 or frame.offset + len(frame.data) > frame.total:
            raise LocalProtocolError("fragment data must be non-empty and end within total")
        return FrameType.FRAGMENT, _FRAGMENT.pack(frame.msg_id, frame.total, frame.offset) + (
            frame.data
        )
    if isinstance(frame, Padding):
        _check_range(frame.length, MAX_FRAME_BODY_SIZE, "padding length")
        return FrameType.PADDING, bytes(frame.length)
    raise LocalProtocolError(f"not a frame: {type(frame).__name__}")


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """Concatenate the encodings of ``frames`` (an empty iterable gives a keepalive)."""
    parts: list[bytes] = []
    for frame in frames:
        kind, body = _encode_body(frame)
        if len(body) > MAX_FRAME_BODY_SIZE:
            raise LocalProtocolError(f"frame body of {len(body)} bytes exceeds the u16 length")
        parts.append(_FRAME_HEADER.pack(kind, len(body)))
        parts.append(body)
    return b"".join(parts)


# --- decoding ---------------------------------------------------------------------------------


def _decode_routed(body: bytes) -> Routed:
    pos = 0
    ids: list[str] = []
    for what in ("source", "destination"):
        if pos >= len(body):
            raise RemoteProtocolError(_BAD, f"ROUTED frame ends before the {what} node id")
        size = body[pos]
        pos += 1
        if not 1 <= size <= MAX_NODE_ID_SIZE or pos + size > len(body):
            raise RemoteProtocolError(_BAD, f"ROUTED frame has a bad {what} node id length")
        try:
            ids.append(body[pos : pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise RemoteProtocolError(_BAD, f"ROUTED {what} node id is not UTF-8") from None
        pos += size
    if pos + 2 > len(body):
        raise RemoteProtocolError(_BAD, "ROUTED frame ends before ttl and flags")
    return Routed(ids[0], ids[1], body[pos], body[pos + 1], body[pos + 2 :])


def _decode_entries(body: bytes) -> tuple[tuple[str, int], ...]:
    """The ``(origin_len u8 ‖ origin ‖ seq u64)*`` body of the LSDB_* frames."""
    entries: list[tuple[str, int]] = []
    seen: set[str] = set()
    pos = 0
    end = len(body)
    while pos < end:
        size = body[pos]
        pos += 1
        if not 1 <= size <= MAX_NODE_ID_SIZE or pos + size + 8 > end:
            raise RemoteProtocolError(_BAD, "LSDB_SUMMARY entry with a bad length")
        try:
            origin = body[pos : pos + size].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(_BAD, "LSDB_SUMMARY origin is not UTF-8") from None
        if origin in seen:
            raise RemoteProtocolError(_BAD, "LSDB_SUMMARY lists an origin twice")
        seen.add(origin)
        pos += size
        entries.append((origin, _U64.unpack_from(body, pos)[0]))
        pos += 8
    return tuple(entries)


def _decode_body(kind: int, body: bytes) -> Frame | None:
    if kind == FrameType.APP_DATA:
        if len(body) < _U16.size:
            raise RemoteProtocolError(_BAD, "APP_DATA frame shorter than its channel")
        return AppData(_U16.unpack_from(body)[0], body[_U16.size :])
    if kind == FrameType.HEARTBEAT:
        if len(body) != _HEARTBEAT.size:
            raise RemoteProtocolError(_BAD, f"heartbeat frame body of {len(body)} bytes")
        seq, flags, echo_seq, delay = _HEARTBEAT.unpack(body)
        if flags & ~_HEARTBEAT_FLAGS:
            raise RemoteProtocolError(_BAD, f"heartbeat with reserved flags 0x{flags:02x}")
        probe = bool(flags & HEARTBEAT_PROBE)
        if flags & HEARTBEAT_ECHO:
            return Heartbeat(seq, echo_seq, delay, probe)
        if echo_seq or delay:
            raise RemoteProtocolError(_BAD, "heartbeat echo fields set without the ECHO flag")
        return Heartbeat(seq, None, 0, probe)
    if kind == FrameType.ROUTED:
        return _decode_routed(body)
    if kind == FrameType.LSDB_SUMMARY:
        return LsdbSummary(_decode_entries(body))
    if kind == FrameType.LSDB_ANNOUNCE:
        return LsdbAnnounce(_decode_entries(body))
    if kind == FrameType.LSDB_REQUEST:
        return LsdbRequest(_decode_entries(body))
    if kind == FrameType.FRAGMENT:
        if len(body) <= _FRAGMENT.size:
            raise RemoteProtocolError(_BAD, "FRAGMENT frame without data")
        msg_id, total, offset = _FRAGMENT.unpack_from(body)
        data = body[_FRAGMENT.size :]
        if offset + len(data) > total:
            raise RemoteProtocolError(_BAD, "FRAGMENT data runs past its message's total")
        return Fragment(msg_id, total, offset, data)
    if kind == FrameType.LINK_STATE_ADVERT:
        return LinkStateAdvert(body)
    if kind == FrameType.PADDING:
        if body.count(0) != len(body):
            raise RemoteProtocolError(_BAD, "PADDING frame with non-zero bytes")
        return Padding(len(body))
    if kind & IGNORABLE_FRAME_BIT:
        return None
    raise RemoteProtocolError(DropReason.UNKNOWN_FRAME, f"unknown frame type 0x{kind:02x}")


def decode_frames(data: bytes | bytearray | memoryview) -> list[Frame]:
    """Parse a plaintext into frames; ignorable unknown frames are skipped.

    Raises :class:`RemoteProtocolError` (reason ``bad_frame`` or ``unknown_frame``) and
    returns nothing if any part of ``data`` is invalid.
    """
    if not isinstance(data, bytes):
        data = bytes(memoryview(data))  # bytearray/memoryview; never bytes(int) zero-filling
    frames: list[Frame] = []
    pos = 0
    end = len(data)
    header_size = _FRAME_HEADER.size
    while pos < end:
        if pos + header_size > end:
            raise RemoteProtocolError(_BAD, "truncated frame header")
        kind, length = _FRAME_HEADER.unpack_from(data, pos)
        pos += header_size
        if pos + length > end:
            raise RemoteProtocolError(_BAD, f"frame length {length} runs past the plaintext")
        frame = _decode_body(kind, data[pos : pos + length])
        pos += length
        if frame is not None:
            frames.append(frame)
    return frames
