"""Telling presses apart: a pure state machine fed with edges and clock ticks.

Each raw edge (pressed or released, at time ``t`` in seconds of one monotonic
clock) goes to :meth:`ButtonState.edge`; :meth:`ButtonState.tick` lets time
pass. Both return the new state and the actions to report. The adapter ticks
at :meth:`ButtonState.next_deadline`, so nothing polls.

- A level counts only once it has held for ``debounce_s``: contact bounce and
  glitches shorter than that give nothing, and never split a press.
- ``short_press``: released before ``long_press_s``; reported on release.
- ``long_press``: held ``long_press_s``; reported at once, while still held,
  so the light answers before the finger lifts. Its release gives nothing.
- ``reset_hold``: held ``reset_hold_s``, for a press that began within the
  reset window after start. Such a press is not a long press while held (it
  may still become a reset); released between the two, it is one.
- A press already held when the box starts counts for nothing: a stuck
  button, or something resting on it, must never erase the box.

One press gives at most one action.

    >>> timing = PressTiming(debounce_s=0.05, long_press_s=3.0, reset_hold_s=10.0)
    >>> b = ButtonState.start(timing, now=0.0)
    >>> b, _ = b.edge(True, 100.0)
    >>> b, _ = b.edge(False, 100.4)
    >>> b.next_deadline()
    100.45
    >>> b, actions = b.tick(100.45)
    >>> [(a.kind, round(a.held_s, 2)) for a in actions]
    [('short_press', 0.4)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

PressKind = Literal["short_press", "long_press", "reset_hold"]
ButtonName = Literal["join", "mute"]  # the panel's buttons


@dataclass(frozen=True, slots=True)
class PressTiming:
    """How presses are told apart, in seconds (``button`` settings of the config)."""

    debounce_s: float = 0.05
    long_press_s: float = 3.0
    reset_hold_s: float = 10.0

    def __post_init__(self) -> None:
        values = (self.debounce_s, self.long_press_s, self.reset_hold_s)
        if not all(math.isfinite(v) for v in values) or not (
                0 <= self.debounce_s < self.long_press_s < self.reset_hold_s):
            raise ValueError("press timing: need 0 <= debounce_s < long_press_s < reset_hold_s,"
                             f" got {values}")


@dataclass(frozen=True, slots=True)
class PressAction:
    """One classified press: what it was, when it began, how long it was held so far."""

    kind: PressKind
    pressed_at: float
    held_s: float


@dataclass(frozen=True, slots=True)
class ButtonState:
    """One button, debounced. Make the first with :meth:`start`.

    ``raw`` is the last level seen and ``raw_since`` its edge; ``stable`` is the
    debounced level. ``pressed_at`` is when the current (or last) press began,
    ``armed`` whether it may become a reset, ``reported`` whether it has had
    its action (or never will).
    """

    timing: PressTiming
    reset_until: float = -math.inf
    now: float = -math.inf
    raw: bool = False
    raw_since: float = -math.inf
    stable: bool = False
    pressed_at: float = -math.inf
    armed: bool = False
    reported: bool = True

    @classmethod
    def start(cls, timing: PressTiming, now: float, *, pressed: bool = False,
              reset_window_s: float = 0.0) -> ButtonState:
        """The state at start: a press beginning before ``now + reset_window_s`` may reset.

        ``pressed``: the button is already down; that press gives nothing.
        """
        return cls(timing, reset_until=now + reset_window_s, now=now, raw=pressed,
                   raw_since=now, stable=pressed, pressed_at=now, reported=True)

    @property
    def is_pressed(self) -> bool:
        """The debounced level."""
        return self.stable

    def edge(self, pressed: bool, t: float) -> tuple[ButtonState, tuple[PressAction, ...]]:
        """The raw level became ``pressed`` at ``t``; a repeated level is ignored."""
        state, actions = self.tick(t)
        if pressed != state.raw:
            state = replace(state, raw=pressed, raw_since=state.now)
        return state, actions

    def tick(self, t: float) -> tuple[ButtonState, tuple[PressAction, ...]]:
        """Time is now ``t`` (a time earlier than one already seen counts as that one)."""
        state = self if t <= self.now else replace(self, now=t)
        actions: tuple[PressAction, ...] = ()
        # Times are compared with the very sums next_deadline() gives, so that a tick
        # at a deadline always acts on it (a difference could round just below).
        if state.raw != state.stable and state.now >= state.raw_since + state.timing.debounce_s:
            state, actions = state._settle()
        if state.stable and not state.reported:
            # A release not yet settled ends the hold at its edge, unless it proves a bounce.
            end = state.now if state.raw else state.raw_since
            kind = state._kind_while_held(end)
            if kind is not None:
                state = replace(state, reported=True)
                actions += (PressAction(kind, state.pressed_at, end - state.pressed_at),)
        return state, actions

    def next_deadline(self) -> float | None:
        """When a tick could next give an action or settle a level; None: not until an edge."""
        timing = self.timing
        if self.raw != self.stable:
            return self.raw_since + timing.debounce_s
        if self.stable and not self.reported:
            return self.pressed_at + (timing.reset_hold_s if self.armed else timing.long_press_s)
        return None

    def _settle(self) -> tuple[ButtonState, tuple[PressAction, ...]]:
        """The raw level has held for ``debounce_s``: it becomes the stable one."""
        if self.raw:
            began = self.raw_since
            return replace(self, stable=True, pressed_at=began,
                           armed=began < self.reset_until, reported=False), ()
        released = replace(self, stable=False, reported=True)
        if self.reported:
            return released, ()
        end = self.raw_since
        kind = self._kind_while_held(end) or (
            "long_press" if end >= self.pressed_at + self.timing.long_press_s else "short_press")
        return released, (PressAction(kind, self.pressed_at, end - self.pressed_at),)

    def _kind_while_held(self, end: float) -> PressKind | None:
        """What a press still held at ``end`` already is, if anything."""
        if self.armed:
            return "reset_hold" if end >= self.pressed_at + self.timing.reset_hold_s else None
        return "long_press" if end >= self.pressed_at + self.timing.long_press_s else None
