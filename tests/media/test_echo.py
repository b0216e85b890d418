"""The echo cancellers in a simulated room (tests/harness/room.py): Vietnamese speech from the
centre played through a room's impulse response (RT60 0.4 s) into the microphone, with a
little noise, and the room's own talker (another voice) for double talk.

ERLE is computed over the last seconds of far-end-only speech, after the canceller has had
the first ones to converge: the power of what the microphone heard (echo and noise) over
the power of what is left. The noise is 50 dB under the echo, so that caps what a linear
canceller can show. The talker lost in double talk is the talker's energy kept in the output
against the same canceller's output with nothing played, segment by segment (see
talker_loss_db; the first version's single-lag projection on the dry talker is printed
beside it). The figures are printed (pytest -s shows them). The issue's bounds are asserted
for the default canceller (DEFAULT_CANCELLER); the other's figures are printed and held to
what it does today.
"""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("soxr")

from diemcau.media.defs import MediaFault  # noqa: E402
from diemcau.media.echo import (  # noqa: E402
    DEFAULT_CANCELLER,
    ClockFit,
    ReferenceAligner,
    SpeexCanceller,
    open_canceller,
)
from tests.harness.room import cancel, erle_db, make_room, near_loss_db, talker_loss_db  # noqa: E402

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


# What each holds today; the bounds (3 dB lost, 30 dB at 100 ppm) for the default.
# WebRTC's AEC3 ducks the talker while the centre speaks as loud (its residual echo
# suppressor, whose tuning the livekit wheel does not expose): ~4.5 dB.
TALKER_LOST_DB = {"speex": 3.0, "webrtc": 6.0}
DRIFT_ERLE_DB = {"speex": 30.0, "webrtc": 30.0}


@pytest.mark.parametrize("name", ["speex", "webrtc"])
def test_double_talk_keeps_the_rooms_speech(double_talk, name: str) -> None:
    with open_canceller(name, RATE) as canceller:
        cleaned = cancel(canceller, double_talk)
    with open_canceller(name, RATE) as canceller:
        alone = cancel(canceller, double_talk, alone=True)
    lost = talker_loss_db(double_talk, cleaned, alone, 10)
    first_measure, lag = near_loss_db(double_talk, cleaned, 10)
    first_alone, _ = near_loss_db(double_talk, alone, 10)
    erle = erle_db(double_talk, cleaned[:12 * RATE], 4)
    print(f"\n{name}: double talk, talker lost {lost:.1f} dB (the first version's measure: "
          f"{first_measure:.1f} dB, and {first_alone:.1f} dB with nothing played; latency "
          f"{lag} samples); ERLE before it {erle:.1f} dB")
    assert lost <= (3.0 if name == DEFAULT_CANCELLER else TALKER_LOST_DB[name])
    assert erle >= 30


@pytest.mark.parametrize("name", ["speex", "webrtc"])
def test_100_ppm_of_drift(drifting, name: str) -> None:
    """The speaker's clock 100 ppm fast; the far periods (1024 samples) and microphone frames
    come with up to 4 ms of scheduling jitter, stamped with the box's monotonic clock,
    through the box's ReferenceAligner."""
    figures, measured = {}, 0.0
    for track in (False, True):
        with open_canceller(name, RATE) as canceller:
            aligner = ReferenceAligner(RATE, track_drift=track)
            cleaned = cancel(canceller, drifting, aligner=aligner, drift_ppm=100)
            aligner.close()
        figures[track] = erle_db(drifting, cleaned, CONVERGED_S)
        measured = aligner.drift_ppm if track else measured
        if track:
            early = erle_db(drifting, cleaned[:30 * RATE], CONVERGED_S)
    print(f"\n{name}: ERLE at 100 ppm, last {CONVERGED_S} s of 60: "
          f"{figures[False]:.1f} dB without drift tracking, {figures[True]:.1f} dB with it "
          f"(measured {measured:.1f} ppm; {early:.1f} dB over 20-30 s)")
    assert abs(measured - 100) <= 3
    assert figures[True] >= (30.0 if name == DEFAULT_CANCELLER else DRIFT_ERLE_DB[name])


def test_a_clock_fit_finds_the_rate_through_jitter() -> None:
    rng = np.random.default_rng(7)
    fit = ClockFit(48000)
    assert fit.rate() is None
    rate = 48000 * (1 + 37e-6)
    for k in range(6000):  # a minute of 10 ms frames read up to 4 ms late
        fit.add(1e5 + k * 480 / rate + rng.uniform(0, 0.004), (k + 1) * 480)
    assert abs(fit.rate() / 48000 - 1 - 37e-6) < 2e-6


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
    for at, kind, i in events:
        if kind == 0:
            aligner.push(ramp[2 * i * period:2 * (i + 1) * period], at)
        else:
            assert len(aligner.pull(at)) == 2 * aligner.frame_samples
            fills.append(aligner.fill)
    assert -205 <= aligner.drift_ppm <= -195
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


@pytest.fixture(scope="module")
def drifting_half_minute():
    return make_room(RATE, 30, drift_ppm=100)


def test_a_drift_remembered_from_the_last_meeting_cancels_from_the_first_seconds(
        drifting_half_minute) -> None:
    """The speaker 100 ppm fast again. Measured afresh, the clocks take half a minute and
    speex removes little meanwhile; starting from what the last meeting measured, it
    cancels from the start. A remembered drift the fit disagrees with (another TV) is
    dropped, and the room is as if nothing were remembered."""
    room = drifting_half_minute
    figures, measured = {}, {}
    for prior in (None, 100.5, 40.0):
        with open_canceller("speex", RATE) as canceller:
            aligner = ReferenceAligner(RATE, prior_ppm=prior)
            cleaned = cancel(canceller, room, aligner=aligner, drift_ppm=100)
            aligner.close()
        figures[prior] = erle_db(room, cleaned[:20 * RATE], 10)
        measured[prior] = aligner.drift_ppm
    print(f"\nspeex at 100 ppm, ERLE 10-20 s: {figures[None]:.1f} dB measured afresh, "
          f"{figures[100.5]:.1f} dB from a remembered 100.5 ppm, "
          f"{figures[40.0]:.1f} dB from a wrong 40 ppm")
    assert figures[100.5] >= 30 > figures[None]
    assert abs(figures[40.0] - figures[None]) < 3
    assert all(abs(m - 100) <= 3 for m in measured.values())


def test_the_clock_fit_says_how_sure_it_is() -> None:
    rng = np.random.default_rng(11)
    fit = ClockFit(48000)
    errors = []
    for k in range(6000):  # a minute of 10 ms frames read up to 4 ms late
        fit.add(50.0 + k / 100 / (1 + 20e-6) + rng.uniform(0, 0.004), (k + 1) * 480)
        if k % 1000 == 999:
            errors.append(fit.rate_error())
    assert errors == sorted(errors, reverse=True)  # surer as the pairs come
    off = fit.rate() / 48000 - 1 - 20e-6
    assert abs(off) * 48000 < 4 * errors[-1]  # the error it states covers the error it has
    assert errors[-1] / 48000 < 2e-6


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"mic": "100"}',
                                     b'{"mic": true}', b'{"mic": NaN}', b'{"mic": 5000}',
                                     b'{"other": 12}'])
def test_a_remembered_drift_that_is_missing_or_not_ours_is_no_drift(tmp_path, content) -> None:
    from diemcau.media.microphone import remembered_drift

    path = tmp_path / "echo-drift.json"
    path.write_bytes(content)
    assert remembered_drift(path, "mic") is None
    assert remembered_drift(tmp_path / "none.json", "mic") is None


def test_a_measured_drift_is_kept_per_microphone(tmp_path) -> None:
    from diemcau.media.microphone import remember_drift, remembered_drift

    path = tmp_path / "echo-drift.json"
    path.write_bytes(b"garbage")  # a broken file is replaced, not a reason to keep nothing
    remember_drift(path, "plughw:CARD=Mic", 87.123)
    remember_drift(path, "plughw:CARD=Other", -12.0)
    remember_drift(path, "plughw:CARD=Mic", 88.0)
    assert remembered_drift(path, "plughw:CARD=Mic") == 88.0
    assert remembered_drift(path, "plughw:CARD=Other") == -12.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["echo-drift.json"]
    deeper = tmp_path / "state" / "echo-drift.json"  # a state directory not made yet
    remember_drift(deeper, "m", 1.0)
    assert remembered_drift(deeper, "m") == 1.0


def test_a_meeting_that_measured_its_drift_leaves_it_for_the_next(
        tmp_path, drifting_half_minute) -> None:
    from diemcau.config import Media
    from diemcau.media.microphone import (
        DRIFTS_NAME,
        CancellingMicrophone,
        Microphone,
        remembered_drift,
    )

    def meeting(aligner: ReferenceAligner) -> None:
        mic = CancellingMicrophone(Microphone(Media(microphone="plughw:CARD=Mic")), "speex",
                                   str(tmp_path / "farend.sock"))
        mic._aligner = aligner  # as if it had read the room: what open() made, measured
        mic.close()

    measuring = ReferenceAligner(RATE)
    meeting(measuring)  # nothing measured yet: nothing kept
    assert not (tmp_path / DRIFTS_NAME).exists()
    with open_canceller("speex", RATE) as canceller:
        cancel(canceller, drifting_half_minute, aligner=measuring, drift_ppm=100)
    meeting(measuring)
    assert abs(remembered_drift(tmp_path / DRIFTS_NAME, "plughw:CARD=Mic") - 100) <= 3
