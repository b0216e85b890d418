"""The programme player's lag rule (docs/farend.md, "The lag rule"), and how often to look.

The screen process samples mpv's ``demuxer-cache-duration`` (what waits ahead of
playback) and gives each sample to :class:`LagRule` with the time it was read; the rule
says what to do. Time is an argument: nothing here reads a clock.

    >>> rule = LagRule(bound_ms=150, target_ms=60, reload_ms=4000, catchup_speed=1.5)
    >>> rule.observe(0.0, 0.30)                 # a backlog at connect
    'speed_up'
    >>> rule.observe(0.1, 0.25), rule.speed
    ('', 1.5)
    >>> rule.observe(0.9, 0.05)                 # under the target: back to 1x
    'slow_down'
    >>> rule.tick_s()                           # the window must fill at the fast rate again
    0.1
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

WINDOW_S = 1.0  # the lag is the least sample of this long
EDGE_S = 2.0  # catching up and the lag no smaller for this long: at the live edge
MAX_EDGE_MS = 250  # the most a live edge found so moves the bound (a stall is no edge)
FAST_TICK_S = 0.1  # connecting, catching up, near the bound, or the window not yet full
SLOW_TICK_S = 0.5  # live, well under the bound: the samples cost a wake-up each

# What observe() returns.
NOTHING = ""
SPEED_UP = "speed_up"
SLOW_DOWN = "slow_down"
RELOAD = "reload"


@dataclass
class LagRule:
    """Over ``bound_ms`` (plus the feed's edge, once found): play at ``catchup_speed`` until
    under ``target_ms`` or no nearer for ``EDGE_S``; over ``reload_ms``: load again.

    The lag is the least sample of the last ``WINDOW_S``: at the live edge what waits
    drops near zero between packets, behind it it never does. Samples may come every
    ``SLOW_TICK_S`` while the newest is well under the bound, so a window of slow
    samples always holds one that low: the rule acts only on a second of samples
    taken at ``FAST_TICK_S`` (or on the first sample after a load or a change of speed,
    which is judged afresh, as at connect).
    """

    bound_ms: float
    target_ms: float
    reload_ms: float
    catchup_speed: float
    speed: float = 1.0
    # How far behind this feed's live edge is, once a catch-up found it could get no
    # nearer (audio packed in long packets); 0 until then.
    edge_ms: float = 0.0
    lag_s: float | None = None
    _samples: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    _best: float = 0.0
    _best_at: float = 0.0
    _window_from: float | None = None  # when the window was last emptied

    def restart(self) -> None:
        """A new load of the feed: nothing known of its lag nor of its edge."""
        self.speed = 1.0
        self.edge_ms = 0.0
        self.lag_s = None
        self._forget()

    def _forget(self) -> None:
        self._samples.clear()
        self._window_from = None

    def near_ms(self) -> float:
        """A newest sample over this is near the bound: look at the fast rate."""
        return (self.bound_ms + self.edge_ms) / 2

    def tick_s(self) -> float:
        """How long until the next sample should be read."""
        if self.speed > 1.0 or not self._samples:
            return FAST_TICK_S
        newest_at, newest = self._samples[-1]
        if newest * 1000 > self.near_ms():
            return FAST_TICK_S
        # The window holds only what the last second saw at the fast rate: keep it so
        # until a whole second of it says the lag is low.
        if self._window_from is None or newest_at - self._window_from < WINDOW_S:
            return FAST_TICK_S
        return SLOW_TICK_S

    def observe(self, now: float, cached_s: float) -> str:
        """One sample of what waits ahead of playback at ``now``: what to do about it."""
        if self._window_from is None:
            self._window_from = now
        self._samples.append((now, cached_s))
        while self._samples and self._samples[0][0] < now - WINDOW_S:
            self._samples.popleft()
        lag_s = self.lag_s = min(value for _, value in self._samples)
        if lag_s * 1000 > self.reload_ms:
            self.restart()
            self.lag_s = lag_s  # what made it load again, for the figures
            return RELOAD
        if lag_s * 1000 > self.bound_ms + self.edge_ms and self.speed <= 1.0:
            self.speed = self.catchup_speed
            self._forget()  # judged afresh at the new speed
            self._best, self._best_at = lag_s, now
            return SPEED_UP
        if self.speed > 1.0:
            if lag_s < self._best - 0.02:
                self._best, self._best_at = lag_s, now
            # Under the target, or no nearer for a while: the live edge of this feed (whose
            # packets may come in chunks longer than the target) is reached.
            at_edge = now - self._best_at > EDGE_S
            if lag_s * 1000 < self.target_ms or at_edge:
                if at_edge:  # this feed's floor: the bound counts from there from now on
                    self.edge_ms = min(self._best * 1000, MAX_EDGE_MS)
                self.speed = 1.0
                self._forget()
                return SLOW_DOWN
        return NOTHING
