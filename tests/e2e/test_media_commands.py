"""The live stream through the real box over MQTT: ``media.keyframe`` and ``media.profile``
change it, and an adaptive bitrate step is told to the centre (``media_step``, ``status``)."""

from __future__ import annotations

import time

import pytest

from diemcau.protocol import Event, Status, decode, device_topic
from tests.harness.box import start_box
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATUS = device_topic(DEV, "status")
EVENT = device_topic(DEV, "event")


def join(observer, listener: SrtListener, profile: str) -> None:  # noqa: ANN001
    """``meeting.join`` m1, publishing to ``listener`` at ``profile``; back once it succeeded."""
    jti = observer.command(DEV, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                 "profile": profile})
    assert observer.wait_reply(DEV, jti, status="succeeded", timeout=15).code == 200


def test_keyframe_and_profile_commands_change_the_live_stream(box, observer, tmp_path) -> None:
    early = observer.command(DEV, "media.keyframe")
    reply = observer.wait_reply(DEV, early)
    assert (reply.status, reply.code) == ("rejected", 409), "not in a meeting yet"

    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        join(observer, listener, "360p15")
        time.sleep(1.0)
        key = observer.command(DEV, "media.keyframe")
        reply = observer.wait_reply(DEV, key)
        assert (reply.status, reply.detail) == ("succeeded", "keyframe requested")

        bad = observer.command(DEV, "media.profile", {"profile": "4k"})
        reply = observer.wait_reply(DEV, bad)
        assert (reply.status, reply.code) == ("rejected", 400) and "args.profile" in reply.detail

        asked = time.time()
        change = observer.command(DEV, "media.profile", {"profile": "480p25"})
        reply = observer.wait_reply(DEV, change)
        assert (reply.status, reply.detail) == ("succeeded", "profile 480p25")
        seen = observer.wait_for(
            lambda m: m.topic == STATUS
            and decode(m.payload, Status).stream.profile == "480p25"
            and decode(m.payload, Status).stream.frames_sent > 0,
            timeout=15, after=asked)
        assert decode(seen.payload, Status).meeting_state == "live"
        time.sleep(3.0)
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=15).code == 200
        assert listener.wait(10)
        recording = read_recording(listener.stop())
    finally:
        listener.stop()
    assert (recording.width, recording.height) == (854, 480)
    numbers = recording.stamped
    assert numbers == sorted(set(numbers)) and len(numbers) >= 40
    # The first picture, the asked-for one, and the new encoder's first.
    assert sum(recording.keyframes) >= 3


def test_an_adaptive_bitrate_step_reaches_the_centre_as_an_event_and_in_status(
        make_box, observer, tmp_path) -> None:
    # Sends may wait 5 s (1 s in the other tests), so the connection outlasts
    # the pause below and what the box does about it is adaptive bitrate.
    box = start_box(make_box, observer, tmp_path, connect_timeout_ms=5000)
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        join(observer, listener, "480p25")
        observer.wait_for(lambda m: m.topic == STATUS
                          and decode(m.payload, Status).meeting_state == "live", timeout=15)
        time.sleep(2.0)  # the stream settles at the profile asked for
        # The media server stops reading: SRT's window fills, the writer stalls,
        # the send queue fills; two congested seconds make a step down.
        paused = time.time()
        listener.pause()
        try:
            seen = observer.wait_for(lambda m: m.topic == EVENT
                                     and decode(m.payload, Event).kind == "media_step",
                                     timeout=15, after=paused)
        finally:
            listener.resume()
        step = decode(seen.payload, Event)
        assert step.meeting_id == "m1"
        assert step.data["direction"] == "down" and step.data["kbps"] < 800, step.data
        assert step.detail, "the event says why"
        # status shows the rung of the latest step (there may have been more than one).
        shown = observer.wait_for(lambda m: m.topic == STATUS, timeout=10, after=seen.at)
        steps = [decode(m.payload, Event) for m in observer.messages
                 if m.topic == EVENT and m.at <= shown.at
                 and decode(m.payload, Event).kind == "media_step"]
        stream = decode(shown.payload, Status).stream
        assert (stream.profile, stream.target_kbps) == (steps[-1].data["profile"],
                                                        steps[-1].data["kbps"])
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=15).code == 200
    finally:
        listener.stop()
    assert box.running, "the box died"
