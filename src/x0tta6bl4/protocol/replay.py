"""RFC 6479 anti-replay sliding window, as in wireguard-go's ``replay/`` package.

The window is a ring of :data:`~x0tta6bl4.protocol.constants.REPLAY_RING_BLOCKS` 64-bit
blocks. Bit ``c mod 64`` of block ``(c / 64) mod ring`` records whether counter ``c`` was seen.
When a counter beyond the highest one seen arrives, the blocks it skips over are cleared
(at most the whole ring) and it becomes the new highest. One block is always kept clear
ahead, so the window covers ``(ring − 1) × 64`` = 8128 counters behind the highest one:

* a counter more than :data:`WINDOW_SIZE` behind the highest is rejected (too old),
* a counter seen before is rejected (replay),
* anything else, including reordered packets within the window, is accepted once.

Call :meth:`ReplayFilter.validate_counter` only **after** the packet's AEAD tag verified
(as WireGuard does): otherwise a forged packet with a huge counter would slide the window
and make every genuine packet look old.

Concurrency: a filter is **not thread-safe**; the owner (one transport session) serialises
calls.
"""

from __future__ import annotations

from x0tta6bl4.protocol.constants import REPLAY_RING_BLOCKS, REPLAY_WINDOW_SIZE
from x0tta6bl4.protocol.errors import InvalidConfigError

__all__ = ["WINDOW_SIZE", "ReplayFilter"]

_BLOCK_BITS = 64
_RING_BLOCKS = REPLAY_RING_BLOCKS
_BLOCK_MASK = _RING_BLOCKS - 1
if _RING_BLOCKS & _BLOCK_MASK:  # pragma: no cover - a constants mistake, caught at import
    raise InvalidConfigError("REPLAY_RING_BLOCKS must be a power of two")

#: Counters up to this far behind the highest counter seen are still accepted.
WINDOW_SIZE = REPLAY_WINDOW_SIZE
if WINDOW_SIZE != (_RING_BLOCKS - 1) * _BLOCK_BITS:  # pragma: no cover - constants mistake
    raise InvalidConfigError("REPLAY_WINDOW_SIZE must be (REPLAY_RING_BLOCKS - 1) * 64")


class ReplayFilter:
    """Sliding-window replay filter for one receive key. Not thread-safe."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * _RING_BLOCKS

    def reset(self) -> None:
        """Forget every counter seen (for a new key)."""
        self._last = 0
        ring = self._ring
        for i in range(_RING_BLOCKS):
            ring[i] = 0

    def validate_counter(self, counter: int, limit: int) -> bool:
        """Record ``counter`` and return True if it is new, in the window and below ``limit``.

        Returns False (and changes nothing) for a counter at or above ``limit``, more than
        :data:`WINDOW_SIZE` behind the highest counter seen, or seen before.
        """
        # Hot path: literals instead of module constants (6 = log2 of 64-bit blocks,
        # 63 = bit mask, _BLOCK_MASK = ring mask) save global lookups on every packet.
        if not 0 <= counter < limit:
            return False
        ring = self._ring
        last = self._last
        if counter > last:
            # Move the window forward. Blocks it enters are cleared (at most the whole ring);
            # bits above ``last`` in last's own block were never set, so ``counter`` is new.
            index_block = counter >> 6
            current = last >> 6
            if index_block != current:
                for i in range(current + 1, current + min(index_block - current, _RING_BLOCKS) + 1):
                    ring[i & _BLOCK_MASK] = 0
            self._last = counter
            ring[index_block & _BLOCK_MASK] |= 1 << (counter & 63)
            return True
        if last - counter > WINDOW_SIZE:
            return False
        index_block = (counter >> 6) & _BLOCK_MASK
        bit = 1 << (counter & 63)
        old = ring[index_block]
        if old & bit:
            return False
        ring[index_block] = old | bit
        return True
