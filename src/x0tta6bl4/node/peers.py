"""The peer table entry of one link: failure detector, frame queue, retry schedule.

The keys and the handshake of a link live in its :class:`~x0tta6bl4.node.channels.Channel`;
a :class:`Link` adds what the node needs on top: the
:class:`~x0tta6bl4.protocol.failure.FailureDetector` (created when the first keys are
installed), the inner frames waiting for the next packet, link-layer fragmentation state
(:mod:`x0tta6bl4.node.reassembly`), whether neighbour selection wants
this link, and when to try a handshake again while the link is down (exponential backoff,
reset when the link comes up).
"""

from __future__ import annotations

from typing import Any

from x0tta6bl4.node.reassembly import FrameReassembler
from x0tta6bl4.protocol.failure import FailureDetector

__all__ = ["Link"]


class Link:
    """One neighbour link as the node tracks it. Plain state; :class:`NodeCore` drives it."""

    __slots__ = (
        "attempt_due",
        "backoff",
        "down_since",
        "ever_up",
        "fd",
        "frames",
        "next_msg_id",
        "node_id",
        "reassembly",
        "wanted",
    )

    def __init__(self, node_id: str, attempt_due: float | None, backoff: float) -> None:
        self.node_id = node_id
        #: When to start the next handshake (None: none planned).
        self.attempt_due = attempt_due
        #: Pause after the next attempt (doubles up to the configured maximum).
        self.backoff = backoff
        self.fd: FailureDetector | None = None
        #: True once the link was up at least once (a later silence means "dead").
        self.ever_up = False
        self.down_since: float | None = None
        #: Encoded inner frames to send with the next packet.
        self.frames: list[bytes] = []
        #: Whether neighbour selection currently picks this link.
        self.wanted = True
        #: Frames too large for one packet: our next message id, the peer's partial ones.
        self.next_msg_id = 0
        self.reassembly = FrameReassembler()

    @property
    def up(self) -> bool:
        return self.fd is not None and self.fd.up

    def state(self, channel: Any) -> str:
        """``up``, ``down`` (was up, now silent), ``handshaking`` or ``idle``."""
        if self.up:
            return "up"
        if self.ever_up:
            return "down"
        if channel is not None and (channel.initiator is not None or channel.session.can_send):
            return "handshaking"
        return "idle"

    def __repr__(self) -> str:
        return f"Link({self.node_id!r}, up={self.up}, wanted={self.wanted})"
