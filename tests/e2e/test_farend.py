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

from diemcau.protocol import Alert, Event, Status, decode, device_topic
from diemcau.protocol.topics import alert_topic
from tests.harness.alsa import make_microphone, make_speaker
from tests.harness.observer import Observer
from tests.harness.programme import ProgrammeFeed
from tests.harness.screen import shown, stereo, tone_level
from tests.harness.srt_listener import SrtListener, free_udp_port, read_recording
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEV = "c00001-r1"


def statuses(observer: Observer) -> list[Status]:
    return [decode(m.payload, Status) for m in observer.on(device_topic(DEV, "status"))
            if m.payload]


def programme_pictures(record: Path) -> list[int]:
    """The stamps of the programme pictures the TV showed, in the order shown."""
    return [s.number for s in shown(record) if s.number >= 0]


def test_a_meeting_in_both_directions_then_back_to_the_idle_screen(
        make_box, observer: Observer, tmp_path: Path) -> None:
    mic = make_microphone(tmp_path / "mic", seconds=60)
    speaker = make_speaker(tmp_path / "speaker", also=mic)
    record = tmp_path / "tv"
    screen = (f'[screen]\nenabled = true\nvo = "null"\nspeaker = "{speaker.pcm}"\n'
              f'record_dir = "{record}"\n')
    box = make_box(env=speaker.env, microphone=mic.pcm, extra=screen,
                   health_interval_s=1.0)  # status carries the figures each second
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
        # Both directions at once, for as long as the TV takes to show 80 programme pictures
        # and the box to send 60 of its own (a loaded machine is slower than the streams).
        wait_until(lambda: len(programme_pictures(record)) >= 80, timeout_s=40)
        wait_until(lambda: any(s.stream.frames_sent >= 60 for s in statuses(observer)),
                   timeout_s=40)
        both = [s for s in statuses(observer)
                if s.stream.state == "live" and s.programme.state == "live"]
        leave = observer.command(DEV, "meeting.leave")
        observer.wait_reply(DEV, leave, status="succeeded", timeout=30)
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "status")
                          and b'"programme":{"state":"off"' in m.payload, timeout=20)
        recording = read_recording(listener.stop())

    pictures = programme_pictures(record)
    steps = [b - a for a, b in zip(pictures, pictures[1:], strict=False)]
    left = stereo(speaker.played())[:, 0]
    frequency, level = tone_level(left[-2 * 48000:], 1000)
    print(f"\nboth directions: the centre received frames {recording.stamped[0]}.."
          f"{recording.stamped[-1]}; the TV showed {len(pictures)} programme pictures "
          f"({pictures[0]}..{pictures[-1]}), the speaker played {len(left) / 48000:.1f} s "
          f"(strongest {frequency:.0f} Hz at {level:.1f} dBFS)")
    assert both, "the centre never saw the uplink and the programme live together"
    assert len(recording.stamped) >= 45  # the uplink ran through it (60 sent, 3 s at 15 fps)
    assert len(pictures) >= 80 and all(step > 0 for step in steps)  # in order
    assert abs(frequency - 1000) < 5 and level > -30.0  # the programme's tone on the speaker
    assert statuses(observer)[-1].meeting_state == "idle"
    assert box.running


def test_bad_play_urls_are_refused_and_an_unreachable_one_leaves_the_uplink_alone(
        make_box, observer: Observer, tmp_path: Path) -> None:
    mic = make_microphone(tmp_path / "mic", seconds=60)
    speaker = make_speaker(tmp_path / "speaker", also=mic)
    screen = f'[screen]\nenabled = true\nvo = "null"\nspeaker = "{speaker.pcm}"\n'
    box = make_box(env=speaker.env, microphone=mic.pcm, extra=screen, health_interval_s=1.0,
                   programme_lost_s=2.0)
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)

    with SrtListener(tmp_path / "media") as listener:
        listener.start()
        join = {"meeting_id": "m1", "publish": listener.url, "profile": "360p15"}
        # Malformed, of another scheme, or on a host not allowed: a 4xx naming the field.
        for play, code, words in [("srt://127.0.0.1:notaport?streamid=x", 400, "not a URL"),
                                  ("http://127.0.0.1:8080/feed.ts", 400, "scheme 'http'"),
                                  ("srt://media.example:9001", 403, "not an allowed media host")]:
            reply = observer.wait_reply(
                DEV, observer.command(DEV, "meeting.join", {**join, "play": play}))
            assert (reply.code, reply.status) == (code, "rejected"), reply
            assert reply.detail.startswith("args.play: ") and words in reply.detail, reply.detail
        time.sleep(0.5)
        assert all(s.meeting_state == "idle" and s.stream.state == "off"
                   and s.programme.state == "off" for s in statuses(observer))

        # Nobody serves the programme: the room still joins and is sent; the TV retries and
        # the centre is told after programme_lost_s, by the alert (there was no programme
        # to lose, so no event).
        play = f"srt://127.0.0.1:{free_udp_port()}?streamid=read:m1"
        joined = observer.command(DEV, "meeting.join", {**join, "play": play})
        observer.wait_reply(DEV, joined, status="succeeded", timeout=30)
        raised = observer.wait_for(lambda m: m.topic == alert_topic(DEV, "programme_lost")
                                   and bool(m.payload), timeout=20)
        alert = decode(raised.payload, Alert)
        time.sleep(3.0)
        during = [s for s in statuses(observer) if s.meeting_state == "live"]
        leave = observer.command(DEV, "meeting.leave")
        observer.wait_reply(DEV, leave, status="succeeded", timeout=30)
        observer.wait_for(lambda m: m.topic == alert_topic(DEV, "programme_lost")
                          and not m.payload, timeout=20)
        recording = read_recording(listener.stop())

    print(f"\nunreachable programme: alert {alert.detail!r}; the uplink sent "
          f"{len(recording.stamped)} frames meanwhile")
    assert alert.severity == "critical"
    assert any(s.stream.state == "live" and s.programme.state == "reconnecting"
               and "trying again" in s.programme.detail for s in during), during
    events = [decode(m.payload, Event) for m in observer.on(device_topic(DEV, "event"))]
    assert not [e for e in events if e.kind == "programme_lost"]
    assert len(recording.stamped) > 15 * 3  # the uplink ran through it
    assert box.running
