"""Cameras: where the media path's pictures come from, one class per kind of camera.

``open_camera(cfg, profile, kbps)`` picks the backend ``media.camera`` names
(``auto`` detects one) and returns it, not yet opened. Every camera has:

- ``open()``, ``read()``, ``close()``; ``open`` and ``read`` raise
  :class:`~diemcau.media.defs.MediaFault` with a sentence for the centre
  (no camera, camera stopped delivering);
- ``backend``: ``"picamera2"``, ``"usb"`` or ``"test_pattern"`` (reported in
  ``meta``);
- ``encodes``: False when ``read()`` returns an ``av.VideoFrame`` (yuv420p at
  the profile's size, for the box's own x264), True when it returns an
  ``av.Packet`` of H.264 in Annex B (the camera or the Pi 4's hardware encodes).
  An encoding camera also has ``request_keyframe()`` and ``set_bitrate(kbps)``;
  its packets carry ``pts`` in microseconds since its first packet
  (``time_base`` 1/1,000,000) and their keyframe flag.

Backends:

- :class:`TestPattern`: FFmpeg's ``testsrc2`` through PyAV's ``lavfi``, with the
  frame number and the time drawn in. Frames come as fast as they are read.
- :class:`UsbCamera`: a UVC camera through PyAV's ``v4l2`` input. MJPEG or
  YUYV is decoded for x264; H.264 from the camera is passed through.
- :class:`PiCamera`: a CSI camera through picamera2 (Raspberry Pi only). One
  ``Picamera2`` object for the life of the process. On a Pi 4 (VC4) the
  hardware ``H264Encoder``; on a Pi 5 (no encoder) YUV420 frames for x264.

    camera = open_camera(cfg.media, PROFILES["720p30"], kbps=1500)
    camera.open()
    try:
        picture = camera.read()
    finally:
        camera.close()

See ``docs/hardware.md`` for setting each one up.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .defs import GOP_S, MediaFault, VideoProfile
from .framestamp import strip_height

if TYPE_CHECKING:
    import av

    from ..config import Media

log = logging.getLogger("diemcau.camera")

MICROSECONDS = Fraction(1, 1_000_000)
# An encoding camera's packets wait here for the media thread: two seconds at
# 30 fps. Beyond that the oldest GOP is given up (see _PacketQueue).
PACKET_QUEUE_FRAMES = 60
# A camera that delivers nothing for this long has stopped.
READ_TIMEOUT_S = 3.0
# What `auto` tries on a USB camera, best first: MJPEG is light on USB 2 and
# decodes cheaply; YUYV is raw (low rates at 720p on USB 2); H.264 last, since
# its bitrate and keyframes are the camera's, not ours.
USB_INPUT_FORMATS = ("mjpeg", "yuyv422", "h264")


class Camera(Protocol):
    """What the media path needs from any camera."""

    backend: str
    encodes: bool

    def open(self) -> None: ...

    def read(self) -> av.VideoFrame | av.Packet: ...

    def close(self) -> None: ...


class EncodingCamera(Camera, Protocol):
    """A camera whose ``read()`` gives H.264 packets (``encodes`` is True)."""

    def request_keyframe(self) -> None: ...

    def set_bitrate(self, kbps: int) -> None: ...


# ---------------------------------------------------------------- helpers


def mark_keyframe(packet: av.Packet, keyframe: bool) -> None:
    """Set ``packet``'s keyframe flag (AV_PKT_FLAG_KEY): the muxer and the writer read it.

    PyAV 12 and later let Python set it (Raspberry Pi OS ships such a PyAV;
    picamera2's own output relies on it). PyAV 10 (Debian 12) has no setter:
    there the flag is written into the AVPacket through ctypes, after checking
    that the struct is where it is expected (its ``size`` field must match).
    """
    try:
        packet.is_keyframe = keyframe  # type: ignore[misc]
        return
    except AttributeError:
        pass
    # Cython object: PyObject head (16 bytes), vtable pointer, then `AVPacket *ptr`.
    address = ctypes.c_void_p.from_address(id(packet) + 24).value
    # AVPacket: buf, pts, dts, data (8 bytes each), size, stream_index, flags (int each).
    if not address or ctypes.c_int.from_address(address + 32).value != packet.size:
        raise MediaFault("this PyAV's packets are not laid out as expected; "
                         "install PyAV 12 or later")
    flags = ctypes.c_int.from_address(address + 40)
    flags.value = (flags.value | 1) if keyframe else (flags.value & ~1)
    if packet.is_keyframe != keyframe:
        raise MediaFault("could not mark a keyframe with this PyAV; install PyAV 12 or later")


def h264_packet(data: bytes, pts_us: int, keyframe: bool) -> av.Packet:
    """An ``av.Packet`` of Annex B H.264 with its time (µs) and keyframe flag."""
    import av

    packet = av.Packet(data)
    packet.pts = packet.dts = pts_us
    packet.time_base = MICROSECONDS
    mark_keyframe(packet, keyframe)
    return packet


class _PacketQueue:
    """Encoded pictures from an encoder's thread to the media thread, bounded.

    When the media thread falls behind, whole GOPs are dropped from the front
    (never the middle of one: every later picture refers back to its keyframe)
    and a keyframe is asked for, so the stream starts again cleanly.
    """

    def __init__(self, request_keyframe: Callable[[], None], limit: int = PACKET_QUEUE_FRAMES):
        self._items: queue.Queue[tuple[bytes, bool, int]] = queue.Queue()
        self._limit = limit
        self._request_keyframe = request_keyframe
        self._waiting_for_key = False
        self.dropped = 0

    def put(self, data: bytes, keyframe: bool, pts_us: int) -> None:
        if self._waiting_for_key and not keyframe:
            self.dropped += 1
            return
        self._waiting_for_key = False
        if self._items.qsize() >= self._limit:
            # Give up what is queued and this picture; resume at the next keyframe.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._items.get_nowait()
                    self.dropped += 1
            self.dropped += 1
            self._waiting_for_key = True
            self._request_keyframe()
            return
        self._items.put((data, keyframe, pts_us))

    def get(self, timeout_s: float) -> tuple[bytes, bool, int] | None:
        try:
            return self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None


# ---------------------------------------------------------------- test pattern


class TestPattern:
    """The development camera: ``testsrc2`` with the frame number drawn in, via lavfi.

    Frames come as fast as they are read; the session paces them. The text
    shows the frame number and the stream time (``%{pts}``), for people; the
    frame stamp strip the session adds is for machines.
    """

    __test__ = False  # not a pytest class, whatever its name says
    backend = "test_pattern"
    encodes = False

    def __init__(self, profile: VideoProfile) -> None:
        self.profile = profile
        self._container: Any = None
        self._frames: Any = None

    def _graph(self, with_text: bool) -> str:
        p = self.profile
        top = strip_height(p.height) + p.height // 45  # just below the stamp strip
        text = (f",drawtext=text='frame %{{n}}  %{{pts\\:hms}}':x=w/40:y={top}:fontsize=h/12"
                ":fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=6") if with_text else ""
        return f"testsrc2=size={p.width}x{p.height}:rate={p.fps}{text},format=yuv420p"

    def open(self) -> None:
        import av

        try:
            self._container = av.open(self._graph(with_text=True), format="lavfi")
        except av.error.FFmpegError as exc:
            # drawtext needs a font (fontconfig); the stamp strip alone still works.
            log.warning("test pattern without the frame number as text: %s", exc)
            try:
                self._container = av.open(self._graph(with_text=False), format="lavfi")
            except av.error.FFmpegError as exc2:
                raise MediaFault(f"camera (test pattern) cannot be opened: {exc2}") from None
        self._frames = self._container.decode(video=0)

    def read(self) -> av.VideoFrame:
        import av

        try:
            return next(self._frames)
        except StopIteration:
            raise MediaFault("camera (test pattern) stopped delivering frames") from None
        except av.error.FFmpegError as exc:
            raise MediaFault(f"camera (test pattern) failed: {exc}") from None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


# ---------------------------------------------------------------- USB (V4L2)

# <linux/videodev2.h>
_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability), 104 bytes
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_DEVICE_CAPS = 0x80000000


@dataclass(frozen=True, slots=True)
class V4l2Capability:
    """The part of ``struct v4l2_capability`` that tells a camera from the rest."""

    driver: str
    card: str
    bus_info: str
    capabilities: int
    device_caps: int

    @classmethod
    def parse(cls, raw: bytes) -> V4l2Capability:
        """From the 104 bytes VIDIOC_QUERYCAP fills in."""
        if len(raw) < 96:
            raise ValueError(f"v4l2_capability is 104 bytes, got {len(raw)}")

        def text(start: int, size: int) -> str:
            return raw[start:start + size].split(b"\0", 1)[0].decode("utf-8", "replace")

        caps = int.from_bytes(raw[84:88], "little")
        device_caps = int.from_bytes(raw[88:92], "little")
        return cls(text(0, 16), text(16, 32), text(48, 32), caps, device_caps)

    @property
    def is_usb_capture(self) -> bool:
        """A single-planar capture node on USB: a UVC camera, not a codec or CSI receiver."""
        caps = self.device_caps if self.capabilities & _CAP_DEVICE_CAPS else self.capabilities
        return bool(caps & _CAP_VIDEO_CAPTURE) and self.bus_info.startswith("usb-")


def query_capability(path: Path) -> V4l2Capability | None:
    """VIDIOC_QUERYCAP on ``path``; None if it is not a V4L2 device (or cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        raw = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, raw)
    except OSError:
        return None
    finally:
        os.close(fd)
    return V4l2Capability.parse(bytes(raw))


def find_usb_cameras(dev_dir: Path = Path("/dev")) -> list[Path]:
    """``/dev/video*`` nodes that are USB capture devices, in number order.

    A UVC camera makes two nodes (pictures and metadata); only the first
    captures. The Pi's codec and ISP nodes are memory-to-memory, and a CSI
    receiver is on the platform bus, so neither is taken for a USB camera.
    """
    def number(path: Path) -> int:
        digits = path.name.removeprefix("video")
        return int(digits) if digits.isdigit() else 1 << 30

    found = []
    for path in sorted(dev_dir.glob("video*"), key=number):
        cap = query_capability(path)
        if cap is not None and cap.is_usb_capture:
            found.append(path)
    return found


def v4l2_options(input_format: str, profile: VideoProfile) -> dict[str, str]:
    """FFmpeg ``v4l2`` input options asking the camera for this format, size and rate.

        >>> from diemcau.media.defs import PROFILES
        >>> v4l2_options("mjpeg", PROFILES["720p30"])
        {'input_format': 'mjpeg', 'video_size': '1280x720', 'framerate': '30'}
    """
    return {"input_format": input_format, "video_size": f"{profile.width}x{profile.height}",
            "framerate": str(profile.fps)}


class UsbCamera:
    """A UVC camera through PyAV's ``v4l2`` input.

    ``device``: a ``/dev/video*`` path, or ``"auto"`` for the first USB capture
    device. ``input_format``: ``mjpeg``, ``yuyv422`` or ``h264`` (what the
    camera sends over USB), or ``"auto"`` to try them in that order.

    MJPEG and YUYV are decoded and scaled to the profile (yuv420p) for the
    box's x264. H.264 is passed through (``encodes`` becomes True once open):
    its bitrate and keyframe interval are the camera's own, so
    ``request_keyframe`` and ``set_bitrate`` can only be logged.

    A camera runs on its own clock, not the media thread's. So a live camera
    is read by a thread of its own as fast as it delivers: ``read()`` gives
    the newest picture and skips older ones (counted in ``skipped``), never a
    picture that waited in the driver's queue; H.264 is kept whole, in order,
    in a bounded queue that drops whole GOPs if the media thread falls behind.

    ``demuxer`` and ``demuxer_options`` replace ``v4l2`` and its options, so
    that a test can point the same code at a file or pipe FFmpeg writes;
    ``live`` (default: only for ``v4l2``) says whether the source runs by
    itself or hands over pictures only when asked (a file).
    """

    backend = "usb"

    def __init__(self, profile: VideoProfile, device: str = "auto", input_format: str = "auto",
                 *, demuxer: str = "v4l2", demuxer_options: dict[str, str] | None = None,
                 live: bool | None = None) -> None:
        self.profile = profile
        self.device = device
        self.input_format = input_format
        self.encodes = input_format == "h264"
        self.live = demuxer == "v4l2" if live is None else live
        self.skipped = 0  # live pictures never handed over: a newer one was there
        self.received = 0  # packets taken from the camera
        self._demuxer = demuxer
        self._demuxer_options = demuxer_options
        self._container: Any = None
        self._stream: Any = None
        self._packets: Any = None
        self._pending: list[Any] = []
        self._first_pts: int | None = None
        self._next_pts_us = 0
        self._told_keyframes = False
        self._told_bitrate = False
        # The live reader thread and what it hands over.
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._latest: Any = None
        self._failure: str | None = None
        self._queue = _PacketQueue(self.request_keyframe)

    def _device_path(self) -> str:
        if self._demuxer != "v4l2":
            return self.device
        if self.device == "auto":
            cameras = find_usb_cameras()
            if not cameras:
                raise MediaFault("no USB camera found (no /dev/video* is a USB capture device)")
            return str(cameras[0])
        if not Path(self.device).exists():
            raise MediaFault(f"camera {self.device} does not exist (is the USB camera plugged in?)")
        return self.device

    def open(self) -> None:
        import av

        path = self._device_path()
        formats = USB_INPUT_FORMATS if self.input_format == "auto" else (self.input_format,)
        failures = []
        for fmt in formats:
            options = self._demuxer_options if self._demuxer_options is not None \
                else v4l2_options(fmt, self.profile)
            try:
                self._container = av.open(path, format=self._demuxer, options=options)
            except (av.error.FFmpegError, OSError) as exc:
                failures.append(f"{fmt}: {exc}")
                continue
            break
        else:
            raise MediaFault(f"camera {path} cannot be opened ({'; '.join(failures)})")
        if not self._container.streams.video:
            self.close()
            raise MediaFault(f"camera {path} has no video")
        self._stream = self._container.streams.video[0]
        self.encodes = self._stream.codec_context.name == "h264"
        self._packets = self._container.demux(self._stream)
        log.info("USB camera %s: %s %dx%d%s", path, self._stream.codec_context.name,
                 self._stream.codec_context.width, self._stream.codec_context.height,
                 " (H.264 passed through)" if self.encodes else "")
        if self.live:
            self._stopping.clear()
            self._reader = threading.Thread(target=self._read_device, name="usb-camera",
                                            daemon=True)
            self._reader.start()

    def _next_packet(self) -> Any:
        import av

        while True:
            try:
                packet = next(self._packets)
            except StopIteration:
                raise MediaFault(f"camera {self.device} stopped delivering frames") from None
            except (av.error.FFmpegError, OSError) as exc:
                raise MediaFault(f"camera {self.device} failed: {exc}") from None
            if packet.size:
                self.received += 1
                return packet

    def _packet_time_us(self, packet: Any) -> int:
        """``packet``'s time in µs since the camera's first packet."""
        time_base = packet.time_base or self._stream.time_base
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is not None and time_base:
            pts_us = int(pts * time_base / MICROSECONDS)
            if self._first_pts is None:
                self._first_pts = pts_us
            pts_us -= self._first_pts
        else:
            # A stream without times (a raw H.264 elementary stream): count frames.
            pts_us = self._next_pts_us
        if packet.duration and time_base:
            frame_us = int(packet.duration * time_base / MICROSECONDS)
        else:
            frame_us = round(1_000_000 / self.profile.fps)
        self._next_pts_us = pts_us + frame_us
        return pts_us

    # -- the live reader thread

    def _read_device(self) -> None:
        try:
            while not self._stopping.is_set():
                packet = self._next_packet()
                if self.encodes:
                    self._queue.put(bytes(packet), packet.is_keyframe,
                                    self._packet_time_us(packet))
                    continue
                with self._changed:
                    if self._latest is not None:
                        self.skipped += 1
                    self._latest = packet
                    self._changed.notify_all()
        except MediaFault as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported by the next read()
            failure = f"camera {self.device} failed: {exc!r}"
        else:
            return
        with self._changed:
            self._failure = failure
            self._changed.notify_all()

    def _take_live(self) -> Any:
        """The newest packet not yet handed over; waits for one (MediaFault if none comes)."""
        with self._changed:
            self._changed.wait_for(lambda: self._latest is not None or self._failure is not None,
                                   timeout=READ_TIMEOUT_S)
            packet, self._latest = self._latest, None
            if packet is None:
                raise MediaFault(self._failure
                                 or f"camera {self.device} stopped delivering frames")
            return packet

    def _take_live_h264(self) -> tuple[bytes, bool, int]:
        deadline = READ_TIMEOUT_S
        step = 0.05
        while True:
            item = self._queue.get(step)
            if item is not None:
                return item
            deadline -= step
            if self._failure is not None or deadline <= 0:
                raise MediaFault(self._failure
                                 or f"camera {self.device} stopped delivering frames")

    # -- the media thread

    def read(self) -> av.VideoFrame | av.Packet:
        if self._container is None:
            raise MediaFault(f"camera {self.device} is not open")
        if self.encodes:
            if self.live:
                data, keyframe, pts_us = self._take_live_h264()
                return h264_packet(data, pts_us, keyframe)
            packet = self._next_packet()
            return h264_packet(bytes(packet), self._packet_time_us(packet), packet.is_keyframe)
        return self._read_frame()

    def _read_frame(self) -> av.VideoFrame:
        import av

        while not self._pending:
            packet = self._take_live() if self.live else self._next_packet()
            try:
                self._pending = list(packet.decode())
            except av.error.FFmpegError as exc:
                log.debug("camera %s: undecodable picture skipped: %s", self.device, exc)
        frame = self._pending.pop(0)
        p = self.profile
        if (frame.width, frame.height, frame.format.name) != (p.width, p.height, "yuv420p"):
            frame = frame.reformat(width=p.width, height=p.height, format="yuv420p")
        return frame

    def request_keyframe(self) -> None:
        if not self._told_keyframes:
            log.info("camera %s makes its own keyframes (H.264 passed through)", self.device)
            self._told_keyframes = True

    def set_bitrate(self, kbps: int) -> None:
        if not self._told_bitrate:
            log.info("camera %s keeps its own bitrate (H.264 passed through); asked for %d kbps",
                     self.device, kbps)
            self._told_bitrate = True

    def close(self) -> None:
        self._stopping.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            # It ends after the packet it waits for: one frame time for a live camera.
            reader.join(2.0)
            if reader.is_alive():
                # Closing the input under a thread still reading it would crash FFmpeg.
                log.warning("camera %s does not answer; leaving it open", self.device)
                self._container = None
                return
        if self._container is not None:
            self._container.close()
            self._container = None
        self._pending = []


# ---------------------------------------------------------------- picamera2 (CSI)

_picamera2_lock = threading.Lock()
_picamera2_instance: Any = None


def _import_picamera2() -> Any:
    try:
        import picamera2
    except ImportError as exc:
        raise MediaFault(f"picamera2 is not installed or cannot load ({exc}); "
                         "install python3-picamera2 on Raspberry Pi OS") from None
    return picamera2


def shared_picamera2(module: Any) -> Any:
    """The process's one ``Picamera2`` (camera 0), made on first use.

    libcamera lets one process hold a camera once; making and closing a
    ``Picamera2`` per meeting costs seconds and can leak the camera. So it is
    made once and only stopped between meetings.
    """
    global _picamera2_instance
    with _picamera2_lock:
        if _picamera2_instance is None:
            if not module.Picamera2.global_camera_info():
                raise MediaFault("no CSI camera found (libcamera lists none)")
            try:
                _picamera2_instance = module.Picamera2(0)
            except (RuntimeError, IndexError, OSError) as exc:
                raise MediaFault(f"the CSI camera cannot be opened: {exc}") from None
        return _picamera2_instance


class PiCamera:
    """A CSI camera through picamera2: YUV420 at the profile's size and rate.

    On a Pi 4 (VC4) the hardware ``H264Encoder`` encodes: ``read()`` gives
    packets, ``request_keyframe()`` is the encoder's ``force_key_frame()``,
    and ``set_bitrate()`` restarts the encoder at the new rate (the first
    picture after is a keyframe). On a Pi 5 (PiSP, no encoder) ``read()``
    gives YUV420 frames for the box's own x264, which is tuned for latency
    (picamera2's ``LibavH264Encoder`` uses frame threads, a frame of delay each).
    """

    backend = "picamera2"

    def __init__(self, profile: VideoProfile, kbps: int) -> None:
        self.profile = profile
        self.kbps = kbps
        self.encodes = False
        self._camera: Any = None
        self._encoder: Any = None
        self._output: Any = None
        self._queue: _PacketQueue | None = None
        self._size = (profile.width, profile.height)

    def open(self) -> None:
        module = _import_picamera2()
        from picamera2.platform import Platform, get_platform

        camera = shared_picamera2(module)
        p = self.profile
        frame_us = round(1_000_000 / p.fps)
        try:
            # Whatever a meeting that ended badly left running: its encoder, the camera.
            if camera.encoders:
                with contextlib.suppress(RuntimeError):  # "Encoder already stopped"
                    camera.stop_encoder()
            camera.stop()
            config = camera.create_video_configuration(
                main={"size": (p.width, p.height), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)})
            camera.configure(config)
            main = camera.camera_configuration()["main"]
            self._size = tuple(main["size"])
            self._stride = int(main["stride"])
            self._camera = camera
            self.encodes = get_platform() == Platform.VC4
            if self.encodes:
                self._start_encoder()
            camera.start()
        except MediaFault:
            raise
        except Exception as exc:  # noqa: BLE001 - libcamera raises RuntimeError and more
            self.close()
            raise MediaFault(f"the CSI camera cannot be started: {exc}") from None
        log.info("CSI camera: %dx%d at %d fps, %s", *self._size, p.fps,
                 "hardware H.264" if self.encodes else "YUV420 for x264")

    def _start_encoder(self) -> None:
        from picamera2.encoders import H264Encoder
        from picamera2.outputs import Output

        p = self.profile
        self._queue = self._queue or _PacketQueue(self.request_keyframe)
        packets = self._queue

        class ToMediaThread(Output):  # picamera2 insists on an Output
            def __init__(self) -> None:
                super().__init__()
                self.offset_us = 0
                self.last_us = 0

            def outputframe(self, frame: Any, keyframe: bool = True, timestamp: Any = None,
                            packet: Any = None, audio: bool = False) -> None:
                if audio or frame is None or timestamp is None:
                    return
                self.last_us = self.offset_us + int(timestamp)
                packets.put(bytes(frame), bool(keyframe), self.last_us)

        if self._output is None:
            self._output = ToMediaThread()
        # repeat: SPS/PPS before every keyframe, so a late receiver can start.
        self._encoder = H264Encoder(bitrate=self.kbps * 1000, repeat=True,
                                    iperiod=GOP_S * p.fps, framerate=p.fps)
        self._camera.start_encoder(self._encoder, self._output)

    def read(self) -> av.VideoFrame | av.Packet:
        if self._camera is None:
            raise MediaFault("the CSI camera is not open")
        if self.encodes:
            assert self._queue is not None
            item = self._queue.get(READ_TIMEOUT_S)
            if item is None:
                raise MediaFault("the CSI camera stopped delivering pictures")
            data, keyframe, pts_us = item
            return h264_packet(data, pts_us, keyframe)
        return self._read_frame()

    def _read_frame(self) -> av.VideoFrame:
        import av
        import numpy as np

        try:
            request = self._camera.capture_request()
        except Exception as exc:  # noqa: BLE001 - libcamera's own errors
            raise MediaFault(f"the CSI camera failed: {exc}") from None
        try:
            buffer = request.make_array("main")
        finally:
            request.release()
        width, height = self._size
        # YUV420 in one buffer: Y rows of `stride` bytes, then U and V rows of
        # stride/2 bytes each (what picamera2's own JPEG path reads).
        flat = buffer.reshape(-1)
        stride = self._stride
        half = stride // 2
        y_end = height * stride
        chroma_rows = height // 2
        y = flat[:y_end].reshape(height, stride)[:, :width]
        u = flat[y_end:y_end + chroma_rows * half].reshape(chroma_rows, half)[:, :width // 2]
        v_start = y_end + chroma_rows * half
        v = flat[v_start:v_start + chroma_rows * half].reshape(chroma_rows, half)[:, :width // 2]
        # av's yuv420p ndarray: Y rows, then U and V each folded to full-width rows.
        packed = np.concatenate([y, u.reshape(-1, width), v.reshape(-1, width)])
        frame = av.VideoFrame.from_ndarray(packed, format="yuv420p")
        p = self.profile
        if (width, height) != (p.width, p.height):
            frame = frame.reformat(width=p.width, height=p.height)
        return frame

    def request_keyframe(self) -> None:
        if self._encoder is not None:
            self._encoder.force_key_frame()

    def set_bitrate(self, kbps: int) -> None:
        """A new rate for the hardware encoder: stopped and started again (a keyframe follows)."""
        self.kbps = kbps
        if self._encoder is None or self._camera is None:
            return
        # Timestamps restart at 0 with the encoder: carry on from the last one.
        frame_us = round(1_000_000 / self.profile.fps)
        self._camera.stop_encoder(self._encoder)
        self._output.offset_us = self._output.last_us + frame_us
        self._start_encoder()

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            if self._encoder is not None:
                camera.stop_encoder(self._encoder)
            camera.stop()  # stopped, never closed: the next meeting uses it again
        except Exception as exc:  # noqa: BLE001 - nothing to save while closing
            log.warning("stopping the CSI camera: %s", exc)
        self._encoder = None


# ---------------------------------------------------------------- choosing


def picamera2_cameras() -> int:
    """How many cameras libcamera lists; 0 when picamera2 is absent or cannot load."""
    try:
        from picamera2 import Picamera2
    except Exception:  # noqa: BLE001 - off a Pi: ImportError, or libcamera missing
        return 0
    try:
        return len(Picamera2.global_camera_info())
    except Exception as exc:  # noqa: BLE001 - a broken libcamera is no camera
        log.warning("libcamera cannot list cameras: %s", exc)
        return 0


def detect_backend(cfg: Media, *, dev_dir: Path = Path("/dev")) -> str:
    """The backend ``media.camera`` means on this box, or "none".

    ``auto``: picamera2 if it loads and lists a camera, else a USB capture
    device (or the configured ``camera_device`` if it exists), else the test
    pattern if ``camera_fallback`` allows it.
    """
    if cfg.camera != "auto":
        return cfg.camera
    if picamera2_cameras() > 0:
        return "picamera2"
    if cfg.camera_device != "auto":
        if Path(cfg.camera_device).exists():
            return "usb"
    elif find_usb_cameras(dev_dir):
        return "usb"
    return "test_pattern" if cfg.camera_fallback == "test_pattern" else "none"


def open_camera(cfg: Media, profile: VideoProfile, kbps: int) -> Camera:
    """The camera ``cfg`` names, for ``profile``, made but not yet opened.

    ``kbps`` is the video bitrate, used by a camera that encodes.
    """
    backend = detect_backend(cfg)
    if backend == "test_pattern":
        return TestPattern(profile)
    if backend == "usb":
        return UsbCamera(profile, cfg.camera_device, cfg.camera_input_format)
    if backend == "picamera2":
        return PiCamera(profile, kbps)
    raise MediaFault("no camera found: no CSI camera (picamera2) and no USB camera "
                     "(set media.camera, or media.camera_fallback = \"test_pattern\")")
