"""The microphone: an ALSA capture PCM through pyalsaaudio.

``media.microphone`` names the PCM (``default``, ``plughw:CARD=Device``, or a
test's ``file`` plugin PCM), at ``media.sample_rate_hz`` and
``media.channels``, S16_LE, read one period (20 ms) at a time. The media
thread stamps each period by the count of samples read before it, never by
the clock, so audio timestamps do not jitter with the thread's scheduling.

    mic = Microphone(cfg.media)
    mic.open()          # MediaFault naming the PCM if it cannot be opened
    data = mic.read()   # one period of interleaved S16_LE; b"" after an overrun
    mic.close()

The media thread measures the level of what it reads (dBFS, into the
figures and health, where the ``microphone_silent`` rule reads it).

In a room whose speaker and microphone are separate devices, a
:class:`CancellingMicrophone` wraps the microphone: the same interface, its
periods with the programme's echo taken out (:mod:`diemcau.media.echo`, fed
with what the speaker played through :mod:`diemcau.media.reference`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..shared import write_atomic
from .defs import AUDIO_PERIOD_S, MediaFault
from .echo import FRAME_S, PRIOR_ERROR_PPM, ReferenceAligner, open_canceller
from .reference import ReferenceReceiver

log = logging.getLogger("diemcau.media.microphone")

# Beside the reference socket, in the box's state directory: the clock drift each
# microphone showed against the speaker when a meeting ended, so that the next
# meeting's canceller starts from it instead of measuring for half a minute.
DRIFTS_NAME = "echo-drift.json"

if TYPE_CHECKING:
    from ..config import Media


class Microphone:
    """An ALSA capture PCM through pyalsaaudio: S16_LE, blocking reads of one period."""

    def __init__(self, cfg: Media) -> None:
        self.device = cfg.microphone
        self.rate_hz = cfg.sample_rate_hz
        self.channels = cfg.channels
        self.period_frames = max(1, round(cfg.sample_rate_hz * AUDIO_PERIOD_S))
        self._pcm: Any = None

    def open(self) -> None:
        try:
            import alsaaudio
        except ImportError as exc:
            raise MediaFault(f"pyalsaaudio is not installed: {exc}") from None
        try:
            self._pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL, device=self.device,
                rate=self.rate_hz, channels=self.channels, format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self.period_frames)
        except TypeError:
            raise MediaFault("pyalsaaudio is too old (0.8 cannot read on Python 3.10+); "
                             "install pyalsaaudio >= 0.10") from None
        except alsaaudio.ALSAAudioError as exc:
            raise MediaFault(f"microphone {self.device!r} cannot be opened: {exc}") from None

    def read(self) -> bytes:
        """One period of interleaved S16_LE samples; b"" after an overrun (samples lost)."""
        import alsaaudio

        try:
            length, data = self._pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            raise MediaFault(f"microphone {self.device!r} failed: {exc}") from None
        return data if length > 0 else b""

    def close(self) -> None:
        if self._pcm is not None:
            self._pcm.close()
            self._pcm = None


class CancellingMicrophone:
    """A mono microphone with the far end's echo taken out, read as :class:`Microphone` is.

    ``canceller``: ``speex`` or ``webrtc``; ``reference``: the Unix socket the
    speaker sends what it plays to. Each period read is cut into 10 ms frames;
    each frame goes through the canceller with the far frame the aligner puts
    on the microphone's clock. With nothing played, the far frames are silence
    and the canceller lets the room through unchanged.
    """

    def __init__(self, microphone: Microphone, canceller: str, reference: str) -> None:
        if microphone.channels != 1:
            raise MediaFault("the echo canceller needs a mono microphone (media.channels = 1)")
        self.microphone = microphone
        self.device = microphone.device
        self.rate_hz = microphone.rate_hz
        self.channels = 1
        self.period_frames = microphone.period_frames
        self._name = canceller
        self._path = reference
        self._canceller: Any = None
        self._aligner: ReferenceAligner | None = None
        self._receiver: ReferenceReceiver | None = None
        self.wrong_rate = 0  # far periods at another rate than the microphone's: not used
        self._drifts = Path(reference).with_name(DRIFTS_NAME)

    def open(self) -> None:
        self.microphone.open()
        try:
            self._canceller = open_canceller(self._name, self.rate_hz)
            self._aligner = ReferenceAligner(self.rate_hz,
                                             prior_ppm=remembered_drift(self._drifts, self.device))
            self._receiver = ReferenceReceiver(self._path)
        except (MediaFault, OSError) as exc:
            self.close()
            raise MediaFault(f"the echo canceller ({self._name}) cannot start: {exc}") from None

    def read(self) -> bytes:
        data = self.microphone.read()
        read_at = time.monotonic()
        assert self._receiver is not None and self._aligner is not None
        for played_at, rate_hz, samples in self._receiver.drain():
            if rate_hz != self.rate_hz:
                self.wrong_rate += 1
                continue
            self._aligner.push(samples, played_at)
        if not data:
            return data
        size = 2 * round(self.rate_hz * FRAME_S)
        frames = len(data) // size
        cleaned = bytearray()
        for i in range(frames):
            # The i-th frame was captured (frames - 1 - i) frames before the read returned.
            far = self._aligner.pull(read_at - (frames - 1 - i) * FRAME_S)
            cleaned += self._canceller.process(data[i * size:(i + 1) * size], far)
        return bytes(cleaned) + data[frames * size:]

    def close(self) -> None:
        aligner = self._aligner
        if aligner is not None and aligner.drift_error_ppm is not None \
                and aligner.drift_error_ppm < PRIOR_ERROR_PPM:
            remember_drift(self._drifts, self.device, aligner.drift_ppm)
        for part in (self._receiver, self._aligner, self._canceller):
            if part is not None:
                part.close()
        self._receiver = self._aligner = self._canceller = None
        self.microphone.close()


def remembered_drift(path: Path, device: str) -> float | None:
    """The drift ``device`` last showed (ppm), or None: never measured, or a file not ours."""
    try:
        drifts = json.loads(path.read_bytes())
        ppm = drifts[device]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.debug("no remembered clock drift for %s in %s: %s", device, path, exc)
        return None
    if isinstance(ppm, bool) or not isinstance(ppm, (int, float)) \
            or not math.isfinite(ppm) or abs(ppm) > 1000:
        return None
    return float(ppm)


def remember_drift(path: Path, device: str, ppm: float) -> None:
    """Keep ``device``'s measured drift for the next meeting; a failure only costs the head start."""
    try:
        try:
            drifts = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            drifts = {}
        if not isinstance(drifts, dict):
            drifts = {}
        drifts[device] = round(ppm, 2)
        write_atomic(path, json.dumps(drifts, sort_keys=True).encode(), 0o600)
    except OSError as exc:
        log.warning("cannot keep the measured clock drift in %s: %s", path, exc)
