"""Protocol errors, split the way h11 splits them, and why input is dropped.

::

    ProtocolError
    ├── LocalProtocolError     we misused the API (a bug in the caller); never the peer's fault
    │   └── InvalidConfigError a configuration value out of range (also a ValueError)
    └── RemoteProtocolError    the peer (or the network) sent something we must not accept;
                               the datagram is dropped and counted under ``reason``

Parsers raise only these. ``RemoteProtocolError.reason`` is a :class:`DropReason`, the closed
set of reasons the protocol drops input for (used as the ``reason`` label of the
``x0tta6bl4_node_packets_dropped_total`` metric; ``docs/metrics.md`` lists every one, and a
test holds the two equal: adding a reason is a member here and a line there). The message is
for humans and never contains key material.
"""

from __future__ import annotations

import enum

__all__ = [
    "DropReason",
    "InvalidConfigError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class DropReason(enum.StrEnum):
    """Why the protocol refuses a datagram, a frame or an advert (see ``docs/metrics.md``)."""

    # transport datagrams (session.py)
    BAD_LENGTH = "bad_length"
    BAD_TYPE = "bad_type"
    UNKNOWN_INDEX = "unknown_index"
    DECRYPT_FAILED = "decrypt_failed"
    REPLAY = "replay"
    EXPIRED = "expired"
    # handshake datagrams: wire format (messages.py, fragments.py)
    BAD_VERSION = "bad_version"
    BAD_SUITE = "bad_suite"
    BAD_INDEX = "bad_index"
    TRUNCATED = "truncated"
    BAD_CERTIFICATE_LENGTH = "bad_certificate_length"
    BAD_COOKIE_LENGTH = "bad_cookie_length"
    BAD_MESSAGE_SEQ = "bad_message_seq"
    BAD_OFFSET = "bad_offset"
    DATAGRAM_TOO_LARGE = "datagram_too_large"
    MESSAGE_TOO_LARGE = "message_too_large"
    FRAGMENT_MISMATCH = "fragment_mismatch"
    TOO_MANY_PARTIALS = "too_many_partials"
    # handshake datagrams: state (handshake.py, listener.py)
    UNEXPECTED_MESSAGE = "unexpected_message"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    INDEX_MISMATCH = "index_mismatch"
    BAD_SHARE = "bad_share"
    REPLAYED_FINISH = "replayed_finish"
    CLOSED = "closed"
    SOURCE_RATE_LIMITED = "source_rate_limited"
    OVER_BUDGET = "over_budget"
    # inner frames (frames.py)
    BAD_FRAME = "bad_frame"
    UNKNOWN_FRAME = "unknown_frame"
    # link-state adverts (lsa.py; the database counts these as "malformed", "unknown_origin",
    # "bad_signature" in x0tta6bl4_node_lsa_total, never as dropped packets)
    LSA_TRUNCATED = "lsa_truncated"
    LSA_TOO_LARGE = "lsa_too_large"
    LSA_BAD_VERSION = "lsa_bad_version"
    LSA_BAD_NODE_ID = "lsa_bad_node_id"
    LSA_BAD_COST = "lsa_bad_cost"
    LSA_NOT_CANONICAL = "lsa_not_canonical"
    UNKNOWN_ORIGIN = "unknown_origin"
    BAD_SIGNATURE = "bad_signature"


class ProtocolError(Exception):
    """Base class of every protocol error."""


class LocalProtocolError(ProtocolError):
    """The caller used the protocol API wrongly (e.g. sent before the handshake completed)."""


class InvalidConfigError(LocalProtocolError, ValueError):
    """A protocol setting is out of range (a ``ValueError`` too, for callers validating
    flags)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid: the input is dropped and counted."""

    def __init__(self, reason: DropReason | str, message: str | None = None) -> None:
        #: Why the input was rejected; a string that is no :class:`DropReason` is a bug
        #: (ValueError), so the set of reasons stays closed.
        self.reason = DropReason(reason)
        super().__init__(message or self.reason.value)
