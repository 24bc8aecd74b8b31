"""Link-layer fragmentation of inner frames larger than one packet, sans-IO.

A signed link-state advert (≈ 3.7 KB, up to 22 KB) or a database summary does not fit one
1472-byte link packet. Rather than rely on IP fragmentation (which real networks often
drop), the sender cuts the *encoded* frame into FRAGMENT frames (``protocol/frames.py``)
that each fill at most one packet::

    FRAGMENT  msg_id u32 ‖ total u16 ‖ offset u16 ‖ data

``msg_id`` counts per link and sender; ``total`` is the length of the encoded frame (at most
65,535 bytes). Fragments travel inside the link's transport packets, so they are
authenticated and never replayed; only the peer itself can send inconsistent ones.

:class:`FrameReassembler` (one per link) rebuilds messages with bounds:

* ``max_size`` (65,535): a larger ``total`` is dropped (``fragment_too_large``);
* ``max_partials`` (4) incomplete messages at once: a new one evicts the oldest
  (``fragment_evicted``);
* ``timeout`` (2 s): an incomplete message older than that is discarded when the next
  fragment from the peer arrives (``fragment_expired``); memory stays bounded by
  ``max_partials × max_size`` without a timer of its own;
* a fragment that disagrees with its message (another ``total``, an offset already seen,
  more bytes than ``total``, pieces that do not tile it) discards that message
  (``fragment_inconsistent``).

A receiver that recognises a message by its first fragment (the node does, for copies of an
advert it already holds: flooding delivers each advert once per link) may :meth:`discard` it:
its remaining fragments are then skipped without being stored.

The reassembled bytes are a frame sequence decoded like a packet's plaintext; the node drops
one that contains FRAGMENT frames again (``fragment_nested``). Counters: :attr:`dropped`.
Not thread-safe: one owner drives it.
"""

from __future__ import annotations

from collections import Counter, deque

from x0tta6bl4.node.drops import NodeDrop
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.frames import FRAME_HEADER_SIZE, Fragment, encode_frames

__all__ = [
    "FRAGMENT_OVERHEAD",
    "MAX_REASSEMBLED_SIZE",
    "FrameReassembler",
    "split_frame",
]

#: A FRAGMENT frame's header: frame header plus msg_id, total and offset.
FRAGMENT_OVERHEAD = FRAME_HEADER_SIZE + 8
#: ``total`` is a u16.
MAX_REASSEMBLED_SIZE = 0xFFFF


def split_frame(encoded: bytes, msg_id: int, max_plaintext: int) -> list[bytes]:
    """Cut one encoded frame into encoded FRAGMENT frames of at most ``max_plaintext`` bytes.

    Raises :class:`LocalProtocolError` when ``encoded`` exceeds
    :data:`MAX_REASSEMBLED_SIZE` or ``max_plaintext`` leaves no room for data.
    """
    if not 0 < len(encoded) <= MAX_REASSEMBLED_SIZE:
        raise LocalProtocolError(
            f"a fragmented message must be 1..{MAX_REASSEMBLED_SIZE} bytes, not {len(encoded)}"
        )
    piece = max_plaintext - FRAGMENT_OVERHEAD
    if piece < 1:
        raise LocalProtocolError(f"a plaintext of {max_plaintext} bytes cannot hold a fragment")
    total = len(encoded)
    return [
        encode_frames([Fragment(msg_id, total, offset, encoded[offset : offset + piece])])
        for offset in range(0, total, piece)
    ]


class _Partial:
    __slots__ = ("pieces", "received", "started", "total")

    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.started = started
        self.received = 0
        self.pieces: dict[int, bytes] = {}


class FrameReassembler:
    """Rebuilds the fragmented messages of one link (see the module docstring)."""

    def __init__(
        self,
        *,
        max_size: int = MAX_REASSEMBLED_SIZE,
        max_partials: int = 4,
        timeout: float = 2.0,
    ) -> None:
        if not 1 <= max_size <= MAX_REASSEMBLED_SIZE or max_partials < 1 or timeout <= 0:
            raise ValueError("need 1 <= max_size <= 65535, max_partials >= 1, timeout > 0")
        self.max_size = max_size
        self.max_partials = max_partials
        self.timeout = timeout
        self._partials: dict[int, _Partial] = {}
        self._discarded: deque[int] = deque(maxlen=2 * max_partials)
        #: Fragments and messages dropped, by reason.
        self.dropped: Counter[str] = Counter()
        #: Fragments ignored because their message was discarded on purpose.
        self.skipped = 0

    def __len__(self) -> int:
        """Incomplete messages held."""
        return len(self._partials)

    def add(self, fragment: Fragment, now: float) -> bytes | None:
        """Take one fragment; the whole message once its last piece arrived, else None."""
        self._expire(now)
        if fragment.msg_id in self._discarded:
            self.skipped += 1
            return None
        if fragment.total > self.max_size:
            self.dropped[NodeDrop.FRAGMENT_TOO_LARGE] += 1
            return None
        partial = self._partials.get(fragment.msg_id)
        if partial is None:
            if len(self._partials) >= self.max_partials:
                oldest = min(self._partials, key=lambda k: self._partials[k].started)
                del self._partials[oldest]
                self.dropped[NodeDrop.FRAGMENT_EVICTED] += 1
            partial = self._partials[fragment.msg_id] = _Partial(fragment.total, now)
        size = len(fragment.data)
        if (
            partial.total != fragment.total
            or fragment.offset in partial.pieces
            or partial.received + size > partial.total
        ):
            del self._partials[fragment.msg_id]
            self.dropped[NodeDrop.FRAGMENT_INCONSISTENT] += 1
            return None
        partial.pieces[fragment.offset] = fragment.data
        partial.received += size
        if partial.received < partial.total:
            return None
        del self._partials[fragment.msg_id]
        position = 0
        parts = []
        for offset in sorted(partial.pieces):
            if offset != position:
                self.dropped[NodeDrop.FRAGMENT_INCONSISTENT] += 1
                return None
            data = partial.pieces[offset]
            parts.append(data)
            position += len(data)
        return b"".join(parts)

    def discard(self, msg_id: int) -> None:
        """Drop message ``msg_id`` and ignore its other fragments (the caller already knows
        its content, e.g. a duplicate advert recognised by its first fragment)."""
        self._partials.pop(msg_id, None)
        if msg_id not in self._discarded:
            self._discarded.append(msg_id)

    def clear(self) -> None:
        self._partials.clear()
        self._discarded.clear()

    def _expire(self, now: float) -> None:
        if not self._partials:
            return
        limit = now - self.timeout
        for msg_id in [k for k, p in self._partials.items() if p.started <= limit]:
            del self._partials[msg_id]
            self.dropped[NodeDrop.FRAGMENT_EXPIRED] += 1
