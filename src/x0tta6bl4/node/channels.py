"""Authenticated channels to named peers: PQ handshakes plus transport sessions (sans-IO).

:class:`Channels` is the piece the node uses twice: once for **links** (datagrams go straight
to a UDP address) and once for **end-to-end sessions** (datagrams ride inside ROUTED frames and
the "address" is the destination node id). It owns, for every peer node id, one
:class:`~x0tta6bl4.protocol.session.Session`, at most one initiator handshake in flight, and the
index tables that route handshake fragments and transport packets to the right machine; a
:class:`~x0tta6bl4.protocol.listener.HandshakeListener` answers INITs (cookie defence included).

Inputs: :meth:`Channels.receive` (a datagram from an address), :meth:`Channels.connect`
(start a handshake), :meth:`Channels.send` (seal a plaintext), :meth:`Channels.handle_timer`.
Outputs: :meth:`Channels.datagrams_to_send` (``(bytes, addr)``), :meth:`Channels.next_event`
(:class:`ChannelUp`, :class:`ChannelData`, :class:`HandshakeDone`), :meth:`Channels.get_timer`.

Rules:

* A handshake's peer is known only once it authenticates (FINISH/RESP carry the certificate);
  the completed keys go to the channel of the authenticated node id, whose address becomes the
  one the handshake came from (a restarted peer may use a new port).
* **Collisions.** When both ends initiate at once, the handshake started by the smaller node id
  wins: a node with an initiator in flight drops INITs from that peer's address if its own id is
  smaller, and a node that completes a responder handshake aborts its own pending initiator.
* After a responder installs keys it sends a keepalive at once (the initiator promotes its keys
  on the first packet under them and then confirms its handshake).
* ``needs_rekey`` (120 s) starts a new initiator handshake; the previous keypair keeps
  decrypting until it expires, so no packet is lost across a rekey.

Not thread-safe: one owner drives it.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from x0tta6bl4.crypto.pqsvid import PeerIdentity
from x0tta6bl4.node.drops import NodeDrop, handshake_label
from x0tta6bl4.protocol.constants import MessageType
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError
from x0tta6bl4.protocol.events import FinishRetransmitted, HandshakeCompleted, HandshakeFailed
from x0tta6bl4.protocol.handshake import (
    HandshakeConfig,
    HandshakeState,
    InitiatorHandshake,
    ResponderHandshake,
)
from x0tta6bl4.protocol.keys import TransportKeys
from x0tta6bl4.protocol.listener import HandshakeListener
from x0tta6bl4.protocol.session import OpenResult

__all__ = [
    "Channel",
    "ChannelData",
    "ChannelEvent",
    "ChannelUp",
    "Channels",
    "HandshakeDone",
    "TransportSession",
]


class _KeypairLookup(Protocol):
    def lookup(self, local_index: int, /) -> object | None: ...


class TransportSession(Protocol):
    """What a channel needs of its transport session: the Python reference
    (:class:`~x0tta6bl4.protocol.session.Session`) or the native data plane's
    (``x0tta6bl4_native.Session``, same behaviour; docs/transport.md)."""

    @property
    def can_send(self) -> bool: ...
    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def max_plaintext_size(self) -> int: ...
    @property
    def keypairs(self) -> _KeypairLookup: ...
    def install(self, keys: TransportKeys, now: float) -> None: ...
    def seal(self, plaintext: bytes, now: float) -> bytes: ...
    def open(self, datagram: bytes, now: float) -> OpenResult: ...
    def needs_rekey(self, now: float) -> bool: ...
    def needs_keepalive(self, now: float) -> bool: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


A = TypeVar("A")
_U32 = struct.Struct("!I")
_INIT, _RESP, _FINISH, _TRANSPORT, _COOKIE = (
    int(MessageType.HANDSHAKE_INIT),
    int(MessageType.HANDSHAKE_RESP),
    int(MessageType.HANDSHAKE_FINISH),
    int(MessageType.TRANSPORT),
    int(MessageType.COOKIE_REPLY),
)


@dataclass(frozen=True, slots=True)
class ChannelUp:
    """A handshake with ``node_id`` completed and its keys were installed."""

    node_id: str
    identity: PeerIdentity


@dataclass(frozen=True, slots=True)
class ChannelData:
    """An authentic transport packet from ``node_id`` (``plaintext`` may be empty)."""

    node_id: str
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """A handshake ended: ``ok`` (keys installed) or failed with ``reason``."""

    ok: bool
    reason: str


ChannelEvent = ChannelUp | ChannelData | HandshakeDone

_Handshake = InitiatorHandshake | ResponderHandshake


class Channel(Generic[A]):
    """The state kept for one peer: address, session, initiator in flight, identity."""

    __slots__ = (
        "addr",
        "identity",
        "initiator",
        "last_received",
        "node_id",
        "session",
        "unanswered_since",
    )

    def __init__(self, node_id: str, addr: A, session: TransportSession) -> None:
        self.node_id = node_id
        self.addr = addr
        self.session = session
        self.initiator: InitiatorHandshake | None = None
        self.identity: PeerIdentity | None = None
        self.last_received: float | None = None
        #: When we first sent data that nothing from the peer has followed yet.
        self.unanswered_since: float | None = None

    @property
    def handshaking(self) -> bool:
        """True while an initiator handshake of ours is waiting for RESP."""
        return self.initiator is not None and self.initiator.state is HandshakeState.WAIT_RESP


class Channels(Generic[A]):
    """Handshakes and sessions with every peer of one kind (links or end-to-end)."""

    def __init__(
        self,
        self_id: str,
        config: HandshakeConfig,
        now: float,
        *,
        session_factory: Callable[[str, A], TransportSession],
        addr_key: Callable[[A], bytes],
        source_key: Callable[[A], bytes] | None = None,
        stale_after: float | None = None,
        on_forget: Callable[[str], None] | None = None,
        on_move: Callable[[str, A], None] | None = None,
    ) -> None:
        self.self_id = self_id
        #: Re-handshake when data sent this long ago got no packet back (the peer may have
        #: restarted and lost its keys); None disables it (links have failure detectors).
        self.stale_after = stale_after
        self._config = config
        self._session_factory = session_factory
        #: Told when a peer's state is dropped / its address changes (the native data plane
        #: removes the peer's keys / updates its link address).
        self._on_forget = on_forget
        self._on_move = on_move
        self._addr_key = addr_key
        #: The listener's per-source limit key (the IP address for UDP); default addr_key.
        self._source_key = source_key if source_key is not None else addr_key
        self._listener = HandshakeListener(config, now)
        self._channels: dict[str, Channel[A]] = {}
        self._by_addr: dict[bytes, Channel[A]] = {}
        # The address each handshake sends to: the peer's endpoint for an initiator, the
        # validated INIT's address for a responder. Never moved by unauthenticated input.
        self._handshakes: dict[int, tuple[_Handshake, A]] = {}
        self._transport: dict[int, Channel[A]] = {}
        self._outbox: list[tuple[bytes, A]] = []
        self._events: deque[ChannelEvent] = deque()
        #: Datagrams dropped, by reason.
        self.dropped: Counter[str] = Counter()
        # get_timer() is asked after every datagram; a full scan of every session and
        # handshake is cached (see _deadline_horizon) and invalidated by handshake activity.
        self._now = now
        self._timer: float | None = None
        self._timer_valid = False
        self._keepalive_horizon = float("inf")

    # --- queries ------------------------------------------------------------------------------

    def get(self, node_id: str) -> Channel[A] | None:
        return self._channels.get(node_id)

    def __iter__(self) -> Iterator[Channel[A]]:
        return iter(list(self._channels.values()))

    def __len__(self) -> int:
        return len(self._channels)

    @property
    def listener(self) -> HandshakeListener:
        """The INIT listener (read its ``stats``, ``pending``, ``responders``; do not feed it)."""
        return self._listener

    def can_send(self, node_id: str) -> bool:
        channel = self._channels.get(node_id)
        return channel is not None and channel.session.can_send

    # --- configuration ------------------------------------------------------------------------

    def set_config(self, config: HandshakeConfig, now: float) -> None:
        """Use a new credential/verifier for handshakes started from now on."""
        self._config = config
        self._listener = HandshakeListener(config, now)
        self._timer_valid = False

    def set_addr(self, node_id: str, addr: A) -> None:
        channel = self._channels.get(node_id)
        if channel is not None:
            self._move(channel, addr)

    # --- inputs -------------------------------------------------------------------------------

    def connect(self, node_id: str, addr: A, now: float) -> bool:
        """Start a handshake with ``node_id`` at ``addr`` unless one is in flight."""
        channel = self._channel(node_id, addr)
        if channel.initiator is not None and not channel.initiator.done:
            return False
        self._now = now
        self._timer_valid = False
        initiator = InitiatorHandshake(self._config, now, expected_node_id=node_id)
        channel.initiator = initiator
        self._handshakes[initiator.local_index] = (initiator, channel.addr)
        self._drain(initiator, channel.addr, now)
        return True

    def forget(self, node_id: str) -> None:
        """Drop every state kept for ``node_id``."""
        channel = self._channels.pop(node_id, None)
        if channel is None:
            return
        self._timer_valid = False
        key = self._addr_key(channel.addr)
        if self._by_addr.get(key) is channel:
            del self._by_addr[key]
        if channel.initiator is not None:
            self._handshakes.pop(channel.initiator.local_index, None)
        for index in [i for i, c in self._transport.items() if c is channel]:
            del self._transport[index]
        if self._on_forget is not None:
            self._on_forget(node_id)

    def send(self, node_id: str, plaintext: bytes, now: float) -> bool:
        """Seal ``plaintext`` to ``node_id``; False (nothing sent) without usable keys."""
        channel = self._channels.get(node_id)
        if channel is None or not channel.session.can_send:
            return False
        try:
            datagram = channel.session.seal(plaintext, now)
        except LocalProtocolError:
            return False
        self._outbox.append((datagram, channel.addr))
        if plaintext and channel.unanswered_since is None:
            channel.unanswered_since = now  # a deadline >= now + stale_after: the horizon
        if channel.session.needs_rekey(now):
            self._rekey(channel, now)
        return True

    def receive(self, data: bytes, addr: A, now: float) -> None:
        """Process one datagram from ``addr``. Never raises for bad input."""
        if not data:
            self.dropped[NodeDrop.EMPTY] += 1
            return
        kind = data[0]
        self._now = now
        if kind == _TRANSPORT:
            self._receive_transport(data, now)
            return
        # Handshake traffic may move handshake and listener timers; the paths below invalidate
        # the cached deadline when it did (not for drops and cookie replies: a flood of
        # those must not cost a full timer scan per datagram).
        if kind == _INIT:
            self._receive_init(data, addr, now)
        elif kind in (_RESP, _FINISH):
            self._receive_handshake(data, 5, addr, now)
        elif kind == _COOKIE:
            self._receive_handshake(data, 1, addr, now)
        else:
            self.dropped[DropReason.BAD_TYPE] += 1

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._timer_valid and (self._timer is None or now < self._timer):
            return  # nothing is due (the cached deadline is never later than the real one)
        self._timer_valid = False
        self._listener.handle_timer(now)
        for index, (handshake, addr) in list(self._handshakes.items()):
            deadline = handshake.get_timer()
            if deadline is not None and now >= deadline:
                handshake.handle_timer(now)
            self._drain(handshake, addr, now)
            if handshake.done:
                self._handshakes.pop(index, None)
        for channel in list(self._channels.values()):
            session = channel.session
            deadline = session.get_timer()
            if deadline is not None and now >= deadline:
                session.handle_timer(now)
                for index in [
                    i
                    for i, c in self._transport.items()
                    if c is channel and session.keypairs.lookup(i) is None
                ]:
                    del self._transport[index]
            if session.needs_keepalive(now):
                self.send(channel.node_id, b"", now)
            if session.needs_rekey(now) or self._stale(channel, now):
                self._rekey(channel, now)

    def _stale(self, channel: Channel[A], now: float) -> bool:
        since = channel.unanswered_since
        if self.stale_after is None or since is None or now < since + self.stale_after:
            return False
        channel.unanswered_since = None
        return True

    # --- outputs ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of any handshake or session; may be early, never late.

        A full scan is cached. Between scans, the only deadlines that can appear without a
        handshake (which invalidates the cache) come from transport packets: a session's
        passive keepalive (``now + keepalive_timeout``) and the stale-data check
        (``now + stale_after``); the cached value is capped at the scan time plus the
        smaller of the two, so they are never missed.
        """
        if not self._timer_valid:
            timer = self._scan_timer()
            stale = float("inf") if self.stale_after is None else self.stale_after
            horizon = self._now + min(self._keepalive_horizon, stale)
            self._timer = horizon if timer is None or timer > horizon else timer
            self._timer_valid = True
        return self._timer

    def _scan_timer(self) -> float | None:
        deadlines = [self._listener.get_timer()]
        deadlines.extend(h.get_timer() for h, _ in self._handshakes.values())
        for channel in self._channels.values():
            deadlines.append(channel.session.get_timer())
            if self.stale_after is not None and channel.unanswered_since is not None:
                deadlines.append(channel.unanswered_since + self.stale_after)
        return min((d for d in deadlines if d is not None), default=None)

    def datagrams_to_send(self) -> list[tuple[bytes, A]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> ChannelEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        """True while :meth:`next_event` has something to return."""
        return bool(self._events)

    # --- internals ----------------------------------------------------------------------------

    def _channel(self, node_id: str, addr: A) -> Channel[A]:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = Channel(node_id, addr, self._session_factory(node_id, addr))
            self._keepalive_horizon = min(
                self._keepalive_horizon, channel.session.keepalive_timeout
            )
            self._timer_valid = False
            self._channels[node_id] = channel
            self._by_addr[self._addr_key(addr)] = channel
        elif channel.addr != addr:
            self._move(channel, addr)
        return channel

    def _move(self, channel: Channel[A], addr: A) -> None:
        old = self._addr_key(channel.addr)
        if self._by_addr.get(old) is channel:
            del self._by_addr[old]
        channel.addr = addr
        self._by_addr[self._addr_key(addr)] = channel
        if self._on_move is not None:
            self._on_move(channel.node_id, addr)

    def _rekey(self, channel: Channel[A], now: float) -> None:
        if channel.initiator is None or channel.initiator.done:
            self.connect(channel.node_id, channel.addr, now)

    def _receive_transport(self, data: bytes, now: float) -> None:
        if len(data) < 5:
            self.dropped[DropReason.BAD_LENGTH] += 1
            return
        channel = self._transport.get(_U32.unpack_from(data, 1)[0])
        if channel is None:
            self.dropped[DropReason.UNKNOWN_INDEX] += 1
            return
        try:
            result = channel.session.open(data, now)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return
        self._opened(channel, result.plaintext, result.keypair_promoted, now)

    def opened(self, node_id: str, plaintext: bytes, promoted: bool, now: float) -> None:
        """A transport packet from ``node_id`` that the native data plane authenticated and
        decrypted (``plaintext``: the frames it hands up; ``promoted``: it promoted the next
        keypair). The same bookkeeping as a packet opened here."""
        channel = self._channels.get(node_id)
        if channel is not None:
            self._now = now
            self._opened(channel, plaintext, promoted, now)

    def _opened(self, channel: Channel[A], plaintext: bytes, promoted: bool, now: float) -> None:
        channel.last_received = now
        channel.unanswered_since = None
        initiator = channel.initiator
        if promoted and initiator is not None and initiator.state is HandshakeState.WAIT_CONFIRM:
            initiator.confirm(now)
        self._events.append(ChannelData(channel.node_id, plaintext))

    def _receive_init(self, data: bytes, addr: A, now: float) -> None:
        # Nothing here is kept per address before the listener validates it: the cookie
        # replies it queues are for this address and leave with it now.
        key = self._addr_key(addr)
        channel = self._by_addr.get(key)
        if channel is not None and channel.handshaking and self.self_id < channel.node_id:
            self.dropped[NodeDrop.INIT_COLLISION] += 1
            return
        listener = self._listener
        pending = listener.pending
        # A peer we have a channel with (a neighbour restarting on its endpoint) is "known":
        # strangers spending the shared handshake budget cannot keep it out.
        responder = listener.receive_datagram(
            data, key, now, source=self._source_key(addr), known=channel is not None
        )
        for reply, _ in listener.datagrams_to_send():
            self._outbox.append((reply, addr))
        for reason, count in listener.dropped.items():
            self.dropped[handshake_label(reason)] += count
        listener.dropped.clear()
        for evicted in listener.evicted_responders():
            self._timer_valid = False
            entry = self._handshakes.get(evicted.local_index)
            if entry is not None and entry[0] is evicted:
                del self._handshakes[evicted.local_index]
        if listener.pending != pending:
            self._timer_valid = False
        if responder is None:
            return
        self._timer_valid = False
        self._handshakes[responder.local_index] = (responder, addr)
        self._drain(responder, addr, now)

    def _receive_handshake(self, data: bytes, offset: int, addr: A, now: float) -> None:
        if len(data) < offset + 4:
            self.dropped[DropReason.BAD_LENGTH] += 1
            return
        entry = self._handshakes.get(_U32.unpack_from(data, offset)[0])
        if entry is None:
            self.dropped[DropReason.UNKNOWN_INDEX] += 1
            return
        # The handshake keeps sending to its own address: a datagram from elsewhere (forged,
        # or a copy) must not redirect its flights (docs/protocol.md, section 6).
        self._timer_valid = False
        handshake, handshake_addr = entry
        handshake.receive_datagram(data, now)
        self._drain(handshake, handshake_addr, now)

    def _drain(self, handshake: _Handshake, addr: A, now: float) -> None:
        if handshake.dropped:
            for reason, count in handshake.dropped.items():
                self.dropped[handshake_label(reason)] += count
            handshake.dropped.clear()
        for datagram in handshake.datagrams_to_send():
            self._outbox.append((datagram, addr))
        while (event := handshake.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._completed(handshake, event, addr, now)
            elif isinstance(event, HandshakeFailed):
                self._events.append(HandshakeDone(False, event.reason))
            elif isinstance(event, FinishRetransmitted):
                channel = self._transport.get(event.local_index)
                if channel is not None:
                    self.send(channel.node_id, b"", now)
        if handshake.done:
            self._handshakes.pop(handshake.local_index, None)

    def _completed(
        self, handshake: _Handshake, event: HandshakeCompleted, addr: A, now: float
    ) -> None:
        node_id = event.peer.node_id
        if node_id == self.self_id:
            self._events.append(HandshakeDone(False, "self"))
            return
        channel = self._channel(node_id, addr)
        if isinstance(handshake, ResponderHandshake):
            pending = channel.initiator
            if pending is not None and pending.state is HandshakeState.WAIT_RESP:
                pending.abort()
                while pending.next_event() is not None:
                    pass
                self._handshakes.pop(pending.local_index, None)
        elif channel.initiator is not handshake:
            channel.initiator = handshake
        channel.identity = event.peer
        try:
            channel.session.install(event.keys, now)
        except LocalProtocolError:
            self._events.append(HandshakeDone(False, "duplicate_keys"))
            return
        self._transport[event.keys.local_index] = channel
        self._events.append(HandshakeDone(True, "ok"))
        self._events.append(ChannelUp(node_id, event.peer))
        if channel.session.needs_keepalive(now):
            self.send(node_id, b"", now)
