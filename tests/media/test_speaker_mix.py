"""The speaker's mixer: the programme passes untouched unless a prompt plays, then it ducks.

The last tests run its thread: a real FIFO in, ALSA's ``file`` plugin out."""

from __future__ import annotations

import array
import fcntl
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diemcau.media.speaker import Speaker, make_fifo, mix_prompt, mpv_volume
from tests.harness.alsa import make_speaker
from tests.harness.waiting import wait_until


@pytest.fixture
def speaker(tmp_path: Path) -> Iterator[Speaker]:
    fifo = str(tmp_path / "programme.pcm")
    make_fifo(fifo)
    made = Speaker("null", fifo, duck_db=-18.0)  # its thread is not started: _mix alone
    yield made
    made.stop()


def _noise(frames: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32767, size=frames * 2, dtype=np.int16).astype("<i2").tobytes()


def test_no_prompt_the_programme_passes_bit_exact(speaker: Speaker) -> None:
    programme = _noise(speaker.period_frames, 1)
    assert speaker._mix(programme, True) == programme
    assert speaker._mix(programme, False) == bytes(len(programme))  # no programme: silence


def test_a_prompt_ducks_the_programme_and_ends(speaker: Speaker) -> None:
    programme = np.full(speaker.period_frames * 2, 8000, dtype="<i2").tobytes()
    tone = np.full(speaker.period_frames * 2, 1000, dtype="<i2")
    speaker.prompt(tone.tobytes(), speaker.rate_hz, 2)
    mixed = np.frombuffer(speaker._mix(programme, True), dtype="<i2")
    duck = 10 ** (-18 / 20)
    assert np.all(mixed == round(1000 + 8000 * duck))
    assert speaker._mix(programme, True) == programme  # the prompt is over: untouched again


def test_a_prompt_alone_is_played_as_it_came(speaker: Speaker) -> None:
    prompt = _noise(speaker.period_frames, 2)
    speaker.prompt(prompt, speaker.rate_hz, 2)
    assert speaker._mix(bytes(len(prompt)), False) == prompt


def test_mixing_clips_instead_of_wrapping() -> None:
    loud = np.full(8, 30000, dtype="<i2").tobytes()
    assert set(np.frombuffer(mix_prompt(loud, loud, 0.5), dtype="<i2")) == {32767}
    low = np.full(8, -30000, dtype="<i2").tobytes()
    assert set(np.frombuffer(mix_prompt(low, low, 0.5), dtype="<i2")) == {-32768}


@pytest.mark.parametrize("percent", [0, 1, 35, 50, 80, 100])
def test_mpv_volume_gives_the_linear_gain_asked(percent: int) -> None:
    # mpv's software volume: gain = (volume / 100) ** 3
    assert (mpv_volume(percent) / 100) ** 3 == pytest.approx(percent / 100, abs=1e-12)


def test_mpv_volume_out_of_range_is_held_in_it() -> None:
    assert mpv_volume(-5) == 0 and mpv_volume(250) == 100


def _running_speaker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Speaker, Any, str]:
    room = make_speaker(tmp_path / "alsa")
    monkeypatch.setenv("ALSA_CONFIG_PATH", room.env["ALSA_CONFIG_PATH"])
    fifo = str(tmp_path / "programme.pcm")
    make_fifo(fifo)
    return Speaker(room.pcm, fifo, duck_db=-18.0), room, fifo


def test_the_programme_goes_through_the_fifo_to_the_speaker_bit_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speaker, room, fifo = _running_speaker(tmp_path, monkeypatch)
    programme = _noise(speaker.rate_hz // 4, 3)  # 0.25 s
    speaker.start()
    try:
        with open(fifo, "wb", buffering=0) as player:
            # Odd pieces, each read before the next is written: every read ends inside a frame.
            for at in range(0, len(programme), 1001):
                player.write(programme[at:at + 1001])
                wait_until(lambda: _waiting_in(player.fileno()) == 0, timeout_s=5,
                           interval_s=0.001)
    finally:
        speaker.stop()  # after the pass that read the last bytes has written them
    assert not speaker.error
    assert room.played() == programme
    assert speaker.delay_s > 0  # what sits between the player and the ear is known


def test_a_prompt_with_no_programme_is_played_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speaker, room, _ = _running_speaker(tmp_path, monkeypatch)
    prompt = _noise(speaker.period_frames * 3, 4)
    speaker.start()
    try:
        speaker.prompt(prompt, speaker.rate_hz, 2)
        wait_until(lambda: not speaker.prompting, timeout_s=5)
    finally:
        speaker.stop()
    assert not speaker.error
    assert room.played() == prompt


def _waiting_in(fd: int) -> int:
    """Bytes in the pipe behind ``fd``, not read yet."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def test_a_missing_speaker_keeps_real_time_and_is_used_once_plugged_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    room = make_speaker(tmp_path / "alsa")  # the PCM "late_speaker" is not in ALSA's config yet
    monkeypatch.setenv("ALSA_CONFIG_PATH", room.env["ALSA_CONFIG_PATH"])
    fifo = str(tmp_path / "programme.pcm")
    make_fifo(fifo)
    speaker = Speaker("late_speaker", fifo, reopen_s=0.2)
    before, after = _noise(speaker.rate_hz // 2, 5), _noise(speaker.rate_hz // 4, 6)
    speaker.start()
    try:
        with open(fifo, "wb", buffering=0) as player:
            began = time.monotonic()
            player.write(before)  # 0.5 s, blocking as mpv's writes do
            took = time.monotonic() - began
            assert "cannot open the speaker 'late_speaker'" in speaker.error
            # Nobody hears it, but the player is held to real time: its pictures keep their
            # pace (all but the FIFO's 21 ms and the speaker's 40 ms waited for).
            assert took >= 0.5 - 0.021 - 0.040 - 0.01, took
            plugged = make_speaker(tmp_path / "plugged", pcm="late_speaker")
            monkeypatch.setenv("ALSA_CONFIG_PATH", plugged.env["ALSA_CONFIG_PATH"])
            wait_until(lambda: not speaker.error, timeout_s=5, interval_s=0.005)
            player.write(after)
            wait_until(lambda: _waiting_in(player.fileno()) == 0, timeout_s=5)
    finally:
        speaker.stop()
    assert speaker.error == ""
    assert plugged.played().endswith(after)
