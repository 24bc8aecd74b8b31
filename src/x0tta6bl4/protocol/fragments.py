"""Fragmentation and bounded reassembly of handshake messages.

Handshake messages (INIT ≈ 1.3 KB, RESP ≈ 10 KB, FINISH ≈ 9 KB) do not fit one datagram, so
each is cut into fragments of at most :data:`~x0tta6bl4.protocol.constants.MAX_DATAGRAM_SIZE`
bytes, each behind an 18-byte header (big-endian)::

    0      type            u8    1 INIT, 2 RESP, 3 FINISH
    1      sender index    u32   the sender's handshake index
    5      receiver index  u32   the receiver's handshake index (0 in INIT)
    9      message seq     u16   0 INIT, 1 RESP, 2 FINISH
    11     total length    u16   length of the whole message (1 … 16384)
    13     fragment offset u16   where this fragment's bytes start in the message
    15     fragment length u16   number of message bytes in this datagram
    17     cookie length   u8    0, or 16 in INIT when echoing a cookie
    18     cookie          [cookie length]
    18+c   fragment bytes  [fragment length]

Fragment headers are not authenticated; the reassembled message is (by the transcript and
the AEAD), so a tampered header can at worst make a message fail to reassemble.

:class:`Reassembler` accepts fragments in any order, with duplicates and arbitrary overlaps,
and enforces bounds: a maximum message size, a maximum number of partial messages (the oldest
is evicted to make room for a new one), and a
timeout: a partial message that is not complete that long after its first fragment arrived
is discarded (new bytes do not extend it, so trickling bytes cannot hold a buffer).
Overlapping fragments whose bytes differ are rejected, and the partial message they hit is
discarded (a retransmission rebuilds it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from x0tta6bl4.protocol.constants import (
    COOKIE_SIZE,
    FRAGMENT_HEADER_SIZE,
    MAX_DATAGRAM_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MAX_PARTIAL_MESSAGES,
    REASSEMBLY_TIMEOUT,
    MessageType,
)
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HANDSHAKE_TYPES",
    "Fragment",
    "PartialMessage",
    "Reassembler",
    "fragment_message",
    "parse_fragment",
]

_HEADER = struct.Struct("!BIIHHHHB")
assert _HEADER.size == FRAGMENT_HEADER_SIZE

#: Message types carried in fragments, with the message sequence number each must carry.
HANDSHAKE_TYPES: dict[int, int] = {
    MessageType.HANDSHAKE_INIT: 0,
    MessageType.HANDSHAKE_RESP: 1,
    MessageType.HANDSHAKE_FINISH: 2,
}


@dataclass(frozen=True, slots=True)
class Fragment:
    """One parsed handshake fragment."""

    msg_type: int
    sender_index: int
    receiver_index: int
    message_seq: int
    total_length: int
    offset: int
    cookie: bytes
    data: bytes


def fragment_message(
    msg_type: MessageType,
    message: bytes,
    *,
    sender_index: int,
    receiver_index: int,
    cookie: bytes = b"",
    max_datagram_size: int = MAX_DATAGRAM_SIZE,
) -> list[bytes]:
    """Cut ``message`` into datagrams of at most ``max_datagram_size`` bytes."""
    seq = HANDSHAKE_TYPES.get(msg_type)
    if seq is None:
        raise LocalProtocolError(f"message type {int(msg_type)} is not fragmented")
    if not 0 < len(message) <= MAX_HANDSHAKE_MESSAGE_SIZE:
        raise LocalProtocolError("handshake message size out of range")
    if cookie and (msg_type != MessageType.HANDSHAKE_INIT or len(cookie) != COOKIE_SIZE):
        raise LocalProtocolError("only INIT carries a cookie, of exactly 16 bytes")
    room = max_datagram_size - FRAGMENT_HEADER_SIZE - len(cookie)
    if room <= 0:
        raise LocalProtocolError("datagram size too small for a fragment")
    total = len(message)
    view = memoryview(message)
    out: list[bytes] = []
    for offset in range(0, total, room):
        chunk = view[offset : offset + room]
        header = _HEADER.pack(
            msg_type,
            sender_index,
            receiver_index,
            seq,
            total,
            offset,
            len(chunk),
            len(cookie),
        )
        out.append(b"".join((header, cookie, chunk)))
    return out


def parse_fragment(datagram: bytes) -> Fragment:
    """Parse one fragment datagram; raise :class:`RemoteProtocolError` if it is malformed."""
    if len(datagram) > MAX_DATAGRAM_SIZE:
        raise RemoteProtocolError(
            DropReason.DATAGRAM_TOO_LARGE, "datagram exceeds the maximum size"
        )
    if len(datagram) < FRAGMENT_HEADER_SIZE:
        raise RemoteProtocolError(DropReason.TRUNCATED, "fragment shorter than its header")
    msg_type, sender, receiver, seq, total, offset, length, cookie_len = _HEADER.unpack_from(
        datagram
    )
    expected_seq = HANDSHAKE_TYPES.get(msg_type)
    if expected_seq is None:
        raise RemoteProtocolError(DropReason.BAD_TYPE, "not a handshake fragment")
    if seq != expected_seq:
        raise RemoteProtocolError(
            DropReason.BAD_MESSAGE_SEQ, "message sequence does not match type"
        )
    if cookie_len not in (0, COOKIE_SIZE) or (
        cookie_len and msg_type != MessageType.HANDSHAKE_INIT
    ):
        raise RemoteProtocolError(DropReason.BAD_COOKIE_LENGTH, "invalid cookie length")
    if msg_type == MessageType.HANDSHAKE_INIT and receiver != 0:
        raise RemoteProtocolError(DropReason.BAD_INDEX, "INIT must carry receiver index 0")
    if msg_type != MessageType.HANDSHAKE_INIT and receiver == 0:
        raise RemoteProtocolError(DropReason.BAD_INDEX, "receiver index 0 is reserved for INIT")
    if not 0 < total <= MAX_HANDSHAKE_MESSAGE_SIZE:
        raise RemoteProtocolError(DropReason.MESSAGE_TOO_LARGE, "message length out of range")
    start = FRAGMENT_HEADER_SIZE + cookie_len
    if length == 0 or len(datagram) - start != length:
        raise RemoteProtocolError(
            DropReason.BAD_LENGTH, "fragment length does not match the datagram"
        )
    if offset + length > total:
        raise RemoteProtocolError(DropReason.BAD_OFFSET, "fragment extends past the message end")
    return Fragment(
        msg_type=msg_type,
        sender_index=sender,
        receiver_index=receiver,
        message_seq=seq,
        total_length=total,
        offset=offset,
        cookie=datagram[FRAGMENT_HEADER_SIZE:start],
        data=datagram[start:],
    )


_Key = tuple[int, int, int, int]


class PartialMessage:
    """One message being reassembled: a buffer and the sorted, merged ranges received.

    ``deadline`` is when it is discarded if still incomplete (fixed when it is created)."""

    __slots__ = ("buffer", "deadline", "ranges")

    def __init__(self, total: int, deadline: float) -> None:
        self.buffer = bytearray(total)
        self.ranges: list[tuple[int, int]] = []
        self.deadline = deadline

    def add(self, offset: int, data: bytes) -> bool:
        """Insert ``data`` at ``offset``; return True when the message is complete."""
        end = offset + len(data)
        buf = self.buffer
        for start, stop in self.ranges:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi and buf[lo:hi] != data[lo - offset : hi - offset]:
                raise RemoteProtocolError(
                    DropReason.FRAGMENT_MISMATCH, "overlapping fragments carry different bytes"
                )
        buf[offset:end] = data
        merged: list[tuple[int, int]] = []
        for start, stop in sorted([*self.ranges, (offset, end)]):
            if merged and start <= merged[-1][1]:
                if stop > merged[-1][1]:
                    merged[-1] = (merged[-1][0], stop)
            else:
                merged.append((start, stop))
        self.ranges = merged
        return merged == [(0, len(buf))]


class Reassembler:
    """Bounded reassembly of fragmented messages for one peer. Not thread-safe.

    Partial messages are keyed by (type, sender index, receiver index, total length), so a
    fragment whose header was tampered with starts its own partial message instead of
    spoiling the real one; such strays expire ``timeout`` seconds after their first fragment.
    """

    __slots__ = ("_max_message_size", "_max_partials", "_partials", "_timeout", "evictions")

    def __init__(
        self,
        *,
        max_message_size: int = MAX_HANDSHAKE_MESSAGE_SIZE,
        max_partials: int = MAX_PARTIAL_MESSAGES,
        timeout: float = REASSEMBLY_TIMEOUT,
    ) -> None:
        if max_message_size <= 0 or max_partials <= 0 or timeout <= 0:
            raise LocalProtocolError("reassembly bounds must be positive")
        self._max_message_size = max_message_size
        self._max_partials = max_partials
        self._timeout = timeout
        self._partials: dict[_Key, PartialMessage] = {}
        #: Partial messages discarded to make room for a new one.
        self.evictions = 0

    def __len__(self) -> int:
        """Number of partial messages held."""
        return len(self._partials)

    def add(self, fragment: Fragment, now: float) -> bytes | None:
        """Add a fragment; return the whole message once it is complete, else None.

        Raises :class:`RemoteProtocolError` for a message over the size bound or an
        inconsistent overlap (the partial message is then discarded). A new partial message
        beyond the partial-message bound evicts the oldest one (counted in :attr:`evictions`).
        """
        self.expire(now)
        if fragment.total_length > self._max_message_size:
            raise RemoteProtocolError(
                DropReason.MESSAGE_TOO_LARGE, "message exceeds the reassembly bound"
            )
        if fragment.offset == 0 and len(fragment.data) == fragment.total_length:
            return fragment.data
        key = (
            fragment.msg_type,
            fragment.sender_index,
            fragment.receiver_index,
            fragment.total_length,
        )
        partial = self._partials.get(key)
        if partial is None:
            if len(self._partials) >= self._max_partials:
                # Full: the oldest partial goes (dicts keep insertion order). A genuine
                # message completes within a round trip of its first fragment, so strays
                # that crowd the table cannot keep it out.
                del self._partials[next(iter(self._partials))]
                self.evictions += 1
            partial = PartialMessage(fragment.total_length, now + self._timeout)
            self._partials[key] = partial
        # The deadline stays where the first fragment put it: a sender that trickles new
        # bytes cannot keep a buffer alive longer than ``timeout``.
        try:
            complete = partial.add(fragment.offset, fragment.data)
        except RemoteProtocolError:
            del self._partials[key]
            raise
        if not complete:
            return None
        del self._partials[key]
        return bytes(partial.buffer)

    def expire(self, now: float) -> int:
        """Discard partial messages whose reassembly timeout passed; return how many."""
        stale = [key for key, p in self._partials.items() if p.deadline <= now]
        for key in stale:
            del self._partials[key]
        return len(stale)

    def next_deadline(self) -> float | None:
        """The earliest reassembly timeout, or None when nothing is partial."""
        return min((p.deadline for p in self._partials.values()), default=None)

    def clear(self) -> None:
        """Drop every partial message."""
        self._partials.clear()
