"""Telling presses apart from raw edges: short, long, reset hold; debounce. No threads, no sleeps."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from diemcau.core.button import ButtonState, PressAction, PressKind, PressTiming

TIMING = PressTiming(debounce_s=0.05, long_press_s=3.0, reset_hold_s=10.0)
START = 1000.0  # the clock is any monotonic one: not 0 at start


@dataclass
class Run:
    """A button fed step by step, keeping every action."""

    state: ButtonState
    actions: list[PressAction]

    @classmethod
    def at_start(cls, *, pressed: bool = False, reset_window_s: float = 0.0,
                 timing: PressTiming = TIMING) -> Run:
        return cls(ButtonState.start(timing, START, pressed=pressed,
                                     reset_window_s=reset_window_s), [])

    def edge(self, pressed: bool, t: float) -> list[PressKind]:
        self.state, actions = self.state.edge(pressed, START + t)
        self.actions += actions
        return [a.kind for a in actions]

    def tick(self, t: float) -> list[PressKind]:
        self.state, actions = self.state.tick(START + t)
        self.actions += actions
        return [a.kind for a in actions]

    @property
    def kinds(self) -> list[PressKind]:
        return [a.kind for a in self.actions]


# ---------------------------------------------------------------- examples


def test_a_short_press_is_reported_once_the_release_has_settled() -> None:
    run = Run.at_start()
    assert run.edge(True, 1.0) == []
    assert run.tick(1.2) == []
    assert run.edge(False, 1.5) == []
    assert run.tick(1.54) == []
    assert run.tick(1.55) == ["short_press"]
    assert run.actions[0].held_s == pytest.approx(0.5)
    assert run.actions[0].pressed_at == START + 1.0
    assert run.tick(100.0) == []


def test_a_long_press_is_reported_while_still_held_and_its_release_gives_nothing() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    assert run.state.next_deadline() == START + 1.0 + 0.05
    run.tick(1.05)  # the press settles
    assert run.state.is_pressed
    assert run.state.next_deadline() == START + 4.0
    assert run.tick(3.99) == []
    assert run.tick(4.0) == ["long_press"]
    assert run.state.next_deadline() is None  # nothing more can come of this press
    assert run.tick(30.0) == []
    run.edge(False, 31.0)
    assert run.tick(40.0) == []
    assert run.kinds == ["long_press"]


def test_a_long_press_without_ticks_is_reported_by_its_release_edge() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    assert run.edge(False, 5.0) == ["long_press"]
    assert run.tick(5.05) == []
    assert run.actions[0].held_s == pytest.approx(4.0)


def test_a_release_just_before_the_threshold_is_short_even_when_a_tick_comes_after() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    run.edge(False, 3.99)
    assert run.tick(4.0) == []  # the release is not settled yet, but the hold ended at 3.99
    assert run.tick(4.04) == ["short_press"]


def test_a_press_begun_in_the_reset_window_resets_after_the_reset_hold() -> None:
    run = Run.at_start(reset_window_s=60.0)
    run.edge(True, 5.0)
    assert run.tick(8.0) == []  # not a long press: it may still become a reset
    assert run.state.next_deadline() == START + 15.0
    assert run.tick(15.0) == ["reset_hold"]
    run.edge(False, 20.0)
    assert run.tick(30.0) == []
    assert run.kinds == ["reset_hold"]


def test_a_press_in_the_reset_window_let_go_early_is_a_long_or_short_press() -> None:
    run = Run.at_start(reset_window_s=60.0)
    run.edge(True, 5.0)
    run.tick(8.0)
    run.edge(False, 9.0)
    assert run.tick(9.05) == ["long_press"]
    run.edge(True, 20.0)
    run.edge(False, 20.3)
    assert run.tick(20.4) == ["short_press"]


def test_after_the_reset_window_a_long_hold_is_only_a_long_press() -> None:
    run = Run.at_start(reset_window_s=60.0)
    run.edge(True, 60.0)  # the window is over: a press must begin before its end
    assert run.tick(63.05) == ["long_press"]
    assert run.tick(75.0) == []
    assert run.kinds == ["long_press"]


def test_a_press_already_held_at_start_counts_for_nothing() -> None:
    run = Run.at_start(pressed=True, reset_window_s=60.0)
    assert run.state.is_pressed
    assert run.state.next_deadline() is None
    assert run.tick(20.0) == []  # a stuck button never resets the box
    run.edge(False, 21.0)
    assert run.tick(22.0) == []
    run.edge(True, 23.0)  # the next press is a press again
    run.edge(False, 23.2)
    assert run.tick(24.0) == ["short_press"]


def test_bounce_on_both_edges_gives_one_press() -> None:
    run = Run.at_start()
    for t, level in [(1.0, True), (1.002, False), (1.004, True), (1.011, False), (1.02, True),
                     (1.8, False), (1.801, True), (1.803, False)]:
        assert run.edge(level, t) == []
    assert run.tick(2.0) == ["short_press"]
    assert run.actions[0].pressed_at == START + 1.02  # the press began when it settled
    assert run.actions[0].held_s == pytest.approx(0.783)


def test_a_glitch_shorter_than_the_debounce_gives_nothing() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    run.edge(False, 1.03)
    assert run.state.next_deadline() is None
    assert run.tick(10.0) == []
    assert not run.state.is_pressed


def test_a_glitch_in_the_middle_of_a_hold_does_not_split_the_press() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    run.tick(2.0)
    run.edge(False, 2.5)
    run.edge(True, 2.52)
    assert run.tick(4.0) == ["long_press"]
    assert run.kinds == ["long_press"]


def test_a_repeated_level_is_ignored() -> None:
    run = Run.at_start()
    run.edge(True, 1.0)
    run.edge(True, 1.5)  # a missed release would show as this: keep the first press
    run.edge(False, 2.0)
    assert run.tick(3.0) == ["short_press"]
    assert run.actions[0].held_s == pytest.approx(1.0)


def test_a_clock_going_back_counts_as_standing_still() -> None:
    run = Run.at_start()
    run.edge(True, 5.0)
    run.edge(False, 4.0)  # seen as 5.0: a press of no length, a glitch
    assert run.tick(10.0) == []


def test_without_debounce_a_press_still_needs_a_tick_or_an_edge() -> None:
    run = Run.at_start(timing=PressTiming(debounce_s=0.0, long_press_s=1.0, reset_hold_s=2.0))
    run.edge(True, 1.0)
    assert run.state.next_deadline() == START + 1.0
    run.tick(1.0)
    assert run.state.is_pressed
    run.edge(False, 1.5)
    assert run.tick(1.5) == ["short_press"]


@pytest.mark.parametrize("values", [(0.05, 3.0, 3.0), (3.0, 3.0, 10.0), (-0.1, 3.0, 10.0),
                                    (0.05, math.nan, 10.0), (0.05, 3.0, math.inf)])
def test_timing_that_cannot_work_is_refused(values: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="debounce_s < long_press_s < reset_hold_s"):
        PressTiming(*values)


# ---------------------------------------------------------------- properties

# A debounce of at least 1 ms: with none, two presses could begin at the very
# same instant, which a real pin cannot do, and "one action per press" (told
# apart by when each press began) would not be checkable.
timings = st.builds(
    lambda d, long_, extra: PressTiming(d, d + long_, d + long_ + extra),
    st.floats(0.001, 0.2), st.floats(0.1, 5.0), st.floats(0.1, 10.0))
steps = st.lists(st.tuples(st.sampled_from(["down", "up", "tick"]), st.floats(0.0, 12.0)),
                 max_size=30)


def feed(state: ButtonState, items: Iterable[tuple[str, float]]) -> list[PressAction]:
    """Steps with time deltas into the machine; a last tick far on flushes what is pending."""
    actions: list[PressAction] = []
    t = START
    for what, dt in items:
        t += dt
        if what == "tick":
            state, out = state.tick(t)
        else:
            state, out = state.edge(what == "down", t)
        actions += out
    state, out = state.tick(t + 1000.0)
    return actions + list(out)


@given(timing=timings, items=steps, pressed=st.booleans(), window=st.floats(0.0, 30.0))
def test_any_edges_give_at_most_one_action_per_press(
        timing: PressTiming, items: list[tuple[str, float]], pressed: bool,
        window: float) -> None:
    state = ButtonState.start(timing, START, pressed=pressed, reset_window_s=window)
    actions = feed(state, items)
    began = [a.pressed_at for a in actions]
    assert len(began) == len(set(began)), actions  # never short and long for one press
    presses = sum(1 for what, _ in items if what == "down")
    assert len(actions) <= presses
    for action in actions:
        if action.kind == "short_press":
            assert action.held_s < timing.long_press_s
        elif action.kind == "long_press":
            assert timing.long_press_s <= action.held_s + 1e-9
        else:
            assert timing.reset_hold_s <= action.held_s + 1e-9
            assert action.pressed_at < START + window


# Clean presses: (gap before, hold) in milliseconds, far enough from the thresholds that
# bounce cannot move a press across one.
clean_presses = st.lists(
    st.tuples(st.integers(200, 20_000), st.integers(200, 15_000)).filter(
        lambda p: all(abs(p[1] - limit) > 200 for limit in (3_000, 10_000))),
    min_size=1, max_size=8)
bounces = st.lists(st.lists(st.integers(1, 9), max_size=4), min_size=32, max_size=32)


def clean_edges(presses: list[tuple[int, int]]) -> list[tuple[float, bool]]:
    edges, t = [], 0.0
    for gap_ms, hold_ms in presses:
        t += gap_ms / 1000
        edges.append((t, True))
        t += hold_ms / 1000
        edges.append((t, False))
    return edges


def with_bounce(edges: list[tuple[float, bool]], bursts: list[list[int]],
                glitch_ms: int) -> list[tuple[float, bool]]:
    """Each edge followed by a burst of toggles (under 40 ms in all), and a glitch mid-level."""
    out: list[tuple[float, bool]] = []
    for n, (t, level) in enumerate(edges):
        out.append((t, level))
        at = t
        for k, step_ms in enumerate(bursts[n % len(bursts)]):
            at += step_ms / 1000
            out.append((at, level if k % 2 else not level))
        if len(bursts[n % len(bursts)]) % 2:
            out.append((at + 0.001, level))  # a burst always ends on the real level
        if n + 1 < len(edges):
            middle = (t + edges[n + 1][0]) / 2
            out += [(middle, not level), (middle + glitch_ms / 1000, level)]
    return out


def kinds_of(edges: list[tuple[float, bool]], window: float,
             tick_every: float | None = None) -> list[PressKind]:
    state = ButtonState.start(TIMING, START, reset_window_s=window)
    actions: list[PressAction] = []
    items = [(START + t, level) for t, level in edges]
    if tick_every:
        end = items[-1][0] + 20
        ticks = [START + k * tick_every for k in range(int((end - START) / tick_every))]
        items += [(t, None) for t in ticks]  # type: ignore[misc]
        items.sort(key=lambda item: item[0])
    for t, level in items:
        state, out = state.tick(t) if level is None else state.edge(level, t)
        actions += out
    state, out = state.tick(items[-1][0] + 100)
    return [a.kind for a in actions + list(out)]


def expected_kinds(presses: list[tuple[int, int]], window: float) -> list[PressKind]:
    kinds: list[PressKind] = []
    t = 0.0
    for gap_ms, hold_ms in presses:
        t += gap_ms / 1000
        armed, hold = t < window, hold_ms / 1000
        if armed and hold >= TIMING.reset_hold_s:
            kinds.append("reset_hold")
        elif hold >= TIMING.long_press_s:
            kinds.append("long_press")
        else:
            kinds.append("short_press")
        t += hold
    return kinds


@given(presses=clean_presses, window=st.sampled_from([0.0, 30.0, 60.0]))
def test_clean_presses_are_classified_by_how_long_they_are_held(
        presses: list[tuple[int, int]], window: float) -> None:
    edges = clean_edges(presses)
    assume(all(abs(t - window) > 0.1 for t, _ in edges))
    assert kinds_of(edges, window) == expected_kinds(presses, window)


@given(presses=clean_presses, bursts=bounces, glitch_ms=st.integers(1, 40),
       window=st.sampled_from([0.0, 60.0]), tick_every=st.sampled_from([None, 0.01, 0.7]))
def test_bounce_shorter_than_the_debounce_changes_nothing(
        presses: list[tuple[int, int]], bursts: list[list[int]], glitch_ms: int,
        window: float, tick_every: float | None) -> None:
    edges = clean_edges(presses)
    assume(all(abs(t - window) > 0.1 for t, _ in edges))
    bouncy = with_bounce(edges, bursts, glitch_ms)
    assert kinds_of(bouncy, window, tick_every) == kinds_of(edges, window)


def step(state: ButtonState, what: str, t: float) -> tuple[ButtonState, tuple[PressAction, ...]]:
    return state.tick(t) if what == "tick" else state.edge(what == "down", t)


@given(timing=timings, items=steps, window=st.floats(0.0, 30.0))
def test_ticking_only_at_the_deadlines_misses_nothing(
        timing: PressTiming, items: list[tuple[str, float]], window: float) -> None:
    # What the adapter does, sleeping until next_deadline() or the next edge, against
    # a tick every 50 ms.
    sparse = dense = ButtonState.start(timing, START, reset_window_s=window)
    got_sparse: list[PressAction] = []
    got_dense: list[PressAction] = []
    t = START
    for what, dt in [*items, ("tick", 30.0)]:  # longer than any reset hold: flushes
        target = t + dt
        while (deadline := sparse.next_deadline()) is not None and deadline < target:
            sparse, out = sparse.tick(deadline)
            got_sparse += out
        while t + 0.05 < target:
            t += 0.05
            dense, out = dense.tick(t)
            got_dense += out
        t = target
        sparse, out = step(sparse, what, t)
        got_sparse += out
        dense, out = step(dense, what, t)
        got_dense += out
    assert [(a.kind, a.pressed_at) for a in got_sparse] == [
        (a.kind, a.pressed_at) for a in got_dense]
