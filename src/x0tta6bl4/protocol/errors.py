"""Protocol errors, split the way h11 splits them.

::

    ProtocolError
    ├── LocalProtocolError     we misused the API (a bug in the caller); never the peer's fault
    └── RemoteProtocolError    the peer (or the network) sent something we must not accept;
                               the datagram is dropped and counted under ``reason``

Parsers raise only these. ``RemoteProtocolError.reason`` is a short stable token (used as the
``reason`` label of the ``x0tta6bl4_node_packets_dropped_total`` metric); the message is for
humans and never contains key material.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every protocol error."""


class LocalProtocolError(ProtocolError):
    """The caller used the protocol API wrongly (e.g. sent before the handshake completed)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid: the input is dropped and counted."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        #: A short, stable token naming why the input was rejected (``"bad_length"``, …).
        self.reason = reason
