"""RFC 6479 replay window: accepts each counter once, tolerates reordering, rejects old ones."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.protocol.constants import REJECT_AFTER_MESSAGES
from x0tta6bl4.protocol.replay import WINDOW_SIZE, ReplayFilter

LIMIT = REJECT_AFTER_MESSAGES


def test_window_is_at_least_2048_and_matches_wireguard() -> None:
    assert WINDOW_SIZE >= 2048
    assert WINDOW_SIZE == 8128  # wireguard-go: (128 blocks - 1) * 64 bits


def test_sequential_counters_accepted_once() -> None:
    f = ReplayFilter()
    for counter in range(1000):
        assert f.validate_counter(counter, LIMIT)
    for counter in range(1000):
        assert not f.validate_counter(counter, LIMIT)


def test_counter_zero_first_then_duplicate() -> None:
    f = ReplayFilter()
    assert f.validate_counter(0, LIMIT)
    assert not f.validate_counter(0, LIMIT)
    assert f.validate_counter(1, LIMIT)


def test_reordered_within_window_accepted_once() -> None:
    f = ReplayFilter()
    counters = list(range(3000))
    random.Random(7).shuffle(counters)
    # Make sure the highest counter comes early so that the rest arrive "late".
    counters.remove(2999)
    counters.insert(0, 2999)
    assert all(f.validate_counter(c, LIMIT) for c in counters)
    assert not any(f.validate_counter(c, LIMIT) for c in counters)


def test_distances_2047_2048_2049_behind_the_highest_are_accepted() -> None:
    f = ReplayFilter()
    top = 100_000
    assert f.validate_counter(top, LIMIT)
    for distance in (2047, 2048, 2049):
        assert f.validate_counter(top - distance, LIMIT), distance
        assert not f.validate_counter(top - distance, LIMIT), distance


def test_window_edge() -> None:
    f = ReplayFilter()
    top = 50_000
    assert f.validate_counter(top, LIMIT)
    assert not f.validate_counter(top - WINDOW_SIZE - 1, LIMIT)  # just below the window
    assert f.validate_counter(top - WINDOW_SIZE, LIMIT)  # the oldest counter still inside
    assert not f.validate_counter(top - WINDOW_SIZE, LIMIT)


def test_below_window_rejected_even_if_never_seen() -> None:
    f = ReplayFilter()
    assert f.validate_counter(20_000, LIMIT)
    assert not f.validate_counter(1, LIMIT)
    assert not f.validate_counter(20_000 - WINDOW_SIZE - 500, LIMIT)


def test_limit_rejects_without_moving_the_window() -> None:
    f = ReplayFilter()
    assert f.validate_counter(10, LIMIT)
    assert not f.validate_counter(100, 100)
    assert not f.validate_counter(2**64 - 1, LIMIT)
    # The window did not slide: counter 5 is still acceptable.
    assert f.validate_counter(5, LIMIT)
    assert f.validate_counter(99, 100)


def test_jump_far_ahead_clears_the_ring() -> None:
    f = ReplayFilter()
    for counter in range(200):
        assert f.validate_counter(counter, LIMIT)
    # A counter whose ring slot aliases an old one (same block index modulo the ring).
    far = 10 * 8192 + 5
    assert f.validate_counter(far, LIMIT)
    assert f.validate_counter(far - 8192 + 8192 // 2, LIMIT)
    assert f.validate_counter(far - 3, LIMIT)
    assert not f.validate_counter(5, LIMIT)


def test_reset_forgets() -> None:
    f = ReplayFilter()
    assert f.validate_counter(3, LIMIT)
    f.reset()
    assert f.validate_counter(3, LIMIT)


def test_negative_counter_rejected() -> None:
    assert not ReplayFilter().validate_counter(-1, LIMIT)


class _Model:
    """The window's specification, written the slow, obvious way."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = 0

    def validate(self, counter: int, limit: int) -> bool:
        if counter >= limit or counter in self.seen:
            return False
        if counter < self.highest and self.highest - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=40_000),
            st.integers(min_value=0, max_value=2**64 - 1),
        ),
        max_size=300,
    )
)
def test_matches_reference_model(steps: list[int]) -> None:
    f = ReplayFilter()
    model = _Model()
    for counter in steps:
        assert f.validate_counter(counter, LIMIT) == model.validate(counter, LIMIT), counter


@settings(max_examples=100, deadline=None)
@given(
    start=st.integers(min_value=0, max_value=2**40),
    deltas=st.lists(st.integers(min_value=-9000, max_value=9000), max_size=400),
)
def test_matches_reference_model_near_the_window_edge(start: int, deltas: list[int]) -> None:
    f = ReplayFilter()
    model = _Model()
    counter = start
    for delta in deltas:
        counter = max(0, counter + delta)
        assert f.validate_counter(counter, LIMIT) == model.validate(counter, LIMIT), counter
