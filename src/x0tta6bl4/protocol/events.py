"""Events a handshake machine reports through ``next_event()``.

The owner (the asyncio node agent, or a test) dispatches on the type:

* :class:`HandshakeCompleted` — install ``keys`` as a transport keypair for ``peer``. On the
  initiator it means "FINISH was sent": keep calling the machine (it retransmits FINISH) until
  the first transport packet under these keys arrives, then call ``confirm(now)``.
* :class:`FinishRetransmitted` — responder only, after completion: the initiator has not seen
  a transport packet under the new keys yet; send it one (a keepalive) so it confirms.
* :class:`HandshakeFailed` — the handshake is over without usable keys (``failed`` is True).
  When it follows a :class:`HandshakeCompleted` (reason ``not_confirmed``), drop those keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from x0tta6bl4.crypto.pqsvid import PeerIdentity
from x0tta6bl4.protocol.keys import TransportKeys

__all__ = [
    "Event",
    "FinishRetransmitted",
    "HandshakeCompleted",
    "HandshakeErrorCode",
    "HandshakeFailed",
]


class HandshakeErrorCode(enum.IntEnum):
    """Why a handshake failed; ``HandshakeFailed.reason`` is the lower-case name."""

    TIMEOUT = 1  #: no completion before the give-up deadline
    NOT_CONFIRMED = 2  #: initiator: FINISH sent but never confirmed before the deadline
    CERTIFICATE_REJECTED = 3  #: ``verify_peer`` rejected the peer's certificate
    BAD_SIGNATURE = 4  #: the transcript signature does not verify under the certificate key
    UNAUTHORIZED = 5  #: ``authorize`` refused the verified peer
    UNEXPECTED_PEER = 6  #: initiator: the responder is not the node we meant to reach
    ABORTED = 7  #: the owner called ``abort()``

    @property
    def reason(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """Both sides are authenticated; ``keys`` are ready for the transport session."""

    keys: TransportKeys
    peer: PeerIdentity


@dataclass(frozen=True, slots=True)
class FinishRetransmitted:
    """Responder: a duplicate FINISH arrived after completion (no new keys were made)."""

    local_index: int


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake ended without usable keys."""

    error_code: HandshakeErrorCode
    reason: str


Event = HandshakeCompleted | FinishRetransmitted | HandshakeFailed
