"""Heartbeat failure detector for one link, sans-IO.

Rules::

    every `interval` (0.1 s) while UP, every `down_interval` (0.5 s) while DOWN:
        send HEARTBEAT(seq, echo, probe)   seq: u32, +1 per heartbeat (wraps)
                                           echo: the last peer heartbeat not yet echoed, and
                                                 how long we held it (take_echo)
                                           probe: set while our side of the link is DOWN
    peer's HEARTBEAT(seq)      -> remembered for the echo of our next heartbeat; counts as a
                                  packet received; with `probe` set, our next heartbeat is
                                  sent at once (so a link comes up in one round trip)
    an echo of one of our last `max_outstanding` heartbeats (on_heartbeat_ack)
                               -> RTT sample = now - our send time - the peer's hold time;
                                  DOWN -> UP (a full round trip proves both ways)
    any authenticated packet from the peer (on_packet_received)
                               -> refreshes liveness while UP (never brings a link UP)
    UP and nothing received for `dead_after` x `interval` (4 x 0.15 s), not counting stalls
                               -> DOWN

The echo rides on our own heartbeat, so a link costs one datagram per direction per interval
(not two: heartbeat and ack). A dead peer is declared down at most ``dead_after * interval``
after the last packet it sent arrived: 0.6 s by default (plus one network latency and any
stall of our own), well under a second. (0.15 s rather than 0.1 s: at 100 ms a 100-node mesh
packed onto two cores spends its CPU on heartbeats and sheds links under load; see
``docs/node.md``. A deployment with CPU to spare can lower it.)

**Stalls.** When our timer fires more than ``stall_fraction`` x ``interval`` after the
deadline we asked for, this process was descheduled (or its event loop was busy) for that
long and could not have read the peer's heartbeats in the meantime. The lateness is credited
to the silence limit (up to one ``detection_time`` in total, reset by the next packet), so
local overload does not declare healthy peers dead; their queued heartbeats are read first.

RTT: ``srtt`` is an EWMA (``alpha`` = 1/8, as TCP's RFC 6298) seeded with the first sample;
``min_rtt`` the smallest sample seen; ``window_rtt`` the smallest sample of the last
``cost_window`` to 2 × ``cost_window`` seconds (10–20 s: two buckets, as BBR's min-RTT
filter). The sample is measured against **our own** send time
of the echoed seq; the only figure the peer contributes is how long it held our heartbeat
before echoing it, which must lie within the measured interval (else the echo is ignored).
**Link cost** (the value advertised in link-state adverts) is
``max(cost_floor, ceil(window_rtt / cost_unit))`` with ``cost_unit`` = 100 µs and
``cost_floor`` = 10 (1 ms: links faster than that are equal, so LAN jitter never re-routes).
The windowed minimum follows the path's propagation delay, not queueing or CPU delays: a
busy host (or a busy peer) answering late does not move costs, re-sign adverts and flood
them, which would load every node further; a longer path shows within 20 s, a shorter one
at once. With hysteresis,
the advertised cost changes only when the new value differs from the current one by more than
``hysteresis`` (25 %) and by more than ``cost_min_change`` (10 units = 1 ms), so costs do not
flap and do not cause a flood of adverts (every cost change is an advert every node verifies).

Events (:meth:`FailureDetector.next_event`): :class:`LinkUp`, :class:`LinkDown`,
:class:`RttUpdated` (every sample), :class:`LinkCostChanged` (only past the hysteresis band).
Not thread-safe: one owner drives it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from x0tta6bl4.protocol.errors import InvalidConfigError, LocalProtocolError
from x0tta6bl4.protocol.lsa import MAX_COST

__all__ = [
    "DEFAULT_DEAD_AFTER",
    "DEFAULT_INTERVAL",
    "FailureDetector",
    "FailureDetectorConfig",
    "LinkCostChanged",
    "LinkDown",
    "LinkEvent",
    "LinkUp",
    "RttUpdated",
]

_SEQ_MOD = 1 << 32


#: The default heartbeat period (seconds) of every link: ``x0tta6bl4 node --heartbeat-interval``.
DEFAULT_INTERVAL = 0.15
#: The default silent intervals before a link is down (``--dead-after``): 0.6 s in all.
DEFAULT_DEAD_AFTER = 4


@dataclass(frozen=True, slots=True)
class FailureDetectorConfig:
    """Timers and cost parameters; the defaults detect a dead peer in 0.6 s."""

    #: Seconds between heartbeats while the link is up.
    interval: float = DEFAULT_INTERVAL
    #: Missed intervals (with no packet at all from the peer) before the link is declared down.
    dead_after: int = DEFAULT_DEAD_AFTER
    #: Seconds between heartbeats while the link is down (probing for its return).
    down_interval: float = 0.5
    #: EWMA gain of the smoothed RTT.
    alpha: float = 0.125
    #: Seconds of smoothed RTT per unit of link cost.
    cost_unit: float = 1e-4
    #: The smallest link cost.
    cost_floor: int = 10
    #: Relative change of cost needed before the advertised cost moves ...
    hysteresis: float = 0.25
    #: ... and absolute change (cost units: 10 = 1 ms), so LAN jitter never re-signs adverts.
    cost_min_change: int = 10
    #: Heartbeats remembered for matching acks.
    max_outstanding: int = 16
    #: Seconds per bucket of the windowed minimum RTT that sets the cost.
    cost_window: float = 10.0
    #: A timer later than this fraction of ``interval`` past its deadline is a stall of
    #: this process, credited to the silence limit.
    stall_fraction: float = 0.5
    #: A heartbeat due within this fraction of ``interval`` is sent early when the timer runs
    #: anyway (:meth:`FailureDetector.handle_timer`), so a node's links share timer wake-ups.
    early_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not (
            self.interval > 0
            and self.down_interval > 0
            and self.cost_unit > 0
            and self.cost_window > 0
        ):
            raise InvalidConfigError(
                "interval, down_interval, cost_unit and cost_window must be positive"
            )
        if self.cost_min_change < 0:
            raise InvalidConfigError("cost_min_change must not be negative")
        if self.dead_after < 1 or self.max_outstanding < 1 or self.cost_floor < 1:
            raise InvalidConfigError(
                "dead_after, max_outstanding and cost_floor must be at least 1"
            )
        if not (0 < self.alpha <= 1 and self.hysteresis >= 0):
            raise InvalidConfigError("alpha must be in (0, 1] and hysteresis non-negative")
        if not self.stall_fraction > 0:
            raise InvalidConfigError("stall_fraction must be positive")
        if not 0 <= self.early_fraction < 1:
            raise InvalidConfigError("early_fraction must be in [0, 1)")

    @property
    def detection_time(self) -> float:
        """Seconds of silence after which an up link is declared down."""
        return self.dead_after * self.interval


@dataclass(frozen=True, slots=True)
class LinkUp:
    peer: str
    rtt: float
    cost: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    peer: str
    #: Seconds since the last packet from the peer.
    silent_for: float


@dataclass(frozen=True, slots=True)
class RttUpdated:
    peer: str
    rtt: float
    srtt: float
    min_rtt: float


@dataclass(frozen=True, slots=True)
class LinkCostChanged:
    peer: str
    cost: int


LinkEvent = LinkUp | LinkDown | RttUpdated | LinkCostChanged


class FailureDetector:
    """Liveness, RTT and cost of the link to ``peer``. Starts DOWN and probes at once."""

    def __init__(self, peer: str, now: float, config: FailureDetectorConfig | None = None) -> None:
        self.peer = peer
        self.config = config or FailureDetectorConfig()
        self._detection_time = self.config.detection_time
        self._stall_tolerance = self.config.stall_fraction * self.config.interval
        #: How early a heartbeat may go when the timer runs for something else.
        self.early = self.config.early_fraction * self.config.interval
        self.up = False
        self.srtt: float | None = None
        self.min_rtt: float | None = None
        self.latest_rtt: float | None = None
        #: The smallest RTT of the last one to two cost windows (sets the cost).
        self.window_rtt: float | None = None
        self._bucket_start = now
        self._bucket_min: float | None = None
        self._previous_min: float | None = None
        #: Advertised link cost (None until the first RTT sample).
        self.cost: int | None = None
        self.last_received: float | None = None
        #: Seconds of our own stalls credited to the silence limit since the last packet.
        self.stall_credit = 0.0
        self._next_seq = 0
        self._next_send = now
        self._outstanding: OrderedDict[int, float] = OrderedDict()
        self._to_send: list[int] = []
        self._echo: tuple[int, float] | None = None
        self._events: deque[LinkEvent] = deque()

    # --- outputs ----------------------------------------------------------------------------

    def get_timer(self) -> float:
        """The next deadline: a heartbeat to send or the silence limit."""
        if self.up and self.last_received is not None:
            silence = self.last_received + self._detection_time + self.stall_credit
            return min(self._next_send, silence)
        return self._next_send

    def heartbeats_to_send(self) -> list[int]:
        """Sequence numbers of HEARTBEAT frames to send now (drained)."""
        out, self._to_send = self._to_send, []
        return out

    def take_echo(self, now: float) -> tuple[int, float] | None:
        """``(seq, held seconds)`` of the peer's latest heartbeat to echo in ours; each once."""
        echo, self._echo = self._echo, None
        if echo is None:
            return None
        return echo[0], max(0.0, now - echo[1])

    @property
    def probing(self) -> bool:
        """True while the link is down: our heartbeats ask the peer to answer at once."""
        return not self.up

    def next_event(self) -> LinkEvent | None:
        return self._events.popleft() if self._events else None

    # --- inputs -----------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``; an up link's heartbeat due within ``early`` goes now.

        Call it at or after :meth:`get_timer`, or up to :attr:`early` before it when the
        driver's timer runs anyway.
        """
        cfg = self.config
        late = now - self.get_timer()
        if late > self._stall_tolerance and self.up:
            # Descheduled: the peer's heartbeats of the stall wait unread in our socket.
            self.stall_credit = min(self.stall_credit + late, self._detection_time)
        if (
            self.up
            and self.last_received is not None
            and now >= self.last_received + self._detection_time + self.stall_credit
        ):
            self.up = False
            self.stall_credit = 0.0
            self._events.append(LinkDown(self.peer, now - self.last_received))
            self._next_send = min(self._next_send, now + cfg.down_interval)
        if now >= self._next_send - (self.early if self.up else 0.0):
            self._beat(now)

    def _beat(self, now: float) -> None:
        cfg = self.config
        seq = self._next_seq
        self._next_seq = (seq + 1) % _SEQ_MOD
        self._outstanding[seq] = now
        while len(self._outstanding) > cfg.max_outstanding:
            self._outstanding.popitem(last=False)
        self._to_send.append(seq)
        step = cfg.interval if self.up else cfg.down_interval
        # Never fall behind by more than one beat if the driver was late.
        self._next_send = max(self._next_send + step, now + step / 2)

    def on_packet_received(self, now: float) -> None:
        """Any authenticated packet from the peer arrived (keeps an UP link alive)."""
        if self.last_received is None or now > self.last_received:
            self.last_received = now
            self.stall_credit = 0.0

    def on_heartbeat(self, seq: int, now: float, *, probe: bool = False) -> int:
        """The peer's HEARTBEAT(seq): echoed in our next heartbeat (returned too).

        ``probe`` (the peer's link is down): our next heartbeat goes out now, so that the
        peer sees a round trip at once.
        """
        if not 0 <= seq < _SEQ_MOD:
            raise LocalProtocolError("heartbeat seq must be a u32")
        self.on_packet_received(now)
        self._echo = (seq, now)
        if probe and not self._to_send:
            self._beat(now)
        return seq

    def on_heartbeat_ack(self, seq: int, now: float, held: float = 0.0) -> bool:
        """The peer echoed our heartbeat ``seq`` after holding it ``held`` seconds.

        False (nothing changes) when it matches no recent heartbeat or ``held`` does not fit
        between our send time and now.
        """
        sent_at = self._outstanding.get(seq)
        if sent_at is None or now < sent_at or not 0 <= held <= now - sent_at:
            return False
        del self._outstanding[seq]
        self.on_packet_received(now)
        rtt = now - sent_at - held
        self.latest_rtt = rtt
        cfg = self.config
        self.srtt = rtt if self.srtt is None else (1 - cfg.alpha) * self.srtt + cfg.alpha * rtt
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        self._events.append(RttUpdated(self.peer, rtt, self.srtt, self.min_rtt))
        if now - self._bucket_start >= cfg.cost_window:
            # A gap of more than one window forgets the old bucket too.
            recent = now - self._bucket_start < 2 * cfg.cost_window
            self._previous_min = self._bucket_min if recent else None
            self._bucket_min = None
            self._bucket_start = now
        if self._bucket_min is None or rtt < self._bucket_min:
            self._bucket_min = rtt
        window = self._bucket_min
        if self._previous_min is not None and self._previous_min < window:
            window = self._previous_min
        self.window_rtt = window
        candidate = min(MAX_COST, max(cfg.cost_floor, math.ceil(round(window / cfg.cost_unit, 6))))
        if self.cost is None:
            self.cost = candidate
        elif abs(candidate - self.cost) > max(cfg.hysteresis * self.cost, cfg.cost_min_change):
            self.cost = candidate
            if self.up:
                self._events.append(LinkCostChanged(self.peer, candidate))
        if not self.up:
            self.up = True
            self._events.append(LinkUp(self.peer, rtt, self.cost))
            self._next_send = min(self._next_send, now + cfg.interval)
        return True
