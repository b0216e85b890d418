"""``media.keyframe`` and ``media.profile`` through the real box: MQTT command → the stream changes."""

from __future__ import annotations

import time

import pytest

from diemcau.protocol import Status, decode, device_topic
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATUS = device_topic(DEV, "status")


def test_keyframe_and_profile_commands_change_the_live_stream(box, observer, tmp_path) -> None:
    early = observer.command(DEV, "media.keyframe")
    reply = observer.wait_reply(DEV, early)
    assert (reply.status, reply.code) == ("rejected", 409), "not in a meeting yet"

    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        jti = observer.command(DEV, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                     "profile": "360p15"})
        assert observer.wait_reply(DEV, jti, status="succeeded", timeout=15).code == 200
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
