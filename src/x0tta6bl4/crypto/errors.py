"""Errors raised by :mod:`x0tta6bl4.crypto`.

::

    CryptoError
    ├── InvalidKeyError        a public key, share or ciphertext of the wrong size or form
    ├── BadSignatureError      an ML-DSA-65 signature that does not verify
    └── DecryptError           an AEAD tag that does not verify

Messages never contain key material.
"""

from __future__ import annotations

__all__ = ["BadSignatureError", "CryptoError", "DecryptError", "InvalidKeyError"]


class CryptoError(Exception):
    """Base class of every error raised by :mod:`x0tta6bl4.crypto`."""


class InvalidKeyError(CryptoError):
    """A key, key share or KEM ciphertext is malformed."""


class BadSignatureError(CryptoError):
    """A signature does not verify under the given key and context."""


class DecryptError(CryptoError):
    """An AEAD ciphertext failed authentication."""
