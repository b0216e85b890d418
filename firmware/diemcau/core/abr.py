"""Adaptive bitrate: from what the box measures, step the picture down under congestion and back up.

Pure: no I/O, no clock. Once a second the media thread hands :func:`step`
the last second's :class:`Measurement` (how full the send queue is, how long
the network writer was blocked, what was dropped, what left) and gets back
the new :class:`AbrState` and, when the rung changes, a :class:`Step` to
carry out and report (an event, and ``status``).

The ladder (:func:`ladder`) goes from the requested profile down: each
profile at its own bitrate, then at 70 % of it while that stays above the
next profile's, then the next profile; never below ``MIN_VIDEO_KBPS`` for
video (the Pi 4's hardware encoder hangs below about 100 kb/s); the last
rung is ``audio``: no picture at all, so the sound survives a link too poor
for both.

Hysteresis: a step down after ``DOWN_AFTER`` congested seconds in a row,
a step up only after ``up_hold`` clear seconds in a row. An up step that
is followed by congestion straight away doubles ``up_hold`` (up to
``UP_HOLD_MAX``), so a link at its limit is not probed every few seconds.
Audio being dropped skips straight to the ``audio`` rung.

    >>> rungs = ladder([("720p30", 1500), ("480p25", 800), ("360p15", 400)], "480p25")
    >>> [f"{r.profile}@{r.kbps}" for r in rungs]
    ['480p25@800', '480p25@560', '360p15@400', '360p15@280', '360p15@196', '360p15@150', 'audio@0']
    >>> state = AbrState()
    >>> congested = Measurement(queue_fill=0.9, stalled_fraction=0.5, dropped_video=12)
    >>> state, change = step(state, congested, rungs)
    >>> change is None   # one bad second is not enough
    True
    >>> state, change = step(state, congested, rungs)
    >>> change.rung, change.direction
    (Rung(profile='480p25', kbps=560), 'down')
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

MIN_VIDEO_KBPS = 150
RUNG_FACTOR = 0.7
DOWN_AFTER = 2  # congested seconds in a row before a step down
UP_HOLD_MIN = 8  # clear seconds in a row before a step up
UP_HOLD_MAX = 64
# Congested: any of these over the last second.
QUEUE_FILL_HIGH = 0.5
STALLED_HIGH = 0.3
BACKLOG_HIGH = 0.5
LOSS_HIGH = 0.2
# Clear: all of these.
QUEUE_FILL_LOW = 0.1
STALLED_LOW = 0.05
BACKLOG_LOW = 0.25
LOSS_LOW = 0.1


@dataclass(frozen=True, slots=True)
class Rung:
    """A profile and the video bitrate to encode it at (0 for ``audio``)."""

    profile: str
    kbps: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """One second of the network path, as the box sees it.

    ``queue_fill``: the send queue's bytes over its bound (0-1) at the end;
    ``stalled_fraction``: the share of the second the writer spent inside a
    network write; ``dropped_*``: packets the queue dropped in the second.
    From SRT itself, when it can be read: ``backlog_fraction``, the longest
    span of sent but unacknowledged data beyond one round trip, over the
    latency window (a link that cannot keep up holds data back until the
    receiver gives up on it); ``loss_fraction``, the packets reported lost
    over the packets sent.
    """

    queue_fill: float = 0.0
    stalled_fraction: float = 0.0
    dropped_video: int = 0
    dropped_audio: int = 0
    backlog_fraction: float = 0.0
    loss_fraction: float = 0.0

    @property
    def congested(self) -> bool:
        return (self.dropped_video > 0 or self.dropped_audio > 0
                or self.queue_fill > QUEUE_FILL_HIGH or self.stalled_fraction > STALLED_HIGH
                or self.backlog_fraction > BACKLOG_HIGH or self.loss_fraction > LOSS_HIGH)

    @property
    def clear(self) -> bool:
        return (self.dropped_video == 0 and self.dropped_audio == 0
                and self.queue_fill < QUEUE_FILL_LOW and self.stalled_fraction < STALLED_LOW
                and self.backlog_fraction < BACKLOG_LOW and self.loss_fraction < LOSS_LOW)


@dataclass(frozen=True, slots=True)
class AbrState:
    """Where on the ladder the stream is, and the counts behind the next step."""

    index: int = 0
    congested_s: int = 0
    clear_s: int = 0
    up_hold: int = UP_HOLD_MIN
    since_up_s: int | None = None  # seconds since the last up step, while it is recent


@dataclass(frozen=True, slots=True)
class Step:
    """A change of rung, to carry out and to report."""

    rung: Rung
    previous: Rung
    direction: Literal["down", "up"]
    reason: str


def ladder(profiles: list[tuple[str, int]], top: str, *, top_kbps: int | None = None) -> list[Rung]:
    """The rungs from ``top`` down to ``audio``; ``profiles`` is best first, with bitrates.

    ``top_kbps`` replaces the top profile's own bitrate (the configured one).
    An ``audio`` top gives a ladder of one rung.
    """
    names = [name for name, _ in profiles]
    if top == "audio":
        return [Rung("audio", 0)]
    if top not in names:
        raise ValueError(f"unknown profile {top!r}")
    rungs: list[Rung] = []
    chosen = profiles[names.index(top):]
    for i, (name, kbps) in enumerate(chosen):
        if i == 0 and top_kbps:
            kbps = top_kbps
        floor = chosen[i + 1][1] if i + 1 < len(chosen) else MIN_VIDEO_KBPS
        rate = max(kbps, MIN_VIDEO_KBPS)
        while True:
            if not rungs or rungs[-1] != Rung(name, rate):
                rungs.append(Rung(name, rate))
            lower = round(rate * RUNG_FACTOR)
            if lower <= floor:
                break
            rate = lower
        if i + 1 == len(chosen) and rate > MIN_VIDEO_KBPS:
            rungs.append(Rung(name, MIN_VIDEO_KBPS))
    rungs.append(Rung("audio", 0))
    return rungs


def step(state: AbrState, m: Measurement, rungs: list[Rung]) -> tuple[AbrState, Step | None]:
    """Account one second; return the new state and the step to take, if any."""
    since_up = None if state.since_up_s is None else state.since_up_s + 1
    if since_up is not None and since_up > 2 * state.up_hold:
        since_up = None  # the last probe held: it is history
    congested_s = state.congested_s + 1 if m.congested else 0
    clear_s = state.clear_s + 1 if m.clear else 0
    state = replace(state, congested_s=congested_s, clear_s=clear_s, since_up_s=since_up)
    last = len(rungs) - 1

    if m.dropped_audio > 0 and state.index < last:
        # The sound is suffering: give up the picture at once.
        return _move(state, rungs, last, "down", "audio dropped: the link cannot carry video")
    if congested_s >= DOWN_AFTER and state.index < last:
        reason = (f"congested for {congested_s} s (queue {m.queue_fill:.0%}, writer blocked "
                  f"{m.stalled_fraction:.0%}, {m.dropped_video} video packets dropped, "
                  f"SRT backlog {m.backlog_fraction:.0%} of its window, "
                  f"{m.loss_fraction:.0%} lost)")
        hold = state.up_hold
        if state.since_up_s is not None:
            hold = min(UP_HOLD_MAX, hold * 2)  # the last probe up failed: wait longer next time
        return _move(replace(state, up_hold=hold), rungs, state.index + 1, "down", reason)
    if clear_s >= state.up_hold and state.index > 0:
        moved, change = _move(state, rungs, state.index - 1, "up",
                              f"clear for {clear_s} s")
        return replace(moved, since_up_s=0), change
    return state, None


def _move(state: AbrState, rungs: list[Rung], index: int, direction: Literal["down", "up"],
          reason: str) -> tuple[AbrState, Step]:
    change = Step(rungs[index], rungs[state.index], direction, reason)
    return replace(state, index=index, congested_s=0, clear_s=0), change
