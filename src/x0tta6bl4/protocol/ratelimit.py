"""Token buckets: the listener's CPU budget for new responders, overall and per source.

:class:`TokenBucket` refills continuously at ``rate`` tokens per second up to ``burst``.
:class:`SourceLimiter` keeps one bucket per source key in a fixed-size table: when the table
is full, the least recently used source is forgotten (it starts again with a full bucket), so
an attacker naming ever new sources costs a bounded amount of memory, not more. This is
WireGuard's ratelimiter (wireguard-go ``ratelimiter/``) without its garbage-collector
goroutine: the table bound replaces the sweep. Nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict

from x0tta6bl4.protocol.errors import LocalProtocolError

__all__ = ["SourceLimiter", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; starts full. Not thread-safe."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise LocalProtocolError("a token bucket needs rate > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False (nothing taken) otherwise."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def available(self, now: float) -> float:
        """Tokens held at ``now`` (fractional)."""
        self._refill(now)
        return self._tokens

    def give_back(self) -> None:
        """Return a token taken by a :meth:`take` whose work did not happen."""
        self._tokens = min(self._burst, self._tokens + 1.0)


class SourceLimiter:
    """One :class:`TokenBucket` per source in a table of at most ``max_sources`` entries."""

    __slots__ = ("_buckets", "_burst", "_max", "_rate", "evictions")

    def __init__(self, rate: float, burst: int, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise LocalProtocolError("a source limiter needs positive bounds")
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        #: Sources forgotten because the table was full.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: bytes, now: float) -> bool:
        """Take one token from ``source``'s bucket (created full on first sight)."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
                self.evictions += 1
            bucket = self._buckets[source] = TokenBucket(self._rate, self._burst, now)
        else:
            self._buckets.move_to_end(source)
        return bucket.take(now)

    def give_back(self, source: bytes) -> None:
        """Return the token a :meth:`take` took for ``source`` (if it is still tracked)."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.give_back()
