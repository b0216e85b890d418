"""The programme player's lag rule, sampled as the screen process samples it: at the rate
the rule itself asks for (fast while anything may need acting on, slow otherwise)."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import diemcau.core.lag
from diemcau.core.lag import (
    FAST_TICK_S,
    RELOAD,
    SLOW_DOWN,
    SLOW_TICK_S,
    SPEED_UP,
    LagRule,
)


def rule() -> LagRule:
    return LagRule(bound_ms=150, target_ms=60, reload_ms=4000, catchup_speed=1.5)


def run(lag: LagRule, cached: Callable[[float, float], float], until_s: float,
        start_s: float = 0.0) -> list[tuple[float, str, float]]:
    """Sample ``cached(t, speed)`` at the rule's own pace: (time, action, tick) of each sample."""
    seen = []
    now = start_s
    while now < until_s:
        action = lag.observe(now, cached(now, lag.speed))
        tick = lag.tick_s()
        seen.append((now, action, tick))
        now += tick
    return seen


def at_the_edge(t: float, _speed: float) -> float:
    """What waits at the live edge: packets every 20 ms, drained between them (0-40 ms)."""
    return 0.04 * ((t * 25) % 1.0)


def test_the_doctest() -> None:
    assert doctest.testmod(diemcau.core.lag).failed == 0


def test_at_the_live_edge_it_looks_slowly_and_does_nothing() -> None:
    lag = rule()
    seen = run(lag, at_the_edge, 20.0)
    assert [a for _, a, _ in seen if a] == []
    # A second at the fast rate to fill the window, then the slow rate for good.
    assert all(tick == FAST_TICK_S for at, _, tick in seen if at < 0.95)
    assert all(tick == SLOW_TICK_S for at, _, tick in seen if at > 1.05)
    assert len(seen) < 20 / SLOW_TICK_S + 12


def test_a_small_backlog_at_connect_is_caught_up() -> None:
    # The player connects 180 ms behind the edge (what the former 400 ms bound left alone):
    # what waits shrinks by (speed - 1) of the time played.
    behind = {"s": 0.18, "at": 0.0}

    def cached(t: float, speed: float) -> float:
        behind["s"] = max(0.0, behind["s"] - (speed - 1) * (t - behind["at"]))
        behind["at"] = t
        return behind["s"] + at_the_edge(t, speed)

    lag = rule()
    seen = run(lag, cached, 10.0)
    actions = [(round(at, 1), a) for at, a, _ in seen if a]
    assert [a for _, a in actions] == [SPEED_UP, SLOW_DOWN], actions
    assert actions[1][0] < 1.0  # 180 ms at 1.5x: under 60 ms in about 0.3 s
    assert lag.speed == 1.0 and lag.edge_ms == 0
    assert seen[-1][2] == SLOW_TICK_S


def test_a_backlog_that_comes_while_looking_slowly_is_seen_within_a_second() -> None:
    lag = rule()
    run(lag, at_the_edge, 5.0)
    assert lag.tick_s() == SLOW_TICK_S

    # At 5 s a stall and a burst: 300 ms wait from then on, until caught up.
    def cached(t: float, speed: float) -> float:
        return 0.3 + at_the_edge(t, speed) if speed == 1.0 else 0.01

    seen = run(lag, cached, 8.0, start_s=5.0)
    first_fast = next(at for at, _, tick in seen if tick == FAST_TICK_S)
    sped_at = next(at for at, a, _ in seen if a == SPEED_UP)
    assert first_fast == seen[0][0]  # the first high sample brings the fast rate back
    # The slow samples from before leave the window within a second; a second of fast
    # ones over the bound is the lag.
    assert sped_at - seen[0][0] <= 1.0 + FAST_TICK_S + 1e-9, sped_at


def test_one_high_sample_among_slow_ones_is_not_a_lag() -> None:
    lag = rule()
    run(lag, at_the_edge, 5.0)

    def cached(t: float, speed: float) -> float:
        return 0.3 if abs(t - 5.0) < 0.01 else at_the_edge(t, speed)  # one packet late

    seen = run(lag, cached, 8.0, start_s=5.0)
    assert [a for _, a, _ in seen if a] == []
    assert seen[0][2] == FAST_TICK_S and seen[-1][2] == SLOW_TICK_S


def test_a_feed_whose_edge_is_far_is_caught_up_once_and_then_left_alone() -> None:
    # Audio in 250 ms packets: what waits never drops under ~200 ms, whatever the speed.
    def cached(t: float, _speed: float) -> float:
        return 0.2 + 0.25 * ((t * 4) % 1.0)

    lag = rule()
    seen = run(lag, cached, 20.0)
    assert [a for _, a, _ in seen if a] == [SPEED_UP, SLOW_DOWN]
    assert 190 <= lag.edge_ms <= 250
    assert lag.speed == 1.0


def test_far_behind_loads_again_and_forgets() -> None:
    lag = rule()
    assert lag.observe(0.0, 4.5) == RELOAD
    assert lag.speed == 1.0 and lag.lag_s is not None and math.isclose(lag.lag_s, 4.5)
    assert lag.tick_s() == FAST_TICK_S
    lag.restart()
    assert lag.lag_s is None and lag.edge_ms == 0
