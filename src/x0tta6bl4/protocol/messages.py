"""Wire format of the handshake messages (before fragmentation) and of COOKIE_REPLY.

All integers are big-endian. ``‖`` is concatenation.

INIT (1254 bytes)::

    version u8 ‖ suite u8 ‖ sender index u32 ‖ nonce[32] ‖
    initiator share[1216] = ML-KEM-768 encapsulation key[1184] ‖ X25519 public key[32]

RESP::

    clear part (1162 bytes):
        version u8 ‖ suite u8 ‖ sender index u32 ‖ receiver index u32 ‖ nonce[32] ‖
        responder share[1120] = ML-KEM-768 ciphertext[1088] ‖ X25519 public key[32]
    sealed part: AES-256-GCM(responder handshake key, iv, aad = clear part, auth payload)

FINISH::

    clear part (10 bytes): version u8 ‖ suite u8 ‖ sender index u32 ‖ receiver index u32
    sealed part: AES-256-GCM(initiator handshake key, iv, aad = clear part, auth payload)

auth payload (plaintext of a sealed part)::

    certificate length u16 ‖ certificate (PQ X.509-SVID, DER) ‖ ML-DSA-65 signature[3309]

COOKIE_REPLY (21 bytes, never fragmented)::

    type u8 = 5 ‖ receiver index u32 (the initiator's sender index) ‖ cookie[16]

Parsers raise only :class:`~x0tta6bl4.protocol.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from x0tta6bl4.crypto.suite import (
    AEAD_TAG_SIZE,
    INITIATOR_SHARE_SIZE,
    MLDSA65_SIGNATURE_SIZE,
    RESPONDER_SHARE_SIZE,
    SUITE_ID,
)
from x0tta6bl4.protocol.constants import (
    COOKIE_REPLY_SIZE,
    COOKIE_SIZE,
    FINISH_CLEAR_SIZE,
    INIT_MESSAGE_SIZE,
    MAX_CERTIFICATE_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    RESP_CLEAR_SIZE,
    MessageType,
)
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError

__all__ = [
    "AuthPayload",
    "CookieReply",
    "FinishMessage",
    "InitMessage",
    "RespMessage",
]

_VS = struct.Struct("!BB")
_INIT_HEAD = struct.Struct("!BBI")
_RESP_HEAD = struct.Struct("!BBII")
_FINISH_HEAD = struct.Struct("!BBII")
_COOKIE_REPLY = struct.Struct("!BI")
_U16 = struct.Struct("!H")

assert _INIT_HEAD.size + NONCE_SIZE + INITIATOR_SHARE_SIZE == INIT_MESSAGE_SIZE
assert _RESP_HEAD.size + NONCE_SIZE + RESPONDER_SHARE_SIZE == RESP_CLEAR_SIZE
assert _FINISH_HEAD.size == FINISH_CLEAR_SIZE

_AUTH_MIN = _U16.size + 1 + MLDSA65_SIGNATURE_SIZE
_SEALED_MIN = _AUTH_MIN + AEAD_TAG_SIZE


def _check_version_suite(data: bytes) -> None:
    version, suite = _VS.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(DropReason.BAD_VERSION, "unsupported protocol version")
    if suite != SUITE_ID:
        raise RemoteProtocolError(DropReason.BAD_SUITE, "unsupported cipher suite")


def _check_index(index: int) -> None:
    if index == 0:
        raise RemoteProtocolError(DropReason.BAD_INDEX, "index 0 is reserved")


def _check_sealed(sealed: bytes) -> None:
    if len(sealed) < _SEALED_MIN:
        raise RemoteProtocolError(DropReason.TRUNCATED, "sealed part too short")


@dataclass(frozen=True, slots=True)
class InitMessage:
    """INIT: the initiator's index, nonce and hybrid key share."""

    sender_index: int
    nonce: bytes
    share: bytes

    def encode(self) -> bytes:
        if len(self.nonce) != NONCE_SIZE or len(self.share) != INITIATOR_SHARE_SIZE:
            raise LocalProtocolError("INIT field has the wrong size")
        head = _INIT_HEAD.pack(PROTOCOL_VERSION, SUITE_ID, self.sender_index)
        return b"".join((head, self.nonce, self.share))

    @classmethod
    def parse(cls, data: bytes) -> InitMessage:
        if len(data) != INIT_MESSAGE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "INIT has the wrong length")
        _check_version_suite(data)
        _, _, sender = _INIT_HEAD.unpack_from(data)
        _check_index(sender)
        at = _INIT_HEAD.size
        return cls(
            sender_index=sender,
            nonce=data[at : at + NONCE_SIZE],
            share=data[at + NONCE_SIZE :],
        )


@dataclass(frozen=True, slots=True)
class RespMessage:
    """RESP: the responder's index, nonce and key share in clear, then the sealed part."""

    sender_index: int
    receiver_index: int
    nonce: bytes
    share: bytes
    sealed: bytes

    def clear_part(self) -> bytes:
        if len(self.nonce) != NONCE_SIZE or len(self.share) != RESPONDER_SHARE_SIZE:
            raise LocalProtocolError("RESP field has the wrong size")
        head = _RESP_HEAD.pack(PROTOCOL_VERSION, SUITE_ID, self.sender_index, self.receiver_index)
        return b"".join((head, self.nonce, self.share))

    @classmethod
    def parse(cls, data: bytes) -> RespMessage:
        if not RESP_CLEAR_SIZE + _SEALED_MIN <= len(data) <= MAX_HANDSHAKE_MESSAGE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "RESP has the wrong length")
        _check_version_suite(data)
        _, _, sender, receiver = _RESP_HEAD.unpack_from(data)
        _check_index(sender)
        _check_index(receiver)
        at = _RESP_HEAD.size
        return cls(
            sender_index=sender,
            receiver_index=receiver,
            nonce=data[at : at + NONCE_SIZE],
            share=data[at + NONCE_SIZE : RESP_CLEAR_SIZE],
            sealed=data[RESP_CLEAR_SIZE:],
        )


@dataclass(frozen=True, slots=True)
class FinishMessage:
    """FINISH: both indices in clear, then the sealed part."""

    sender_index: int
    receiver_index: int
    sealed: bytes

    def clear_part(self) -> bytes:
        return _FINISH_HEAD.pack(PROTOCOL_VERSION, SUITE_ID, self.sender_index, self.receiver_index)

    @classmethod
    def parse(cls, data: bytes) -> FinishMessage:
        if not FINISH_CLEAR_SIZE + _SEALED_MIN <= len(data) <= MAX_HANDSHAKE_MESSAGE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "FINISH has the wrong length")
        _check_version_suite(data)
        _, _, sender, receiver = _FINISH_HEAD.unpack_from(data)
        _check_index(sender)
        _check_index(receiver)
        return cls(sender_index=sender, receiver_index=receiver, sealed=data[FINISH_CLEAR_SIZE:])


@dataclass(frozen=True, slots=True)
class AuthPayload:
    """The plaintext of a sealed part: a certificate and a transcript signature."""

    certificate: bytes
    signature: bytes

    def encode(self) -> bytes:
        if not 0 < len(self.certificate) <= MAX_CERTIFICATE_SIZE:
            raise LocalProtocolError("certificate size out of range")
        if len(self.signature) != MLDSA65_SIGNATURE_SIZE:
            raise LocalProtocolError("signature has the wrong size")
        return b"".join((_U16.pack(len(self.certificate)), self.certificate, self.signature))

    @staticmethod
    def encode_certificate(certificate: bytes) -> bytes:
        """``certificate length ‖ certificate``: the prefix that enters the transcript."""
        if not 0 < len(certificate) <= MAX_CERTIFICATE_SIZE:
            raise LocalProtocolError("certificate size out of range")
        return _U16.pack(len(certificate)) + certificate

    @classmethod
    def parse(cls, data: bytes) -> AuthPayload:
        if len(data) < _AUTH_MIN:
            raise RemoteProtocolError(DropReason.TRUNCATED, "auth payload too short")
        (cert_len,) = _U16.unpack_from(data)
        if not 0 < cert_len <= MAX_CERTIFICATE_SIZE:
            raise RemoteProtocolError(
                DropReason.BAD_CERTIFICATE_LENGTH, "certificate length out of range"
            )
        if len(data) != _U16.size + cert_len + MLDSA65_SIGNATURE_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "auth payload has the wrong length")
        end = _U16.size + cert_len
        return cls(certificate=data[_U16.size : end], signature=data[end:])


@dataclass(frozen=True, slots=True)
class CookieReply:
    """COOKIE_REPLY: the cookie the initiator must echo in its INIT fragments."""

    receiver_index: int
    cookie: bytes

    def encode(self) -> bytes:
        if len(self.cookie) != COOKIE_SIZE:
            raise LocalProtocolError("cookie has the wrong size")
        return _COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, self.receiver_index) + self.cookie

    @classmethod
    def parse(cls, data: bytes) -> CookieReply:
        if len(data) != COOKIE_REPLY_SIZE:
            raise RemoteProtocolError(DropReason.BAD_LENGTH, "COOKIE_REPLY has the wrong length")
        msg_type, receiver = _COOKIE_REPLY.unpack_from(data)
        if msg_type != MessageType.COOKIE_REPLY:
            raise RemoteProtocolError(DropReason.BAD_TYPE, "not a COOKIE_REPLY")
        _check_index(receiver)
        return cls(receiver_index=receiver, cookie=data[_COOKIE_REPLY.size :])
