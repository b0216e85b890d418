"""The media path on real parts: ffmpeg as the SRT media server, ALSA's file plugin, PyAV.

The box's MediaSession runs in this process (as in the box); the media server
is an ``ffmpeg`` SRT listener on loopback whose recording is decoded here.
Events are collected from a queue.Queue used as the session's ``post``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from diemcau.config import Media
from diemcau.core.events import StreamChanged, StreamFiguresUpdated
from diemcau.core.meeting import StreamRequest
from diemcau.media import camera as camera_adapters
from diemcau.media.defs import MIN_QUEUE_BYTES, VideoProfile
from diemcau.media.session import MediaSession
from diemcau.media.urls import publish_url
from diemcau.protocol.messages import StreamFigures
from tests.harness.alsa import SimulatedMicrophone, make_microphone
from tests.harness.encoding_camera import EncodingTestCamera
from tests.harness.srt_listener import (
    Recording,
    RtspListener,
    SrtListener,
    free_tcp_port,
    free_udp_port,
    read_recording,
)
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.e2e

TONE_HZ = 1000.0
# Generous bounds for waiting on events: they fail a hung test, they time nothing.
EVENT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> SimulatedMicrophone:
    # Longer than the whole module: the file plugin repeats stale data after the end.
    return make_microphone(tmp_path_factory.mktemp("mic"), frequency_hz=TONE_HZ, seconds=240)


@pytest.fixture(autouse=True)
def _alsa_sees_the_microphone(microphone: SimulatedMicrophone,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in microphone.env.items():
        monkeypatch.setenv(key, value)


def media_config(mic: SimulatedMicrophone, **overrides: object) -> Media:
    # Short timeouts and backoff keep the failure tests quick; the code paths are the same.
    settings: dict[str, object] = dict(
        microphone=mic.pcm, sample_rate_hz=mic.sample_rate_hz,
        channels=mic.channels, srt_latency_ms=120, connect_timeout_ms=1000,
        reconnect_min_s=0.2, reconnect_max_s=1.0)
    settings.update(overrides)
    return Media(**settings)  # type: ignore[arg-type]


class Events:
    """What a session posted, and waiting for what it will post."""

    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue()
        self.seen: list[object] = []

    def post(self, event: object) -> None:
        self.queue.put_nowait(event)

    def wait_for(self, match: Callable[[object], bool], timeout_s: float = EVENT_TIMEOUT_S) -> object:
        for event in self.seen:
            if match(event):
                return event
        while True:
            try:
                event = self.queue.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"not posted within {timeout_s} s; got {self.states()}") from None
            self.seen.append(event)
            if match(event):
                return event

    def wait_state(self, state: str, timeout_s: float = EVENT_TIMEOUT_S) -> StreamChanged:
        event = self.wait_for(lambda e: isinstance(e, StreamChanged) and e.state == state,
                              timeout_s)
        assert isinstance(event, StreamChanged)
        return event

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return

    def states(self) -> list[str]:
        return [e.state for e in self.seen if isinstance(e, StreamChanged)]

    def last_figures(self) -> dict[str, object]:
        figures = [e.figures for e in self.seen if isinstance(e, StreamFiguresUpdated)]
        assert figures, "no figures were posted"
        return figures[-1]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def sessions() -> Iterator[list[MediaSession]]:
    """Sessions made by a test; stopped even when it fails."""
    made: list[MediaSession] = []
    yield made
    for session in made:
        session.stop()
        session.join(10)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[SrtListener]:
    with SrtListener(tmp_path / "server") as server:
        yield server


def start_session(sessions: list[MediaSession], events: Events, cfg: Media, url: str,
                  profile: str = "360p15", muted: bool = False) -> MediaSession:
    request = StreamRequest("m-e2e", url, profile, muted)  # type: ignore[arg-type]
    session = MediaSession(cfg, request, events.post, device_id="c00001-r1")
    sessions.append(session)
    session.start()
    return session




def stream_for(events: Events, frames_sent: int) -> None:
    """Let the stream run until the box reports at least ``frames_sent`` frames sent."""
    events.wait_for(lambda e: isinstance(e, StreamFiguresUpdated)
                    and int(e.figures["frames_sent"]) >= frames_sent)


def test_a_stream_arrives_whole_with_its_frame_numbers_and_tone(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url)

    events.wait_state("live")
    # Figures come once a second (~15 frames here): asking now lands mid-GOP,
    # well away from the regular keyframes at 0 and 30.
    stream_for(events, 5)
    session.request_keyframe()
    stream_for(events, 60)  # about four seconds
    session.stop()
    assert session.join(10)
    events.drain()
    assert events.states() == ["starting", "live", "off"]
    figures = events.last_figures()
    StreamFigures(**figures)  # the keys are the protocol's
    sent = int(figures["frames_sent"])

    assert listener.wait(10), "ffmpeg should finish when the box hangs up"
    recording = read_recording(listener.stop())

    numbers = recording.stamped
    assert len(numbers) == len(recording.frame_numbers), "every picture carries a readable stamp"
    assert numbers == sorted(set(numbers)), "frame numbers only go up"
    assert len(numbers) >= 0.9 * sent, f"{len(numbers)} of {sent} frames arrived"
    assert recording.packet_keyframes[0], "the stream starts with a keyframe"
    assert (recording.width, recording.height) == (640, 360)
    assert recording.video_codec == "h264"
    # A keyframe every 2 s (30 encoded frames at 15 fps), and one more where it was
    # asked for. Counted in pictures, not frame numbers: a frame captured too late
    # is skipped before the encoder and leaves a gap in the numbers.
    keys = [i for i, key in enumerate(recording.keyframes) if key]
    gaps = np.diff(keys)
    assert all(gaps <= 30), f"keyframes at pictures {keys}"
    assert any(gaps < 30), f"the requested keyframe is missing: keyframes at pictures {keys}"

    assert recording.audio_codec == "aac"
    assert (recording.audio_sample_rate, recording.audio_channels) == (48000, 1)
    assert recording.audio.size >= 2 * 48000
    assert abs(recording.dominant_frequency_hz() - TONE_HZ) < 10
    assert figures["audio_level_dbfs"] == pytest.approx(-15.0, abs=1.0)  # -12 dBFS peak sine


def test_audio_only_and_muted_sends_silence_but_measures_the_microphone(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url,
                            profile="audio", muted=True)
    events.wait_state("live")
    events.wait_for(lambda e: isinstance(e, StreamFiguresUpdated)
                    and e.figures["audio_level_dbfs"] is not None
                    and e.figures["bitrate_kbps"] > 0)
    session.stop()
    assert session.join(10)
    events.drain()

    assert listener.wait(10)
    recording = read_recording(listener.stop())
    assert recording.video_codec is None and recording.frame_numbers == []
    assert recording.audio_codec == "aac" and recording.audio.size > 0
    assert float(np.max(np.abs(recording.audio))) < 1e-3, "muted: silence on the wire"
    assert events.last_figures()["audio_level_dbfs"] == pytest.approx(-15.0, abs=1.0)


def test_no_server_means_reconnecting_then_live_once_it_appears(
        microphone: SimulatedMicrophone, tmp_path: Path, events: Events,
        sessions: list[MediaSession]) -> None:
    port = free_udp_port()
    session = start_session(sessions, events, media_config(microphone),
                            f"srt://127.0.0.1:{port}")

    reconnecting = events.wait_state("reconnecting")
    assert f"127.0.0.1:{port}" in reconnecting.detail
    assert not reconnecting.fatal

    with SrtListener(tmp_path / "late", port) as server:
        server.start()
        events.wait_state("live")
        stream_for(events, int(events.last_figures()["frames_sent"]) + 15)
        session.stop()
        assert session.join(10)
        events.drain()
        assert server.wait(10)
        recording = read_recording(server.stop())

    states = events.states()
    assert states[0] == "starting" and states.count("starting") == 1, states
    assert states[-2:] == ["live", "off"], states
    assert int(events.last_figures()["reconnects"]) >= 1
    assert recording.packet_keyframes and recording.packet_keyframes[0]
    assert len(recording.stamped) >= 10


def test_stop_is_prompt_while_connecting_to_nobody(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession],
        caplog: pytest.LogCaptureFixture) -> None:
    # A long connect timeout: stop() must not wait for it to run out.
    cfg = media_config(microphone, connect_timeout_ms=30_000)
    caplog.set_level(logging.INFO, logger="diemcau.media")
    session = start_session(sessions, events, cfg, f"srt://127.0.0.1:{free_udp_port()}")
    wait_until(lambda: "connecting to" in caplog.text, EVENT_TIMEOUT_S)
    session.stop()
    assert session.join(5), "the worker is still stuck in the SRT connect"
    events.drain()
    assert events.states() == ["starting", "off"]


def test_stop_is_prompt_after_the_server_vanished(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url)
    events.wait_state("live")
    listener.kill()  # no goodbye: the box keeps sending into the void
    session.stop()
    assert session.join(5)
    events.drain()
    assert events.states()[-1] == "off"


def test_a_missing_microphone_is_a_fatal_error_naming_it(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession]) -> None:
    cfg = media_config(microphone, microphone="diemcau_no_such_mic")
    session = start_session(sessions, events, cfg, f"srt://127.0.0.1:{free_udp_port()}")

    error = events.wait_state("error")
    assert error.fatal
    assert "diemcau_no_such_mic" in error.detail
    session.stop()
    assert session.join(5)
    events.drain()
    assert events.states() == ["starting", "error", "off"]


def test_the_publish_url_gets_the_box_defaults_and_keeps_the_centres_options() -> None:
    cfg = Media(srt_latency_ms=250, connect_timeout_ms=2000)
    url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="c1-r1", cfg=cfg)
    assert url == ("srt://media.example:9000?mode=caller&streamid=publish:m1/c1-r1"
                   "&latency=250000&connect_timeout=2000&timeout=2000000"
                   "&tlpktdrop=0&sndbuf=65536")
    # SRT's send buffer: half a second at the top bitrate (plus audio), not less than 64 KiB.
    url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="c1-r1", cfg=cfg,
                      top_kbps=1500)
    assert url.endswith(f"&sndbuf={(1500 + 64) * 125 // 2}")
    secret = Media(srt_passphrase="correct horse&battery")
    url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="c1-r1",
                      cfg=secret)
    assert url.endswith("&passphrase=correct%20horse%26battery")
    # RTSP: the URL as given; the RTSP muxer's options are not URL options.
    assert publish_url("rtsp://media.example:8554/live/m1", meeting_id="m1",
                       device_id="c1-r1", cfg=cfg) == "rtsp://media.example:8554/live/m1"
    # SRS-style access control: '#' is part of FFmpeg's option text, not a fragment.
    theirs = "srt://media.example:9000?streamid=#!::r=live/m1,m=publish&latency=500000"
    url = publish_url(theirs, meeting_id="m1", device_id="c1-r1", cfg=cfg)
    assert url.startswith(theirs + "&")
    assert url.count("streamid=") == 1 and url.count("latency=") == 1


def test_stop_before_start_still_answers_off(microphone: SimulatedMicrophone,
                                             events: Events) -> None:
    request = StreamRequest("m-e2e", "srt://127.0.0.1:9", "360p15", False)
    session = MediaSession(media_config(microphone), request, events.post, device_id="c1-r1")
    session.stop()
    assert session.join(0)
    events.drain()
    assert events.states() == ["off"]
    with pytest.raises(RuntimeError):
        session.start()


# ---------------------------------------------------------------- the network thread


def picture_gaps(recording: Recording) -> list[tuple[int, int, bool]]:
    """(after, before, keyframe) for each jump in the received frame numbers."""
    numbers, keys = recording.frame_numbers, recording.keyframes
    return [(numbers[i - 1], numbers[i], keys[i]) for i in range(1, len(numbers))
            if numbers[i] is not None and numbers[i - 1] is not None
            and numbers[i] - numbers[i - 1] > 1]


def test_a_receiver_that_stops_reading_costs_bounded_memory_and_the_stream_recovers(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    # A write may wait 5 s: the pause below stalls the writer without losing the connection.
    cfg = media_config(microphone, connect_timeout_ms=5000)
    listener.start()
    session = start_session(sessions, events, cfg, listener.url)
    events.wait_state("live")
    stream_for(events, 15)
    rss_before = psutil.Process().memory_info().rss

    events.drain()
    captured_before = int(events.last_figures()["frames_captured"])
    listener.pause()
    paused_at = time.monotonic()
    peak_queue = 0
    while time.monotonic() - paused_at < 3.5:
        events.drain()
        peak_queue = max(peak_queue, int(events.last_figures()["queue_bytes"]))
        time.sleep(0.2)
    rss_paused = psutil.Process().memory_info().rss
    dropped_while_paused = int(events.last_figures()["frames_dropped"])
    sent_while_paused = int(events.last_figures()["frames_sent"])
    captured_while_paused = int(events.last_figures()["frames_captured"]) - captured_before
    listener.resume()

    stream_for(events, sent_while_paused + 30)  # frames flow again
    session.stop()
    assert session.join(10)
    events.drain()
    assert listener.wait(10)
    recording = read_recording(listener.stop())

    # The queue filled up to its bound and dropped, instead of growing.
    bound = max(MIN_QUEUE_BYTES, (400 + 64) * 125 * cfg.send_queue_ms // 1000)
    assert 0 < peak_queue <= bound + 64 * 1024  # the bound, give or take one keyframe
    assert dropped_while_paused > 0
    # The encoding thread never waited for the network: capture went on at its pace.
    assert captured_while_paused >= 30, captured_while_paused
    assert rss_paused - rss_before < 40e6, "memory grew while the receiver was paused"
    assert events.states() == ["starting", "live", "off"], "the connection itself survived"
    # What arrived after the pause is whole: every picture readable, numbers going up,
    # and the stream picked up again at a keyframe after the frames dropped in the pause.
    numbers = recording.stamped
    assert len(numbers) == len(recording.frame_numbers)
    assert numbers == sorted(set(numbers))
    gaps = picture_gaps(recording)
    assert gaps, "frames were dropped in the pause"
    widest = max(gaps, key=lambda gap: gap[1] - gap[0])
    assert widest[2], f"after the pause the stream went on without a keyframe: {gaps}"
    assert numbers[-1] > widest[1] + 20


def test_a_listener_killed_mid_stream_gets_the_stream_back_starting_at_a_keyframe(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url)
    events.wait_state("live")
    stream_for(events, 20)

    listener.kill()  # no goodbye: the box finds out when SRT stops hearing back
    events.wait_state("reconnecting")
    listener.start()  # the same port, a new recording
    events.seen.clear()
    events.wait_state("live")
    stream_for(events, int(events.last_figures()["frames_sent"]) + 20)
    session.stop()
    assert session.join(10)
    events.drain()
    assert listener.wait(10)
    second = read_recording(listener.stop())

    assert int(events.last_figures()["reconnects"]) >= 1
    assert second.packet_keyframes and second.packet_keyframes[0], "first packet a keyframe"
    assert second.keyframes[0], "first picture a keyframe"
    assert len(second.stamped) >= 15
    assert second.stamped == sorted(set(second.stamped))


def test_a_new_profile_while_live_changes_the_picture_and_audio_only_keeps_the_sound(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession]) -> None:
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url)
    events.wait_state("live")
    stream_for(events, 15)
    session.set_profile("480p25")
    events.wait_for(lambda e: isinstance(e, StreamFiguresUpdated)
                    and e.figures["profile"] == "480p25")
    stream_for(events, int(events.last_figures()["frames_sent"]) + 40)
    session.set_profile("audio")
    events.wait_for(lambda e: isinstance(e, StreamFiguresUpdated)
                    and e.figures["profile"] == "audio")
    sent_at_audio = int(events.last_figures()["frames_sent"])
    time.sleep(2)
    events.drain()
    assert int(events.last_figures()["frames_sent"]) <= sent_at_audio + 2  # what was queued
    session.stop()
    assert session.join(10)
    events.drain()
    assert listener.wait(10)
    recording = read_recording(listener.stop())

    assert events.states() == ["starting", "live", "off"], "no reconnection for a new profile"
    assert (recording.width, recording.height) == (854, 480)
    numbers = recording.stamped
    assert len(numbers) == len(recording.frame_numbers) and numbers == sorted(set(numbers))
    assert sum(recording.keyframes) >= 2  # the first, and the new encoder's
    # Audio went on after the pictures stopped: more than 2 s of it after the last picture.
    assert recording.audio.size >= 48000 * 4
    assert abs(recording.dominant_frequency_hz() - TONE_HZ) < 10
    with pytest.raises(ValueError, match="unknown profile"):
        session.set_profile("1080p60")


# ---------------------------------------------------------------- encryption and RTSP

PASSPHRASE = "tre-xanh-nuoc-bac-2026"


def test_an_encrypted_stream_reaches_a_listener_with_the_same_passphrase(
        microphone: SimulatedMicrophone, tmp_path: Path, events: Events,
        sessions: list[MediaSession]) -> None:
    with SrtListener(tmp_path / "aes", passphrase=PASSPHRASE) as server:
        server.start()
        session = start_session(sessions, events,
                                media_config(microphone, srt_passphrase=PASSPHRASE), server.url)
        events.wait_state("live")
        stream_for(events, 20)
        session.stop()
        assert session.join(10)
        assert server.wait(10)
        recording = read_recording(server.stop())
    assert len(recording.stamped) >= 15
    assert recording.packet_keyframes[0]


def test_a_wrong_passphrase_is_a_clear_failure_and_the_box_keeps_trying(
        microphone: SimulatedMicrophone, tmp_path: Path, events: Events,
        sessions: list[MediaSession], caplog: pytest.LogCaptureFixture) -> None:
    with SrtListener(tmp_path / "aes", passphrase="something-else-entirely") as server:
        server.start()
        session = start_session(sessions, events,
                                media_config(microphone, srt_passphrase=PASSPHRASE), server.url)
        reconnecting = events.wait_state("reconnecting")
        assert "rejected the connection" in reconnecting.detail
        assert "passphrase" in reconnecting.detail
        assert not reconnecting.fatal
        assert PASSPHRASE not in caplog.text and PASSPHRASE not in reconnecting.detail
        session.stop()
        assert session.join(10)


def test_rtsp_push_over_tcp_reaches_an_rtsp_server(
        microphone: SimulatedMicrophone, tmp_path: Path, events: Events,
        sessions: list[MediaSession]) -> None:
    with RtspListener(tmp_path / "rtsp", free_tcp_port()) as server:
        server.start()
        session = start_session(sessions, events, media_config(microphone), server.url)
        events.wait_state("live")
        stream_for(events, 45)
        session.stop()
        assert session.join(10)
        events.drain()
        assert server.wait(10), "ffmpeg should finish when the box hangs up"
        recording = read_recording(server.stop())
    assert events.states() == ["starting", "live", "off"]
    numbers = recording.stamped
    assert len(numbers) >= 30 and numbers == sorted(set(numbers))
    assert recording.keyframes[0]
    assert (recording.width, recording.height) == (640, 360)
    assert recording.audio_codec == "aac"
    assert abs(recording.dominant_frequency_hz() - TONE_HZ) < 10


def test_rtsp_with_nobody_listening_is_reconnecting_not_fatal(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession]) -> None:
    session = start_session(sessions, events, media_config(microphone),
                            f"rtsp://127.0.0.1:{free_tcp_port()}/live/m-e2e")
    reconnecting = events.wait_state("reconnecting")
    assert "rtsp://127.0.0.1:" in reconnecting.detail and not reconnecting.fatal
    session.stop()
    assert session.join(10)


def test_ffmpeg_error_texts_keep_the_server_and_lose_the_credentials(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession],
        caplog: pytest.LogCaptureFixture) -> None:
    # PyAV's error text holds the whole URL, and FFmpeg's last error message another one.
    port = free_tcp_port()
    session = start_session(sessions, events, media_config(microphone, srt_passphrase=PASSPHRASE),
                            f"RTSP://operator:pw-3e81f7@127.0.0.1:{port}/live/m-e2e")
    first = events.wait_state("reconnecting")
    second = events.wait_for(lambda e: isinstance(e, StreamChanged) and e is not first
                             and e.state == "reconnecting")
    session.stop()
    assert session.join(10)
    events.drain()
    details = [e.detail for e in events.seen if isinstance(e, StreamChanged)] + \
        [str(e.figures["detail"]) for e in events.seen if isinstance(e, StreamFiguresUpdated)]
    assert f"rtsp://127.0.0.1:{port}" in second.detail and "refused" in second.detail.lower()
    for text in [*details, caplog.text]:
        assert "pw-3e81f7" not in text and "operator" not in text


def test_an_unsupported_scheme_is_a_fatal_error_that_says_so(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession]) -> None:
    session = start_session(sessions, events, media_config(microphone), "rtmp://127.0.0.1:1935/x")
    error = events.wait_state("error")
    assert error.fatal and "rtmp://" in error.detail and "not supported" in error.detail
    session.stop()
    assert session.join(10)


def test_a_url_ffmpeg_rejects_is_a_fatal_error_from_the_network_thread(
        microphone: SimulatedMicrophone, events: Events, sessions: list[MediaSession]) -> None:
    session = start_session(sessions, events, media_config(microphone),
                            f"srt://127.0.0.1:{free_udp_port()}?mode=sideways")
    error = events.wait_state("error")
    assert error.fatal and "rejects the publish URL" in error.detail
    assert "sideways" not in error.detail  # scheme, host and port only
    session.stop()
    assert session.join(10)
    events.drain()
    assert events.states() == ["starting", "error", "off"]


def test_a_camera_that_encodes_has_its_packets_sent_as_they_are(
        microphone: SimulatedMicrophone, listener: SrtListener, events: Events,
        sessions: list[MediaSession], monkeypatch: pytest.MonkeyPatch) -> None:
    # The seam a Pi camera plugs into (picamera2 cannot run here).
    cameras: list[EncodingTestCamera] = []

    def open_camera(_cfg: Media, profile: VideoProfile, _kbps: int) -> EncodingTestCamera:
        cameras.append(EncodingTestCamera(profile))
        return cameras[-1]

    monkeypatch.setattr(camera_adapters, "open_camera", open_camera)
    listener.start()
    session = start_session(sessions, events, media_config(microphone), listener.url)
    events.wait_state("live")
    stream_for(events, 5)
    session.request_keyframe()
    stream_for(events, 60)
    session.stop()
    assert session.join(10)
    events.drain()
    assert listener.wait(10)
    recording = read_recording(listener.stop())

    made = cameras[0]
    assert made.keyframe_requests >= 2, "on connect and when asked"
    numbers = recording.stamped
    assert len(numbers) == len(recording.frame_numbers) and numbers == sorted(set(numbers))
    assert len(numbers) >= 50
    assert recording.packet_keyframes[0] and recording.keyframes[0]
    keys = [i for i, key in enumerate(recording.keyframes) if key]
    assert any(np.diff(keys) < 30), f"the requested keyframe is missing: {keys}"
