"""Stateless cookies: the responder's address validation (WireGuard's cookie reply, QUIC's
Retry).

A responder does not reassemble, decapsulate or sign anything for an INIT fragment that does
not echo a valid cookie; it answers with a 21-byte COOKIE_REPLY instead (at most 21/19 of the
fragment that caused it, so it cannot be used for amplification). The cookie is::

    cookie = HMAC-SHA-256(secret, uint8(len(addr)) ‖ addr ‖ uint32(initiator index))[:16]

where ``addr`` is the initiator's address as opaque bytes chosen by the owner (for UDP, the
packed IP and port) and ``secret`` is a random 32-byte value that rotates every
:data:`~x0tta6bl4.protocol.constants.COOKIE_ROTATION_INTERVAL` seconds; a cookie made under
the previous secret is still accepted, so a cookie lives between one and two intervals.
Proving the cookie proves that the initiator receives datagrams at ``addr``.

Secrets come from :func:`secrets.token_bytes`; the jar reads no clock (``now`` is passed in).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from x0tta6bl4.protocol.constants import (
    COOKIE_ROTATION_INTERVAL,
    COOKIE_SECRET_SIZE,
    COOKIE_SIZE,
    MAX_ADDRESS_SIZE,
)
from x0tta6bl4.protocol.errors import LocalProtocolError

__all__ = ["CookieJar"]

_U32 = struct.Struct("!I")


class CookieJar:
    """Makes and checks cookies under a rotating secret. Not thread-safe."""

    __slots__ = ("_current", "_interval", "_previous", "_rotated_at")

    def __init__(self, now: float, *, rotation_interval: float = COOKIE_ROTATION_INTERVAL) -> None:
        if rotation_interval <= 0:
            raise LocalProtocolError("cookie rotation interval must be positive")
        self._interval = rotation_interval
        self._current = secrets.token_bytes(COOKIE_SECRET_SIZE)
        self._previous: bytes | None = None
        self._rotated_at = now

    def _rotate(self, now: float) -> None:
        elapsed = now - self._rotated_at
        if elapsed < self._interval:
            return
        periods = int(elapsed // self._interval)
        # After two or more periods both secrets are too old to be accepted.
        self._previous = self._current if periods == 1 else None
        self._current = secrets.token_bytes(COOKIE_SECRET_SIZE)
        self._rotated_at += periods * self._interval

    @staticmethod
    def _mac(secret: bytes, addr: bytes, initiator_index: int) -> bytes:
        if len(addr) > MAX_ADDRESS_SIZE:
            raise LocalProtocolError(f"address longer than {MAX_ADDRESS_SIZE} bytes")
        message = bytes([len(addr)]) + addr + _U32.pack(initiator_index)
        return hmac.new(secret, message, hashlib.sha256).digest()[:COOKIE_SIZE]

    def make(self, addr: bytes, initiator_index: int, now: float) -> bytes:
        """The cookie the initiator at ``addr`` with ``initiator_index`` must echo."""
        self._rotate(now)
        return self._mac(self._current, addr, initiator_index)

    def check(self, cookie: bytes, addr: bytes, initiator_index: int, now: float) -> bool:
        """True if ``cookie`` was made for ``addr`` and ``initiator_index`` recently."""
        return self.validate(cookie, addr, initiator_index, now) is None

    def validate(
        self, cookie: bytes, addr: bytes, initiator_index: int, now: float
    ) -> bytes | None:
        """None if ``cookie`` is valid for ``addr`` and ``initiator_index``; otherwise the
        cookie to send them (one MAC computed for both answers)."""
        self._rotate(now)
        current = self._mac(self._current, addr, initiator_index)
        if len(cookie) != COOKIE_SIZE:
            return current
        ok = hmac.compare_digest(cookie, current)
        if self._previous is not None:
            ok |= hmac.compare_digest(cookie, self._mac(self._previous, addr, initiator_index))
        return None if ok else current

    def next_rotation(self) -> float:
        """When the secret rotates next."""
        return self._rotated_at + self._interval

    def __repr__(self) -> str:
        return f"CookieJar(rotation_interval={self._interval})"
