"""Protocol constants.

Specification constants are part of the wire protocol: a compatible implementation must use
the same values. Implementation constants are this implementation's choices (limits, timers)
and may differ between implementations without breaking interoperability.
"""

from __future__ import annotations

import enum

__all__ = [
    "MAX_DATAGRAM_SIZE",
    "PROTOCOL_VERSION",
    "MessageType",
]

# --- specification constants -----------------------------------------------------------------

#: Version byte carried by every handshake message.
PROTOCOL_VERSION = 1

#: No datagram of the protocol is larger than this (IPv6 minimum MTU minus headroom).
MAX_DATAGRAM_SIZE = 1200


class MessageType(enum.IntEnum):
    """First byte of every datagram."""

    HANDSHAKE_INIT = 1
    HANDSHAKE_RESP = 2
    HANDSHAKE_FINISH = 3
    TRANSPORT = 4
    COOKIE_REPLY = 5
