"""The heartbeat failure detector, driven by a hand-advanced clock between two detectors."""

from __future__ import annotations

import pytest

from x0tta6bl4.protocol.errors import LocalProtocolError
from x0tta6bl4.protocol.failure import (
    FailureDetector,
    FailureDetectorConfig,
    LinkCostChanged,
    LinkDown,
    LinkEvent,
    LinkUp,
    RttUpdated,
)

Message = tuple[float, str, int, "tuple[int, float] | None", bool]

#: The timings these tests were written in (0.1 s heartbeats, down after 4 silent ones); the
#: defaults have their own test.
FAST = FailureDetectorConfig(interval=0.1, dead_after=4)


class Pair:
    """Two detectors (a watches b, b watches a) joined by a link with a one-way delay.

    Each heartbeat carries the echo of the last one received (``take_echo``) and the
    ``probe`` flag, as the node sends them: one datagram per direction per interval.
    """

    def __init__(self, delay: float = 0.001, config: FailureDetectorConfig | None = None) -> None:
        self.now = 0.0
        self.delay = delay
        self.a = FailureDetector("b", 0.0, config or FAST)
        self.b = FailureDetector("a", 0.0, config or FAST)
        self.link_up = True
        self.in_flight: list[Message] = []
        self.sent = {"a": 0, "b": 0}
        self.events: dict[str, list[LinkEvent]] = {"a": [], "b": []}

    def _collect(self) -> None:
        for name, fd in (("a", self.a), ("b", self.b)):
            for seq in fd.heartbeats_to_send():
                echo = fd.take_echo(self.now)
                self.sent[name] += 1
                if self.link_up:
                    other = "b" if name == "a" else "a"
                    self.in_flight.append((self.now + self.delay, other, seq, echo, fd.probing))
            while (event := fd.next_event()) is not None:
                self.events[name].append(event)

    def run(self, until: float) -> None:
        while True:
            self._collect()
            timers = [self.a.get_timer(), self.b.get_timer()]
            arrivals = [m[0] for m in self.in_flight]
            t = min(timers + arrivals)
            if t > until:
                break
            self.now = t
            for fd in (self.a, self.b):
                if fd.get_timer() <= t:
                    fd.handle_timer(t)
            due = [m for m in self.in_flight if m[0] <= t]
            self.in_flight = [m for m in self.in_flight if m[0] > t]
            for _, to, seq, echo, probe in due:
                fd = self.a if to == "a" else self.b
                if echo is not None:
                    fd.on_heartbeat_ack(echo[0], t, echo[1])
                fd.on_heartbeat(seq, t, probe=probe)
        self.now = until


def kinds(events: list[LinkEvent], kind: type) -> list[LinkEvent]:
    return [e for e in events if isinstance(e, kind)]


def test_link_comes_up_with_rtt_and_cost() -> None:
    pair = Pair(delay=0.002)
    pair.run(0.05)
    assert pair.a.up
    assert pair.b.up
    ups = kinds(pair.events["a"], LinkUp)
    assert ups == [LinkUp("b", pytest.approx(0.004), 40)]
    assert pair.a.srtt == pytest.approx(0.004)
    assert pair.a.min_rtt == pytest.approx(0.004)
    assert pair.a.cost == 40  # 4 ms / 100 us
    assert kinds(pair.events["a"], RttUpdated)


def test_dead_peer_is_declared_down_within_detection_time() -> None:
    pair = Pair(config=FailureDetectorConfig())
    pair.run(1.0)
    assert pair.a.up
    last = pair.a.last_received
    assert last is not None
    pair.link_up = False
    pair.in_flight.clear()
    kill_at = pair.now
    pair.run(3.0)
    downs = kinds(pair.events["a"], LinkDown)
    assert len(downs) == 1
    assert not pair.a.up
    down = downs[0]
    assert isinstance(down, LinkDown)
    cfg = FailureDetectorConfig()
    detection = cfg.dead_after * cfg.interval
    assert detection == pytest.approx(0.6)  # the documented default
    assert down.silent_for == pytest.approx(detection)
    # Detected 0.6 s after the last packet, i.e. at most 0.6 s after the failure.
    assert last + detection - kill_at <= detection


def test_link_comes_back_after_a_successful_exchange() -> None:
    pair = Pair()
    pair.run(1.0)
    pair.link_up = False
    pair.run(2.0)
    assert not pair.a.up
    sent_while_down = len(kinds(pair.events["a"], LinkUp))
    pair.link_up = True
    pair.run(3.0)
    assert pair.a.up
    assert len(kinds(pair.events["a"], LinkUp)) == sent_while_down + 1


def test_packets_keep_the_link_alive_but_never_bring_it_up() -> None:
    fd = FailureDetector("p", 0.0, FAST)
    assert fd.heartbeats_to_send() == []
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_packet_received(0.01)
    assert not fd.up  # one-way traffic proves nothing about our direction
    assert fd.on_heartbeat_ack(seq + 1, 0.01) is False  # unknown seq
    assert fd.on_heartbeat_ack(seq, 0.01) is True
    assert fd.up
    assert fd.on_heartbeat_ack(seq, 0.02) is False  # each ack counts once
    # Without heartbeat acks, other packets alone keep it up.
    t = 0.01
    while t < 2.0:
        t += 0.05
        fd.on_packet_received(t)
        if fd.get_timer() <= t:
            fd.handle_timer(t)
    assert fd.up
    assert fd.get_timer() <= t + 0.1
    last = t
    while fd.up:  # silence from now on, the timer served on time
        t = fd.get_timer()
        fd.handle_timer(t)
    assert t == pytest.approx(last + 0.4)


def test_cost_hysteresis() -> None:
    fd = FailureDetector("p", 0.0, FailureDetectorConfig(interval=0.1, alpha=1.0))
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.010)  # 10 ms -> cost 100
    assert fd.cost == 100
    for rtt in (0.011, 0.012, 0.009, 0.0076):  # the window's minimum stays within 25 %
        fd.handle_timer(fd.get_timer())
        (seq,) = fd.heartbeats_to_send()
        sent = fd.get_timer() - fd.config.interval
        fd.on_heartbeat_ack(seq, sent + rtt)
        assert fd.cost == 100
    fd.handle_timer(fd.get_timer())
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, fd.get_timer() - fd.config.interval + 0.005)  # a drop: at once
    assert fd.cost == 50
    events = []
    while (e := fd.next_event()) is not None:
        events.append(e)
    assert kinds(events, LinkCostChanged) == [LinkCostChanged("p", 50)]


def test_small_costs_move_only_by_more_than_a_millisecond() -> None:
    # Loopback/LAN: 1.1 ms -> cost 11; 40 % more (1.6 ms) is within cost_min_change (1 ms).
    fd = FailureDetector("p", 0.0, FailureDetectorConfig(interval=0.1, alpha=1.0))
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.0011)
    assert fd.cost == 11
    t = 0.0
    for rtt in (0.0016, 0.0019):
        t += 10.0  # a new cost window each time: the window minimum is this sample
        fd.handle_timer(t)
        (seq,) = fd.heartbeats_to_send()
        fd.on_heartbeat_ack(seq, t + rtt)
        fd.handle_timer(t + 10.0)
        (seq,) = fd.heartbeats_to_send()
        fd.on_heartbeat_ack(seq, t + 10.0 + rtt)
        t += 10.0
    assert fd.cost == 11
    fd.handle_timer(t + 10.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, t + 10.0 + 0.0025)  # 2.5 ms: past the band
    fd.handle_timer(t + 20.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, t + 20.0 + 0.0025)
    assert fd.cost == 25
    with pytest.raises(ValueError, match="cost_min_change"):
        FailureDetectorConfig(cost_min_change=-1)


def test_cost_follows_the_windowed_minimum_rtt_not_queueing_delay() -> None:
    # RTT samples of a path whose propagation delay is 4 ms, on a host whose event loop
    # sometimes answers 50 ms late: the cost stays at 40; when the path itself becomes
    # 20 ms, the cost follows within two windows (10-20 s).
    fd = FailureDetector("p", 0.0, FailureDetectorConfig(interval=0.1, alpha=1.0))
    t = 0.0
    costs = []
    for i in range(400):  # 40 s at 0.1 s
        t = fd.get_timer()
        fd.handle_timer(t)
        (seq,) = fd.heartbeats_to_send()
        base = 0.004 if t < 20.0 else 0.020
        rtt = base + (0.050 if i % 3 == 1 else 0.0)
        fd.on_heartbeat_ack(seq, t + rtt)
        costs.append((t, fd.cost))
        fd.on_packet_received(t + rtt)
    assert all(c == 40 for at, c in costs if at < 20.0)
    assert all(c == 200 for at, c in costs if at > 40.0 - 0.5)
    changed = [at for at, c in costs if c == 200]
    assert 20.0 < changed[0] <= 40.0
    assert fd.srtt is not None
    assert fd.window_rtt == pytest.approx(0.020)


def test_cost_floor_and_validation() -> None:
    fd = FailureDetector("p", 0.0, FAST)
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.0001)
    assert fd.cost == 10
    with pytest.raises(LocalProtocolError):
        fd.on_heartbeat(-1, 0.0)
    with pytest.raises(ValueError, match="positive"):
        FailureDetectorConfig(interval=0)
    with pytest.raises(ValueError, match="at least 1"):
        FailureDetectorConfig(dead_after=0)
    with pytest.raises(ValueError, match="alpha"):
        FailureDetectorConfig(alpha=0)
    assert FailureDetectorConfig(interval=0.05, dead_after=3).detection_time == pytest.approx(0.15)


def test_configurable_detection_time() -> None:
    cfg = FailureDetectorConfig(interval=0.05, dead_after=3)
    pair = Pair(config=cfg)
    pair.run(1.0)
    pair.link_up = False
    pair.in_flight.clear()
    pair.run(2.0)
    (down,) = kinds(pair.events["b"], LinkDown)
    assert isinstance(down, LinkDown)
    assert down.silent_for == pytest.approx(0.15)


def test_one_heartbeat_per_direction_per_interval_carries_the_echo() -> None:
    pair = Pair(delay=0.002)
    pair.run(1.0)
    sent = dict(pair.sent)
    pair.run(3.0)
    # 2 s at 0.1 s: 20 heartbeats each way, no separate acks.
    assert sent["a"] + 19 <= pair.sent["a"] <= sent["a"] + 21
    assert sent["b"] + 19 <= pair.sent["b"] <= sent["b"] + 21
    # The RTT excludes the time the peer held the echo (up to one interval).
    assert pair.a.srtt == pytest.approx(0.004)
    assert pair.b.srtt == pytest.approx(0.004)
    assert len(kinds(pair.events["a"], RttUpdated)) >= 25


def test_probe_is_answered_at_once_so_the_link_comes_up_in_one_round_trip() -> None:
    pair = Pair(delay=0.002)
    pair.run(0.5)
    assert pair.a.up
    assert pair.b.up
    pair.link_up = False
    pair.run(1.5)
    assert not pair.a.up
    assert not pair.b.up
    # Both probe every 0.5 s (down_interval); heal the link just after a's probe left.
    pair.link_up = True
    a_probe = pair.a.get_timer()
    pair.run(a_probe + 0.001)
    pair.link_up = True
    pair.run(a_probe + 0.0041)  # b answers the probe at once: up within one round trip
    assert pair.a.up


def test_echo_with_an_impossible_hold_time_is_ignored() -> None:
    fd = FailureDetector("p", 0.0, FAST)
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    assert fd.on_heartbeat_ack(seq, 0.01, held=0.02) is False  # held longer than the trip
    assert fd.on_heartbeat_ack(seq, 0.01, held=-0.001) is False
    assert not fd.up
    assert fd.on_heartbeat_ack(seq, 0.01, held=0.006) is True
    assert fd.latest_rtt == pytest.approx(0.004)
    assert fd.take_echo(0.01) is None
    fd.on_heartbeat(7, 0.02)
    assert fd.take_echo(0.05) == (7, pytest.approx(0.03))
    assert fd.take_echo(0.05) is None  # each echo once


def test_own_stall_is_not_counted_as_missed_heartbeats() -> None:
    # Explicit clock: the peer's last heartbeat arrived at 1.0; our next timer (a heartbeat
    # at 1.1) fires only at 1.6 because this process was descheduled.
    fd = FailureDetector("p", 0.0, FAST)
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.001)
    t = 0.001
    while t < 1.0:
        t = fd.get_timer()
        fd.handle_timer(t)
        fd.heartbeats_to_send()
        fd.on_packet_received(t)
    assert fd.up
    due = fd.get_timer()
    stalled_until = due + 0.5  # later than the silence limit (last packet + 0.4 s)
    fd.handle_timer(stalled_until)
    assert fd.up, "a stall of our own is not the peer's silence"
    assert fd.stall_credit == pytest.approx(0.4)  # bounded by one detection time
    # The heartbeats queued during the stall are read: the link stays up, credit resets.
    fd.on_packet_received(stalled_until)
    assert fd.stall_credit == 0.0
    # A peer that really died is still declared down once the timer runs on time.
    last = stalled_until
    while fd.up:
        t = fd.get_timer()
        fd.handle_timer(t)
    assert t == pytest.approx(last + 0.4)


def test_stall_credit_still_detects_a_dead_peer_on_a_slow_host() -> None:
    # Every timer fires 60 ms late (more than half the interval): the peer is silent.
    fd = FailureDetector("p", 0.0, FAST)
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.001)
    last = 0.001
    t = last
    while fd.up:
        t = fd.get_timer() + 0.06
        fd.handle_timer(t)
        assert t - last < 2.0
    assert fd.stall_credit == 0.0
    assert 0.8 <= t - last <= 2 * 0.4 + 2 * 0.16


def test_stall_fraction_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stall_fraction"):
        FailureDetectorConfig(stall_fraction=0)


def test_heartbeat_due_soon_goes_with_an_earlier_wake_up() -> None:
    fd = FailureDetector("p", 0.0, FAST)
    fd.handle_timer(0.0)
    (seq,) = fd.heartbeats_to_send()
    fd.on_heartbeat_ack(seq, 0.001)
    due = fd.get_timer()
    assert fd.early == pytest.approx(0.025)
    fd.handle_timer(due - 0.03)  # outside the window: nothing
    assert fd.heartbeats_to_send() == []
    fd.handle_timer(due - 0.02)  # a wake-up for another link: this beat goes along
    assert len(fd.heartbeats_to_send()) == 1
    assert fd.get_timer() == pytest.approx(due + 0.1)  # the grid is kept
    with pytest.raises(ValueError, match="early_fraction"):
        FailureDetectorConfig(early_fraction=1.0)
