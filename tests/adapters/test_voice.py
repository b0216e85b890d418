"""The voice on real ALSA: prompts played into the ``file`` plugin and checked.

The speaker is ALSA's ``file`` plugin over ``null`` (tests/harness/alsa.py):
what the voice plays lands in a file. Each check compares it with espeak-ng
rendering the expected text on its own: not silent, of a plausible length,
and the very samples of the right prompt (at the set volume).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from diemcau.adapters.voice import PERIOD_FRAMES, Rendered, Voice, VoiceError, render, scaled
from diemcau.core.prompts import PROMPTS, prompt_for_event
from tests.harness.alsa import SimulatedSpeaker, make_speaker

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng missing: make setup installs it")

ISSUE_PROMPTS = ["đã kết nối trung tâm", "có cuộc họp, nhấn nút để tham gia", "đang vào cuộc họp",
                 "đã vào cuộc họp", "micro đã tắt", "micro đã bật", "đã giơ tay phát biểu",
                 "được phát biểu", "đã rời cuộc họp", "mất kết nối"]


@pytest.fixture
def speaker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimulatedSpeaker:
    spk = make_speaker(tmp_path / "speaker")
    monkeypatch.setenv("ALSA_CONFIG_PATH", spk.env["ALSA_CONFIG_PATH"])
    return spk


def speak(voice: Voice, *prompts: tuple[str, str], timeout_s: float = 30.0) -> list[str]:
    """Say each prompt, one after the other, and wait until each is done."""
    done: list[str] = []
    finished = threading.Event()
    voice._on_done = lambda key: (done.append(key), finished.set())  # noqa: SLF001
    voice.start()
    try:
        for key, text in prompts:
            finished.clear()
            voice.say(key, text)
            assert finished.wait(timeout_s), f"{key} was never finished"
    finally:
        voice.stop()
    return done


def rms_dbfs(samples: bytes) -> float:
    pcm = np.frombuffer(samples, dtype="<i2").astype(np.float64)
    return 20 * np.log10(max(np.sqrt(np.mean(pcm ** 2)), 1e-9) / 32768)


def test_every_prompt_the_room_needs_is_there() -> None:
    assert set(ISSUE_PROMPTS) <= set(PROMPTS.values())
    for kind in ("joined", "left", "muted", "unmuted", "hand_raised", "floor_granted",
                 "invited", "link_lost"):
        assert prompt_for_event(kind) is not None, kind
    assert prompt_for_event("floor_revoked") == "muted"
    assert prompt_for_event("stream_reconnecting") is None


@pytest.mark.parametrize("text", ISSUE_PROMPTS)
def test_each_prompt_renders_as_speech_of_a_plausible_length(text: str) -> None:
    rendered = render(text)
    assert 0.5 < rendered.seconds < 6.0, rendered.seconds
    assert rms_dbfs(rendered.pcm) > -40


def test_the_speaker_plays_the_right_prompt_at_the_set_volume(speaker: SimulatedSpeaker) -> None:
    voice = Voice(pcm=speaker.pcm, volume_percent=50)
    assert speak(voice, ("joined", PROMPTS["joined"])) == ["joined"]
    played = speaker.played()
    expected = render(PROMPTS["joined"])
    # Whole periods: the end is padded with silence, never cut.
    assert len(played) % (PERIOD_FRAMES * 2) == 0
    assert len(played) / 2 / expected.rate_hz == pytest.approx(expected.seconds, abs=0.05)
    assert rms_dbfs(played) > -45
    assert played.startswith(scaled(expected.pcm, 50))
    assert not played.startswith(scaled(render(PROMPTS["left"]).pcm, 50))


def test_prompts_that_sound_alike_are_told_apart(speaker: SimulatedSpeaker) -> None:
    """'micro đã tắt' and 'micro đã bật' last about as long: the samples still differ."""
    voice = Voice(pcm=speaker.pcm, volume_percent=100)
    speak(voice, ("muted", PROMPTS["muted"]), ("unmuted", PROMPTS["unmuted"]))
    first, second = speaker.openings()
    off, on = (scaled(render(PROMPTS[k]).pcm, 100) for k in ("muted", "unmuted"))
    assert off != on
    assert first.startswith(off) and not first.startswith(on)
    assert second.startswith(on) and not second.startswith(off)


def test_volume_scales_and_zero_is_silent(speaker: SimulatedSpeaker) -> None:
    voice = Voice(pcm=speaker.pcm, volume_percent=100)
    speak(voice, ("left", PROMPTS["left"]))
    loud = rms_dbfs(speaker.played())
    speaker.clear()
    voice = Voice(pcm=speaker.pcm, volume_percent=100)
    voice.set_volume(25)
    speak(voice, ("left", PROMPTS["left"]))
    assert loud - rms_dbfs(speaker.played()) == pytest.approx(12.0, abs=0.5)  # 20·log10(4)
    speaker.clear()
    voice = Voice(pcm=speaker.pcm, volume_percent=0)
    speak(voice, ("left", PROMPTS["left"]))
    assert not any(speaker.played())


def test_say_never_blocks_and_the_newest_prompt_wins(speaker: SimulatedSpeaker) -> None:
    release = threading.Event()
    rendered_texts: list[str] = []

    def slow_render(text: str) -> Rendered:
        rendered_texts.append(text)
        release.wait(10)
        return render(text)

    done: list[str] = []
    voice = Voice(pcm=speaker.pcm, renderer=slow_render, on_done=done.append)
    voice.start()
    try:
        voice.say("joining", PROMPTS["joining"])
        while not rendered_texts:  # the thread is now busy with the first one
            threading.Event().wait(0.01)
        for key in ("muted", "unmuted", "hand_raised", "left"):
            voice.say(key, PROMPTS[key])  # returns at once although the voice is busy
        assert voice.dropped == 2 and done == ["muted", "unmuted"]
        release.set()
        for _ in range(3000):
            if len(done) == 5:
                break
            threading.Event().wait(0.01)
    finally:
        voice.stop()
    assert done == ["muted", "unmuted", "joining", "hand_raised", "left"]
    assert rendered_texts == [PROMPTS["joining"], PROMPTS["hand_raised"], PROMPTS["left"]]


def test_a_missing_speaker_is_logged_and_the_voice_goes_on(
        speaker: SimulatedSpeaker, caplog: pytest.LogCaptureFixture) -> None:
    voice = Voice(pcm="no_such_speaker")
    assert speak(voice, ("joined", PROMPTS["joined"]), ("left", PROMPTS["left"])) == [
        "joined", "left"]
    assert voice.spoken == 0
    assert "cannot open the speaker 'no_such_speaker'" in caplog.text


def test_a_missing_espeak_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(VoiceError, match="espeak-ng is not installed"):
        render("xin chào")


def test_with_a_sink_the_prompt_goes_to_the_speakers_owner_not_to_alsa(
        speaker: SimulatedSpeaker) -> None:
    """A box with a screen: the screen process owns the speaker; the voice hands it the samples."""
    handed: list[tuple[bytes, int]] = []
    voice = Voice(pcm=speaker.pcm, volume_percent=60,
                  sink=lambda samples, rate: handed.append((samples, rate)))
    assert speak(voice, ("joined", PROMPTS["joined"])) == ["joined"]
    expected = render(PROMPTS["joined"])
    assert handed == [(scaled(expected.pcm, 60), expected.rate_hz)]
    assert speaker.played() == b""  # nothing opened the ALSA device
