"""The transport session: per-packet AEAD between two nodes after a handshake (sans-IO).

Wire format of a transport datagram (all integers big-endian)::

    type u8 = 4 ‖ receiver_index u32 ‖ counter u64 ‖ AES-256-GCM(plaintext) ‖ tag[16]
    \\_____________ header: 13 bytes, the AEAD associated data ___________/

The nonce is ``0x00000000 ‖ counter`` (:func:`x0tta6bl4.crypto.suite.counter_nonce`); each
keypair's send counter starts at 0 and never repeats. The plaintext is a sequence of inner
frames (:mod:`x0tta6bl4.protocol.frames`); an empty plaintext is a keepalive.

Rules of the state machine (``docs/transport.md`` draws them):

* :meth:`Session.install` takes a handshake's :class:`~x0tta6bl4.protocol.keys.TransportKeys`.
  The **responder** completed on a valid FINISH, so the initiator has the keys: the keypair
  becomes ``current`` at once (old current → ``previous``) and :meth:`Session.needs_keepalive`
  turns true so that the driver sends a packet under it right away. The **initiator** does
  not know whether FINISH arrived: the keypair waits in ``next`` while ``current`` keeps
  sending; the first authentic packet under ``next`` promotes it (previous ← current,
  current ← next) and :meth:`Session.open` reports ``keypair_promoted`` so that the driver
  confirms the handshake. Packets in flight under ``previous`` still decrypt until it
  expires, so no packet is lost across a rekey.
* Every keypair expires ``reject_after_time`` after it was installed; it then neither seals
  nor opens. Counters at or above ``reject_after_messages`` are never sent nor accepted.
* :meth:`Session.needs_rekey` turns true ``rekey_after_time`` after ``current`` was installed
  (plus ``responder_rekey_delay`` on the responder side, so both sides rarely start at once)
  or after ``rekey_after_messages`` packets; the driver then starts a handshake unless one is
  in progress.
* Replay: after the tag verified, the counter goes through the keypair's RFC 6479 window.

Input and output: ``seal(plaintext, now) -> datagram``, ``open(datagram, now) -> OpenResult``,
``get_timer()`` / ``handle_timer(now)``; ``now`` is the caller's monotonic clock in seconds.
Bad datagrams raise :class:`~x0tta6bl4.protocol.errors.RemoteProtocolError` whose ``reason``
is one of :data:`TRANSPORT_DROPS` and are counted in :attr:`Session.stats`; nothing else changes.
API misuse raises :class:`~x0tta6bl4.protocol.errors.LocalProtocolError`.

Concurrency: a session is not thread-safe; one task owns it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from x0tta6bl4.crypto.suite import AEAD_TAG_SIZE
from x0tta6bl4.protocol.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TRANSPORT_DATAGRAM_SIZE,
    MAX_UDP_PAYLOAD_SIZE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    RESPONDER_REKEY_DELAY,
    TRANSPORT_HEADER_SIZE,
    MessageType,
)
from x0tta6bl4.protocol.errors import (
    DropReason,
    InvalidConfigError,
    LocalProtocolError,
    RemoteProtocolError,
)
from x0tta6bl4.protocol.keypairs import Keypair, Keypairs
from x0tta6bl4.protocol.keys import TransportKeys

__all__ = [
    "MIN_TRANSPORT_DATAGRAM_SIZE",
    "TRANSPORT_DROPS",
    "OpenResult",
    "Session",
    "SessionStats",
]

#: A header and a tag: the datagram of an empty plaintext (a keepalive).
MIN_TRANSPORT_DATAGRAM_SIZE = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE

_HEADER = struct.Struct("!BIQ")
#: ``counter_nonce(counter)`` (4 zero bytes ‖ counter u64) in one C call.
_NONCE = struct.Struct("!4xQ")
#: Builds an :class:`OpenResult` without the Python-level ``__new__`` (hot path).
_new_tuple = tuple.__new__
_TRANSPORT = int(MessageType.TRANSPORT)


TRANSPORT_DROPS: frozenset[DropReason] = frozenset(
    {
        #: Shorter than header + tag, or longer than the configured maximum.
        DropReason.BAD_LENGTH,
        #: The first byte is not the TRANSPORT message type.
        DropReason.BAD_TYPE,
        #: The receiver index names none of our live keypairs.
        DropReason.UNKNOWN_INDEX,
        #: The AEAD tag does not verify (tampered, or another key).
        DropReason.DECRYPT_FAILED,
        #: Authentic, but the counter was seen before or is behind the replay window.
        DropReason.REPLAY,
        #: The keypair is older than ``reject_after_time`` or the counter reached
        #: ``reject_after_messages``.
        DropReason.EXPIRED,
    }
)
"""The :class:`~x0tta6bl4.protocol.errors.DropReason` values :meth:`Session.open` raises."""


class OpenResult(NamedTuple):
    """What :meth:`Session.open` gives back for an authentic, fresh datagram."""

    #: The decrypted inner frames (empty for a keepalive).
    plaintext: bytes
    #: True if this packet promoted the ``next`` keypair: the initiator's handshake is
    #: confirmed (call its ``confirm(now)``).
    keypair_promoted: bool


@dataclass(slots=True)
class SessionStats:
    """Counters of one session (the node exports them as metrics)."""

    #: Datagrams sealed / opened (the driver counts bytes on its socket).
    packets_sent: int = 0
    packets_received: int = 0
    keypairs_installed: int = 0
    keypairs_promoted: int = 0
    keypairs_expired: int = 0
    #: Datagrams rejected by :meth:`Session.open`, by reason (:data:`TRANSPORT_DROPS`).
    dropped: dict[str, int] = field(default_factory=dict)


class Session:
    """Transport state between us and one peer: keypairs, counters, replay windows, timers.

    The limits default to WireGuard's constants; tests pass small ones.
    """

    __slots__ = (
        "_keepalive_due",
        "_keepalive_timeout",
        "_keypairs",
        "_max_datagram_size",
        "_max_plaintext_size",
        "_reject_after_messages",
        "_reject_after_time",
        "_rekey_after_messages",
        "_rekey_after_time",
        "_rekey_signalled",
        "_responder_rekey_delay",
        "stats",
    )

    def __init__(
        self,
        *,
        rekey_after_time: float = REKEY_AFTER_TIME,
        reject_after_time: float = REJECT_AFTER_TIME,
        rekey_after_messages: int = REKEY_AFTER_MESSAGES,
        reject_after_messages: int = REJECT_AFTER_MESSAGES,
        responder_rekey_delay: float = RESPONDER_REKEY_DELAY,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_datagram_size: int = MAX_TRANSPORT_DATAGRAM_SIZE,
    ) -> None:
        if not 0 < rekey_after_time + responder_rekey_delay < reject_after_time:
            raise InvalidConfigError(
                "need 0 < rekey_after_time + responder_rekey_delay < reject_after_time"
            )
        if responder_rekey_delay < 0:
            raise InvalidConfigError("responder_rekey_delay must not be negative")
        if not 0 < rekey_after_messages <= reject_after_messages <= REJECT_AFTER_MESSAGES:
            raise InvalidConfigError(
                "need 0 < rekey_after_messages <= reject_after_messages <= REJECT_AFTER_MESSAGES"
            )
        if keepalive_timeout <= 0:
            raise InvalidConfigError("keepalive_timeout must be positive")
        if not MIN_TRANSPORT_DATAGRAM_SIZE <= max_datagram_size <= MAX_UDP_PAYLOAD_SIZE:
            raise InvalidConfigError(
                f"max_datagram_size must be within "
                f"[{MIN_TRANSPORT_DATAGRAM_SIZE}, {MAX_UDP_PAYLOAD_SIZE}]"
            )
        self._rekey_after_time = rekey_after_time
        self._reject_after_time = reject_after_time
        self._rekey_after_messages = rekey_after_messages
        self._reject_after_messages = reject_after_messages
        self._responder_rekey_delay = responder_rekey_delay
        self._keepalive_timeout = keepalive_timeout
        self._max_datagram_size = max_datagram_size
        self._max_plaintext_size = max_datagram_size - MIN_TRANSPORT_DATAGRAM_SIZE
        self._keypairs = Keypairs()
        self._rekey_signalled = False
        self._keepalive_due: float | None = None
        #: Packet, byte, keypair and drop counters.
        self.stats = SessionStats()

    # --- inspection ---------------------------------------------------------------------------

    @property
    def keypairs(self) -> Keypairs:
        """The previous/current/next slots (read them; only the session changes them)."""
        return self._keypairs

    @property
    def can_send(self) -> bool:
        """True if there is a current keypair (it may still refuse when expired or worn out)."""
        return self._keypairs.current is not None

    @property
    def keepalive_timeout(self) -> float:
        """Seconds after data arrived with nothing sent back before a keepalive is due."""
        return self._keepalive_timeout

    @property
    def max_plaintext_size(self) -> int:
        """The largest plaintext :meth:`seal` accepts."""
        return self._max_plaintext_size

    # --- keys ---------------------------------------------------------------------------------

    def install(self, keys: TransportKeys, now: float) -> None:
        """Put a completed handshake's keys to use (see the module docstring for the rules)."""
        keypair = Keypair(keys, now, self._reject_after_time)
        if keys.is_initiator:
            self._keypairs.install_next(keypair)
        else:
            self._keypairs.install_current(keypair)
            self._rekey_signalled = False
            # The initiator confirms on our first packet under the new keypair: send one now.
            self._keepalive_due = now
        self.stats.keypairs_installed += 1

    # --- packets ------------------------------------------------------------------------------

    def seal(self, plaintext: bytes, now: float) -> bytes:
        """Encrypt ``plaintext`` under the current keypair into one transport datagram."""
        kp = self._keypairs.current
        if kp is None:
            raise LocalProtocolError("no current keypair: handshake not completed or confirmed")
        counter = kp.send_counter
        if (
            counter >= self._reject_after_messages
            or now >= kp.expires_at
            or len(plaintext) > self._max_plaintext_size
        ):
            raise self._refuse_seal(kp, len(plaintext), now)
        kp.send_counter = counter + 1
        header = _HEADER.pack(_TRANSPORT, kp.remote_index, counter)
        self.stats.packets_sent += 1
        self._keepalive_due = None
        return header + kp.send_aead.encrypt(_NONCE.pack(counter), plaintext, header)

    def open(self, datagram: bytes, now: float) -> OpenResult:
        """Authenticate and decrypt one transport datagram.

        Raises :class:`RemoteProtocolError` (``reason`` in :data:`TRANSPORT_DROPS`) for anything
        that must be dropped; then only :attr:`stats` changes.
        """
        # The hot path (a packet under `current`) is kept short: every line costs about as
        # much as 2 % of the AEAD work on a 1400-byte packet (see `x0tta6bl4 bench session`).
        size = len(datagram)
        if not MIN_TRANSPORT_DATAGRAM_SIZE <= size <= self._max_datagram_size:
            raise self._drop(DropReason.BAD_LENGTH, f"transport datagram of {size} bytes")
        msg_type, index, counter = _HEADER.unpack_from(datagram)
        keypairs = self._keypairs
        kp = keypairs.current
        if msg_type != _TRANSPORT or kp is None or kp.local_index != index or now >= kp.expires_at:
            kp = self._find_keypair(msg_type, index, now)
        try:
            # Slicing copies 1.4 KB, which is cheaper than a memoryview through the AEAD binding.
            plaintext = kp.recv_aead.decrypt(
                _NONCE.pack(counter),
                datagram[TRANSPORT_HEADER_SIZE:],
                datagram[:TRANSPORT_HEADER_SIZE],
            )
        except InvalidTag:
            raise self._drop(
                DropReason.DECRYPT_FAILED, "transport packet failed authentication"
            ) from None
        # Only now, with the tag verified, may the counter move the replay window.
        if not kp.accept_counter(counter, self._reject_after_messages):
            if counter >= self._reject_after_messages:
                raise self._drop(DropReason.EXPIRED, f"counter {counter} is past the limit")
            raise self._drop(DropReason.REPLAY, f"counter {counter} replayed or too old")
        self.stats.packets_received += 1
        if plaintext and self._keepalive_due is None:
            self._keepalive_due = now + self._keepalive_timeout
        if kp is keypairs.next:
            keypairs.promote_next()
            self._rekey_signalled = False
            self.stats.keypairs_promoted += 1
            return _new_tuple(OpenResult, (plaintext, True))
        return _new_tuple(OpenResult, (plaintext, False))

    # --- timers -------------------------------------------------------------------------------

    def needs_rekey(self, now: float) -> bool:
        """True once ``current`` is due for replacement by a new handshake.

        Stays true until a new keypair becomes current; the driver starts a handshake unless
        one is already in progress. Check it after :meth:`handle_timer` and after sending.
        """
        kp = self._keypairs.current
        if kp is None:
            return False
        return kp.send_counter >= self._rekey_after_messages or now >= self._rekey_deadline(kp)

    def needs_keepalive(self, now: float) -> bool:
        """True if the driver should send a keepalive (``seal(b"", now)``) now.

        Right after a responder installed a keypair (so the initiator confirms it), and
        ``keepalive_timeout`` after data arrived with nothing sent back since (WireGuard's
        passive keepalive).
        """
        due = self._keepalive_due
        return due is not None and now >= due and self._keypairs.current is not None

    def get_timer(self) -> float | None:
        """The next deadline at which :meth:`handle_timer` must be called, or None."""
        deadlines: list[float] = [kp.expires_at for kp in self._keypairs]
        current = self._keypairs.current
        if current is not None:
            if not self._rekey_signalled:
                deadlines.append(self._rekey_deadline(current))
            if self._keepalive_due is not None:
                deadlines.append(self._keepalive_due)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Drop expired keypairs and note a reached rekey deadline (then ask the predicates)."""
        expired = self._keypairs.expire(now)
        self.stats.keypairs_expired += expired
        current = self._keypairs.current
        if current is None:
            self._keepalive_due = None
        elif now >= self._rekey_deadline(current):
            # needs_rekey() now answers true; stop reporting this deadline from get_timer().
            self._rekey_signalled = True

    # --- helpers ------------------------------------------------------------------------------

    def _rekey_deadline(self, kp: Keypair) -> float:
        delay = self._rekey_after_time
        if not kp.is_initiator:
            delay += self._responder_rekey_delay
        return kp.created_at + delay

    def _find_keypair(self, msg_type: int, index: int, now: float) -> Keypair:
        """The slow path of :meth:`open`: a packet not for a live ``current`` keypair."""
        if msg_type != _TRANSPORT:
            raise self._drop(DropReason.BAD_TYPE, f"message type {msg_type} is not transport")
        kp = self._keypairs.lookup(index)
        if kp is None:
            raise self._drop(DropReason.UNKNOWN_INDEX, f"no keypair with index {index}")
        if now >= kp.expires_at:
            raise self._drop(DropReason.EXPIRED, f"keypair {index} has expired")
        return kp

    def _refuse_seal(self, kp: Keypair, size: int, now: float) -> LocalProtocolError:
        if kp.send_counter >= self._reject_after_messages:
            return LocalProtocolError("the current keypair has sent its maximum of messages")
        if now >= kp.expires_at:
            return LocalProtocolError("the current keypair has expired")
        return LocalProtocolError(
            f"plaintext of {size} bytes exceeds the maximum of {self._max_plaintext_size}"
        )

    def _drop(self, reason: DropReason, message: str) -> RemoteProtocolError:
        dropped = self.stats.dropped
        key = reason.value
        dropped[key] = dropped.get(key, 0) + 1
        return RemoteProtocolError(reason, message)
