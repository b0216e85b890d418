"""The software echo canceller: takes the centre's sound out of what the microphone hears.

For rooms whose speaker and microphone are separate devices (the TV's speaker
over HDMI, a USB microphone): a USB speakerphone cancels its own echo and
needs none of this (docs/audio.md). The canceller is fed, every 10 ms, one
frame of what the microphone captured (*near*) and the frame of the far end
that the box played (*far*, the exact samples the speaker mixer wrote), and
returns the near frame without the echo:

    canceller = open_canceller("webrtc", rate_hz=48000)
    clean = canceller.process(near, far)   # 10 ms of mono S16_LE each, in and out
    canceller.close()

Two libraries, compared in tests/media/test_echo.py and ``make bench``:

- ``speex``: speexdsp's MDF canceller and its residual echo suppressor, through
  ctypes over Debian's ``libspeexdsp1``. The default: it keeps the room's talker
  whole while the centre speaks, costs under 1 MB, and with the reference on the
  microphone's clock (below) cancels as deeply as WebRTC; it needs that clock
  ratio right within ~2 ppm.
- ``webrtc``: WebRTC's audio processing module (AEC3: linear filter, delay
  estimator, residual echo suppressor), through the ``livekit`` wheel's
  ``AudioProcessingModule`` (its prebuilt library, also for aarch64; no
  network is used). It holds its lock through any drift, but its suppressor
  ducks the room's talker by ~4 dB in double talk, and it costs ~33 MB.

The speaker (HDMI) and a USB microphone run on different clocks: 100 ppm apart,
the echo slides by ~5 samples a second and a linear canceller loses its lock.
:class:`ReferenceAligner` puts the reference on the microphone's clock: it
receives the far periods as they are played, hands out exactly one 10 ms far
frame per microphone frame, and resamples (libsamplerate, whose ratio can
change on the fly) by the ratio of the two clocks, measured from the two
streams' sample counts against the box's monotonic clock.
"""

from __future__ import annotations

import ctypes
import math
import time
from array import array
from typing import Any

from .defs import MediaFault

FRAME_S = 0.010  # both libraries work on 10 ms frames
CANCELLERS = ("webrtc", "speex")
DEFAULT_CANCELLER = "speex"
# The echo tail a room leaves: an office's RT60 is 0.3-0.5 s, and the part of
# it above the noise is shorter; the reference also arrives some tens of ms
# before its echo (the aligner's fill).
SPEEX_TAIL_S = 0.3
# How far two devices' clock ratio moves between one meeting and the next (with the
# room's temperature): a drift remembered from last time is trusted this much.
PRIOR_ERROR_PPM = 2.0

_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24
_SPEEXDSP = "libspeexdsp.so.1"  # Debian's libspeexdsp1


def frame_samples(rate_hz: int) -> int:
    return rate_hz * 10 // 1000


class EchoCanceller:
    """A canceller: ``process(near, far)`` on 10 ms mono S16_LE frames gives the cleaned near."""

    name = ""

    def __init__(self, rate_hz: int) -> None:
        if rate_hz not in (8000, 16000, 32000, 48000):
            raise MediaFault(f"the echo canceller takes 8, 16, 32 or 48 kHz, not {rate_hz} Hz")
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples(rate_hz)
        self.frame_bytes = 2 * self.frame_samples

    def _check(self, near: bytes, far: bytes) -> None:
        if len(near) != self.frame_bytes or len(far) != self.frame_bytes:
            raise ValueError(f"frames of {self.frame_bytes} bytes (10 ms mono S16_LE) expected, "
                             f"got near {len(near)} and far {len(far)}")

    def process(self, near: bytes, far: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> EchoCanceller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# long callback(void *cb_data, float **data): libsamplerate asks for input as it needs it.
_SRC_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))
_SRC_SINC_FASTEST = 2
_PIECE = 64  # samples handed to libsamplerate at a time
_SAMPLERATE = "libsamplerate.so.0"  # Debian's libsamplerate0


def _samplerate() -> Any:
    try:
        lib = ctypes.CDLL(_SAMPLERATE)
    except OSError as exc:
        raise MediaFault(f"libsamplerate is not installed (Debian's libsamplerate0): {exc}") \
            from None
    vp, i = ctypes.c_void_p, ctypes.c_int
    for name, restype, argtypes in (
            ("src_callback_new", vp, [_SRC_CALLBACK, i, i, ctypes.POINTER(i), vp]),
            ("src_callback_read", ctypes.c_long, [vp, ctypes.c_double, ctypes.c_long, vp]),
            ("src_error", i, [vp]),
            ("src_delete", vp, [vp]),
            ("src_strerror", ctypes.c_char_p, [i]),
            ("src_short_to_float_array", None, [vp, vp, i]),
            ("src_float_to_short_array", None, [vp, vp, i])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _speexdsp() -> Any:
    try:
        lib = ctypes.CDLL(_SPEEXDSP)
    except OSError as exc:
        raise MediaFault(f"speexdsp is not installed (Debian's libspeexdsp1): {exc}") from None
    vp, i, i16p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, restype, argtypes in (
            ("speex_echo_state_init", vp, [i, i]),
            ("speex_echo_ctl", i, [vp, i, vp]),
            ("speex_echo_cancellation", None, [vp, i16p, i16p, vp]),
            ("speex_echo_state_destroy", None, [vp]),
            ("speex_preprocess_state_init", vp, [i, i]),
            ("speex_preprocess_ctl", i, [vp, i, vp]),
            ("speex_preprocess_run", i, [vp, vp]),
            ("speex_preprocess_state_destroy", None, [vp])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class SpeexCanceller(EchoCanceller):
    """speexdsp's MDF echo canceller, then its preprocessor's residual echo suppressor."""

    name = "speex"

    def __init__(self, rate_hz: int, tail_s: float = SPEEX_TAIL_S, suppress: bool = True) -> None:
        super().__init__(rate_hz)
        self._lib = lib = _speexdsp()
        self._echo = lib.speex_echo_state_init(self.frame_samples, round(tail_s * rate_hz))
        rate = ctypes.c_int(rate_hz)
        lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = None
        if suppress:
            self._pre = lib.speex_preprocess_state_init(self.frame_samples, rate_hz)
            # Its denoiser (on by default) stays: it also lowers the residual echo.
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE,
                                     ctypes.c_void_p(self._echo))
        self._out = ctypes.create_string_buffer(self.frame_bytes)

    def process(self, near: bytes, far: bytes) -> bytes:
        self._check(near, far)
        lib, out = self._lib, self._out
        lib.speex_echo_cancellation(self._echo, near, far, out)
        if self._pre is not None:
            lib.speex_preprocess_run(self._pre, out)
        return out.raw

    def close(self) -> None:
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None


class WebrtcCanceller(EchoCanceller):
    """WebRTC's audio processing module (AEC3 and a high-pass filter), from the livekit wheel."""

    name = "webrtc"

    def __init__(self, rate_hz: int, noise_suppression: bool = False) -> None:
        super().__init__(rate_hz)
        try:
            from livekit import rtc
        except ImportError as exc:
            raise MediaFault(f"WebRTC's audio processing (the livekit package) is not "
                             f"installed: {exc}") from None
        self._rtc = rtc
        self._apm: Any = rtc.AudioProcessingModule(
            echo_cancellation=True, high_pass_filter=True, noise_suppression=noise_suppression)
        # The far frame is handed over just before its near frame: AEC3's own
        # delay estimator finds the acoustic delay; this is only its start.
        self._apm.set_stream_delay_ms(0)

    def process(self, near: bytes, far: bytes) -> bytes:
        self._check(near, far)
        rtc, n = self._rtc, self.frame_samples
        self._apm.process_reverse_stream(rtc.AudioFrame(bytearray(far), self.rate_hz, 1, n))
        frame = rtc.AudioFrame(bytearray(near), self.rate_hz, 1, n)
        self._apm.process_stream(frame)
        return bytes(frame.data.cast("B"))

    def close(self) -> None:
        self._apm = None


def open_canceller(name: str, rate_hz: int) -> EchoCanceller:
    """The canceller called ``name`` (``webrtc`` or ``speex``) for mono audio at ``rate_hz``."""
    if name == "webrtc":
        return WebrtcCanceller(rate_hz)
    if name == "speex":
        return SpeexCanceller(rate_hz)
    raise MediaFault(f"no echo canceller called {name!r}: {', '.join(CANCELLERS)}")


class ClockFit:
    """The rate of one stream of samples against the monotonic clock: a least-squares line
    through its (time, samples so far) pairs, with exponential forgetting over ``window_s``
    (clocks drift with temperature over hours, not seconds).

    A pair's time is when the samples were written or read, late by the scheduler's jitter
    (a few ms), never early: of each ``block_s`` of pairs only the earliest (against
    ``nominal_hz``) enters the fit, the one the scheduler delayed least. That lower edge
    is steadier than the pairs' mean, and a rare late wake-up does not tilt the line.

    The line is fitted to the samples' offset from the nominal rate (small numbers, for
    precision), and :meth:`rate_error` is the standard error of its slope."""

    def __init__(self, nominal_hz: float, window_s: float = 600.0, block_s: float = 1.0) -> None:
        self.nominal_hz = nominal_hz
        self.window_s = window_s
        self.block_s = block_s
        self._t0: float | None = None
        self._last = 0.0
        self._block: tuple[float, float, float] | None = None  # lateness, t, samples
        self._block_end = 0.0
        # weights, t, y, tt, ty, yy; t from the first pair, y the samples ahead of nominal
        self._sums = [0.0] * 6

    def add(self, at: float, samples: int) -> None:
        if self._t0 is None:
            self._t0 = at
            self._block_end = self.block_s
        t = at - self._t0
        if t >= self._block_end and self._block is not None:
            self._enter(*self._block[1:])
            self._block = None
            self._block_end = t + self.block_s
        lateness = t - samples / self.nominal_hz
        if self._block is None or lateness < self._block[0]:
            self._block = (lateness, t, float(samples))

    def _enter(self, t: float, n: float) -> None:
        forget = 0.5 ** (max(0.0, t - self._last) / self.window_s)
        self._last = t
        y = n - self.nominal_hz * t
        w, st, sy, stt, sty, syy = self._sums
        self._sums = [w * forget + 1, st * forget + t, sy * forget + y,
                      stt * forget + t * t, sty * forget + t * y, syy * forget + y * y]

    @property
    def span_s(self) -> float:
        return self._last

    def _line(self) -> tuple[float, float, float] | None:
        """(slope, t's variance, y's covariance with t), or None before two distinct times."""
        w, st, sy, stt, sty, _ = self._sums
        if w < 2:
            return None
        var = stt / w - (st / w) ** 2
        if var <= 1e-12:
            return None
        cov = sty / w - st / w * sy / w
        return cov / var, var, cov

    def rate(self) -> float | None:
        """Samples per second of the monotonic clock; None before two distinct times."""
        line = self._line()
        return None if line is None else self.nominal_hz + line[0]

    def rate_error(self) -> float | None:
        """The standard error of :meth:`rate`, samples per second; None before three pairs."""
        line = self._line()
        w, _, sy, _, _, syy = self._sums
        if line is None or w < 3:
            return None
        slope, var, cov = line
        residual = max(0.0, syy / w - (sy / w) ** 2 - slope * cov) * w / (w - 2)
        return math.sqrt(residual / (w * var))


class ReferenceAligner:
    """The far end on the microphone's clock: far periods pushed as played, 10 ms frames pulled
    once per microphone frame, resampled by the measured ratio of the two clocks.

    Both sides give the monotonic time of their samples (the speaker mixer the time it
    wrote the period, the microphone reader the time it read the frame); each side's
    rate is a least-squares line through the earliest of its (time, samples) pairs in
    each second (:class:`ClockFit`),
    and the ratio is the quotient of the two slopes. Over a minute of pairs jittered by a
    few ms the ratio is right within ~2 ppm, which speexdsp needs (docs/audio.md). Until
    ``settle_s`` of pairs, and with ``track_drift`` False, the ratio is 1. A weak pull
    towards the starting fill keeps the delay between the reference and its echo from
    wandering off over hours.

        aligner = ReferenceAligner(48000)
        aligner.push(period, at)      # whatever size, as the speaker mixer plays it
        far = aligner.pull(at)        # 10 ms; silence if nothing is being played
    """

    def __init__(self, rate_hz: int, *, track_drift: bool = True, window_s: float = 600.0,
                 settle_s: float = 10.0, prebuffer_s: float = 0.03,
                 max_fill_s: float = 1.0, prior_ppm: float | None = None,
                 prior_error_ppm: float = PRIOR_ERROR_PPM) -> None:
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples(rate_hz)
        self.track_drift = track_drift
        self._lib = lib = _samplerate()
        err = ctypes.c_int(0)
        # libsamplerate, not speexdsp's resampler: speexdsp's changes its filter when the
        # ratio crosses 1 and skips samples then, a jump the canceller would have to
        # find again. libsamplerate glides from one ratio to the next within a call.
        # It asks for input in small pieces, so that little waits inside it unseen.
        self._callback = _SRC_CALLBACK(self._feed)
        self._resampler = lib.src_callback_new(self._callback, _SRC_SINC_FASTEST, 1,
                                               ctypes.byref(err), None)
        if not self._resampler:
            raise MediaFault(f"libsamplerate failed to start: {lib.src_strerror(err.value)}")
        self._in = (ctypes.c_float * _PIECE)()
        self._outf = (ctypes.c_float * self.frame_samples)()
        self._fifo = array("h")
        self._window_s = window_s
        self._settle_s = settle_s
        self._max_fill = round(max_fill_s * rate_hz)
        # Far periods come in bursts (the mixer's period, the scheduler): after a
        # start or a pause, wait for this much more than a frame before taking any.
        self._prebuffer = round(prebuffer_s * rate_hz)
        self._playing = False
        self._received = 0  # far samples pushed in this stretch of playing
        self._consumed = 0  # microphone samples pulled for in it
        self._far_fit = ClockFit(rate_hz, window_s)
        self._mic_fit = ClockFit(rate_hz, window_s)
        self._period = 0  # the largest far period seen
        self._fill0: float | None = None
        self._fill_avg = 0.0
        # The drift these two devices showed last time (a meeting before): used from the
        # first frame, and weighed against the fit as it grows; dropped if the fit
        # disagrees (another TV, another microphone).
        self._prior = prior_ppm if track_drift else None
        self._prior_error = prior_error_ppm
        self._ratio_ppm = self._prior or 0.0
        self.ratio = 1.0 + self._ratio_ppm / 1e6  # far samples taken per microphone sample
        self.drift_error_ppm: float | None = None  # the fit's standard error, once measured
        self._out = ctypes.create_string_buffer(2 * self.frame_samples)
        self.underruns = 0

    def _feed(self, _data: object, where: Any) -> int:
        fifo = self._fifo
        count = min(_PIECE, len(fifo))
        address, _ = fifo.buffer_info()
        self._lib.src_short_to_float_array(address, self._in, count)
        del fifo[:count]
        where[0] = self._in
        return count

    def push(self, period: bytes, at: float | None = None) -> None:
        """Far samples (mono S16_LE) handed to the speaker at monotonic time ``at`` (now if
        not given)."""
        self._fifo.frombytes(period)
        self._received += len(period) // 2
        self._period = max(self._period, len(period) // 2)
        self._far_fit.add(time.monotonic() if at is None else at, self._received)
        if len(self._fifo) > self._max_fill:
            # The microphone stopped pulling (or the player ran ahead): keep the newest.
            del self._fifo[:len(self._fifo) - self._max_fill]

    @property
    def fill(self) -> int:
        """Far samples waiting: the delay the reference is ahead of the microphone."""
        return len(self._fifo)

    def pull(self, at: float | None = None) -> bytes:
        """The next 10 ms of far signal, for the microphone frame read at monotonic time ``at``
        (now if not given)."""
        n = self.frame_samples
        fifo = self._fifo
        need = round(n * self.ratio) + _PIECE + 16  # and the resampler's look-ahead
        if not self._playing and len(fifo) >= need + self._prebuffer:
            self._playing = True
            # A new stretch of playing: the clocks are measured afresh over it.
            self._far_fit = ClockFit(self.rate_hz, self._window_s)
            self._mic_fit = ClockFit(self.rate_hz, self._window_s)
            self._received, self._consumed, self._fill0 = len(fifo), 0, None
        elif self._playing and len(fifo) < need:
            # The speaker fell silent (or its periods stopped coming): start again.
            self._playing = False
            self.underruns += 1
        self._consumed += n
        if not self._playing:
            return bytes(2 * n)
        self._mic_fit.add(time.monotonic() if at is None else at, self._consumed)
        if self.track_drift:
            self._track()
        lib = self._lib
        made = lib.src_callback_read(self._resampler, 1.0 / self.ratio, n, self._outf)
        if made < n and lib.src_error(self._resampler):
            raise MediaFault(f"libsamplerate failed: "
                             f"{lib.src_strerror(lib.src_error(self._resampler))}")
        lib.src_float_to_short_array(self._outf, self._out, made)
        return self._out.raw[:2 * made].ljust(2 * n, b"\0")

    def _track(self) -> None:
        if min(self._far_fit.span_s, self._mic_fit.span_s) < self._settle_s:
            return
        measured = self._measured_ppm()
        if measured is None:
            return
        clock_ppm, error_ppm = measured
        self.drift_error_ppm = error_ppm
        if self._prior is not None:
            together = math.hypot(error_ppm, self._prior_error)
            if abs(clock_ppm - self._prior) > 4 * together:
                self._prior = None
            else:  # each by how sure it is
                a, b = 1 / error_ppm ** 2, 1 / self._prior_error ** 2
                clock_ppm = (clock_ppm * a + self._prior * b) / (a + b)
        # The fill saws by a far period as periods come: its average over seconds.
        fill = float(len(self._fifo))
        if self._fill0 is None:
            self._fill0 = self._fill_avg = fill
        self._fill_avg += (fill - self._fill_avg) * FRAME_S / 5.0
        # Only a fill gone a period and 20 ms away from where the canceller found its
        # echo is pulled back (within ~an hour): a pull on every wobble of the fill would
        # cost more ppm than the fit's error.
        off = self._fill_avg - self._fill0
        slack = _PIECE + 0.02 * self.rate_hz + self._period
        pull = 0.0 if abs(off) < slack else (off - math.copysign(slack, off)) / (
            3600.0 * self.rate_hz)
        ppm = clock_ppm + pull * 1e6
        ppm = max(-1000, min(1000, ppm))  # beyond 1000 ppm it is not a clock: a stall
        self._ratio_ppm = ppm
        self.ratio = 1.0 + ppm / 1e6

    def _measured_ppm(self) -> tuple[float, float] | None:
        """How much faster the far clock runs, in ppm, and the standard error of that."""
        far_rate, mic_rate = self._far_fit.rate(), self._mic_fit.rate()
        far_error, mic_error = self._far_fit.rate_error(), self._mic_fit.rate_error()
        if not far_rate or not mic_rate or far_error is None or mic_error is None:
            return None
        error = math.hypot(far_error / far_rate, mic_error / mic_rate) * 1e6
        return (far_rate / mic_rate - 1.0) * 1e6, max(error, 0.05)

    @property
    def drift_ppm(self) -> float:
        """How much faster the speaker's clock runs than the microphone's, as measured."""
        return round(self._ratio_ppm, 1)

    def close(self) -> None:
        if self._resampler:
            self._lib.src_delete(self._resampler)
            self._resampler = None
