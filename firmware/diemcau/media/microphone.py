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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .defs import AUDIO_PERIOD_S, MediaFault

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
