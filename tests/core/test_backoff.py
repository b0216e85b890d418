"""Reconnect delays: exponential, capped, jittered. The random source is passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.backoff import backoff_delay, spread_delay

ATTEMPTS = st.integers(min_value=0, max_value=10_000)
MIN_S = st.floats(min_value=0.01, max_value=10.0)
MAX_S = st.floats(min_value=0.01, max_value=3600.0)
UNIT = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def step(attempt: int, min_s: float, max_s: float) -> float:
    return min(max_s, min_s * 2 ** min(attempt, 32))


@given(attempt=ATTEMPTS, min_s=MIN_S, max_s=MAX_S, r=UNIT)
def test_a_delay_is_between_half_its_step_and_its_step(
        attempt: int, min_s: float, max_s: float, r: float) -> None:
    max_s = max(max_s, min_s)
    delay = backoff_delay(attempt, min_s, max_s, random=lambda: r)
    assert step(attempt, min_s, max_s) / 2 <= delay <= step(attempt, min_s, max_s)
    assert delay <= max_s
    assert delay >= min_s / 2


@given(attempt=ATTEMPTS, min_s=MIN_S, max_s=MAX_S, r=UNIT)
def test_delays_never_shrink_as_attempts_go_on(
        attempt: int, min_s: float, max_s: float, r: float) -> None:
    max_s = max(max_s, min_s)
    now = backoff_delay(attempt, min_s, max_s, random=lambda: r)
    later = backoff_delay(attempt + 1, min_s, max_s, random=lambda: r)
    assert later >= now


def test_delays_double_until_the_cap() -> None:
    steps = [backoff_delay(n, 1.0, 60.0, random=lambda: 1.0) for n in range(9)]
    assert steps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    halves = [backoff_delay(n, 1.0, 60.0, random=lambda: 0.0) for n in range(9)]
    assert halves == [s / 2 for s in steps]


def test_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    assert backoff_delay(10**9, 1.0, 120.0, random=lambda: 0.5) == 90.0


def test_jitter_comes_from_the_random_source() -> None:
    first = random.Random(1)
    second = random.Random(2)
    a = [backoff_delay(n, 1.0, 60.0, random=first.random) for n in range(10)]
    b = [backoff_delay(n, 1.0, 60.0, random=second.random) for n in range(10)]
    assert a != b
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_many_boxes_do_not_retry_in_the_same_second() -> None:
    # 1000 boxes losing the broker at once, each with its own random source:
    # their fifth retry (step 16 s) spreads over the 8 s the jitter allows.
    delays = [backoff_delay(4, 1.0, 60.0, random=random.Random(box).random) for box in range(1000)]
    assert min(delays) >= 8.0 and max(delays) <= 16.0
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(8, 16)]
    assert max(per_second) < 200, per_second  # evenly spread would be 125


@pytest.mark.parametrize("r", [0.0, 0.25, 0.999])
def test_the_first_retry_is_quick(r: float) -> None:
    assert 0.5 <= backoff_delay(0, 1.0, 120.0, random=lambda: r) <= 1.0


@given(window=st.floats(min_value=0.0, max_value=600.0), r=UNIT)
def test_the_first_attempt_after_a_loss_is_anywhere_in_the_window(window: float,
                                                                  r: float) -> None:
    assert 0.0 <= spread_delay(window, random=lambda: r) <= window


def test_a_fleet_that_loses_its_broker_comes_back_spread_over_the_window() -> None:
    # 10,000 boxes, a 20 s window: about 500 a second, never thousands in one second,
    # where the backoff's first step alone brings them all back within one second.
    delays = [spread_delay(20.0, random=random.Random(box).random) for box in range(10_000)]
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(20)]
    assert max(per_second) < 650 and min(per_second) > 350, per_second
    unspread = [backoff_delay(0, 1.0, 120.0, random=random.Random(box).random)
                for box in range(10_000)]
    assert max(unspread) <= 1.0  # the storm the window prevents


def test_no_window_means_at_once() -> None:
    assert spread_delay(0.0, random=lambda: 0.9) == 0.0
