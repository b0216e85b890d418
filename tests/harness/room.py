"""A simulated room for the echo canceller: speech, a room's impulse response, two clocks.

Far-end speech (what the centre says, played on the speaker) reaches the
microphone through a synthesised room impulse response: the direct path, then
exponentially decaying noise (the reverberation) whose level falls 60 dB in
``rt60_s``. The microphone also hears a little noise and, when asked, the
room's own speaker (near-end speech, another voice). The speech is
Vietnamese, spoken by espeak-ng.

With ``drift_ppm`` the speaker's clock runs that much faster than the
microphone's: what the microphone records is the far signal resampled (soxr,
very high quality) by the ratio of the two clocks, as in a room with the TV's
speaker on HDMI and a USB microphone.
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FAR_TEXT = ("Kính thưa các đồng chí đại biểu. Hôm nay chúng ta họp trực tuyến để bàn về kế hoạch "
            "phát triển kinh tế xã hội của tỉnh trong năm tới. Đề nghị các xã báo cáo tình hình "
            "thu hoạch lúa, công tác phòng chống thiên tai và việc xây dựng nông thôn mới. "
            "Sau đây tôi xin mời đồng chí chủ tịch phát biểu ý kiến.")
NEAR_TEXT = ("Xin chào các đồng chí. Xã chúng tôi đã hoàn thành thu hoạch vụ mùa, năng suất đạt "
             "sáu tấn một héc ta. Chúng tôi đề nghị tỉnh hỗ trợ thêm kinh phí sửa đường liên xã.")


def speech(text: str, voice: str, rate_hz: int, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice``, as float64 at ``rate_hz``, peak 0.5."""
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "150", "-w", str(path),
                        text], check=True, capture_output=True)
        with wave.open(str(path)) as wav:
            native = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    x = soxr.resample(samples.astype(np.float64) / 32768.0, native, rate_hz, quality="VHQ")
    return 0.5 * x / np.max(np.abs(x))


def impulse_response(rate_hz: int, rt60_s: float = 0.4, distance_m: float = 3.0,
                     seed: int = 1) -> np.ndarray:
    """A plausible room: the direct path after ``distance_m`` of air, early reflections, and a
    tail of noise decaying 60 dB in ``rt60_s``, about as strong as the direct sound."""
    rng = np.random.default_rng(seed)
    length = int(rt60_s * rate_hz)
    h = np.zeros(length)
    direct = int(distance_m / 343.0 * rate_hz)
    h[direct] = 1.0
    t = np.arange(length - direct - 1) / rate_hz
    tail = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60_s)  # ln(1000) = 6.91: -60 dB
    tail *= np.sqrt(1.0 / np.sum(tail ** 2))  # reverberant energy = direct energy
    h[direct + 1:] = tail
    # The speaker and microphone are band-limited: no DC, little above 12 kHz.
    return np.convolve(h, np.hanning(5) / 2.0)[:length]


@dataclass
class Room:
    """The signals of one simulated meeting, as float64 arrays on the microphone's clock."""

    rate_hz: int
    far: np.ndarray  # what the box plays, on the speaker's clock
    echo: np.ndarray  # the far end as the microphone hears it
    near: np.ndarray  # the room's own speaker, at the microphone
    noise: np.ndarray

    @property
    def mic(self) -> np.ndarray:
        return self.echo + self.near + self.noise


def make_room(rate_hz: int, seconds: float, *, near_from_s: float | None = None,
              drift_ppm: float = 0.0, output_delay_s: float = 0.04, echo_dbfs: float = -22.0,
              near_dbfs: float = -22.0, noise_dbfs: float = -72.0, seed: int = 1) -> Room:
    """``seconds`` of far-end speech in the room, near-end speech from ``near_from_s`` on.

    ``output_delay_s``: from the moment the box hands a sample to the speaker to the moment it
    leaves the speaker (the sound card's buffer). Levels are RMS over the speech."""
    import soxr

    n = int(seconds * rate_hz)
    far_voice = speech(FAR_TEXT, "vi", rate_hz, pitch=35)
    far = np.resize(far_voice, n)  # the programme: the speech again and again
    played = np.concatenate([np.zeros(int(output_delay_s * rate_hz)), far])[:n]
    if drift_ppm:
        # The microphone samples the room at rate_hz of its own clock, which is
        # rate_hz * (1 + drift) of the speaker's: the far end stretched.
        played = soxr.resample(played, rate_hz, rate_hz * (1.0 - drift_ppm * 1e-6),
                               quality="VHQ")[:n]
    echo = _convolve(played, impulse_response(rate_hz, seed=seed))[:n]
    echo *= _gain(echo, echo_dbfs)
    near = np.zeros(n)
    if near_from_s is not None:
        voice = speech(NEAR_TEXT, "vi-vn-x-south+f3", rate_hz, pitch=70)
        start = int(near_from_s * rate_hz)
        part = np.resize(voice, n - start)
        near[start:] = part * _gain(part, near_dbfs)
    rng = np.random.default_rng(seed + 1)
    noise = rng.standard_normal(n) * 10 ** (noise_dbfs / 20)
    return Room(rate_hz, far * _gain(far, -20.0), echo, near, noise)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x * h through the FFT (a plain convolution of a minute with a room is slow)."""
    size = 1 << (len(x) + len(h) - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:len(x) + len(h) - 1]


def _gain(x: np.ndarray, dbfs: float) -> float:
    rms = np.sqrt(np.mean(x[np.abs(x) > 1e-4] ** 2))
    return 10 ** (dbfs / 20) / rms


def to_s16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def from_s16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0


def power_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x ** 2) + 1e-20)


def cancel(canceller, room: Room, *, aligner=None, far_period: int = 1024,  # noqa: ANN001
           jitter_s: float = 0.004, drift_ppm: float = 0.0, seed: int = 3,
           alone: bool = False) -> np.ndarray:
    """Run ``canceller`` over the room's microphone, 10 ms at a time; the cleaned signal.

    Without ``aligner`` each microphone frame gets the far frame played at the same
    sample (one clock, as with a speakerphone's own clock). With one, the box's
    path is simulated: far periods of ``far_period`` samples are pushed when the
    speaker mixer writes them (on the speaker's clock, ``drift_ppm`` fast), each
    microphone frame when read (on the microphone's clock), both late by up to
    ``jitter_s`` (scheduling), in the order they would happen, each with the
    monotonic time it happened (the box's clock: a third one, with its own origin).

    ``alone``: the same run with nothing played (no far end, no echo): what the
    canceller's own filtering makes of the room's talker, for :func:`talker_loss_db`."""
    n = canceller.frame_samples
    rate = room.rate_hz
    mic = to_s16(room.near + room.noise if alone else room.mic)
    frames = len(mic) // (2 * n)
    out = bytearray()
    far = to_s16(np.zeros_like(room.far) if alone else room.far)
    if aligner is None:
        for k in range(frames):
            out += canceller.process(mic[2 * k * n:2 * (k + 1) * n], far[2 * k * n:2 * (k + 1) * n])
        return from_s16(bytes(out))
    rng = np.random.default_rng(seed)
    periods = len(far) // (2 * far_period)
    # When each happens, in the microphone clock's seconds.
    far_at = (np.arange(periods) * far_period / (rate * (1 + drift_ppm * 1e-6))
              + rng.uniform(0, jitter_s, periods))
    mic_at = np.arange(1, frames + 1) * n / rate + rng.uniform(0, jitter_s, frames)
    events = sorted([(t, 0, i) for i, t in enumerate(far_at)]
                    + [(t, 1, k) for k, t in enumerate(mic_at)])
    monotonic0 = 86_400.0 + rng.uniform(0, 1000)  # the box has been up a day or so
    for at, kind, i in events:
        if kind == 0:
            aligner.push(far[2 * i * far_period:2 * (i + 1) * far_period], monotonic0 + at)
        else:
            out += canceller.process(mic[2 * i * n:2 * (i + 1) * n],
                                     aligner.pull(monotonic0 + at))
    return from_s16(bytes(out))


def erle_db(room: Room, cleaned: np.ndarray, last_s: float) -> float:
    """Echo return loss enhancement over the last ``last_s`` seconds: what the microphone
    heard (echo and noise) against what is left after the canceller, in dB."""
    k = int(last_s * room.rate_hz)
    heard = (room.echo + room.noise)[len(cleaned) - k:len(cleaned)]
    return power_db(heard) - power_db(cleaned[-k:])


def talker_loss_db(room: Room, cleaned: np.ndarray, alone: np.ndarray, last_s: float,
                   segment_s: float = 0.02) -> float:
    """How much of the room's talker the canceller lost over the last ``last_s`` seconds, in dB.

    ``alone`` is the same canceller's output for the same room with nothing played
    (``cancel(..., alone=True)``): the talker as the canceller's fixed filtering leaves
    it (WebRTC forces a high-pass filter and resamples; speexdsp's preprocessor holds a
    frame back). Comparing with it, not with the dry talker, charges the canceller only
    for what the far end made it do. In each ``segment_s`` the double-talk output is
    projected on ``alone`` (the two are aligned first by cross-correlation, within
    50 ms): the gain the talker kept there, residual echo and noise being uncorrelated
    with it. The loss is the talker's energy kept, summed over the segments where it
    speaks, against its energy alone: a suppressor that ducks the talker's quiet
    syllables and lets the loud ones through costs what it removes."""
    k = int(last_s * room.rate_hz)
    a, b = cleaned[-k:], alone[len(cleaned) - k:len(cleaned)]
    size = 1 << (2 * k).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    most = room.rate_hz // 20
    lags = np.r_[0:most, size - most:size]
    best = int(lags[np.argmax(corr[lags])])
    lag = best if best < size // 2 else best - size
    a = np.roll(a, -lag)  # the ends wrap: a few ms of 10 s
    seg = int(segment_s * room.rate_hz)
    m = len(b) // seg * seg
    a, b = a[:m].reshape(-1, seg), b[:m].reshape(-1, seg)
    energy = np.sum(b * b, axis=1)
    speaks = energy > 1e-3 * energy.max()  # the talker's pauses: 30 dB under its peak
    gain = np.clip(np.sum(a * b, axis=1)[speaks] / energy[speaks], 0.0, None)
    kept = np.sum(gain ** 2 * energy[speaks]) / np.sum(energy[speaks])
    return -10 * np.log10(max(kept, 1e-12))


def near_loss_db(room: Room, cleaned: np.ndarray, last_s: float) -> tuple[float, int]:
    """The first version's measure, kept for comparison: the output projected on the dry
    near-end speech at the one lag where they match best, in dB below it, and that lag.

    It charges the canceller for its fixed filtering too: a high-pass filter's phase
    turn at the voice's low harmonics lowers a single-lag projection by ~2 dB with no
    echo at all (WebRTC forces one with its canceller)."""
    k = int(last_s * room.rate_hz)
    end = len(cleaned)
    near = room.near[end - k:end]
    size = 1 << (2 * k).bit_length()
    corr = np.fft.irfft(np.fft.rfft(cleaned[end - k:], size)
                        * np.conj(np.fft.rfft(near, size)), size)
    most = room.rate_hz // 20  # 50 ms either way
    lags = np.r_[0:most, size - most:size]
    best = int(lags[np.argmax(np.abs(corr[lags]))])
    lag = best if best < size // 2 else best - size
    gain = float(corr[best] / np.dot(near, near))
    return -20 * np.log10(max(gain, 1e-6)), lag
