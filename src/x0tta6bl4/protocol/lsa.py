"""Link-state adverts (LSAs): what each node floods about its own links, signed by it.

An advert lists its origin's bidirectionally-usable neighbours and the cost of each link. It is
signed ML-DSA-65 by the origin with :attr:`SignatureContext.LINK_STATE_ADVERT`, so a relay can
forward it but never forge or alter it (zero-trust routing). Byte layout (all integers
big-endian, see ``docs/routing.md``)::

    offset  size        field
    0       1           version            = 1
    1       1           flags              bit 0: TRANSIT_OFF (never route *through* me);
                                           other bits reserved: sent as 0, carried and signed
    2       1           origin_len         1..64
    3       origin_len  origin             node id, UTF-8
    .       8           seq                u64, strictly increasing per origin
    .       8           issued_at_ms       u64, origin's wall clock (ms since the Unix epoch)
    .       1           count              0..MAX_NEIGHBOURS
    count x {
            1           id_len             1..64
            id_len      neighbour          node id, UTF-8
            4           cost               u32, 1..2^32-1
    }
    .       3309        signature          ML-DSA-65 over every byte before it

Encoding is canonical: neighbours are sorted by the UTF-8 bytes of their id, unique, never the
origin itself. A decoder rejects anything else, so one advert has exactly one encoding.
:func:`decode_signed` only parses; :func:`verify_signed` checks the signature against the key
the caller trusts for the origin. Both raise only :class:`RemoteProtocolError`.
:func:`peek` reads just the origin and seq (flooding brings most adverts several times: a
receiver decides what to do with a copy without parsing it whole).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.crypto.errors import BadSignatureError, CryptoError
from x0tta6bl4.crypto.suite import (
    MLDSA65_SIGNATURE_SIZE,
    SignatureContext,
    SigningKey,
    verify_signature,
)
from x0tta6bl4.protocol.errors import DropReason, LocalProtocolError, RemoteProtocolError

__all__ = [
    "FLAG_TRANSIT_OFF",
    "LSA_VERSION",
    "MAX_COST",
    "MAX_ENCODED_SIZE",
    "MAX_NEIGHBOURS",
    "MAX_NODE_ID_BYTES",
    "AdvertHead",
    "KeyLookup",
    "LinkStateAdvert",
    "decode_signed",
    "encode_signed",
    "encode_unsigned",
    "peek",
    "verify_signed",
]

# --- specification constants -----------------------------------------------------------------

#: First byte of every advert.
LSA_VERSION = 1
#: Flag bit: the origin may be a destination but must never be used as a relay.
FLAG_TRANSIT_OFF = 0x01
#: Node ids are 1..64 bytes of UTF-8.
MAX_NODE_ID_BYTES = 64
#: At most this many neighbours in one advert (the count is one byte).
MAX_NEIGHBOURS = 255
#: Link costs are u32 and never 0 (so every hop costs something and SPF tie-breaks are sound).
MAX_COST = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

_HEAD = struct.Struct("!BBB")
_SEQ_TIME = struct.Struct("!QQ")
_COST = struct.Struct("!I")
#: The largest valid signed advert.
MAX_ENCODED_SIZE = (
    _HEAD.size
    + MAX_NODE_ID_BYTES
    + _SEQ_TIME.size
    + 1
    + MAX_NEIGHBOURS * (1 + MAX_NODE_ID_BYTES + _COST.size)
    + MLDSA65_SIGNATURE_SIZE
)

#: ``key_for(node_id)``: the ML-DSA-65 public key of a node whose PQ SVID verified, or None.
KeyLookup = Callable[[str], "mldsa.MLDSA65PublicKey | None"]


def _check_node_id(node_id: str, what: str) -> bytes:
    if not isinstance(node_id, str):
        raise LocalProtocolError(f"{what} must be a str")
    raw = node_id.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NODE_ID_BYTES:
        raise LocalProtocolError(f"{what} must be 1..{MAX_NODE_ID_BYTES} bytes of UTF-8")
    return raw


@dataclass(frozen=True, slots=True)
class LinkStateAdvert:
    """One origin's view of its links. Construct with neighbours in any order; they are sorted.

    Raises :class:`LocalProtocolError` for values that cannot be encoded.
    """

    origin: str
    seq: int
    #: Origin's wall clock in milliseconds since the Unix epoch (ageing is done on the
    #: receiver's monotonic clock; this is for diagnostics only).
    issued_at_ms: int
    #: ``(neighbour node id, link cost)``, sorted by the id's UTF-8 bytes, unique.
    neighbours: tuple[tuple[str, int], ...] = ()
    flags: int = 0

    def __post_init__(self) -> None:
        origin_raw = _check_node_id(self.origin, "origin")
        if not 0 <= self.seq <= _U64_MAX:
            raise LocalProtocolError("seq must be a u64")
        if not 0 <= self.issued_at_ms <= _U64_MAX:
            raise LocalProtocolError("issued_at_ms must be a u64")
        if not 0 <= self.flags <= 0xFF:
            raise LocalProtocolError("flags must be a u8")
        if len(self.neighbours) > MAX_NEIGHBOURS:
            raise LocalProtocolError(f"at most {MAX_NEIGHBOURS} neighbours per advert")
        keyed: list[tuple[bytes, str, int]] = []
        for node_id, cost in self.neighbours:
            raw = _check_node_id(node_id, "neighbour id")
            if raw == origin_raw:
                raise LocalProtocolError("an advert cannot list its origin as a neighbour")
            if not isinstance(cost, int) or not 1 <= cost <= MAX_COST:
                raise LocalProtocolError("link cost must be an integer in 1..2^32-1")
            keyed.append((raw, node_id, cost))
        keyed.sort()
        for a, b in itertools.pairwise(keyed):
            if a[0] == b[0]:
                raise LocalProtocolError("duplicate neighbour in advert")
        object.__setattr__(self, "neighbours", tuple((n, c) for _, n, c in keyed))

    @property
    def transit_off(self) -> bool:
        """True when the origin must not be used as a relay."""
        return bool(self.flags & FLAG_TRANSIT_OFF)

    def neighbour_costs(self) -> dict[str, int]:
        """``{neighbour: cost}``."""
        return dict(self.neighbours)


def encode_unsigned(lsa: LinkStateAdvert) -> bytes:
    """The signed part of an advert: every byte before the signature."""
    origin = lsa.origin.encode("utf-8")
    parts = [
        _HEAD.pack(LSA_VERSION, lsa.flags, len(origin)),
        origin,
        _SEQ_TIME.pack(lsa.seq, lsa.issued_at_ms),
        bytes([len(lsa.neighbours)]),
    ]
    for node_id, cost in lsa.neighbours:
        raw = node_id.encode("utf-8")
        parts += [bytes([len(raw)]), raw, _COST.pack(cost)]
    return b"".join(parts)


def encode_signed(lsa: LinkStateAdvert, key: SigningKey) -> bytes:
    """Encode ``lsa`` and sign it with the origin's ML-DSA-65 key (about a millisecond)."""
    body = encode_unsigned(lsa)
    return body + key.sign(SignatureContext.LINK_STATE_ADVERT, body)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError(DropReason.LSA_TRUNCATED, "link-state advert is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def node_id(self, what: str) -> str:
        length = self.take(1)[0]
        if not 1 <= length <= MAX_NODE_ID_BYTES:
            raise RemoteProtocolError(DropReason.LSA_BAD_NODE_ID, f"{what} has an invalid length")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(DropReason.LSA_BAD_NODE_ID, f"{what} is not UTF-8") from None


def decode_signed(data: bytes) -> tuple[LinkStateAdvert, bytes, bytes]:
    """Parse a signed advert: ``(lsa, signed_part, signature)``. Does **not** verify it.

    Raises :class:`RemoteProtocolError` (reasons ``lsa_too_large``, ``lsa_truncated``,
    ``lsa_bad_version``, ``lsa_bad_node_id``, ``lsa_not_canonical``, ``lsa_bad_cost``) and
    nothing else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(DropReason.LSA_TRUNCATED, "link-state advert is not bytes")
    data = bytes(data)
    if len(data) > MAX_ENCODED_SIZE:
        raise RemoteProtocolError(DropReason.LSA_TOO_LARGE, "link-state advert is too large")
    if len(data) < MLDSA65_SIGNATURE_SIZE:
        raise RemoteProtocolError(DropReason.LSA_TRUNCATED, "link-state advert is truncated")
    body, signature = data[:-MLDSA65_SIGNATURE_SIZE], data[-MLDSA65_SIGNATURE_SIZE:]
    r = _Reader(body)
    version, flags = r.take(2)
    if version != LSA_VERSION:
        raise RemoteProtocolError(
            DropReason.LSA_BAD_VERSION, "unsupported link-state advert version"
        )
    origin = r.node_id("origin")
    seq, issued_at_ms = _SEQ_TIME.unpack(r.take(_SEQ_TIME.size))
    count = r.take(1)[0]
    neighbours: list[tuple[str, int]] = []
    previous: bytes | None = None
    origin_raw = origin.encode("utf-8")
    for _ in range(count):
        node_id = r.node_id("neighbour id")
        (cost,) = _COST.unpack(r.take(_COST.size))
        raw = node_id.encode("utf-8")
        if cost == 0:
            raise RemoteProtocolError(DropReason.LSA_BAD_COST, "link cost 0 is not allowed")
        if raw == origin_raw or (previous is not None and raw <= previous):
            raise RemoteProtocolError(
                DropReason.LSA_NOT_CANONICAL, "neighbours must be sorted, unique and not the origin"
            )
        previous = raw
        neighbours.append((node_id, cost))
    if r.pos != len(body):
        raise RemoteProtocolError(DropReason.LSA_TRUNCATED, "link-state advert has a bad length")
    try:
        lsa = LinkStateAdvert(origin, seq, issued_at_ms, tuple(neighbours), flags)
    except LocalProtocolError as exc:  # pragma: no cover - every field was checked above
        raise RemoteProtocolError(DropReason.LSA_NOT_CANONICAL, str(exc)) from None
    return lsa, body, signature


@dataclass(frozen=True, slots=True)
class AdvertHead:
    """The origin and seq at the start of an advert, as :func:`peek` reads them."""

    origin: str
    seq: int


def peek(data: bytes) -> AdvertHead | None:
    """The origin and seq of the advert that ``data`` starts with (a whole advert or its first
    bytes, e.g. a first fragment), without parsing the rest; None when ``data`` does not hold
    both. Nothing is checked beyond the origin's length and UTF-8: the advert may still be
    malformed or forged, so only decisions that a full parse would confirm may rest on it."""
    if len(data) < _HEAD.size + 1:
        return None
    length = data[2]
    end = _HEAD.size + length + 8
    if not 1 <= length <= MAX_NODE_ID_BYTES or len(data) < end:
        return None
    try:
        origin = bytes(data[_HEAD.size : _HEAD.size + length]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return AdvertHead(origin, int.from_bytes(data[end - 8 : end], "big"))


def verify_signed(
    lsa: LinkStateAdvert, signed_part: bytes, signature: bytes, key_for: KeyLookup
) -> None:
    """Check the origin's signature. Reasons: ``unknown_origin``, ``bad_signature``."""
    key = key_for(lsa.origin)
    if key is None:
        raise RemoteProtocolError(
            DropReason.UNKNOWN_ORIGIN, "advert from a node with no verified key"
        )
    try:
        verify_signature(key, SignatureContext.LINK_STATE_ADVERT, signed_part, signature)
    except (BadSignatureError, CryptoError):
        raise RemoteProtocolError(
            DropReason.BAD_SIGNATURE, "advert signature does not verify"
        ) from None
