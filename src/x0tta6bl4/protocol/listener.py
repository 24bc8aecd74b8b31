"""The responder side of a local endpoint: INIT datagrams in, responder handshakes out.

:class:`HandshakeListener` receives every INIT fragment that reaches the endpoint, from any
address. It

1. routes a retransmitted INIT to the responder already answering it (which re-sends RESP);
   an INIT from the same address and index that differs from the one answered is a new
   INIT (the first may have been corrupted in flight) and gets its own responder;
2. when **under load** (``in_progress >= under_load_threshold``, or ``force_under_load``),
   answers an INIT fragment that does not echo a valid cookie with a stateless COOKIE_REPLY:
   nothing is reassembled, decapsulated, signed or stored for it
   (:mod:`x0tta6bl4.protocol.cookie`);
3. otherwise reassembles INIT (bounded per address and overall) and builds a
   :class:`~x0tta6bl4.protocol.handshake.ResponderHandshake`, which signs and queues RESP.

``receive_datagram`` returns the responder that took the datagram (new or existing) so the
owner can register it under its ``local_index`` (FINISH datagrams carry that index and go to
the responder directly) and drain its ``datagrams_to_send()`` / ``next_event()``. Cookie
replies are collected with :meth:`HandshakeListener.datagrams_to_send` as
``(datagram, addr)`` pairs. ``addr`` is opaque bytes chosen by the owner (for UDP: packed IP
address and port), at most 255 bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from x0tta6bl4.protocol.constants import (
    INIT_MESSAGE_SIZE,
    MAX_PENDING_INITS,
    UNDER_LOAD_THRESHOLD,
    MessageType,
)
from x0tta6bl4.protocol.cookie import CookieJar
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.fragments import Fragment, Reassembler, parse_fragment
from x0tta6bl4.protocol.handshake import (
    HandshakeConfig,
    HandshakeState,
    ResponderHandshake,
    random_index,
)
from x0tta6bl4.protocol.messages import CookieReply, InitMessage

__all__ = ["HandshakeListener"]

_MAX_ADDR = 255


class HandshakeListener:
    """Accepts INIT for one local endpoint, with the cookie defence. Not thread-safe.

    ``new_index`` allocates the local index of each new responder (the owner's index table
    should make sure it is unused); by default a random non-zero u32.
    """

    def __init__(
        self,
        config: HandshakeConfig,
        now: float,
        *,
        under_load_threshold: int = UNDER_LOAD_THRESHOLD,
        max_pending_inits: int = MAX_PENDING_INITS,
        cookie_jar: CookieJar | None = None,
        new_index: Callable[[], int] | None = None,
    ) -> None:
        if under_load_threshold < 0 or max_pending_inits <= 0:
            raise LocalProtocolError("listener bounds must be positive")
        self._config = config
        self._threshold = under_load_threshold
        self._max_pending = max_pending_inits
        self._jar = cookie_jar if cookie_jar is not None else CookieJar(now)
        self._new_index = new_index if new_index is not None else random_index
        self._pending: dict[bytes, Reassembler] = {}
        self._responders: dict[tuple[bytes, int], ResponderHandshake] = {}
        self._outbox: list[tuple[bytes, bytes]] = []
        #: When True the listener behaves as under load regardless of the threshold.
        self.force_under_load = False
        #: Datagrams dropped, by :attr:`RemoteProtocolError.reason`.
        self.dropped: Counter[DropReason] = Counter()
        #: ``cookie_replies``, ``responders`` (created), ``init_retransmissions`` (routed).
        self.stats: Counter[str] = Counter()

    @property
    def in_progress(self) -> int:
        """Responders that have sent RESP and wait for FINISH."""
        return sum(1 for r in self._responders.values() if r.state is HandshakeState.WAIT_FINISH)

    @property
    def under_load(self) -> bool:
        return self.force_under_load or self.in_progress >= self._threshold

    def receive_datagram(self, data: bytes, addr: bytes, now: float) -> ResponderHandshake | None:
        """Process one INIT datagram from ``addr``; return the responder that took it, if any.

        Never raises for bad input (it is dropped and counted in :attr:`dropped`).
        """
        if len(addr) > _MAX_ADDR:
            raise LocalProtocolError("address longer than 255 bytes")
        self._prune()
        try:
            return self._receive(data, addr, now)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return None

    def datagrams_to_send(self) -> list[tuple[bytes, bytes]]:
        """``(datagram, addr)`` pairs to send now: cookie replies (the queue is emptied)."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When partially reassembled INITs expire, or None."""
        deadlines = [r.next_deadline() for r in self._pending.values()]
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Discard partially reassembled INITs whose reassembly timeout passed."""
        for addr, reassembler in list(self._pending.items()):
            reassembler.expire(now)
            if not len(reassembler):
                del self._pending[addr]
        self._prune()

    # --- internals ----------------------------------------------------------------------------

    def _prune(self) -> None:
        for key in [k for k, r in self._responders.items() if r.done]:
            del self._responders[key]

    def _receive(self, data: bytes, addr: bytes, now: float) -> ResponderHandshake | None:
        fragment = parse_fragment(data)
        if fragment.msg_type != MessageType.HANDSHAKE_INIT:
            raise RemoteProtocolError(DropReason.UNEXPECTED_MESSAGE, "the listener takes INIT only")
        if fragment.total_length != INIT_MESSAGE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "INIT has the wrong length")
        existing = self._responders.get((addr, fragment.sender_index))
        matched = existing is not None and existing.matches_init(fragment)
        if matched:
            assert existing is not None
            self.stats["init_retransmissions"] += 1
            existing.receive_datagram(data, now)
            if addr not in self._pending:
                return existing
            # Another INIT from this address is being reassembled (the one we answered may
            # have been corrupted in flight): this fragment may be part of it too.
        elif self.under_load and not self._jar.check(
            fragment.cookie, addr, fragment.sender_index, now
        ):
            cookie = self._jar.make(addr, fragment.sender_index, now)
            reply = CookieReply(receiver_index=fragment.sender_index, cookie=cookie)
            self._outbox.append((reply.encode(), addr))
            self.stats["cookie_replies"] += 1
            return None
        message = self._reassemble(fragment, addr, now)
        if message is None or (existing is not None and message == existing.init_message):
            return existing if matched else None
        init = InitMessage.parse(message)
        if init.sender_index != fragment.sender_index:
            raise RemoteProtocolError(
                DropReason.INDEX_MISMATCH, "INIT index differs from its fragments"
            )
        responder = ResponderHandshake(self._config, message, now, local_index=self._new_index())
        self._responders[(addr, init.sender_index)] = responder
        self.stats["responders"] += 1
        return responder

    def _reassemble(self, fragment: Fragment, addr: bytes, now: float) -> bytes | None:
        reassembler = self._pending.get(addr)
        if reassembler is None:
            if fragment.offset == 0 and len(fragment.data) == fragment.total_length:
                return fragment.data
            if len(self._pending) >= self._max_pending:
                raise RemoteProtocolError(
                    DropReason.TOO_MANY_PENDING, "too many INITs being reassembled"
                )
            reassembler = Reassembler(
                max_message_size=INIT_MESSAGE_SIZE,
                max_partials=self._config.max_partial_messages,
                timeout=self._config.reassembly_timeout,
            )
            self._pending[addr] = reassembler
        try:
            return reassembler.add(fragment, now)
        finally:
            if not len(reassembler):
                del self._pending[addr]
