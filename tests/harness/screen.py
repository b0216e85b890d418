"""What the box's TV showed and its speaker played, read back for a test or the bench.

The screen process, given ``screen.record_dir``, logs each new picture it hands to the
output (``shown.tsv``: wall-clock time, playback position, size, frame stamp) and each
period it writes to the speaker (``played.tsv``: when it is heard, frames so far); the
speaker itself is ALSA's ``file`` plugin (:mod:`tests.harness.alsa`), so the samples
played are in a file. :class:`ScreenWatch` collects the events the proxy posts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diemcau.core.events import ProgrammeChanged, ProgrammeFiguresUpdated

RATE = 48000


@dataclass(frozen=True)
class Shown:
    at: float
    width: int
    height: int
    number: int  # -1: no stamp (the idle screen)


def shown(record_dir: Path) -> list[Shown]:
    rows = []
    path = record_dir / "shown.tsv"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 5:
            rows.append(Shown(float(parts[0]), int(parts[2]), int(parts[3]), int(parts[4])))
    return rows


def played_clock(record_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames written so far, when the last of them is heard) per period."""
    rows = [line.split("\t") for line in (record_dir / "played.tsv").read_text().splitlines()]
    heard = np.array([float(r[0]) for r in rows])
    frames = np.array([int(r[1]) for r in rows])
    return frames, heard


def stereo(samples: bytes) -> np.ndarray:
    return np.frombuffer(samples[: len(samples) // 4 * 4], "<i2").reshape(-1, 2).astype(float)


def tone_level(left: np.ndarray, frequency_hz: float, rate: int = RATE) -> tuple[float, float]:
    """(the strongest frequency, its level in dBFS as a sine's peak) of a stretch of samples."""
    window = np.hanning(len(left))
    spectrum = np.abs(np.fft.rfft(left * window))
    peak = int(np.argmax(spectrum))
    frequency = peak * rate / len(left)
    amplitude = spectrum[peak] * 2 / window.sum()
    return frequency, 20 * np.log10(max(amplitude, 1e-9) / 32767)


def beep_onsets(left: np.ndarray, beep_hz: float, rate: int = RATE) -> list[int]:
    """Sample indices where a beep at ``beep_hz`` starts (energy in 5 ms steps, Goertzel-like)."""
    step = rate // 200
    count = len(left) // step
    t = np.arange(step) / rate
    probe = np.exp(-2j * np.pi * beep_hz * t)
    energy = np.array([abs(np.dot(left[i * step:(i + 1) * step], probe)) for i in range(count)])
    if not len(energy):
        return []
    threshold = energy.max() / 4
    onsets, previous = [], False
    for i, value in enumerate(energy):
        now = value > threshold
        if now and not previous:
            onsets.append(i * step)
        previous = now
    return onsets


@dataclass
class ScreenWatch:
    """The proxy's ``post``: keeps every event, lets a test wait for a state."""

    events: list[tuple[float, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()

    def __call__(self, event: object) -> None:
        with self._cond:
            self.events.append((time.time(), event))
            self._cond.notify_all()

    def states(self) -> list[tuple[str, str]]:
        return [(e.state, e.detail) for _, e in self.events if isinstance(e, ProgrammeChanged)]

    def figures(self) -> list[dict]:
        return [e.figures for _, e in self.events if isinstance(e, ProgrammeFiguresUpdated)]

    def wait(self, test: Callable[[object], bool], timeout_s: float, after: float = 0.0
             ) -> tuple[float, object]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for at, event in self.events:
                    if at >= after and test(event):
                        return at, event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"not seen within {timeout_s} s; states: {self.states()}")
                self._cond.wait(left)

    def wait_state(self, state: str, timeout_s: float, after: float = 0.0) -> tuple[float, str]:
        at, event = self.wait(lambda e: isinstance(e, ProgrammeChanged) and e.state == state,
                              timeout_s, after)
        assert isinstance(event, ProgrammeChanged)
        return at, event.detail
