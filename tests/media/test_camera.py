"""Cameras on real parts: PyAV and FFmpeg for USB and the test pattern; a picamera2 stand-in.

There is no /dev/video here: the USB camera's own PyAV code runs against
files FFmpeg writes in the formats a UVC camera sends (MJPEG, raw YUYV,
H.264), through the adapter's one seam (the demuxer and its options in
place of ``v4l2``). The missing-device path is the real one.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.config import Media
from diemcau.media import camera as camera_module
from diemcau.media.camera import (
    PiCamera,
    TestPattern,
    UsbCamera,
    V4l2Capability,
    _PacketQueue,
    detect_backend,
    find_usb_cameras,
    h264_packet,
    mark_keyframe,
    open_camera,
    v4l2_options,
)
from diemcau.media.defs import PROFILES, MediaFault, VideoProfile
from tests.harness import fake_picamera2
from tests.harness.waiting import wait_until

SMALL = VideoProfile(320, 240, 15, 300)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two seconds of what a UVC camera sends: MJPEG, raw YUYV, H.264 (GOP 10), from white."""
    d = tmp_path_factory.mktemp("clips")
    white = "color=c=white:size=320x240:rate=15"
    ffmpeg("-f", "lavfi", "-i", white, "-t", "2", "-c:v", "mjpeg", "-f", "mjpeg",
           str(d / "white.mjpeg"))
    ffmpeg("-f", "lavfi", "-i", white, "-t", "2", "-pix_fmt", "yuyv422", "-f", "rawvideo",
           str(d / "white.yuyv"))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15", "-t", "2", "-c:v", "libx264",
           "-g", "10", "-bf", "0", "-f", "h264", str(d / "pattern.h264"))
    return {"mjpeg": d / "white.mjpeg", "yuyv422": d / "white.yuyv", "h264": d / "pattern.h264"}


def usb(clips: dict[str, Path], fmt: str, profile: VideoProfile = PROFILES["360p15"]) -> UsbCamera:
    demuxer, options = {
        "mjpeg": ("mjpeg", {"framerate": "15"}),
        "yuyv422": ("rawvideo", {"video_size": "320x240", "pixel_format": "yuyv422",
                                 "framerate": "15"}),
        "h264": ("h264", {"framerate": "15"}),
    }[fmt]
    return UsbCamera(profile, str(clips[fmt]), fmt, demuxer=demuxer, demuxer_options=options)


def luma(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]


# ---------------------------------------------------------------- USB


@pytest.mark.parametrize("fmt", ["mjpeg", "yuyv422"])
def test_usb_pictures_are_decoded_and_scaled_to_the_profile_in_video_range(
        clips: dict[str, Path], fmt: str) -> None:
    camera = usb(clips, fmt)
    camera.open()
    try:
        assert not camera.encodes and camera.backend == "usb"
        frames = [camera.read() for _ in range(30)]
        with pytest.raises(MediaFault, match="stopped delivering"):
            camera.read()
    finally:
        camera.close()
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (640, 360, "yuv420p")
    # White from a full-range MJPEG (or YUYV) comes out as video-range white for x264.
    assert luma(frames[-1]).mean() == pytest.approx(235, abs=2)


def test_usb_h264_is_passed_through_with_keyframes_and_microsecond_times(
        clips: dict[str, Path]) -> None:
    camera = usb(clips, "h264")
    camera.open()
    try:
        assert camera.encodes
        packets = [camera.read() for _ in range(30)]
        camera.request_keyframe()  # the camera's own GOP: logged, harmless
        camera.set_bitrate(200)
    finally:
        camera.close()
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 10, 20]
    assert all(p.time_base == Fraction(1, 1_000_000) for p in packets)
    times = [p.pts for p in packets]
    assert times[0] == 0
    assert np.allclose(np.diff(times), 1_000_000 / 15, atol=2)
    assert bytes(packets[0])[:4] in (b"\0\0\0\1", b"\0\0\1\x67"), "Annex B start code"
    decoder = av.CodecContext.create("h264", "r")
    pictures = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    assert len(pictures) == 30 and pictures[0].width == 320


@pytest.fixture(scope="module")
def greys(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Ten MJPEG pictures, each its own grey: picture i has (full-range) luma 20 + 20 i."""
    path = tmp_path_factory.mktemp("greys") / "greys.mjpeg"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:size=320x240:rate=10",
           "-vf", "format=yuvj420p,geq=lum='20+20*N':cb=128:cr=128",
           "-frames:v", "10", "-c:v", "mjpeg", "-f", "mjpeg", str(path))
    with av.open(str(path), format="mjpeg") as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def pictures(jpegs: list[bytes]) -> list[av.VideoFrame]:
    """The pictures as a decoder and the adapter's conversion make them (video range)."""
    decoder = av.CodecContext.create("mjpeg", "r")
    return [f.reformat(format="yuv420p") for jpeg in jpegs for f in decoder.decode(av.Packet(jpeg))]


def play_into_pipe(tmp_path: Path, camera: UsbCamera, data: list[bytes]) -> None:
    """Open ``camera`` on a FIFO and write ``data`` into it, then hang up (EOF)."""
    opening = threading.Thread(target=camera.open)
    opening.start()  # waits for a writer, as the writer waits for a reader
    with open(camera.device, "wb") as pipe:
        for chunk in data:
            pipe.write(chunk)
    opening.join(30)
    assert not opening.is_alive()




def test_a_live_camera_hands_over_its_newest_picture_never_a_stale_one(
        tmp_path: Path, greys: list[bytes]) -> None:
    fifo = tmp_path / "camera"
    os.mkfifo(fifo)
    camera = UsbCamera(SMALL, str(fifo), "mjpeg", demuxer="mjpeg",
                       demuxer_options={"framerate": "10"}, live=True)
    try:
        play_into_pipe(tmp_path, camera, greys)
        wait_until(lambda: camera.received == 10, 20.0)  # the camera ran on without us
        newest = camera.read()
        assert camera.skipped == 9
        levels = [luma(p).mean() for p in pictures(greys)]
        assert np.all(np.diff(levels) > 10), levels  # each picture told apart by its grey
        assert luma(newest).mean() == pytest.approx(levels[9], abs=1)
        with pytest.raises(MediaFault, match="stopped delivering"):
            camera.read()  # the pipe ended: nothing newer will come
    finally:
        camera.close()


def test_a_live_h264_camera_keeps_every_packet_in_order(tmp_path: Path,
                                                        clips: dict[str, Path]) -> None:
    fifo = tmp_path / "camera"
    os.mkfifo(fifo)
    camera = UsbCamera(SMALL, str(fifo), "h264", demuxer="h264",
                       demuxer_options={"framerate": "15"}, live=True)
    try:
        play_into_pipe(tmp_path, camera, [clips["h264"].read_bytes()])
        wait_until(lambda: camera.received == 30, 20.0)
        packets = [camera.read() for _ in range(30)]
        with pytest.raises(MediaFault, match="stopped delivering"):
            camera.read()
    finally:
        camera.close()
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 10, 20]
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)


def test_a_usb_camera_that_is_not_there_is_a_clear_fault() -> None:
    camera = UsbCamera(SMALL, "/dev/video97")
    with pytest.raises(MediaFault, match=r"camera /dev/video97 does not exist"):
        camera.open()
    camera.close()  # closing what never opened is fine


def test_auto_usb_with_no_camera_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(camera_module, "find_usb_cameras", lambda dev_dir=None: [])
    with pytest.raises(MediaFault, match="no USB camera found"):
        UsbCamera(SMALL, "auto").open()


def test_files_and_non_v4l2_nodes_are_not_usb_cameras(tmp_path: Path) -> None:
    (tmp_path / "video0").write_bytes(b"not a device")
    (tmp_path / "video1").symlink_to("/dev/null")  # a character device, but not V4L2
    assert find_usb_cameras(tmp_path) == []


def capability(bus: str, device_caps: int, driver: str = "uvcvideo") -> bytes:
    raw = bytearray(104)
    raw[0:len(driver)] = driver.encode()
    raw[16:20] = b"Cam\0"
    raw[48:48 + len(bus)] = bus.encode()
    raw[84:88] = (0x80000000 | device_caps | 0x04000000).to_bytes(4, "little")
    raw[88:92] = device_caps.to_bytes(4, "little")
    return bytes(raw)


def test_querycap_tells_a_uvc_camera_from_its_metadata_node_codecs_and_csi() -> None:
    uvc = V4l2Capability.parse(capability("usb-0000:01:00.0-1.2", 0x04200001))
    assert uvc.is_usb_capture and uvc.driver == "uvcvideo" and uvc.card == "Cam"
    assert not V4l2Capability.parse(capability("usb-0000:01:00.0-1.2", 0x04800000)).is_usb_capture
    codec = capability("platform:bcm2835-codec", 0x04204000, driver="bcm2835-codec")
    assert not V4l2Capability.parse(codec).is_usb_capture
    unicam = capability("platform:fe801000.csi", 0x04A00001, driver="unicam")
    assert not V4l2Capability.parse(unicam).is_usb_capture


@given(st.binary(min_size=104, max_size=104))
def test_querycap_parsing_never_fails_on_any_bytes(raw: bytes) -> None:
    cap = V4l2Capability.parse(raw)
    assert isinstance(cap.is_usb_capture, bool)


def test_v4l2_options_ask_for_the_profile() -> None:
    assert v4l2_options("yuyv422", PROFILES["480p25"]) == {
        "input_format": "yuyv422", "video_size": "854x480", "framerate": "25"}


# ---------------------------------------------------------------- test pattern and packets


def test_the_test_pattern_gives_numbered_yuv420p_frames() -> None:
    camera = TestPattern(SMALL)
    camera.open()
    try:
        frames = [camera.read() for _ in range(3)]
    finally:
        camera.close()
    assert [f.pts for f in frames] == [0, 1, 2]
    assert (frames[0].width, frames[0].format.name) == (320, "yuv420p")
    assert not camera.encodes and camera.backend == "test_pattern"


@pytest.mark.parametrize("key", [True, False])
def test_a_packet_can_be_marked_key_or_not(key: bool) -> None:
    packet = h264_packet(b"\0\0\0\1\x65" + bytes(40), 1234, key)
    assert packet.is_keyframe is key and packet.pts == 1234
    mark_keyframe(packet, not key)
    assert packet.is_keyframe is (not key)


@given(st.binary(min_size=1, max_size=4096), st.integers(0, 2**40), st.booleans())
def test_any_encoded_picture_becomes_a_packet_with_its_time_and_flag(
        data: bytes, pts_us: int, key: bool) -> None:
    packet = h264_packet(data, pts_us, key)
    assert bytes(packet) == data
    assert (packet.pts, packet.dts, packet.is_keyframe) == (pts_us, pts_us, key)
    assert packet.time_base == Fraction(1, 1_000_000)


def test_the_packet_queue_drops_whole_gops_and_asks_for_a_keyframe() -> None:
    asked = []
    packets = _PacketQueue(lambda: asked.append(1), limit=4)
    for n in range(4):
        packets.put(b"p%d" % n, n == 0, n)
    packets.put(b"over", False, 4)  # full: everything queued goes, and this
    assert asked == [1] and packets.dropped == 5
    packets.put(b"delta", False, 5)  # still no keyframe: dropped
    packets.put(b"key", True, 6)
    assert packets.get(0.1) == (b"key", True, 6)
    assert packets.get(0.01) is None and packets.dropped == 6


# ---------------------------------------------------------------- choosing


def test_an_explicit_camera_is_taken_as_configured() -> None:
    assert detect_backend(Media(camera="usb")) == "usb"
    assert isinstance(open_camera(Media(camera="usb"), SMALL, 300), UsbCamera)
    assert isinstance(open_camera(Media(), SMALL, 300), TestPattern)


def test_auto_without_any_camera_fails_unless_the_test_pattern_is_allowed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(camera_module, "find_usb_cameras", lambda dev_dir=None: [])
    assert detect_backend(Media(camera="auto")) == "none"
    with pytest.raises(MediaFault, match="no camera found"):
        open_camera(Media(camera="auto"), SMALL, 300)
    allowed = Media(camera="auto", camera_fallback="test_pattern")
    assert isinstance(open_camera(allowed, SMALL, 300), TestPattern)
    present = tmp_path / "video5"
    present.touch()
    assert detect_backend(Media(camera="auto", camera_device=str(present))) == "usb"


def test_auto_prefers_a_csi_camera_then_usb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(camera_module, "find_usb_cameras",
                        lambda dev_dir=None: [Path("/dev/video0")])
    assert detect_backend(Media(camera="auto")) == "usb"
    fake_picamera2.install(monkeypatch, cameras=0)
    assert detect_backend(Media(camera="auto")) == "usb", "picamera2 without a camera"
    fake_picamera2.install(monkeypatch, cameras=1)
    assert detect_backend(Media(camera="auto")) == "picamera2"
    assert isinstance(open_camera(Media(camera="auto"), SMALL, 300), PiCamera)


# ---------------------------------------------------------------- picamera2 (stand-in)


@pytest.fixture
def no_shared_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts before the process made its one Picamera2."""
    monkeypatch.setattr(camera_module, "_picamera2_instance", None)


def _signature(obj: object) -> str:
    return str(inspect.signature(obj))  # type: ignore[arg-type]


def _fake_objects(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    fake_picamera2.install(monkeypatch)
    import picamera2

    return _objects(picamera2)


def _objects(picamera2: object) -> dict[str, object]:
    import picamera2.encoders as encoders
    import picamera2.outputs as outputs
    import picamera2.platform as platform

    cam = picamera2.Picamera2  # type: ignore[attr-defined]
    request_class = getattr(picamera2, "CompletedRequest", None)
    found = {
        "Picamera2.__init__": cam.__init__,
        "Picamera2.global_camera_info": cam.global_camera_info,
        "Picamera2.create_video_configuration": cam.create_video_configuration,
        "Picamera2.configure": cam.configure,
        "Picamera2.camera_configuration": cam.camera_configuration,
        "Picamera2.start": cam.start,
        "Picamera2.stop": cam.stop,
        "Picamera2.start_encoder": cam.start_encoder,
        "Picamera2.stop_encoder": cam.stop_encoder,
        "Picamera2.capture_request": cam.capture_request,
        "H264Encoder.__init__": encoders.H264Encoder.__init__,
        "H264Encoder.force_key_frame": encoders.H264Encoder.force_key_frame,
        "Output.__init__": outputs.Output.__init__,
        "Output.outputframe": outputs.Output.outputframe,
        "platform.get_platform": platform.get_platform,
    }
    if request_class is not None:
        found["CompletedRequest.make_array"] = request_class.make_array
        found["CompletedRequest.release"] = request_class.release
    else:
        found["CompletedRequest.make_array"] = fake_picamera2._Request.make_array
        found["CompletedRequest.release"] = fake_picamera2._Request.release
    return found


def _normalise(text: str) -> str:
    # libcamera.Transform() prints differently on each build: compare names and defaults only.
    import re

    return re.sub(r"transform=<[^>]*>", "transform=<Transform>", text)


def test_the_stand_in_has_picamera2s_own_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _fake_objects(monkeypatch)
    assert set(found) == set(fake_picamera2.UPSTREAM_SIGNATURES)
    for name, expected in fake_picamera2.UPSTREAM_SIGNATURES.items():
        assert _normalise(_signature(found[name])) == expected, name


def test_the_real_picamera2_still_has_the_signatures_we_checked() -> None:
    real = pytest.importorskip("picamera2", reason="picamera2 runs on a Raspberry Pi only")
    found = _objects(real)
    for name, expected in fake_picamera2.UPSTREAM_SIGNATURES.items():
        assert _normalise(_signature(found[name])) == expected, name


def test_pi4_hardware_encoder_gives_h264_packets_keyframes_on_request_and_new_bitrates(
        monkeypatch: pytest.MonkeyPatch, no_shared_camera: None) -> None:
    fake = fake_picamera2.install(monkeypatch, platform="VC4")
    camera = PiCamera(SMALL, kbps=300)
    camera.open()
    try:
        assert camera.encodes and camera.backend == "picamera2"
        cam = fake.camera
        assert cam.started
        assert cam.camera_config["main"]["format"] == "YUV420"
        assert cam.camera_config["main"]["size"] == (320, 240)
        assert cam.camera_config["controls"]["FrameDurationLimits"] == (66667, 66667)
        (encoder,) = cam.encoders
        assert (encoder.bitrate, encoder.iperiod, encoder.framerate) == (300_000, 30, 15)
        first = [camera.read() for _ in range(10)]
        camera.request_keyframe()
        after_request = [camera.read() for _ in range(10)]
        camera.set_bitrate(150)
        after_rate = [camera.read() for _ in range(5)]
        (new_encoder,) = cam.encoders
        assert new_encoder is not encoder and new_encoder.bitrate == 150_000
    finally:
        camera.close()
    assert not fake.camera.started and not fake.camera.encoders
    assert first[0].is_keyframe and not any(p.is_keyframe for p in first[1:])
    assert any(p.is_keyframe for p in after_request), "force_key_frame was not honoured"
    # At most a picture or two of the old encoder were still queued; a GOP is 30.
    assert any(p.is_keyframe for p in after_rate[:3]), "a restarted encoder starts with a keyframe"
    times = [p.pts for p in first + after_request + after_rate]
    assert times == sorted(times) and len(set(times)) == len(times), "time never goes back"
    decoder = av.CodecContext.create("h264", "r")
    pictures = [f for p in first for f in decoder.decode(p)]
    assert pictures and pictures[0].width == 320


def test_pi5_gives_yuv420_frames_exactly_as_the_camera_saw_them(
        monkeypatch: pytest.MonkeyPatch, no_shared_camera: None) -> None:
    fake = fake_picamera2.install(monkeypatch, platform="PISP")
    camera = PiCamera(SMALL, kbps=300)
    camera.open()
    try:
        assert not camera.encodes
        frames = [camera.read() for _ in range(3)]
    finally:
        camera.close()
    # The same pictures straight from lavfi: padding stripped, planes in place.
    source = av.open("testsrc2=size=320x240:rate=15,format=yuv420p", format="lavfi")
    expected = [f for _, f in zip(range(3), source.decode(video=0), strict=False)]
    source.close()
    for got, want in zip(frames, expected, strict=True):
        assert (got.width, got.height, got.format.name) == (320, 240, "yuv420p")
        assert np.array_equal(got.to_ndarray(), want.to_ndarray())
    assert all(r.released for r in fake.camera.requests), "every request goes back to libcamera"


def test_one_picamera2_for_the_life_of_the_process(monkeypatch: pytest.MonkeyPatch,
                                                   no_shared_camera: None) -> None:
    fake = fake_picamera2.install(monkeypatch, platform="PISP")
    for _ in range(3):  # three meetings
        camera = PiCamera(SMALL, kbps=300)
        camera.open()
        camera.read()
        camera.close()
    assert len(fake.instances) == 1 and fake.camera.starts == 3


def test_an_encoder_left_running_by_a_broken_meeting_is_stopped_first(
        monkeypatch: pytest.MonkeyPatch, no_shared_camera: None) -> None:
    fake = fake_picamera2.install(monkeypatch, platform="VC4")
    abandoned = PiCamera(SMALL, kbps=300)
    abandoned.open()  # and never closed
    camera = PiCamera(SMALL, kbps=300)
    camera.open()
    try:
        assert len(fake.camera.encoders) == 1
        assert camera.read().is_keyframe
    finally:
        camera.close()
    assert not fake.camera.encoders


def test_no_csi_camera_or_no_picamera2_is_a_clear_fault(monkeypatch: pytest.MonkeyPatch,
                                                        no_shared_camera: None) -> None:
    fake_picamera2.install(monkeypatch, cameras=0)
    with pytest.raises(MediaFault, match="no CSI camera found"):
        PiCamera(SMALL, 300).open()
    monkeypatch.setitem(__import__("sys").modules, "picamera2", None)  # import fails
    with pytest.raises(MediaFault, match="picamera2 is not installed"):
        PiCamera(SMALL, 300).open()


def test_a_silent_hardware_encoder_is_a_fault_not_a_hang(monkeypatch: pytest.MonkeyPatch,
                                                         no_shared_camera: None) -> None:
    fake_picamera2.install(monkeypatch, platform="VC4")
    monkeypatch.setattr(camera_module, "READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(fake_picamera2.H264Encoder, "_encode_loop", lambda self: None)
    camera = PiCamera(SMALL, kbps=300)
    camera.open()
    try:
        with pytest.raises(MediaFault, match="stopped delivering"):
            camera.read()
    finally:
        camera.close()
