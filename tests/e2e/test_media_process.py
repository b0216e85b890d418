"""The uplink in its own process, through the real ``diemcau run`` box.

The media child (``python -m diemcau.media.child``) is found as a
child of the box's process; it is killed with SIGKILL as a crash inside
FFmpeg would end it. What the centre sees comes through Mosquitto; what the
media server gets is an ``ffmpeg`` SRT listener's recording.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from diemcau.protocol import Event, Status, decode, device_topic
from tests.harness.box import Box, start_box
from tests.harness.observer import Observer
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATUS = device_topic(DEV, "status")
EVENT = device_topic(DEV, "event")
STATE = device_topic(DEV, "state")
CHILD_MODULE = "diemcau.media.child"
# Shared libraries only the media path maps: none may be in the control plane's process.
MEDIA_LIBRARIES = ("libavcodec", "libavformat", "libx264", "libsrt")


def media_children(box: Box) -> list[psutil.Process]:
    assert box.pid is not None
    found = []
    for child in psutil.Process(box.pid).children(recursive=True):
        try:
            if CHILD_MODULE in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def mapped_media_libraries(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in MEDIA_LIBRARIES if name in maps}


def status_where(observer: Observer, pred, after: float, timeout: float = 20.0) -> Status:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == STATUS and pred(decode(m.payload, Status)),
                             timeout=timeout, after=after)
    return decode(seen.payload, Status)


def join(observer: Observer, listener: SrtListener, meeting_id: str) -> None:
    jti = observer.command(DEV, "meeting.join", {"meeting_id": meeting_id,
                                                 "publish": listener.url, "profile": "360p15"})
    assert observer.wait_reply(DEV, jti, status="succeeded", timeout=20).code == 200


def leave(observer: Observer) -> None:
    jti = observer.command(DEV, "meeting.leave")
    assert observer.wait_reply(DEV, jti, status="succeeded", timeout=20).code == 200


def frames_received(listener: SrtListener, at_least: int) -> None:
    """Wait until the listener's latest recording holds about ``at_least`` frames (360p15)."""
    deadline = time.monotonic() + 20
    path = listener.recordings[-1]
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > at_least * 1500:
            return
        time.sleep(0.2)
    raise AssertionError(f"the listener got {path.stat().st_size if path.exists() else 0} bytes")


def test_a_killed_media_process_is_started_again_and_the_box_stays_connected(
        make_box, observer: Observer, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        join(observer, listener, "m-crash")
        frames_received(listener, 20)
        [child] = media_children(box)
        assert not mapped_media_libraries(box.pid or 0), "PyAV loaded in the control plane"
        assert mapped_media_libraries(child.pid), "the media child has no FFmpeg?"

        killed_at = time.time()
        child.kill()  # as a crash inside FFmpeg would end it
        child.wait(10)
        # ffmpeg's listener takes one caller and ends when it vanishes; a media server
        # takes the next one. Start it again on the same port, into a new recording.
        listener.restart()

        # The centre is told: the stream reconnects, and says why.
        event = observer.wait_for(
            lambda m: m.topic == EVENT and decode(m.payload, Event).kind == "stream_reconnecting",
            timeout=20, after=killed_at)
        detail = decode(event.payload, Event).detail
        assert "media process ended" in detail and "SIGKILL" in detail, detail
        status_where(observer, lambda s: s.stream.state == "reconnecting"
                     and "media process" in s.stream.detail, after=killed_at)
        # The control plane answers throughout, and comes back live with a new child.
        probe = observer.command(DEV, "health.report")
        assert observer.wait_reply(DEV, probe, timeout=10).code == 200
        back = status_where(observer, lambda s: s.meeting_state == "live"
                            and s.stream.state == "live", after=killed_at)
        assert back.meeting_id == "m-crash"
        [again] = media_children(box)
        assert again.pid != child.pid
        frames_received(listener, 20)
        # Counters run on across the two children.
        later = status_where(observer, lambda s: s.stream.reconnects >= 1, after=killed_at)
        assert later.stream.reconnects >= 1

        leave(observer)
        assert listener.wait(15), "the stream did not end after leave"
        recording = read_recording(listener.stop())
    finally:
        listener.stop()
    numbers = recording.stamped
    assert len(numbers) >= 15, f"only {len(numbers)} frames after the restart"
    assert numbers == sorted(numbers) and recording.keyframes[0]
    # The link never dropped: no will, no second birth.
    assert not [m for m in observer.on(STATE) if m.at >= killed_at and b"lost" in m.payload]
    assert box.running
    assert "media process" in box.log_text() and "ended unexpectedly" in box.log_text()


def test_after_leave_the_media_process_is_gone_and_ffmpeg_is_not_in_the_box(
        make_box, observer: Observer, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    assert box.pid is not None
    idle_mb = psutil.Process(box.pid).memory_info().rss / 1e6
    with SrtListener(tmp_path / "media") as listener:
        listener.start()
        for meeting in ("m-first", "m-second"):
            join(observer, listener, meeting)
            frames_received(listener, 10)
            [child] = media_children(box)  # the spare, if there was one, was taken
            leave(observer)
            # "left" is only said once the child has exited: nothing to wait for.
            # What is left is the next meeting's spare: no FFmpeg in it until its Start.
            spares = media_children(box)
            assert child.pid not in [spare.pid for spare in spares]
            assert len(spares) == 1
            assert not mapped_media_libraries(spares[0].pid), "FFmpeg loaded in the spare"
            listener.restart()
    assert not mapped_media_libraries(box.pid), "FFmpeg stayed loaded in the control plane"
    after_mb = psutil.Process(box.pid).memory_info().rss / 1e6
    # FFmpeg and x264 alone are some 60 MB; a control plane that loaded them would be far over.
    assert after_mb < idle_mb + 20, f"idle {idle_mb:.1f} MB, after two meetings {after_mb:.1f} MB"


def test_the_media_process_ends_when_the_box_is_killed(
        make_box, observer: Observer, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    with SrtListener(tmp_path / "media") as listener:
        listener.start()
        join(observer, listener, "m-orphan")
        [child] = media_children(box)
        box.kill()
        # Its pipe from the box closed: it stops its session and exits by itself.
        gone, alive = psutil.wait_procs([child], timeout=20)
        assert gone and not alive, "the media process outlived the box"


def test_the_spare_media_process_waits_small_and_ends_with_the_box(
        make_box, observer: Observer, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    deadline = time.monotonic() + 20
    while not media_children(box) and time.monotonic() < deadline:
        time.sleep(0.2)  # the box starts its spare a moment after it is online
    [spare] = media_children(box)
    time.sleep(1.0)  # its imports done: it waits for its Start
    assert not mapped_media_libraries(spare.pid), "FFmpeg loaded in the spare"
    maps = Path(f"/proc/{spare.pid}/maps").read_text()
    assert "cryptography" not in maps, "the media process loaded cryptography"
    # Not even the pipe's messages until its Start: a spare is part of the idle box's memory.
    assert "msgspec" not in maps, "the spare loaded msgspec before its Start"
    box.kill()
    # Its pipe from the box closed before any Start: it exits by itself.
    gone, alive = psutil.wait_procs([spare], timeout=20)
    assert gone and not alive, "the spare media process outlived the box"
