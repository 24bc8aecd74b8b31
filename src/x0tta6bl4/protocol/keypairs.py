"""Keypairs of a transport session and their previous/current/next slots (wireguard-go's
``keypair.go``).

A :class:`Keypair` is one handshake's output put to use: an AES-256-GCM cipher per direction,
the two u32 indices, the creation time, the next send counter and the receive replay window.

:class:`Keypairs` holds up to three of them:

* ``current`` — the one we send with;
* ``previous`` — the one ``current`` replaced: the peer may still have packets in flight
  under it, so it keeps decrypting until it expires;
* ``next`` — an initiator's new keypair the responder has not yet proved it holds; it
  decrypts, and the first packet that arrives under it promotes it to ``current``.

Concurrency: not thread-safe; owned by one :class:`~x0tta6bl4.protocol.session.Session`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from x0tta6bl4.crypto.suite import AEAD_KEY_SIZE
from x0tta6bl4.protocol.constants import MessageType
from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.keys import TransportKeys
from x0tta6bl4.protocol.replay import ReplayFilter

__all__ = ["Keypair", "Keypairs"]

_U32_MAX = 0xFFFFFFFF
_TYPE_AND_INDEX = struct.Struct("!BI")


class Keypair:
    """One direction pair of AEAD keys in use. ``repr`` never shows key material.

    Attributes are read by :class:`~x0tta6bl4.protocol.session.Session`; treat them as
    read-only elsewhere.
    """

    __slots__ = (
        "accept_counter",
        "created_at",
        "expires_at",
        "handshake_hash",
        "header_prefix",
        "is_initiator",
        "local_index",
        "recv_aead",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
    )

    def __init__(self, keys: TransportKeys, now: float, reject_after_time: float) -> None:
        if len(keys.send_key) != AEAD_KEY_SIZE or len(keys.recv_key) != AEAD_KEY_SIZE:
            raise LocalProtocolError("transport keys must be 32-byte AES-256-GCM keys")
        for name, index in (("local", keys.local_index), ("remote", keys.remote_index)):
            if not 0 <= index <= _U32_MAX:
                raise LocalProtocolError(f"{name} index {index} is not a u32")
        #: AES-256-GCM (pyca/cryptography) for packets we send / receive.
        self.send_aead = AESGCM(keys.send_key)
        self.recv_aead = AESGCM(keys.recv_key)
        #: The index peers put in packets addressed to us under this keypair.
        self.local_index = keys.local_index
        #: The index we put in packets we send under this keypair.
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self.handshake_hash = keys.handshake_hash
        #: When the keypair was installed (the session's clock), and when it stops working.
        self.created_at = now
        self.expires_at = now + reject_after_time
        #: Counter of the next packet we send under this keypair.
        self.send_counter = 0
        #: Counters of packets received under this keypair.
        self.replay = ReplayFilter()
        #: ``replay.validate_counter``, bound once (the receive hot path calls it per packet).
        self.accept_counter = self.replay.validate_counter
        #: ``type ‖ receiver_index``: the first 5 bytes of every packet we send.
        self.header_prefix = _TYPE_AND_INDEX.pack(MessageType.TRANSPORT, keys.remote_index)

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return (
            f"Keypair(local_index={self.local_index}, remote_index={self.remote_index}, "
            f"{role}, created_at={self.created_at}, send_counter={self.send_counter})"
        )


class Keypairs:
    """The previous/current/next slots of a session. Not thread-safe."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def __iter__(self) -> Iterator[Keypair]:
        """Live keypairs: previous, current, next."""
        return iter([kp for kp in (self.previous, self.current, self.next) if kp is not None])

    def lookup(self, local_index: int) -> Keypair | None:
        """The keypair to which a packet addressed to ``local_index`` belongs, if any."""
        for kp in (self.current, self.previous, self.next):
            if kp is not None and kp.local_index == local_index:
                return kp
        return None

    def install_current(self, keypair: Keypair) -> None:
        """Responder: the peer has the keys, so send with them now (current → previous).

        An unconfirmed ``next`` (a handshake we initiated concurrently) is dropped: the
        handshake that completed last wins.
        """
        self._check_unique(keypair, keep=(self.current,))
        self.previous = self.current
        self.current = keypair
        self.next = None

    def install_next(self, keypair: Keypair) -> None:
        """Initiator: hold the keypair until the peer proves it has it (replaces ``next``)."""
        self._check_unique(keypair, keep=(self.previous, self.current))
        self.next = keypair

    def promote_next(self) -> None:
        """A packet arrived under ``next``: previous ← current, current ← next."""
        if self.next is None:
            raise LocalProtocolError("no next keypair to promote")
        self.previous = self.current
        self.current = self.next
        self.next = None

    def expire(self, now: float) -> int:
        """Drop every keypair whose ``expires_at`` is at or before ``now``; return how many."""
        dropped = 0
        if self.previous is not None and self.previous.expires_at <= now:
            self.previous = None
            dropped += 1
        if self.current is not None and self.current.expires_at <= now:
            self.current = None
            dropped += 1
        if self.next is not None and self.next.expires_at <= now:
            self.next = None
            dropped += 1
        return dropped

    @staticmethod
    def _check_unique(keypair: Keypair, keep: tuple[Keypair | None, ...]) -> None:
        for kp in keep:
            if kp is not None and kp.local_index == keypair.local_index:
                raise LocalProtocolError(
                    f"local index {keypair.local_index} is already used by a live keypair"
                )
