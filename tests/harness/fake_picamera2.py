"""A stand-in for picamera2, which cannot run off a Raspberry Pi (it needs libcamera).

Only what the box's ``PiCamera`` adapter calls, with the same signatures as
picamera2 0.3.36 (commit 3e6dff099d3982c8fbdb25f7cbe2e4c17bac34f7);
``UPSTREAM_SIGNATURES`` records them, and ``tests/adapters/test_camera.py``
checks this fake against them (and checks the real picamera2 against them
too when it is installed, i.e. on a Pi). The fake keeps the upstream rules
the adapter could break: one ``Picamera2`` per camera, configure before
``start_encoder``, an encoder's output must be an ``Output``, an encoder
cannot be started twice or stopped twice, ``force_key_frame`` counts requests.

The pictures are real: FFmpeg's ``testsrc2`` through PyAV. The "hardware"
encoder is libx264 through PyAV, giving Annex B H.264 to
``Output.outputframe(frame, keyframe, timestamp)`` from its own thread,
as picamera2's ``V4L2Encoder`` does; ``capture_request().make_array("main")``
gives YUV420 in one buffer with padded rows, as libcamera does.

    fake = install(monkeypatch, platform="VC4", cameras=1)
    ...  # the adapter imports picamera2 and gets this
    fake.camera.started  # what the adapter did
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

# Parameter lists at picamera2 0.3.36, copied from its source (signatures only).
UPSTREAM_SIGNATURES: dict[str, str] = {
    "Picamera2.__init__": "(self, camera_num=0, verbose_console=None, tuning=None, allocator=None)",
    "Picamera2.global_camera_info": "()",
    "Picamera2.create_video_configuration": (
        "(self, main={}, lores=None, raw={}, transform=<Transform>, colour_space=None, "
        "buffer_count=6, controls={}, display='main', encode='main', queue=True, sensor={}, "
        "use_case='video')"),
    "Picamera2.configure": "(self, camera_config=None)",
    "Picamera2.camera_configuration": "(self)",
    "Picamera2.start": "(self, config=None, show_preview=False)",
    "Picamera2.stop": "(self)",
    "Picamera2.start_encoder": "(self, encoder=None, output=None, pts=None, quality=None, name=None)",
    "Picamera2.stop_encoder": "(self, encoders=None)",
    "Picamera2.capture_request": "(self, wait=None, signal_function=None, flush=None)",
    "CompletedRequest.make_array": "(self, name)",
    "CompletedRequest.release": "(self)",
    "H264Encoder.__init__": ("(self, bitrate=None, repeat=True, iperiod=None, framerate=None, "
                             "enable_sps_framerate=False, qp=None, profile=None)"),
    "H264Encoder.force_key_frame": "(self)",
    "Output.__init__": "(self, pts=None)",
    "Output.outputframe": "(self, frame, keyframe=True, timestamp=None, packet=None, audio=False)",
    "platform.get_platform": "()",
}


class Transform:
    """libcamera.Transform(): only a default value here."""

    def __repr__(self) -> str:
        return "<Transform>"


class Platform(Enum):
    VC4 = 0
    PISP = 1


class Output:
    """picamera2.outputs.Output: the base an encoder's output must be."""

    def __init__(self, pts=None):
        self.recording = False
        self.ptsoutput = pts

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass


class H264Encoder:
    """picamera2.encoders.H264Encoder on a Pi 4; libx264 here, on its own thread."""

    def __init__(self, bitrate=None, repeat=True, iperiod=None, framerate=None,
                 enable_sps_framerate=False, qp=None, profile=None):
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self._output: list[Output] = []
        self._running = False
        self._stopped = threading.Event()
        self._key_frames_requested = 0
        self._key_frames_generated = 0
        self._thread: threading.Thread | None = None
        self.size = (0, 0)
        self.packets_out = 0

    @property
    def output(self):
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value):
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(out, Output) for out in values):
            raise RuntimeError("Must pass Output")
        self._output = values

    def force_key_frame(self):
        self._key_frames_requested += 1

    def start(self, quality=None):
        if self._running:
            raise RuntimeError("Encoder already running")
        self._running = True
        self._stopped.clear()
        for out in self._output:
            out.start()
        self._thread = threading.Thread(target=self._encode_loop, daemon=True)
        self._thread.start()

    def stop(self):
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
        for out in self._output:
            out.stop()

    def _encode_loop(self) -> None:
        width, height = self.size
        rate = int(self.framerate or 30)
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base = Fraction(1, rate)
        codec.bit_rate = int(self.bitrate or 1_000_000)
        codec.options = {"tune": "zerolatency", "preset": "ultrafast", "bf": "0",
                         "g": str(self.iperiod or 60), "forced-idr": "1"}
        source = av.open(f"testsrc2=size={width}x{height}:rate={rate},format=yuv420p",
                         format="lavfi")
        try:
            for n, frame in enumerate(source.decode(video=0)):
                # A camera's pace: one picture per frame time.
                if n and self._stopped.wait(1 / rate) or not self._running:
                    break
                frame.pts = n
                if self._key_frames_requested > self._key_frames_generated:
                    self._key_frames_generated += 1
                    frame.pict_type = "I"
                else:
                    frame.pict_type = "NONE"
                for packet in codec.encode(frame):
                    timestamp_us = round(int(packet.pts) * 1_000_000 / rate)
                    for out in self._output:
                        out.outputframe(bytes(packet), packet.is_keyframe, timestamp_us)
                    self.packets_out += 1
        finally:
            source.close()


@dataclass
class _Request:
    picture: np.ndarray
    released: bool = False

    def make_array(self, name):
        if self.released:
            raise RuntimeError("request already released")
        if name != "main":
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self.picture.copy()

    def release(self):
        self.released = True


@dataclass
class FakeState:
    """What the adapter did, for the test to look at."""

    platform: Platform
    cameras: int
    instances: list[Any] = field(default_factory=list)
    row_padding: int = 64  # bytes of padding libcamera adds to each Y row here

    @property
    def camera(self) -> Any:
        assert len(self.instances) == 1, f"{len(self.instances)} Picamera2 objects made"
        return self.instances[0]


def _make_picamera2_class(state: FakeState) -> type:
    class Picamera2:
        def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
            if camera_num >= state.cameras:
                raise IndexError("list index out of range")  # global_camera_info()[n]
            if any(cam.camera_num == camera_num for cam in state.instances):
                raise RuntimeError("Camera __init__ sequence did not complete.")
            self.camera_num = camera_num
            self.camera_config: dict[str, Any] | None = None
            self.started = False
            self.starts = 0
            self._encoders: set[H264Encoder] = set()
            self._source: Any = None
            self._frames: Any = None
            self.requests: list[_Request] = []
            state.instances.append(self)

        @staticmethod
        def global_camera_info():
            return [{"Model": "imx708", "Location": 2, "Rotation": 180,
                     "Id": f"/base/soc/i2c0mux/i2c@1/imx708@{n}", "Num": n}
                    for n in range(state.cameras)]

        def create_video_configuration(self, main={}, lores=None, raw={},  # noqa: B006
                                       transform=Transform(), colour_space=None,  # noqa: B008
                                       buffer_count=6, controls={}, display="main",  # noqa: B006
                                       encode="main", queue=True, sensor={},  # noqa: B006
                                       use_case="video"):
            main = {"format": "XBGR8888", "size": (1280, 720)} | main
            controls = {"FrameDurationLimits": (33333, 33333)} | controls
            return {"use_case": use_case, "main": dict(main), "controls": controls,
                    "buffer_count": buffer_count, "encode": encode}

        def configure(self, camera_config=None):
            if self.started:
                raise RuntimeError("Camera must be stopped before configuring")
            main = dict(camera_config["main"])
            width, height = main["size"]
            size = (width - width % 2, height - height % 2)  # align_stream(optimal=False)
            bytes_per_row = size[0] if main["format"] == "YUV420" else size[0] * 4
            main |= {"size": size, "stride": bytes_per_row + state.row_padding}
            self.camera_config = camera_config | {"main": main}

        def camera_configuration(self):
            return self.camera_config

        def start(self, config=None, show_preview=False):
            if config is not None:
                self.configure(config)
            if not self.camera_config:
                raise RuntimeError("Camera has not been configured")
            if not self.started:
                main = self.camera_config["main"]
                width, height = main["size"]
                duration_us = self.camera_config["controls"]["FrameDurationLimits"][0]
                rate = round(1_000_000 / duration_us)
                self._source = av.open(f"testsrc2=size={width}x{height}:rate={rate},"
                                       "format=yuv420p", format="lavfi")
                self._frames = self._source.decode(video=0)
            self.started = True
            self.starts += 1

        def stop(self):
            if self._source is not None:
                self._source.close()
                self._source = None
            self.started = False

        def start_encoder(self, encoder=None, output=None, pts=None, quality=None, name=None):
            if encoder is None:
                raise RuntimeError("No encoder specified")
            if output is not None:
                encoder.output = output
            if not self.camera_config:
                raise RuntimeError("Camera has not been configured")
            encoder.size = tuple(self.camera_config["main"]["size"])
            encoder.start(quality=quality)
            self._encoders.add(encoder)

        def stop_encoder(self, encoders=None):
            chosen = list(self._encoders) if encoders is None else [encoders]
            for encoder in chosen:
                encoder.stop()
                self._encoders.remove(encoder)

        def capture_request(self, wait=None, signal_function=None, flush=None):
            if not self.started:
                raise RuntimeError("Camera is not running")
            frame = next(self._frames)
            main = self.camera_config["main"]
            request = _Request(yuv420_buffer(frame, main["stride"]))
            self.requests.append(request)
            return request

        @property
        def encoders(self):
            return self._encoders

    return Picamera2


def yuv420_buffer(frame: av.VideoFrame, stride: int) -> np.ndarray:
    """A yuv420p frame laid out as libcamera's YUV420 buffer: padded Y rows, then U, then V."""
    width, height = frame.width, frame.height
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes]
    y = np.zeros((height, stride), np.uint8)
    y[:, :width] = planes[0][:height, :width]
    chroma = []
    for plane in planes[1:]:
        rows = np.zeros((height // 2, stride // 2), np.uint8)
        rows[:, :width // 2] = plane[:height // 2, :width // 2]
        chroma.append(rows.reshape(-1))
    flat = np.concatenate([y.reshape(-1), *chroma])
    return flat.reshape(height * 3 // 2, stride)


def install(monkeypatch: pytest.MonkeyPatch, *, platform: str = "VC4",
            cameras: int = 1) -> FakeState:
    """Make ``import picamera2`` (and its submodules) give this fake, for one test."""
    state = FakeState(Platform[platform], cameras)
    package = types.ModuleType("picamera2")
    package.__path__ = []  # a package, so submodules import
    package.Picamera2 = _make_picamera2_class(state)  # type: ignore[attr-defined]
    encoders = types.ModuleType("picamera2.encoders")
    encoders.H264Encoder = H264Encoder  # type: ignore[attr-defined]
    outputs = types.ModuleType("picamera2.outputs")
    outputs.Output = Output  # type: ignore[attr-defined]
    platform_module = types.ModuleType("picamera2.platform")
    platform_module.Platform = Platform  # type: ignore[attr-defined]
    platform_module.get_platform = lambda: state.platform  # type: ignore[attr-defined]
    for name, module in (("picamera2", package), ("picamera2.encoders", encoders),
                         ("picamera2.outputs", outputs), ("picamera2.platform", platform_module)):
        monkeypatch.setitem(sys.modules, name, module)
    package.encoders, package.outputs, package.platform = encoders, outputs, platform_module  # type: ignore[attr-defined]
    return state
