"""The media path over poor links, in network namespaces the tests make themselves.

The box (a MediaSession in a child process) runs in one namespace, the
media server (``ffmpeg``) in another, joined by a veth pair with a private
/30 (:mod:`tests.harness.netns`). A bandwidth cap is ``tbf`` on the box's
way out. Loss and delay come from a user-space UDP relay in the server's
namespace (:mod:`tests.harness.udp_relay`): this kernel has no ``netem``
qdisc and no ``gact`` action to drop at random.

Bounds on time below are generous limits for a hung test, not measurements.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.alsa import SimulatedMicrophone, make_microphone
from tests.harness.media_box import REPO, MediaBox
from tests.harness.netns import NetnsPair, netns_unavailable
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(netns_unavailable() is not None,
                       reason=f"no network namespaces here: {netns_unavailable()}"),
]

TONE_HZ = 1000.0
SERVER_PORT = 9000


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> SimulatedMicrophone:
    return make_microphone(tmp_path_factory.mktemp("mic"), frequency_hz=TONE_HZ, seconds=300)


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    with NetnsPair() as pair:
        yield pair


def media_settings(mic: SimulatedMicrophone, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        microphone=mic.pcm, sample_rate_hz=mic.sample_rate_hz, channels=mic.channels,
        srt_latency_ms=300, connect_timeout_ms=3000, reconnect_min_s=0.3, reconnect_max_s=2.0)
    settings.update(overrides)
    return settings


def steps(box: MediaBox) -> list[tuple[str, int, str]]:
    return [(e["profile"], e["kbps"], e["direction"]) for e in box.of_type("MediaStepped")]


def test_a_bandwidth_cap_steps_the_bitrate_down_and_lifting_it_brings_it_back(
        microphone: SimulatedMicrophone, net: NetnsPair, tmp_path: Path) -> None:
    listener = SrtListener(tmp_path / "server", SERVER_PORT, latency_ms=300,
                           host=net.server_addr, prefix=net.server_prefix)
    listener.start()
    box = MediaBox(net.box_prefix, listener.url, "360p15", media_settings(microphone),
                   microphone.env)
    try:
        box.wait_for(lambda e: e.get("state") == "live", 30)
        live_at = time.monotonic()
        box.wait_for(lambda e: e["type"] == "StreamFiguresUpdated"
                     and e["figures"]["frames_sent"] >= 30, 30)
        net.cap(220)  # under 400 kb/s of video plus 64 of audio
        capped_at = len(box.events)
        box.wait_for(lambda e: e["type"] == "MediaStepped" and e["direction"] == "down", 30,
                     start=capped_at)
        time.sleep(8)  # let it settle on what fits
        lowest = min(f["target_kbps"] for f in box.figures()[-5:])
        net.uncap()
        lifted_at = len(box.events)
        box.wait_for(lambda e: e["type"] == "MediaStepped" and e["direction"] == "up", 60,
                     start=lifted_at)
        box.wait_for(lambda e: e["type"] == "StreamFiguresUpdated"
                     and e["figures"]["profile"] == "360p15"
                     and e["figures"]["target_kbps"] == 400, 120, start=lifted_at)
        sent = box.figures()[-1]["frames_sent"]
        box.wait_for(lambda e: e["type"] == "StreamFiguresUpdated"
                     and e["figures"]["frames_sent"] >= sent + 30, 30)
        live_s = time.monotonic() - live_at
    finally:
        box.stop()
        listener.wait(10)
        recording = read_recording(listener.stop())

    assert lowest < 400
    downs = [s for s in steps(box) if s[2] == "down"]
    assert downs and all(kbps >= 150 or profile == "audio" for profile, kbps, _ in downs)
    states = [e["state"] for e in box.of_type("StreamChanged")]
    assert states[0] == "starting" and states[-1] == "off"
    # Audio went on through the cap: the tone is there, and (nearly) all of it
    # arrived: the picture gave way first.
    assert abs(recording.dominant_frequency_hz() - TONE_HZ) < 10
    assert recording.audio.size >= 0.9 * live_s * 48000, (recording.audio.size / 48000, live_s)
    assert box.figures()[-1]["audio_dropped"] <= 0.01 * live_s * 48000 / 1024
    # SRT dropped what came too late under the cap: the pictures it damaged
    # (to the next keyframe) may show an older stamp; the others are in order.
    numbers = recording.stamped_undamaged
    assert numbers == sorted(set(numbers)) and len(numbers) >= 60


def test_srt_over_a_lossy_delayed_link_delivers_what_the_latency_window_allows(
        microphone: SimulatedMicrophone, net: NetnsPair, tmp_path: Path) -> None:
    # 5 % loss and 100 ms each way (200 ms round trip); SRT's latency 4 round trips.
    listener = SrtListener(tmp_path / "server", SERVER_PORT + 1, latency_ms=800,
                           host="127.0.0.1", prefix=net.server_prefix)
    listener.start()
    relay = subprocess.Popen(
        [*net.server_prefix, sys.executable, "-m", "tests.harness.udp_relay",
         "--listen", f"{net.server_addr}:{SERVER_PORT}", "--to", f"127.0.0.1:{SERVER_PORT + 1}",
         "--delay-ms", "100", "--loss", "0.05", "--seconds", "120"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert relay.stdout is not None
    assert "relaying" in relay.stdout.readline()
    box = MediaBox(net.box_prefix, f"srt://{net.server_addr}:{SERVER_PORT}", "360p15",
                   media_settings(microphone, srt_latency_ms=800, abr=False), microphone.env)
    try:
        box.wait_for(lambda e: e.get("state") == "live", 30)
        box.wait_for(lambda e: e["type"] == "StreamFiguresUpdated"
                     and e["figures"]["frames_sent"] >= 120, 60)
    finally:
        box.stop()
        listener.wait(10)
        recording = read_recording(listener.stop())
        relay.terminate()
        relay_report = relay.communicate(timeout=10)[0]

    assert "dropped" in relay_report
    sent = box.figures()[-1]["frames_sent"]
    numbers = recording.stamped
    assert numbers == sorted(set(numbers))
    assert len(numbers) == len(recording.frame_numbers), "no damaged pictures"
    # Lost packets are sent again within the window: nearly every frame arrives
    # (the last ones can be lost when the box hangs up).
    assert len(numbers) >= 0.97 * sent - 10, f"{len(numbers)} of {sent} frames arrived"
    assert abs(recording.dominant_frequency_hz() - TONE_HZ) < 10
