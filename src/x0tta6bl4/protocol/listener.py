"""The responder side of a local endpoint: INIT datagrams in, responder handshakes out.

:class:`HandshakeListener` receives every INIT fragment that reaches the endpoint, from any
address, and spends nothing on an address before the address is **validated**
(docs/protocol.md, "Address validation and anti-amplification"):

1. An INIT fragment whose header does not echo a valid cookie for (address, initiator index)
   is answered with one stateless 21-byte COOKIE_REPLY and forgotten: nothing is reassembled,
   decapsulated, signed or stored (:mod:`x0tta6bl4.protocol.cookie`). Every INIT fragment is
   at least 19 bytes, so what an unvalidated address receives from us is at most 21/19 of what
   it sent — within QUIC's factor of 3 (RFC 9000, section 8.1).
2. A fragment with a valid cookie that belongs to the INIT a responder already answers is
   routed to it (it re-sends RESP, rate-limited); an INIT from the same address and index
   that differs from the one answered is a new INIT (the first may have been corrupted in
   flight): it replaces that responder.
3. Other fragments are reassembled in a bounded table of partial INITs keyed by (address,
   initiator index): at most ``max_partial_messages`` per address (more are refused,
   ``too_many_partials``) and ``max_pending_inits`` in all (when full, the oldest partial is
   evicted). A partial INIT is discarded ``reassembly_timeout`` seconds after its first
   fragment, whatever arrives later.
4. A complete INIT becomes a :class:`~x0tta6bl4.protocol.handshake.ResponderHandshake` (which
   encapsulates, signs and queues RESP) only within the CPU budget: a token bucket of
   ``responder_rate`` per second over all sources (``over_budget``), and, while the listener
   is **under load** (responders waiting for FINISH plus partial INITs reach
   ``under_load_threshold``, or ``force_under_load``), one bucket of ``source_rate`` per
   second per source (``source_rate_limited``). An INIT the owner marks ``known`` (for the
   node: from the address of a peer it has a channel with) first draws from a bucket of
   its own (``known_rate``), so strangers spending the shared budget do not keep a known
   peer out. At most ``max_responders`` are held; the oldest is aborted to make room.

``receive_datagram`` returns the responder that took the datagram (new or existing) so the
owner can register it under its ``local_index`` (FINISH datagrams carry that index and go to
the responder directly) and drain its ``datagrams_to_send()`` / ``next_event()``. Responders
the listener aborted (evicted or replaced) are handed back once by
:meth:`HandshakeListener.evicted_responders` so that the owner can unregister them. Cookie
replies are collected with :meth:`HandshakeListener.datagrams_to_send` as ``(datagram,
addr)`` pairs.

``addr`` is opaque bytes chosen by the owner (for UDP: the packed IP address and port), at
most :data:`~x0tta6bl4.protocol.constants.MAX_ADDRESS_SIZE` bytes; ``source`` (default:
``addr``) is the coarser key of the per-source limit (for UDP: the IP address, so that one
host cannot multiply its budget by using many ports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from x0tta6bl4.protocol.constants import (
    INIT_MESSAGE_SIZE,
    KNOWN_RESPONDER_BURST,
    KNOWN_RESPONDER_RATE,
    MAX_ADDRESS_SIZE,
    MAX_PENDING_INITS,
    MAX_RESPONDERS,
    MAX_TRACKED_SOURCES,
    RESPONDER_BURST,
    RESPONDER_RATE,
    SOURCE_RESPONDER_BURST,
    SOURCE_RESPONDER_RATE,
    UNDER_LOAD_THRESHOLD,
    MessageType,
)
from x0tta6bl4.protocol.cookie import CookieJar
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.fragments import Fragment, PartialMessage, parse_fragment
from x0tta6bl4.protocol.handshake import (
    HandshakeConfig,
    HandshakeState,
    ResponderHandshake,
    random_index,
)
from x0tta6bl4.protocol.messages import CookieReply, InitMessage
from x0tta6bl4.protocol.ratelimit import SourceLimiter, TokenBucket

__all__ = ["HandshakeListener"]

_Key = tuple[bytes, int]


class HandshakeListener:
    """Accepts INIT for one local endpoint: address validation, bounds, budgets.

    Not thread-safe. ``new_index`` allocates the local index of each new responder (the
    owner's index table should make sure it is unused); by default a random non-zero u32.
    """

    def __init__(
        self,
        config: HandshakeConfig,
        now: float,
        *,
        under_load_threshold: int = UNDER_LOAD_THRESHOLD,
        max_pending_inits: int = MAX_PENDING_INITS,
        max_responders: int = MAX_RESPONDERS,
        responder_rate: float = RESPONDER_RATE,
        responder_burst: int = RESPONDER_BURST,
        source_rate: float = SOURCE_RESPONDER_RATE,
        source_burst: int = SOURCE_RESPONDER_BURST,
        known_rate: float = KNOWN_RESPONDER_RATE,
        known_burst: int = KNOWN_RESPONDER_BURST,
        max_sources: int = MAX_TRACKED_SOURCES,
        cookie_jar: CookieJar | None = None,
        new_index: Callable[[], int] | None = None,
    ) -> None:
        if under_load_threshold < 0 or max_pending_inits <= 0 or max_responders <= 0:
            raise LocalProtocolError("listener bounds must be positive")
        self._config = config
        self._threshold = under_load_threshold
        self._max_pending = max_pending_inits
        self._max_responders = max_responders
        self._budget = TokenBucket(responder_rate, responder_burst, now)
        self._sources = SourceLimiter(source_rate, source_burst, max_sources)
        self._known_budget = TokenBucket(known_rate, known_burst, now)
        self._jar = cookie_jar if cookie_jar is not None else CookieJar(now)
        self._new_index = new_index if new_index is not None else random_index
        # Insertion order is creation order, and every partial lives the same timeout, so the
        # first entry is both the oldest and the next to expire.
        self._pending: dict[_Key, PartialMessage] = {}
        self._pending_per_addr: Counter[bytes] = Counter()
        self._responders: dict[_Key, ResponderHandshake] = {}
        self._evicted: list[ResponderHandshake] = []
        self._outbox: list[tuple[bytes, bytes]] = []
        #: When True the listener behaves as under load regardless of the threshold.
        self.force_under_load = False
        #: Datagrams dropped, by :attr:`RemoteProtocolError.reason`.
        self.dropped: Counter[DropReason] = Counter()
        #: ``cookie_replies``, ``responders`` (created; ``known_responders`` of them on the
        #: known budget), ``init_retransmissions`` (routed), ``partials_evicted``,
        #: ``responders_evicted``, ``responders_replaced``.
        self.stats: Counter[str] = Counter()

    # --- state --------------------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        """Responders that have sent RESP and wait for FINISH."""
        return sum(1 for r in self._responders.values() if r.state is HandshakeState.WAIT_FINISH)

    @property
    def pending(self) -> int:
        """Partially reassembled INITs held."""
        return len(self._pending)

    @property
    def responders(self) -> int:
        """Responder machines held (waiting for FINISH, or completed and not yet closed)."""
        return len(self._responders)

    @property
    def under_load(self) -> bool:
        """True when new responders are also limited per source."""
        return self.force_under_load or self.in_progress + len(self._pending) >= self._threshold

    # --- inputs -------------------------------------------------------------------------------

    def receive_datagram(
        self,
        data: bytes,
        addr: bytes,
        now: float,
        *,
        source: bytes | None = None,
        known: bool = False,
    ) -> ResponderHandshake | None:
        """Process one INIT datagram from ``addr``; return the responder that took it, if any.

        ``source`` keys the per-source budget (default ``addr``); ``known`` marks an address
        the owner vouches for (its INITs draw from their own budget first). Never raises for
        bad input (it is dropped and counted in :attr:`dropped`).
        """
        if len(addr) > MAX_ADDRESS_SIZE:
            raise LocalProtocolError(f"address longer than {MAX_ADDRESS_SIZE} bytes")
        try:
            return self._receive(data, addr, addr if source is None else source, known, now)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return None

    def handle_timer(self, now: float) -> None:
        """Discard partial INITs whose reassembly timeout passed; forget finished responders."""
        self._expire(now)
        self._prune()

    # --- outputs ------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, bytes]]:
        """``(datagram, addr)`` pairs to send now: cookie replies (the queue is emptied)."""
        out, self._outbox = self._outbox, []
        return out

    def evicted_responders(self) -> list[ResponderHandshake]:
        """Responders aborted by the listener since the last call (the list is emptied)."""
        out, self._evicted = self._evicted, []
        return out

    def get_timer(self) -> float | None:
        """When the oldest partial INIT expires, or None."""
        for partial in self._pending.values():
            return partial.deadline
        return None

    # --- internals ----------------------------------------------------------------------------

    def _prune(self) -> None:
        for key in [k for k, r in self._responders.items() if r.done]:
            del self._responders[key]

    def _expire(self, now: float) -> None:
        while self._pending:
            key, partial = next(iter(self._pending.items()))
            if partial.deadline > now:
                break
            self._drop_pending(key)

    def _drop_pending(self, key: _Key) -> None:
        del self._pending[key]
        addr = key[0]
        self._pending_per_addr[addr] -= 1
        if self._pending_per_addr[addr] <= 0:
            del self._pending_per_addr[addr]

    def _evict(self, key: _Key, stat: str) -> None:
        responder = self._responders.pop(key)
        responder.abort()
        self._evicted.append(responder)
        self.stats[stat] += 1

    def _receive(
        self, data: bytes, addr: bytes, source: bytes, known: bool, now: float
    ) -> ResponderHandshake | None:
        fragment = parse_fragment(data)
        if fragment.msg_type != MessageType.HANDSHAKE_INIT:
            raise RemoteProtocolError(DropReason.UNEXPECTED_MESSAGE, "the listener takes INIT only")
        if fragment.total_length != INIT_MESSAGE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "INIT has the wrong length")
        index = fragment.sender_index
        cookie = self._jar.validate(fragment.cookie, addr, index, now)
        if cookie is not None:
            # Not validated: one 21-byte datagram back, and nothing else happens.
            reply = CookieReply(receiver_index=index, cookie=cookie)
            self._outbox.append((reply.encode(), addr))
            self.stats["cookie_replies"] += 1
            return None
        key = (addr, index)
        existing = self._responders.get(key)
        if existing is not None and existing.done:
            del self._responders[key]
            existing = None
        if existing is not None and existing.matches_init(fragment):
            self.stats["init_retransmissions"] += 1
            existing.receive_datagram(data, now)
            if key not in self._pending:
                return existing
            # Another INIT from this address and index is being reassembled (the one we
            # answered may have been corrupted in flight): this fragment may be part of it.
            message = self._reassemble(key, fragment, now)
            if message is None or message == existing.init_message:
                return existing
        else:
            message = self._reassemble(key, fragment, now)
            if message is None:
                return None
        init = InitMessage.parse(message)
        if init.sender_index != index:
            raise RemoteProtocolError(
                DropReason.INDEX_MISMATCH, "INIT index differs from its fragments"
            )
        return self._new_responder(key, message, source, known, now)

    def _reassemble(self, key: _Key, fragment: Fragment, now: float) -> bytes | None:
        self._expire(now)
        partial = self._pending.get(key)
        if partial is None:
            if fragment.offset == 0 and len(fragment.data) == fragment.total_length:
                return fragment.data
            addr = key[0]
            if self._pending_per_addr[addr] >= self._config.max_partial_messages:
                raise RemoteProtocolError(
                    DropReason.TOO_MANY_PARTIALS, "too many INITs from one address"
                )
            if len(self._pending) >= self._max_pending:
                self._drop_pending(next(iter(self._pending)))
                self.stats["partials_evicted"] += 1
            partial = PartialMessage(fragment.total_length, now + self._config.reassembly_timeout)
            self._pending[key] = partial
            self._pending_per_addr[addr] += 1
        try:
            complete = partial.add(fragment.offset, fragment.data)
        except RemoteProtocolError:
            self._drop_pending(key)
            raise
        if not complete:
            return None
        self._drop_pending(key)
        return bytes(partial.buffer)

    def _spend(self, source: bytes, known: bool, now: float) -> None:
        """Take the CPU budget for one responder, or raise why not."""
        if known and self._known_budget.take(now):
            self.stats["known_responders"] += 1
            return
        limited = self.under_load
        if limited and not self._sources.take(source, now):
            raise RemoteProtocolError(
                DropReason.SOURCE_RATE_LIMITED, "this source's budget is spent"
            )
        if not self._budget.take(now):
            if limited:
                self._sources.give_back(source)
            raise RemoteProtocolError(DropReason.OVER_BUDGET, "the responder budget is spent")

    def _new_responder(
        self, key: _Key, message: bytes, source: bytes, known: bool, now: float
    ) -> ResponderHandshake:
        self._prune()
        self._spend(source, known, now)
        responder = ResponderHandshake(self._config, message, now, local_index=self._new_index())
        if key in self._responders:
            self._evict(key, "responders_replaced")
        elif len(self._responders) >= self._max_responders:
            self._evict(next(iter(self._responders)), "responders_evicted")
        self._responders[key] = responder
        self.stats["responders"] += 1
        return responder
