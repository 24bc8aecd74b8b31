"""In-memory drivers for the handshake machines, in the style of aioquic's tests.

* :class:`Clock` — a hand-advanced clock; nothing reads real time.
* :class:`HandshakeLink` — one initiator and one responder-side listener joined by two
  in-memory directions, with ``transfer``/``roundtrip``/``drop`` helpers and a
  :meth:`HandshakeLink.run` loop that moves datagrams through an optional lossy
  :class:`Network` and advances the clock to the next timer when nothing is in flight.
* The transport session is stood in for by a one-byte "keepalive" datagram (type 4): the
  responder's owner sends it on ``HandshakeCompleted``/``FinishRetransmitted`` and the
  initiator's owner calls ``confirm`` when it arrives — the rekey contract of docs/protocol.md.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.pqfixtures import NOW, NodeCredential, make_bundle, make_ca, make_node_credential
from x0tta6bl4.crypto.pqsvid import MeshCA, PeerIdentity, verify_svid
from x0tta6bl4.crypto.suite import SignatureContext, SigningKey
from x0tta6bl4.protocol.constants import MessageType
from x0tta6bl4.protocol.events import (
    Event,
    FinishRetransmitted,
    HandshakeCompleted,
    HandshakeFailed,
)
from x0tta6bl4.protocol.handshake import (
    Credential,
    HandshakeConfig,
    InitiatorHandshake,
    ResponderHandshake,
)
from x0tta6bl4.protocol.listener import HandshakeListener

__all__ = [
    "ADDR",
    "KEEPALIVE",
    "Clock",
    "CountingSigningKey",
    "HandshakeLink",
    "Network",
    "config_for",
    "counting_config_for",
    "node",
]

#: The initiator's address as the listener sees it (opaque bytes: packed IPv4 + port).
ADDR = bytes([10, 0, 0, 1]) + struct.pack("!H", 47000)
#: Stand-in for the first transport packet under the new keys (type 4).
KEEPALIVE = bytes([MessageType.TRANSPORT])


class Clock:
    """A monotonic clock advanced by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def node(name: str, ca: MeshCA | None = None) -> NodeCredential:
    """A cached credential for node ``name`` issued by ``ca`` (default: the test CA)."""
    return make_node_credential(ca if ca is not None else make_ca(), name)


def config_for(
    cred: NodeCredential,
    *,
    trusted: MeshCA | None = None,
    authorize: Callable[[PeerIdentity], bool] | None = None,
    **overrides: float,
) -> HandshakeConfig:
    """A handshake config for ``cred`` that trusts ``trusted`` (default: its own CA)."""
    bundle = make_bundle(trusted if trusted is not None else cred.ca)

    def verify_peer(der: bytes) -> PeerIdentity:
        return verify_svid(der, bundle, NOW)

    return HandshakeConfig(
        credential=Credential(cert_der=cred.cert_der, signing_key=cred.key),
        verify_peer=verify_peer,
        authorize=authorize if authorize is not None else (lambda _peer: True),
        **overrides,  # type: ignore[arg-type]
    )


@dataclass
class Network:
    """Seeded loss, duplication and reordering of the datagrams handed to :meth:`carry`."""

    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    delivered: int = 0
    lost: int = 0

    def carry(self, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for datagram in datagrams:
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    self.lost += 1
                else:
                    out.append(datagram)
        if self.reorder:
            self.rng.shuffle(out)
        self.delivered += len(out)
        return out


def _receiver_index(datagram: bytes) -> int:
    return int.from_bytes(datagram[5:9], "big") if len(datagram) >= 9 else 0


@dataclass
class HandshakeLink:
    """An initiator and a listener (with its responders) wired back to back in memory."""

    initiator: InitiatorHandshake
    listener: HandshakeListener
    clock: Clock
    addr: bytes = ADDR
    responders: dict[int, ResponderHandshake] = field(default_factory=dict)
    initiator_events: list[Event] = field(default_factory=list)
    responder_events: list[Event] = field(default_factory=list)
    keepalives_sent: int = 0
    _pending_keepalives: int = 0

    @classmethod
    def create(
        cls,
        initiator_config: HandshakeConfig,
        responder_config: HandshakeConfig,
        *,
        clock: Clock | None = None,
        expected_node_id: str | None = None,
        validated: bool = True,
        **listener_options: float,
    ) -> HandshakeLink:
        """A fresh link; with ``validated`` the cookie round trip is done already, so the
        initiator's queue holds INIT with the cookie (what the responder answers)."""
        clock = clock if clock is not None else Clock()
        initiator = InitiatorHandshake(
            initiator_config, clock.now, expected_node_id=expected_node_id
        )
        listener = HandshakeListener(responder_config, clock.now, **listener_options)  # type: ignore[arg-type]
        link = cls(initiator=initiator, listener=listener, clock=clock)
        if validated:
            link.exchange_cookie()
        return link

    def exchange_cookie(self) -> None:
        """INIT to the listener, its cookie replies back: the initiator re-sends INIT with
        the cookie (left in its queue)."""
        self.transfer_to_responder()
        self.transfer_to_initiator()

    @property
    def responder(self) -> ResponderHandshake | None:
        """The most recently created responder."""
        return list(self.responders.values())[-1] if self.responders else None

    # --- moving datagrams ---------------------------------------------------------------------

    def deliver_to_responder(self, datagram: bytes) -> None:
        """Route one datagram the way a node's UDP driver would (INIT → listener, FINISH →
        the responder registered under its receiver index)."""
        now = self.clock.now
        if datagram[:1] == bytes([MessageType.HANDSHAKE_INIT]):
            responder = self.listener.receive_datagram(datagram, self.addr, now)
            if responder is not None:
                self.responders[responder.local_index] = responder
            return
        target = self.responders.get(_receiver_index(datagram))
        if target is not None:
            target.receive_datagram(datagram, now)

    def deliver_to_initiator(self, datagram: bytes) -> None:
        if datagram == KEEPALIVE:
            if self.initiator.state.value == "wait_confirm":
                self.initiator.confirm(self.clock.now)
            return
        self.initiator.receive_datagram(datagram, self.clock.now)

    def from_initiator(self) -> list[bytes]:
        return self.initiator.datagrams_to_send()

    def from_responder(self) -> list[bytes]:
        """Cookie replies for our address, then every responder's datagrams, then keepalives
        the responder's owner sends in reaction to events."""
        out = [d for d, a in self.listener.datagrams_to_send() if a == self.addr]
        for responder in self.responders.values():
            out.extend(responder.datagrams_to_send())
        self._collect_events()
        out.extend([KEEPALIVE] * self._pending_keepalives)
        self.keepalives_sent += self._pending_keepalives
        self._pending_keepalives = 0
        return out

    def _collect_events(self) -> None:
        while (event := self.initiator.next_event()) is not None:
            self.initiator_events.append(event)
        for responder in self.responders.values():
            while (event := responder.next_event()) is not None:
                self.responder_events.append(event)
                if isinstance(event, HandshakeCompleted | FinishRetransmitted):
                    self._pending_keepalives += 1

    def transfer_to_responder(self) -> int:
        datagrams = self.from_initiator()
        for d in datagrams:
            self.deliver_to_responder(d)
        return len(datagrams)

    def transfer_to_initiator(self) -> int:
        datagrams = self.from_responder()
        for d in datagrams:
            self.deliver_to_initiator(d)
        return len(datagrams)

    def roundtrip(self) -> tuple[int, int]:
        """Initiator → responder, then responder → initiator."""
        return self.transfer_to_responder(), self.transfer_to_initiator()

    def drop_from_initiator(self) -> int:
        return len(self.from_initiator())

    def drop_from_responder(self) -> int:
        return len(self.from_responder())

    # --- timers -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        timers = [self.initiator.get_timer(), self.listener.get_timer()]
        timers.extend(r.get_timer() for r in self.responders.values())
        return min((t for t in timers if t is not None), default=None)

    def fire_timers(self) -> None:
        now = self.clock.now
        for machine in [self.initiator, *self.responders.values()]:
            timer = machine.get_timer()
            if timer is not None and timer <= now:
                machine.handle_timer(now)
        timer = self.listener.get_timer()
        if timer is not None and timer <= now:
            self.listener.handle_timer(now)

    def advance_to_next_timer(self) -> bool:
        timer = self.next_timer()
        if timer is None:
            return False
        self.clock.now = max(self.clock.now, timer)
        self.fire_timers()
        return True

    # --- whole runs ---------------------------------------------------------------------------

    def run(
        self,
        network: Network | None = None,
        *,
        tamper: Callable[[str, int, bytes], list[bytes]] | None = None,
        max_steps: int = 10_000,
    ) -> None:
        """Move datagrams (through ``network``) and timers until nothing is left to do.

        ``tamper(direction, n, datagram)`` sees the ``n``-th datagram sent in ``direction``
        (``"i2r"`` or ``"r2i"``) and returns what is put on the wire instead.
        """
        counts = {"i2r": 0, "r2i": 0}

        def wire(direction: str, datagrams: list[bytes]) -> list[bytes]:
            out: list[bytes] = []
            for d in datagrams:
                if tamper is not None and d != KEEPALIVE:
                    out.extend(tamper(direction, counts[direction], d))
                else:
                    out.append(d)
                counts[direction] += 1 if d != KEEPALIVE else 0
            return network.carry(out) if network is not None else out

        for _ in range(max_steps):
            to_responder = wire("i2r", self.from_initiator())
            to_initiator = wire("r2i", self.from_responder())
            for d in to_responder:
                self.deliver_to_responder(d)
            for d in to_initiator:
                self.deliver_to_initiator(d)
            if not to_responder and not to_initiator and not self.advance_to_next_timer():
                break
        self._collect_events()

    # --- results ------------------------------------------------------------------------------

    def completed(self) -> tuple[HandshakeCompleted, HandshakeCompleted] | None:
        """Both sides' HandshakeCompleted events, if both sides completed."""
        self._collect_events()
        ini = [e for e in self.initiator_events if isinstance(e, HandshakeCompleted)]
        res = [e for e in self.responder_events if isinstance(e, HandshakeCompleted)]
        assert len(ini) <= 1
        if not ini or not res:
            return None
        return ini[0], res[-1]

    def failures(self) -> list[HandshakeFailed]:
        self._collect_events()
        return [
            e
            for e in [*self.initiator_events, *self.responder_events]
            if isinstance(e, HandshakeFailed)
        ]


class CountingSigningKey(SigningKey):
    """A real ML-DSA-65 signing key that counts the signatures it makes."""

    __slots__ = ("signatures",)

    def __init__(self, inner: SigningKey) -> None:
        super().__init__(inner.key)
        self.signatures = 0

    def sign(self, context: SignatureContext, data: bytes) -> bytes:
        self.signatures += 1
        return super().sign(context, data)


def counting_config_for(
    cred: NodeCredential, **overrides: float
) -> tuple[HandshakeConfig, CountingSigningKey]:
    """Like :func:`config_for`, with a :class:`CountingSigningKey`."""
    base = config_for(cred, **overrides)
    key = CountingSigningKey(cred.key)
    config = HandshakeConfig(
        credential=Credential(cert_der=cred.cert_der, signing_key=key),
        verify_peer=base.verify_peer,
        authorize=base.authorize,
        **overrides,  # type: ignore[arg-type]
    )
    return config, key
