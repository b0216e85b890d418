"""Cameras and microphones end to end: A/V sync into a real ffmpeg SRT listener, and the box.

The sync test plays a picture that flashes white on one frame every two
seconds and a microphone that beeps at the same instants; the media server
(ffmpeg) records what arrives, and the flashes and beeps are found again in
the decoded stream by their timestamps. The flashing picture comes through
the USB camera adapter's own PyAV code, pointed at an MJPEG file FFmpeg made.

The box tests run the real ``diemcau run`` process: a microphone that is
silent then speaks raises and clears ``microphone_silent``; a missing camera
fails the join and raises ``camera_missing``; a missing microphone fails the
join naming it; ``camera = "auto"`` shows in
``meta`` what it found.
"""

from __future__ import annotations

import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from diemcau.config import Media
from diemcau.core.events import StreamChanged, StreamFiguresUpdated
from diemcau.core.meeting import StreamRequest
from diemcau.media import camera as camera_module
from diemcau.media import framestamp
from diemcau.media.camera import UsbCamera
from diemcau.media.session import MediaSession
from diemcau.protocol import Alert, Meta, decode, device_topic
from diemcau.protocol.topics import alert_topic
from tests.harness.alsa import SimulatedMicrophone, microphone_from_samples
from tests.harness.srt_listener import SrtListener

pytestmark = pytest.mark.e2e

RATE = 48000
FPS = 15
FLASH_EVERY_S = 2
BEEP_HZ = 1000.0
BEEP_S = 0.1
SYNC_LIMIT_S = 0.040
DEV = "c00001-r1"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=120)


def beeps(seconds: float) -> np.ndarray:
    """Silence with a 1 kHz beep (-12 dBFS) starting at every flash instant."""
    t = np.arange(int(seconds * RATE)) / RATE
    on = (t % FLASH_EVERY_S) < BEEP_S
    return (on * 0.25 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)


# ---------------------------------------------------------------- A/V sync


@pytest.fixture
def flashing_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's camera: a dark picture that is white on frame 0, 30, 60... (MJPEG)."""
    clip = tmp_path / "flashes.mjpeg"
    every = FLASH_EVERY_S * FPS
    ffmpeg("-f", "lavfi", "-i", f"color=c=0x202020:size=640x360:rate={FPS}",
           "-vf", f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:"
                  f"enable='eq(mod(n\\,{every})\\,0)'",
           "-t", "40", "-c:v", "mjpeg", "-q:v", "5", "-f", "mjpeg", str(clip))

    def open_flashing(cfg: Media, profile: object, kbps: int) -> UsbCamera:
        return UsbCamera(profile, str(clip), "mjpeg", demuxer="mjpeg",  # type: ignore[arg-type]
                         demuxer_options={"framerate": str(FPS)})

    monkeypatch.setattr(camera_module, "open_camera", open_flashing)
    return clip


@pytest.fixture
def beeping_microphone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimulatedMicrophone:
    mic = microphone_from_samples(tmp_path / "mic", beeps(120), frequency_hz=BEEP_HZ)
    for key, value in mic.env.items():
        monkeypatch.setenv(key, value)
    return mic


def flash_times(path: Path) -> tuple[list[float], list[int]]:
    """When (stream seconds) the received picture flashes white; and every frame number read."""
    flashes, numbers = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
            y = y[:, :frame.width]
            number = framestamp.read(y)
            if number is not None:
                numbers.append(number)
            below_stamp = y[framestamp.strip_height(frame.height) * 2:]
            if below_stamp.mean() > 180:
                flashes.append(float(frame.time))
    return flashes, numbers


def beep_onsets(path: Path) -> tuple[list[float], np.ndarray]:
    """When (stream seconds) each received beep starts; and all the audio, mono."""
    onsets: list[float] = []
    chunks = []
    loud_until = -1.0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray().astype(np.float32)
            mono = samples.mean(axis=0) if frame.format.is_planar else samples.reshape(-1)
            chunks.append(mono)
            loud = np.flatnonzero(np.abs(mono) > 0.05)
            for index in loud:
                at = float(frame.time) + index / frame.sample_rate
                if at > loud_until + BEEP_S:  # a new beep, not the rest of this one
                    onsets.append(at)
                loud_until = at
    return onsets, np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def test_audio_and_video_stay_within_40_ms_and_frames_arrive_in_order(
        tmp_path: Path, flashing_camera: Path, beeping_microphone: SimulatedMicrophone) -> None:
    events: queue.Queue[object] = queue.Queue()
    cfg = Media(camera="usb", microphone=beeping_microphone.pcm, sample_rate_hz=RATE,
                srt_latency_ms=120, connect_timeout_ms=1000)
    with SrtListener(tmp_path / "server") as listener:
        listener.start()
        session = MediaSession(cfg, StreamRequest("m-sync", listener.url, "360p15", False),
                               events.put_nowait, device_id=DEV)
        session.start()
        try:
            sent = 0
            deadline = time.monotonic() + 60
            while sent < 10 * FPS:  # ten seconds: five flashes and beeps
                event = events.get(timeout=max(0.1, deadline - time.monotonic()))
                if isinstance(event, StreamChanged):
                    assert event.state in ("starting", "live"), event
                if isinstance(event, StreamFiguresUpdated):
                    sent = int(event.figures["frames_sent"])
        finally:
            session.stop()
            assert session.join(10)
        assert listener.wait(10), "ffmpeg should finish when the box hangs up"
        recording = listener.stop()

    flashes, numbers = flash_times(recording)
    onsets, audio = beep_onsets(recording)
    assert len(flashes) >= 4, f"flashes at {flashes}"
    pairs = []
    for flash in flashes:
        nearest = min(onsets, key=lambda onset: abs(onset - flash))
        pairs.append(nearest - flash)
    print(f"audio minus video at each flash (ms): {[round(d * 1000, 1) for d in pairs]}")
    assert all(abs(d) <= SYNC_LIMIT_S for d in pairs), pairs

    # The beeps are the microphone's 1 kHz, recovered from what arrived.
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    spectrum[0] = 0
    peak_hz = np.fft.rfftfreq(audio.size, 1 / RATE)[int(np.argmax(spectrum))]
    assert abs(peak_hz - BEEP_HZ) < 10, peak_hz

    # Frames in order, and at least 97 % of those between the first and last to arrive.
    assert numbers == sorted(set(numbers)), "frame numbers only go up"
    span = numbers[-1] - numbers[0] + 1
    assert len(numbers) >= 0.97 * span, f"{len(numbers)} of {span} frames arrived"


# ---------------------------------------------------------------- the box


def add_to_section(box: object, section: str, *lines: str) -> None:
    """Add ``lines`` at the top of ``[section]`` of the box's configuration file."""
    path: Path = box.config_file  # type: ignore[attr-defined]
    text = path.read_text(encoding="utf-8")
    header = f"[{section}]\n"
    assert header in text
    path.write_text(text.replace(header, header + "".join(f"{x}\n" for x in lines), 1),
                    encoding="utf-8")


@pytest.fixture
def ready(observer) -> Iterator[object]:  # noqa: ANN001
    def wait(box: object) -> None:
        box.start()  # type: ignore[attr-defined]
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                          and b"ready" in m.payload, timeout=15)

    yield wait


def test_a_silent_microphone_raises_microphone_silent_and_sound_clears_it(
        make_box, observer, ready, tmp_path: Path) -> None:  # noqa: ANN001
    # Six seconds of silence, then a steady 1 kHz tone.
    t = np.arange(90 * RATE) / RATE
    speech = np.where(t < 6.0, 0.0, 0.25 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)
    mic = microphone_from_samples(tmp_path / "mic", speech)
    box = make_box(env=mic.env, microphone=mic.pcm, health_interval_s=1.0)
    add_to_section(box, "health", "microphone_silent_s = 2", "microphone_silent_dbfs = -50")
    ready(box)
    topic = alert_topic(DEV, "microphone_silent")
    with SrtListener(tmp_path / "server") as listener:
        listener.start()
        join = observer.command(DEV, "meeting.join", {"meeting_id": "m-quiet",
                                                      "publish": listener.url,
                                                      "profile": "360p15"})
        assert observer.wait_reply(DEV, join, status="succeeded", timeout=20).code == 200
        raised = observer.wait_for(lambda m: m.topic == topic and m.payload, timeout=20)
        alert = decode(raised.payload, Alert)
        assert alert.severity == "warning" and "microphone under -50 dBFS" in alert.detail
        cleared = observer.wait_for(lambda m: m.topic == topic and not m.payload,
                                    timeout=20, after=raised.at)
        assert cleared.retain or cleared.payload == b""
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=20).code == 200
    assert box.running


def test_a_missing_camera_fails_the_join_raises_camera_missing_and_the_box_carries_on(
        make_box, observer, ready, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.harness.alsa import make_microphone

    mic = make_microphone(tmp_path / "mic", seconds=30)
    box = make_box(env=mic.env, microphone=mic.pcm, health_interval_s=1.0)
    add_to_section(box, "media", 'camera = "usb"', 'camera_device = "/dev/video97"')
    ready(box)
    join = observer.command(DEV, "meeting.join", {"meeting_id": "m-nocam",
                                                  "publish": "srt://127.0.0.1:9",
                                                  "profile": "360p15"})
    failed = observer.wait_reply(DEV, join, status="failed", timeout=20)
    assert failed.code == 500 and "/dev/video97 does not exist" in failed.detail
    raised = observer.wait_for(lambda m: m.topic == alert_topic(DEV, "camera_missing")
                               and m.payload, timeout=20)
    assert decode(raised.payload, Alert).severity == "critical"
    probe = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, probe, timeout=10).code == 200
    assert box.running


def test_auto_camera_shows_what_it_found_in_meta(make_box, observer, ready,
                                                 tmp_path: Path) -> None:  # noqa: ANN001
    # No picamera2 and no /dev/video here: with the lab fallback, the test pattern.
    box = make_box()
    add_to_section(box, "media", 'camera = "auto"', 'camera_fallback = "test_pattern"')
    ready(box)
    meta_topic = device_topic(DEV, "meta")
    found = observer.wait_for(lambda m: m.topic == meta_topic
                              and "test_pattern" in decode(m.payload, Meta).capabilities,
                              timeout=20)
    assert "auto" not in decode(found.payload, Meta).capabilities


def test_a_missing_microphone_fails_the_join_naming_it_and_the_box_carries_on(
        make_box, observer, ready, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.harness.alsa import make_microphone

    mic = make_microphone(tmp_path / "mic", seconds=5)  # ALSA set up, but another PCM named
    box = make_box(env=mic.env, microphone="diemcau_no_such_mic")
    ready(box)
    with SrtListener(tmp_path / "server") as listener:
        listener.start()
        join = observer.command(DEV, "meeting.join", {"meeting_id": "m-nomic",
                                                      "publish": listener.url,
                                                      "profile": "360p15"})
        failed = observer.wait_reply(DEV, join, status="failed", timeout=20)
    assert failed.code == 500 and "microphone 'diemcau_no_such_mic'" in failed.detail
    probe = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, probe, timeout=10).code == 200
    assert box.running
