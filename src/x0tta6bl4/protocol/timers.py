"""Retransmission backoff for handshake flights.

A flight (INIT, RESP or FINISH, all fragments) that is not answered is sent again after the
retransmission timeout (RTO), which starts at
:data:`~x0tta6bl4.protocol.constants.INITIAL_RETRANSMIT_TIMEOUT` and doubles after every
retransmission up to :data:`~x0tta6bl4.protocol.constants.MAX_RETRANSMIT_TIMEOUT`; the
give-up deadline (:data:`~x0tta6bl4.protocol.constants.HANDSHAKE_GIVE_UP_AFTER`) bounds the
whole handshake. Nothing here reads a clock.
"""

from __future__ import annotations

from x0tta6bl4.protocol.constants import INITIAL_RETRANSMIT_TIMEOUT, MAX_RETRANSMIT_TIMEOUT
from x0tta6bl4.protocol.errors import LocalProtocolError

__all__ = ["Backoff"]


class Backoff:
    """An exponential retransmission timer: ``arm``, then ``due``/``back_off`` on timeouts."""

    __slots__ = ("_initial", "_max", "deadline", "rto")

    def __init__(
        self,
        *,
        initial: float = INITIAL_RETRANSMIT_TIMEOUT,
        maximum: float = MAX_RETRANSMIT_TIMEOUT,
    ) -> None:
        if not 0 < initial <= maximum:
            raise LocalProtocolError("need 0 < initial RTO <= maximum RTO")
        self._initial = initial
        self._max = maximum
        #: The current retransmission timeout (seconds).
        self.rto = initial
        #: When the flight is sent again, or None when disarmed.
        self.deadline: float | None = None

    def arm(self, now: float) -> None:
        """Start over with the initial RTO (a new flight was just sent)."""
        self.rto = self._initial
        self.deadline = now + self.rto

    def disarm(self) -> None:
        self.deadline = None

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def back_off(self, now: float) -> None:
        """The flight was just retransmitted: double the RTO (capped) and re-arm."""
        self.rto = min(self.rto * 2, self._max)
        self.deadline = now + self.rto
