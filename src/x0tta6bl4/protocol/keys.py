"""Transport keys: what a completed handshake hands to the transport session.

The handshake (``protocol/handshake``) derives one AES-256-GCM key per direction from the full
transcript and produces a :class:`TransportKeys`; the transport session
(:mod:`x0tta6bl4.protocol.session`) installs it as a keypair. ``repr`` never shows key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TransportKeys"]


@dataclass(frozen=True, slots=True)
class TransportKeys:
    """The result of one handshake, from one side's point of view."""

    #: AES-256-GCM key for packets we send (32 bytes).
    send_key: bytes = field(repr=False)
    #: AES-256-GCM key for packets we receive (32 bytes).
    recv_key: bytes = field(repr=False)
    #: u32 we chose; the peer addresses transport packets to us with it.
    local_index: int
    #: u32 the peer chose; we put it in the transport packets we send.
    remote_index: int
    #: True on the side that sent INIT.
    is_initiator: bool
    #: Hash of the full handshake transcript (binds channel-level data to this handshake).
    handshake_hash: bytes = field(repr=False)
