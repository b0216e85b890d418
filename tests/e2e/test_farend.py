"""A live meeting in both directions at once, on the real box (``diemcau run``).

The room is sent to the meeting (the uplink, to an ffmpeg SRT listener) while
the meeting's programme (stamped pictures and a tone, from ffmpeg through
Debian's ``srt-live-transmit``) plays on the room's TV (the screen process,
libmpv with ``vo=null``; each picture shown is logged with its stamp) and its
speaker (ALSA's ``file`` plugin). The centre sees both in ``status``; leaving
stops both and the TV goes back to the idle screen.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from diemcau.protocol import Status, decode, device_topic
from tests.harness.alsa import make_microphone, make_speaker
from tests.harness.observer import Observer
from tests.harness.programme import ProgrammeFeed
from tests.harness.screen import shown, stereo, tone_level
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEV = "c00001-r1"


def statuses(observer: Observer) -> list[Status]:
    return [decode(m.payload, Status) for m in observer.on(device_topic(DEV, "status"))
            if m.payload]


def test_a_meeting_in_both_directions_then_back_to_the_idle_screen(
        make_box, observer: Observer, tmp_path: Path) -> None:
    mic = make_microphone(tmp_path / "mic", seconds=60)
    speaker = make_speaker(tmp_path / "speaker", also=mic)
    record = tmp_path / "tv"
    screen = (f'[screen]\nenabled = true\nvo = "null"\nspeaker = "{speaker.pcm}"\n'
              f'record_dir = "{record}"\n')
    box = make_box(env=speaker.env, microphone=mic.pcm, extra=screen)
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)

    with SrtListener(tmp_path / "media") as listener, \
            ProgrammeFeed(tmp_path / "programme") as feed:
        listener.start()
        join = observer.command(DEV, "meeting.join", {
            "meeting_id": "m1", "publish": listener.url, "play": feed.url, "profile": "360p15"})
        observer.wait_reply(DEV, join, status="succeeded", timeout=30)
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and b'"programme":{"state":"live"' in m.payload, timeout=20)
        time.sleep(4.0)  # both directions at once
        both = [s for s in statuses(observer)
                if s.stream.state == "live" and s.programme.state == "live"]
        leave = observer.command(DEV, "meeting.leave")
        observer.wait_reply(DEV, leave, status="succeeded", timeout=30)
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and b'"programme":{"state":"off"' in m.payload, timeout=20)
        recording = read_recording(listener.stop())

    pictures = [s.number for s in shown(record) if s.number >= 0]
    steps = [b - a for a, b in zip(pictures, pictures[1:], strict=False)]
    left = stereo(speaker.played())[:, 0]
    frequency, level = tone_level(left[-2 * 48000:], 1000)
    print(f"\nboth directions: the centre received frames {recording.stamped[0]}.."
          f"{recording.stamped[-1]}; the TV showed {len(pictures)} programme pictures "
          f"({pictures[0]}..{pictures[-1]}), the speaker played {len(left) / 48000:.1f} s "
          f"(strongest {frequency:.0f} Hz at {level:.1f} dBFS)")
    assert both, "the centre never saw the uplink and the programme live together"
    assert len(recording.stamped) > 15 * 3  # the uplink ran through it
    assert len(pictures) > 25 * 3 and all(step > 0 for step in steps)  # in order
    assert abs(frequency - 1000) < 5 and level > -30.0  # the programme's tone on the speaker
    assert statuses(observer)[-1].meeting_state == "idle"
    assert box.running
