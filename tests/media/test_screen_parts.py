"""The screen process's small parts, without a player: what the control plane loads, the play
URL check, the pipe's screen messages, the ``[screen]`` section's checks, the speaker's
prompt conversion."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from diemcau.config import ConfigError, Screen, _screen_problems
from diemcau.core.events import ProgrammeChanged, ProgrammeFiguresUpdated
from diemcau.media.pipe import (
    Channel,
    PlayFigures,
    Programme,
    Prompt,
    ScreenDown,
    Show,
    from_wire,
    to_wire,
)
from diemcau.media.screen_child import check_play_url, mpv_options, with_srt_defaults
from diemcau.media.speaker import _to_speaker

PROBE = """
import sys
import diemcau.media.screen
heavy = {"mpv", "av", "numpy", "PIL"}
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & heavy)))
"""


def test_the_control_plane_side_loads_no_player_nor_heavy_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == []


@pytest.mark.parametrize(("url", "words"), [
    ("srt://media.example:notaport", "malformed"),
    ("http://media.example/feed.ts", "scheme"),
    ("srt:///feed", "no host"),
    ("srt://media.example?streamid=x", "needs a port"),
])
def test_play_urls_that_cannot_be_played(url: str, words: str) -> None:
    assert words in check_play_url(url)


def test_a_problem_with_a_play_url_hides_its_secrets() -> None:
    problem = check_play_url("srt://media.example?passphrase=tre-xanh-nuoc-01")
    assert "tre-xanh" not in problem and "***" in problem


@pytest.mark.parametrize("url", ["srt://media.example:9000?streamid=#!::r=live/m1,s=abc",
                                 "rtsp://op:pw@10.0.0.5:8554/live", "rtsps://m.example/live"])
def test_play_urls_that_can_be_played(url: str) -> None:
    assert check_play_url(url) == ""


def test_an_srt_url_gets_a_latency_and_a_connect_timeout_unless_it_says_its_own() -> None:
    assert with_srt_defaults("srt://m:9000", 120) == \
        "srt://m:9000?latency=120000&connect_timeout=2000"
    assert with_srt_defaults("srt://m:9000?latency=50000&connect_timeout=1", 120) == \
        "srt://m:9000?latency=50000&connect_timeout=1"
    assert with_srt_defaults("rtsp://m/live", 120) == "rtsp://m/live"


def test_player_options_pin_the_output_and_let_the_site_add_its_own() -> None:
    cfg = Screen(vo="drm", drm_connector="HDMI-A-1", drm_mode="1280x720@50",
                 hwdec="v4l2m2m-copy", options={"drm-format": "xrgb8888"})
    options = mpv_options(cfg)
    assert options["vo"] == "drm" and options["drm-connector"] == "HDMI-A-1"
    assert options["drm-mode"] == "1280x720@50" and options["hwdec"] == "v4l2m2m-copy"
    assert options["profile"] == "low-latency" and options["drm-format"] == "xrgb8888"
    assert "gpu-context" not in options


def test_programme_events_cross_the_pipe_and_back() -> None:
    for event in (ProgrammeChanged("reconnecting", "why"), ProgrammeFiguresUpdated({"lag_ms": 40})):
        message = to_wire(event)
        assert isinstance(message, Programme | PlayFigures)
        assert from_wire(message) == event


def test_screen_messages_round_trip() -> None:
    read, write = os.pipe()
    end = Channel(read, write)
    try:
        end.send(Show({"site": "UBND xã"}))
        end.send(Prompt(b"\x01\x00" * 10, 22050, 1))
        assert end.receive(ScreenDown) == [Show({"site": "UBND xã"}),
                                           Prompt(b"\x01\x00" * 10, 22050, 1)]
    finally:
        end.close()


@pytest.mark.parametrize(("changes", "words"), [
    ({"lag_target_ms": 900}, "need 0 < target < bound < reload"),
    ({"catchup_speed": 3.0}, "catchup_speed"),
    ({"reconnect_min_s": 0.0}, "reconnect_min_s"),
    ({"audio_buffer_ms": 5}, "audio_buffer_ms"),
    ({"duck_db": 6.0}, "duck_db"),
])
def test_screen_settings_that_cannot_work(changes: dict, words: str) -> None:
    problems = _screen_problems(Screen(**changes))
    assert any(words in p for p in problems), problems


def test_the_defaults_are_consistent() -> None:
    assert _screen_problems(Screen()) == []
    assert issubclass(ConfigError, Exception)


def test_a_mono_prompt_becomes_speaker_stereo_at_its_rate() -> None:
    t = np.arange(22050) / 22050
    mono = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    out = np.frombuffer(_to_speaker(mono, 22050, 1, 48000), "<i2").reshape(-1, 2)
    assert abs(len(out) - 48000) <= 1
    assert (out[:, 0] == out[:, 1]).all()
    spectrum = np.abs(np.fft.rfft(out[:, 0]))
    assert abs(np.argmax(spectrum) * 48000 / len(out) - 440) < 2
    with pytest.raises(ValueError, match="channels"):
        _to_speaker(mono, 22050, 3, 48000)
