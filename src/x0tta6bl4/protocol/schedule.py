"""The handshake key schedule (TLS 1.3-like) and the running transcript hash.

With ``H`` = SHA-256, ``Extract`` = HKDF-Extract-SHA-256, ``ExpandLabel`` =
:func:`~x0tta6bl4.crypto.suite.hkdf_expand_label` (label prefix ``"x0tta6bl4 "``) and
``ss = ML-KEM-768 shared secret ‖ X25519 shared secret``::

    early      = Extract(salt = 0^32, ikm = 0^32)
    hs_secret  = Extract(salt = ExpandLabel(early, "derived", H(""), 32), ikm = ss)
    i_hs       = ExpandLabel(hs_secret, "i hs traffic", TH1, 32)
    r_hs       = ExpandLabel(hs_secret, "r hs traffic", TH1, 32)
    X_key      = ExpandLabel(X_hs, "key", "", 32);  X_iv = ExpandLabel(X_hs, "iv", "", 12)
    master     = Extract(salt = ExpandLabel(hs_secret, "derived", H(""), 32), ikm = 0^32)
    i2r_key    = ExpandLabel(master, "i2r transport", TH4, 32)
    r2i_key    = ExpandLabel(master, "r2i transport", TH4, 32)

The transcript hashes are hashes of prefixes of one running transcript::

    TH1 = H(INIT ‖ RESP.clear)
    TH2 = H(INIT ‖ RESP.clear ‖ certR)                        signed by the responder
    TH3 = H(... ‖ certR ‖ sigR ‖ FINISH.clear ‖ certI)         signed by the initiator
    TH4 = H(... ‖ certI ‖ sigI)                                the handshake hash

where ``certX = uint16(len) ‖ DER`` as it appears in the auth payload.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from x0tta6bl4.crypto.suite import (
    AEAD_KEY_SIZE,
    AEAD_NONCE_SIZE,
    HASH_SIZE,
    Aead,
    hkdf_expand_label,
    hkdf_extract,
)

__all__ = [
    "HandshakeTrafficKeys",
    "Transcript",
    "derive_handshake_keys",
    "derive_transport_keys",
    "handshake_secret",
]

_ZERO = bytes(HASH_SIZE)
_EMPTY_HASH = hashlib.sha256(b"").digest()
_EARLY = hkdf_extract(_ZERO, _ZERO)
_DERIVED_EARLY = hkdf_expand_label(_EARLY, "derived", _EMPTY_HASH, HASH_SIZE)


class Transcript:
    """The running transcript hash; :meth:`digest` returns the hash of everything so far."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, *parts: bytes) -> None:
        for part in parts:
            self._h.update(part)

    def digest(self) -> bytes:
        return self._h.copy().digest()

    def fork(self) -> Transcript:
        """An independent copy (to extend tentatively, before a message is accepted)."""
        other = Transcript.__new__(Transcript)
        other._h = self._h.copy()
        return other


@dataclass(frozen=True, slots=True)
class HandshakeTrafficKeys:
    """One direction's handshake AEAD and IV (each used for exactly one message)."""

    aead: Aead
    iv: bytes


def handshake_secret(shared_secret: bytes) -> bytes:
    """``hs_secret`` from the 64-byte hybrid shared secret."""
    return hkdf_extract(_DERIVED_EARLY, shared_secret)


def _traffic(hs_secret: bytes, label: str, th1: bytes) -> HandshakeTrafficKeys:
    secret = hkdf_expand_label(hs_secret, label, th1, HASH_SIZE)
    return HandshakeTrafficKeys(
        aead=Aead(hkdf_expand_label(secret, "key", b"", AEAD_KEY_SIZE)),
        iv=hkdf_expand_label(secret, "iv", b"", AEAD_NONCE_SIZE),
    )


def derive_handshake_keys(
    hs_secret: bytes, th1: bytes
) -> tuple[HandshakeTrafficKeys, HandshakeTrafficKeys]:
    """``(initiator, responder)`` handshake traffic keys."""
    return _traffic(hs_secret, "i hs traffic", th1), _traffic(hs_secret, "r hs traffic", th1)


def derive_transport_keys(hs_secret: bytes, th4: bytes) -> tuple[bytes, bytes]:
    """``(i2r_key, r2i_key)``: the initiator→responder and responder→initiator keys."""
    master = hkdf_extract(hkdf_expand_label(hs_secret, "derived", _EMPTY_HASH, HASH_SIZE), _ZERO)
    return (
        hkdf_expand_label(master, "i2r transport", th4, AEAD_KEY_SIZE),
        hkdf_expand_label(master, "r2i transport", th4, AEAD_KEY_SIZE),
    )
