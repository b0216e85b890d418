"""A whole meeting through the real box: MQTT command → SRT stream → leave."""

from __future__ import annotations

import time

import pytest

from diemcau.protocol import Status, decode, device_topic
from tests.harness.srt_listener import SrtListener, free_udp_port, read_recording

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATUS = device_topic(DEV, "status")


def status_where(observer, pred, after: float, timeout: float = 15.0) -> Status:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == STATUS and pred(decode(m.payload, Status)),
                             timeout=timeout, after=after)
    return decode(seen.payload, Status)


def test_join_streams_frames_then_leave_ends_the_stream(box, observer, tmp_path) -> None:
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        jti = observer.command(DEV, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                     "profile": "360p15"})
        assert observer.wait_reply(DEV, jti, status="accepted").code == 202
        assert observer.wait_reply(DEV, jti, status="succeeded", timeout=15).code == 200
        live = status_where(observer, lambda s: s.meeting_state == "live", after=0)
        assert live.meeting_id == "m1" and live.stream.state == "live"
        time.sleep(3.0)
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=15).code == 200
        idle = status_where(observer, lambda s: s.meeting_state == "idle", after=time.time() - 1)
        assert idle.stream.state == "off"
        # The box hung up: the listener's ffmpeg sees the end of the stream and exits.
        assert listener.wait(10), "the stream did not end after leave"
        recording = read_recording(listener.stop())
    finally:
        listener.stop()
    numbers = recording.stamped
    assert len(numbers) >= 30, f"only {len(numbers)} frames arrived"
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert recording.keyframes[0]
    assert (recording.width, recording.height) == (640, 360)
    assert recording.audio_codec == "aac"
    assert abs(recording.dominant_frequency_hz() - 1000) < 20


def test_media_server_refusing_shows_reconnecting_then_recovers(box, observer, tmp_path) -> None:
    port = free_udp_port()
    started = time.time()
    jti = observer.command(DEV, "meeting.join", {"meeting_id": "m2",
                                                 "publish": f"srt://127.0.0.1:{port}",
                                                 "profile": "360p15"})
    assert observer.wait_reply(DEV, jti, status="accepted").code == 202
    status_where(observer, lambda s: s.stream.state == "reconnecting", after=started)
    # The box still answers while its media path retries.
    probe = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, probe).code == 200
    listener = SrtListener(tmp_path / "media", port=port)
    listener.start()
    try:
        assert observer.wait_reply(DEV, jti, status="succeeded", timeout=20).code == 200
        status_where(observer, lambda s: s.meeting_state == "live" and s.stream.state == "live",
                     after=started)
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=15).code == 200
    finally:
        listener.stop()


def test_sigterm_while_live_stops_media_first_and_says_disconnected(box, observer,
                                                                     tmp_path) -> None:
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        jti = observer.command(DEV, "meeting.join", {"meeting_id": "m3", "publish": listener.url,
                                                     "profile": "360p15"})
        observer.wait_reply(DEV, jti, status="succeeded", timeout=15)
        stopping = time.time()
        assert box.stop() == 0
        final = status_where(observer, lambda s: s.meeting_state == "idle", after=stopping)
        assert final.stream.state == "off"
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                          and b"disconnected" in m.payload, after=stopping)
        assert listener.wait(10), "the stream outlived the box"
    finally:
        listener.stop()
    box.start()  # the fixture checks the box is running at the end
