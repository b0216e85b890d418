"""The echo cancellers in a simulated room (tests/harness/room.py): Vietnamese speech from the
centre played through a room's impulse response (RT60 0.4 s) into the microphone, with a
little noise, and the room's own talker (another voice) for double talk.

ERLE is computed over the last seconds of far-end-only speech, after the canceller has had
the first ones to converge: the power of what the microphone heard (echo and noise) over
the power of what is left. The noise is 50 dB under the echo, so that caps what a linear
canceller can show. Near-end loss is the projection of the output on the near-end speech
alone (see near_loss_db). The figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("soxr")

from diemcau.media.defs import MediaFault  # noqa: E402
from diemcau.media.echo import ReferenceAligner, SpeexCanceller, open_canceller  # noqa: E402
from tests.harness.room import cancel, erle_db, make_room, near_loss_db  # noqa: E402

RATE = 48000  # the box's media.sample_rate_hz
CONVERGED_S = 10  # ERLE over the last 10 s of 20: the first 10 are for converging


@pytest.fixture(scope="module")
def far_only():
    return make_room(RATE, 20)


@pytest.fixture(scope="module")
def double_talk():
    # Far end alone for 12 s, then the room's talker as loud at the microphone as the echo.
    return make_room(RATE, 22, near_from_s=12)


@pytest.fixture(scope="module")
def drifting():
    return make_room(RATE, 60, drift_ppm=100)


@pytest.mark.parametrize("name", ["webrtc", "speex"])
def test_one_clock_far_end_only_is_cancelled_by_30_db(far_only, name: str) -> None:
    with open_canceller(name, RATE) as canceller:
        cleaned = cancel(canceller, far_only)
    erle = erle_db(far_only, cleaned, CONVERGED_S)
    print(f"\n{name}: ERLE one clock, far end only, last {CONVERGED_S} s: {erle:.1f} dB")
    assert erle >= 30


@pytest.mark.parametrize(("name", "bound_db"), [("speex", 3.0), ("webrtc", 12.0)])
def test_double_talk_keeps_the_rooms_speech(double_talk, name: str, bound_db: float) -> None:
    with open_canceller(name, RATE) as canceller:
        cleaned = cancel(canceller, double_talk)
    loss, lag = near_loss_db(double_talk, cleaned, 10)
    erle = erle_db(double_talk, cleaned[:12 * RATE], 4)
    print(f"\n{name}: double talk, near-end speech lost: {loss:.1f} dB (latency {lag} samples); "
          f"ERLE before it {erle:.1f} dB")
    # WebRTC's residual echo suppressor ducks the room's talker while the centre speaks
    # as loud: its bound is what it holds, the 3 dB is held by speexdsp only.
    assert loss <= bound_db
    assert erle >= 30


@pytest.mark.parametrize(("name", "bound_db"), [("webrtc", 30.0), ("speex", 10.0)])
def test_100_ppm_of_drift(drifting, name: str, bound_db: float) -> None:
    """The speaker's clock 100 ppm fast; the far periods (1024 samples) and microphone frames
    come with up to 4 ms of scheduling jitter, through the box's ReferenceAligner."""
    figures = {}
    for track in (False, True):
        with open_canceller(name, RATE) as canceller:
            aligner = ReferenceAligner(RATE, track_drift=track)
            cleaned = cancel(canceller, drifting, aligner=aligner, drift_ppm=100)
            aligner.close()
        figures[track] = erle_db(drifting, cleaned, CONVERGED_S)
    print(f"\n{name}: ERLE at 100 ppm, last {CONVERGED_S} s of 60: "
          f"{figures[False]:.1f} dB without drift tracking, {figures[True]:.1f} dB with it "
          f"(measured {aligner.drift_ppm:.0f} ppm)")
    assert 60 <= aligner.drift_ppm <= 140
    assert max(figures.values()) >= bound_db


def test_the_aligner_measures_the_clocks_and_keeps_its_delay() -> None:
    rate, period = 16000, 512
    aligner = ReferenceAligner(rate)
    rng = np.random.default_rng(5)
    ramp = (np.arange(rate * 40) % 2000 - 1000).astype("<i2").tobytes()
    # The speaker 200 ppm slow, 40 s; the events in time order.
    far_at = np.arange(len(ramp) // (2 * period)) * period / (rate * (1 - 200e-6))
    mic_at = np.arange(1, 40 * 100) / 100 + rng.uniform(0, 0.003, 40 * 100 - 1)
    events = sorted([(t, 0, i) for i, t in enumerate(far_at)] + [(t, 1, 0) for t in mic_at])
    fills = []
    for _, kind, i in events:
        if kind == 0:
            aligner.push(ramp[2 * i * period:2 * (i + 1) * period])
        else:
            assert len(aligner.pull()) == 2 * aligner.frame_samples
            fills.append(aligner.fill)
    assert -260 <= aligner.drift_ppm <= -140
    assert aligner.underruns == 0
    # The delay did not wander: the last seconds' fill is within a period of the first's.
    assert abs(np.mean(fills[-500:]) - np.mean(fills[500:1000])) < period


def test_silence_when_nothing_is_played() -> None:
    aligner = ReferenceAligner(16000)
    assert aligner.pull() == bytes(320)
    aligner.push(bytes(100))  # too little to start on
    assert aligner.pull() == bytes(320)
    aligner.close()


def test_bad_frames_and_names_are_refused_clearly() -> None:
    with SpeexCanceller(16000) as canceller:
        with pytest.raises(ValueError, match="320 bytes"):
            canceller.process(bytes(320), bytes(100))
        assert len(canceller.process(bytes(320), bytes(320))) == 320  # still works
    with pytest.raises(MediaFault, match="no echo canceller called 'aec9'"):
        open_canceller("aec9", 16000)
    with pytest.raises(MediaFault, match="44100 Hz"):
        open_canceller("speex", 44100)
