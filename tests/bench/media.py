"""The media benchmarks: the box's media path against its budgets, with references.

Run at the end of ``make bench``, or alone (same table, media rows only):

    .venv/bin/python -m tests.bench.media [--soak-minutes N]

Nothing is asserted. Four figures, each taken on real parts on loopback:

1. **CPU per 1,000 frames, 720p30**: ``MediaSession`` (test pattern + the
   ALSA ``file`` microphone → x264 + AAC → MPEG-TS → SRT) in a child process,
   against the ``ffmpeg`` command line doing the same job, both paced at real
   time and sending to an ``ffmpeg`` SRT listener. The ffmpeg command is built
   from the box's own settings: the lavfi graph of ``TestPattern`` (media/camera.py) and the
   encoder options of ``x264_options``, so a change in ``media/encoders.py``
   changes the reference too. Audio
   for ffmpeg is the microphone's own tone file read as raw S16_LE under
   ``-re`` (ALSA's ``file`` plugin is not paced, and ffmpeg's ALSA input
   stamps packets with the time they were read). Each process's CPU
   (user + system, all threads) is read over a steady window, paired with
   the frame count at the same instant; box and ffmpeg take turns, three times.
2. **Capture → picture received, minus SRT's latency setting**: the child
   notes the wall-clock time each camera frame is handed over (see
   :mod:`tests.bench.child`); a receiver in this process (:class:`Receiver`) takes the
   raw MPEG-TS from SRT and notes when the last TS packet of each picture
   arrives; the picture's stamp (:mod:`diemcau.media.framestamp`) joins
   the two. SRT hands each packet over at its send time plus the latency
   setting, which is subtracted. References: the ffmpeg command line doing
   the same job to the same kind of receiver (see :func:`ffmpeg_latencies`;
   its audio file is released at the start of each packet, a real
   microphone's at the end of each period, which favours ffmpeg by about a
   period), and the box's own SRT link with nothing in front of it
   (timestamped packets through ``_Link``).
3. **``meeting.join`` → first keyframe received**, through the real
   ``diemcau run`` process: cold (the first join after the process started)
   and warm (a second join after a leave). Every join starts the box's media
   process, so its start is in both. Both include SRT's latency, as a
   media server would see it. Reference: a fresh ``ffmpeg`` process doing
   the same job, from its start to its first keyframe received.
4. **Resident memory while live at 720p30**, all the box's processes (the
   control plane and its media process), at the start and after
   ``--soak-minutes`` (default 1 so that ``make bench`` stays short; the
   budget is about an hour). References: the same box idle, ``ffmpeg`` doing
   the same job, and ``MediaSession`` alone in a bare Python process.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import psutil

from diemcau.config import Media
from diemcau.media import camera, defs, framestamp
from diemcau.media import link as media_link
from diemcau.media.encoders import x264_options
from diemcau.media.urls import publish_url
from diemcau.protocol import device_topic
from tests.bench.child import DEV, PROFILE
from tests.harness.alsa import SimulatedMicrophone, make_microphone
from tests.harness.box import Box, CentreKey
from tests.harness.broker import Broker
from tests.harness.observer import Observer
from tests.harness.process import stop_process
from tests.harness.srt_listener import SrtListener, free_udp_port, udp_port_bound

Row = Callable[..., None]

SRT_LATENCY_MS = 120  # the box's (tests/harness/box.py) and every listener's here
WARMUP_S = 3.0  # live this long before a window starts
CPU_WINDOW_S = 12.0
CPU_ROUNDS = 3
LATENCY_WINDOW_S = 15.0
FLOOR_PACKETS = 150  # the SRT-only reference: 5 s at 30 packets a second
JOINS = 3  # box processes; each gives one cold and one warm join
SETTLE_S = 3.0  # after birth: the box starts its spare media process 2 s after its start
MEMORY_SAMPLE_S = 5.0
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench",
                                     description="diemcau benchmarks, printed as figures")
    parser.add_argument("--soak-minutes", type=float, default=1.0, metavar="N",
                        help="how long to stay live at 720p30 for the memory figure "
                             "(default 1; the budget is about an hour)")
    parser.add_argument("--no-media-path", action="store_true",
                        help="skip the media path alone (CPU against ffmpeg, latency); keep "
                             "what goes through the real box (joins, memory)")
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank, as the other benchmarks count."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def media_settings(mic: SimulatedMicrophone) -> dict[str, Any]:
    """The box's [media] section as tests/harness/box.py writes it, for this microphone."""
    return dict(microphone=mic.pcm, sample_rate_hz=mic.sample_rate_hz, channels=mic.channels,
                srt_latency_ms=SRT_LATENCY_MS, connect_timeout_ms=1000,
                reconnect_min_s=0.3, reconnect_max_s=2.0)


# ---------------------------------------------------------------- the ffmpeg reference


def _box_encoders(cfg: Media) -> tuple[Any, Any]:
    """The video and audio encoder settings the box's media path uses, from its own code."""
    profile = defs.PROFILES[PROFILE]
    # As MediaSession._serve chooses it.
    kbps = cfg.video_bitrate_kbps if cfg.video_bitrate_kbps > 0 else profile.bitrate_kbps
    video = SimpleNamespace(codec="libx264", options=x264_options(profile, kbps),
                            bit_rate=kbps * 1000, pix_fmt="yuv420p", thread_type="SLICE")
    audio = SimpleNamespace(codec="aac" if cfg.audio_codec == "aac" else "libopus",
                            bit_rate=cfg.audio_bitrate_kbps * 1000, rate=cfg.sample_rate_hz,
                            layout="mono" if cfg.channels == 1 else "stereo")
    return video, audio


def pattern_graph() -> str:
    """The lavfi graph the box's camera opens here (with the drawn text if a font is found)."""
    pattern = camera.TestPattern(defs.PROFILES[PROFILE])
    graph = pattern._graph(with_text=True)
    try:
        av.open(graph, format="lavfi").close()
    except av.error.FFmpegError:
        graph = pattern._graph(with_text=False)  # what the box falls back to
    return graph


def ffmpeg_command(mic: SimulatedMicrophone, url: str, *, progress: bool = False,
                   capture_times: bool = False) -> list[str]:
    """``ffmpeg`` doing the box's job: same source, encoders, container and SRT options.

    ``progress``: key=value progress reports on stdout. ``capture_times``: each
    video frame's wall-clock time as it leaves ``-re`` (the box's capture
    point), printed on stderr by a pass-through ``setpts``; the lavfi source
    cannot say it, as ffmpeg reads inputs ahead on threads of their own.
    """
    cfg = Media(**media_settings(mic))
    video, audio = _box_encoders(cfg)
    video_options = [item for key, value in video.options.items()
                     for item in (f"-{key}", str(value))]
    stats = ["-nostats", "-progress", "pipe:1", "-stats_period", "0.5"] if progress else []
    level = ["-loglevel", "info", "-nostats"] if capture_times else ["-loglevel", "error"]
    stamp = ["-vf", "setpts=PTS+0*print(time(0))"] if capture_times else []
    return [
        "ffmpeg", "-nostdin", "-hide_banner", *level, *stats,
        "-re", "-f", "lavfi", "-i", pattern_graph(),
        "-re", "-f", "s16le", "-ar", str(mic.sample_rate_hz), "-ac", str(mic.channels),
        "-i", str(mic.tone_path),
        "-map", "0:v", "-map", "1:a", *stamp,
        "-c:v", video.codec, *video_options, "-b:v", str(video.bit_rate),
        "-pix_fmt", video.pix_fmt, "-thread_type", video.thread_type.lower(),
        "-threads", "0",  # PyAV leaves the count at 0 (auto) too
        "-c:a", audio.codec, "-b:a", str(audio.bit_rate), "-ar", str(audio.rate),
        "-ac", "1" if audio.layout == "mono" else "2",
        "-f", "mpegts", "-flush_packets", "1",
        publish_url(url, meeting_id="bench-ffmpeg", device_id=DEV, cfg=cfg,
                          top_kbps=video.bit_rate // 1000),
    ]


@dataclass
class Window:
    """CPU seconds and frames over a steady stretch of one process's run."""

    cpu_s: float
    frames: int
    seconds: float
    rss_mb: float
    dropped: int = 0

    @property
    def per_1000(self) -> float:
        return self.cpu_s / max(self.frames, 1) * 1000

    @staticmethod
    def total(windows: list[Window]) -> Window:
        """All the windows as one; memory is the last one's."""
        return Window(sum(w.cpu_s for w in windows), sum(w.frames for w in windows),
                      sum(w.seconds for w in windows), windows[-1].rss_mb,
                      sum(w.dropped for w in windows))


def ffmpeg_window(mic: SimulatedMicrophone, url: str, log: Path) -> Window:
    """Run the ffmpeg reference; CPU and frame count paired at its progress reports."""
    reports: list[tuple[float, int, float]] = []  # (time.monotonic(), frames, cpu seconds)
    with log.open("wb") as errors:
        proc = subprocess.Popen(ffmpeg_command(mic, url, progress=True), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errors, text=True)
    watched = psutil.Process(proc.pid)

    def follow() -> None:
        frames = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "frame":
                frames = int(value)
            elif key == "progress":
                with contextlib.suppress(psutil.Error):
                    cpu = watched.cpu_times()
                    reports.append((time.monotonic(), frames, cpu.user + cpu.system))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any(frames > 0 for _, frames, _ in reports):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg did not start sending; see {log}")
            time.sleep(0.05)
        first_frame_at = next(at for at, frames, _ in reports if frames > 0)
        time.sleep(WARMUP_S + CPU_WINDOW_S + 0.6)
        rss = watched.memory_info().rss / 1e6
        start = next(r for r in reports if r[0] >= first_frame_at + WARMUP_S)
        end = [r for r in reports if r[0] <= start[0] + CPU_WINDOW_S][-1]
    finally:
        _stop(proc)
        reader.join(5)
    return Window(end[2] - start[2], end[1] - start[1], end[0] - start[0], rss)


# ---------------------------------------------------------------- the box's media path alone


def run_child(mic: SimulatedMicrophone, url: str, window_s: float, log: Path) -> dict[str, Any]:
    spec = {"url": url, "media": media_settings(mic), "warmup_s": WARMUP_S, "window_s": window_s}
    with log.open("wb") as errors:
        done = subprocess.run([sys.executable, "-m", "tests.bench.child",
                               json.dumps(spec)], cwd=REPO, env={**os.environ, **mic.env},
                              stdout=subprocess.PIPE, stderr=errors, timeout=window_s + 60,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the MediaSession child failed; see {log}")
    return json.loads(done.stdout)


# ---------------------------------------------------------------- the receiver


@dataclass
class Picture:
    arrived: float  # time.time() when its last TS packet came out of SRT
    idr: bool
    pts: int | None  # the PES's, 90 kHz
    data: bytes  # the H.264 access unit


def _is_idr(access_unit: bytes) -> bool:
    """Whether the access unit's first slice is an IDR (NAL type 5)."""
    at = access_unit.find(b"\x00\x00\x01")
    while 0 <= at < len(access_unit) - 3:
        kind = access_unit[at + 3] & 0x1F
        if kind in (1, 5):
            return kind == 5
        at = access_unit.find(b"\x00\x00\x01", at + 3)
    return False


def _pes_pts(pes: bytes) -> int | None:
    if len(pes) < 14 or not pes[7] & 0x80:
        return None
    b = pes[9:14]
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


class _VideoPictures:
    """Cuts the MPEG-TS video elementary stream into pictures as the TS packets arrive.

    The video PID is the one whose PES stream id is 0xE0-0xEF. A picture ends
    where the next PES starts; it counts as received when its last TS packet
    was, so a demuxer's wait for the next picture (FFmpeg's muxer leaves the
    video PES length open) adds nothing.
    """

    def __init__(self) -> None:
        self.pictures: list[Picture] = []
        self._pid: int | None = None
        self._parts: list[bytes] = []
        self._pts: int | None = None
        self._last_at = 0.0
        self._rest = b""

    def feed(self, data: bytes, at: float) -> None:
        data = self._rest + data
        whole = len(data) - len(data) % 188
        self._rest = data[whole:]
        for offset in range(0, whole, 188):
            packet = data[offset:offset + 188]
            if packet[0] != 0x47 or not packet[3] & 0x10:  # lost sync, or no payload
                continue
            pid = (packet[1] & 0x1F) << 8 | packet[2]
            start = 5 + packet[4] if packet[3] & 0x20 else 4  # after the adaptation field
            payload = packet[start:]
            if packet[1] & 0x40:  # a PES starts here
                if payload[:3] != b"\x00\x00\x01" or not 0xE0 <= payload[3] <= 0xEF:
                    continue
                if self._pid is None:
                    self._pid = pid
                if pid != self._pid:
                    continue
                self.finish()
                self._parts = [payload[9 + payload[8]:]]  # after the PES header
                self._pts = _pes_pts(payload)
                self._last_at = at
            elif pid == self._pid and self._parts:
                self._parts.append(payload)
                self._last_at = at

    def finish(self) -> None:
        if self._parts:
            access_unit = b"".join(self._parts)
            self.pictures.append(Picture(self._last_at, _is_idr(access_unit), self._pts,
                                         access_unit))
        self._parts = []


class Receiver:
    """An SRT listener in this process for one caller: the media server as a measuring tool.

    It reads SRT through FFmpeg's own ``srt://`` protocol (libavformat through
    ctypes, as the box sends, so no read holds the GIL) and notes
    ``time.time()`` as each chunk comes out. ``keep``: "pictures" cuts the
    whole stream into pictures (:class:`_VideoPictures`); "keyframe" stops
    looking after the first keyframe (for long runs); "raw" keeps the chunks
    as they came (the SRT-only reference).
    """

    def __init__(self, keep: str = "keyframe") -> None:
        self.port = free_udp_port()
        self.keep = keep
        self.video = _VideoPictures()
        self.chunks: list[tuple[float, bytes]] = []
        self.first_keyframe_at = 0.0
        self.error = ""
        self._keyframe = threading.Event()
        self._cancel = media_link.Interrupt()  # FFmpeg polls it while a read waits
        self._thread = threading.Thread(target=self._serve, daemon=True, name="bench-receiver")

    @property
    def url(self) -> str:
        return f"srt://127.0.0.1:{self.port}"

    @property
    def pictures(self) -> list[Picture]:
        return self.video.pictures

    def start(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 5
        while not udp_port_bound(self.port):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not listen: {self.error}")
            time.sleep(0.01)
        return self

    def wait_first_keyframe(self, timeout_s: float) -> float:
        if not self._keyframe.wait(timeout_s):
            raise TimeoutError(f"no keyframe at {self.url} in {timeout_s} s {self.error}")
        return self.first_keyframe_at

    def close(self) -> None:
        self._cancel.set()
        self._thread.join(5)
        self.video.finish()

    def _serve(self) -> None:
        api = media_link.avio()
        lib = api.lib
        lib.avio_read_partial.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.avio_read_partial.restype = ctypes.c_int
        pb = ctypes.c_void_p()
        url = f"{self.url}?mode=listener&latency={SRT_LATENCY_MS * 1000}"
        code = lib.avio_open2(ctypes.byref(pb), url.encode(), 1,  # AVIO_FLAG_READ
                              ctypes.byref(self._cancel.callback), None)
        if code < 0:
            self.error = media_link.error_reason(code)[1]
            return
        buffer = ctypes.create_string_buffer(1 << 16)
        looking = True
        try:
            while not self._cancel.is_set():
                size = lib.avio_read_partial(pb, buffer, len(buffer))
                at = time.time()
                if size < 0:
                    self.error = media_link.error_reason(size)[1]
                    break
                if self.keep == "raw":
                    self.chunks.append((at, ctypes.string_at(buffer, size)))
                elif looking:
                    self.video.feed(ctypes.string_at(buffer, size), at)
                    if not self.first_keyframe_at:
                        idr = next((p for p in self.pictures if p.idr), None)
                        if idr is not None:
                            self.first_keyframe_at = idr.arrived
                            self._keyframe.set()
                    looking = self.keep == "pictures" or not self.first_keyframe_at
        finally:
            lib.avio_closep(ctypes.byref(pb))


def _luma(frame: av.VideoFrame) -> Any:
    import numpy as np  # here only: the child (the box's media path) runs without numpy

    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, :frame.width]


def read_stamps(pictures: list[Picture]) -> list[int | None]:
    """Decode the access units; the frame number stamped in each (None if unreadable)."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    numbers: list[int | None] = [None] * len(pictures)

    def take(frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            if frame.pts is not None and 0 <= frame.pts < len(numbers):
                numbers[frame.pts] = framestamp.read(_luma(frame))

    for index, picture in enumerate(pictures):
        packet = av.Packet(picture.data)
        packet.pts = index
        with contextlib.suppress(av.error.InvalidDataError):
            take(decoder.decode(packet))
    with contextlib.suppress(av.error.FFmpegError):
        take(decoder.decode(None))
    return numbers


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, signal.SIGINT)  # ffmpeg finishes its output on SIGINT


# ---------------------------------------------------------------- the benchmarks


def bench_cpu(mic: SimulatedMicrophone, work: Path, row: Row) -> tuple[Window, Window]:
    """Box and ffmpeg in turn, CPU_ROUNDS times (alternating who goes first), summed."""
    box: list[Window] = []
    ffmpeg: list[Window] = []
    with SrtListener(work / "cpu", latency_ms=SRT_LATENCY_MS) as listener:
        for i in range(CPU_ROUNDS):
            for who in ("box", "ffmpeg")[::1 if i % 2 == 0 else -1]:
                listener.restart()
                if who == "box":
                    child = run_child(mic, listener.url, CPU_WINDOW_S, work / f"cpu-box-{i}.log")
                    box.append(Window(child["cpu_s"], child["frames"],
                                      child["window"][1] - child["window"][0],
                                      child["rss_mb"], child["dropped"]))
                else:
                    ffmpeg.append(ffmpeg_window(mic, listener.url, work / f"cpu-ffmpeg-{i}.log"))
    mine, theirs = Window.total(box), Window.total(ffmpeg)
    row("CPU per 1,000 frames, 720p30",
        f"{mine.per_1000:.2f} s = {mine.per_1000 / theirs.per_1000:.2f} × ffmpeg",
        "≤ 1.05×ffmpeg", f"ffmpeg CLI, same job: {theirs.per_1000:.2f} s")
    row(f"  each of {CPU_ROUNDS} rounds of {CPU_WINDOW_S:g} s",
        " / ".join(f"{w.per_1000:.2f}" for w in box) + " s", "",
        " / ".join(f"{w.per_1000:.2f}" for w in ffmpeg) + " s; as one core: "
        f"box {mine.cpu_s / mine.seconds * 100:.0f} %, "
        f"ffmpeg {theirs.cpu_s / theirs.seconds * 100:.0f} %")
    if mine.dropped:
        row("  frames the box dropped in its windows", f"{mine.dropped} of {mine.frames}")
    return mine, theirs


def _summary(latencies: list[float]) -> str:
    if not latencies:
        return "no pictures"
    return (f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms")


def box_latencies(mic: SimulatedMicrophone, work: Path) -> list[float]:
    """Capture → picture received − SRT latency, ms, for MediaSession's steady window."""
    receiver = Receiver("pictures").start()
    try:
        box = run_child(mic, receiver.url, LATENCY_WINDOW_S, work / "latency-box.log")
    finally:
        receiver.close()
    captured, (begin, end) = box["captured"], box["window"]
    latencies = []
    for picture, number in zip(receiver.pictures, read_stamps(receiver.pictures), strict=True):
        if number is not None and number < len(captured) and begin <= captured[number] <= end:
            latencies.append((picture.arrived - captured[number]) * 1000 - SRT_LATENCY_MS)
    return latencies


def ffmpeg_latencies(mic: SimulatedMicrophone, work: Path) -> tuple[list[float], float]:
    """The same for the ffmpeg command line; also its start → first keyframe received (s).

    Frame n's capture time is the n-th time its ``setpts`` printed; the
    picture carrying frame n is the one whose PTS is n frame times after the
    first picture's (ffmpeg's timestamps start at frame 0).
    """
    receiver = Receiver("pictures").start()
    captured: list[float] = []
    log = work / "latency-ffmpeg.log"
    started = time.time()
    proc = subprocess.Popen(ffmpeg_command(mic, receiver.url, capture_times=True),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    def follow() -> None:
        assert proc.stderr is not None
        with log.open("w") as out:
            for line in proc.stderr:
                try:
                    value = float(line)
                except ValueError:
                    out.write(line)
                    continue
                if value > 1e9:  # a wall-clock time, not something else that is a number
                    captured.append(value)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        first_keyframe_s = receiver.wait_first_keyframe(20) - started
        time.sleep(WARMUP_S + LATENCY_WINDOW_S)
    finally:
        _stop(proc)
        reader.join(5)
        receiver.close()
    pictures = [p for p in receiver.pictures if p.pts is not None]
    if not pictures or not captured:
        return [], first_keyframe_s
    frame_ticks = 90000 // defs.PROFILES[PROFILE].fps
    begin = captured[0] + WARMUP_S
    latencies = []
    for picture in pictures:
        number = round(((picture.pts or 0) - (pictures[0].pts or 0)) % (1 << 33) / frame_ticks)
        if number < len(captured) and begin <= captured[number] <= begin + LATENCY_WINDOW_S:
            latencies.append((picture.arrived - captured[number]) * 1000 - SRT_LATENCY_MS)
    return latencies, first_keyframe_s


def srt_floor() -> list[float]:
    """Timestamped packets through the box's own SRT link (``_Link``), nothing in front."""
    receiver = Receiver("raw").start()
    cfg = Media(srt_latency_ms=SRT_LATENCY_MS, connect_timeout_ms=1000)
    url = publish_url(receiver.url, meeting_id="bench-floor", device_id=DEV, cfg=cfg)
    link = media_link.Link(url, media_link.Interrupt())
    try:
        for _ in range(FLOOR_PACKETS):
            link.write(struct.pack("<d", time.time()).ljust(defs.TS_CHUNK, b"\xff"))
            time.sleep(1 / 30)
        time.sleep(SRT_LATENCY_MS / 1000 + 0.2)
    finally:
        link.close()
        receiver.close()
    return [(at - struct.unpack("<d", data[:8])[0]) * 1000 - SRT_LATENCY_MS
            for at, data in receiver.chunks if len(data) >= 8]


def bench_latency(mic: SimulatedMicrophone, work: Path, row: Row) -> float:
    """The latency rows; returns ffmpeg's start → first keyframe for the join rows."""
    box = box_latencies(mic, work)
    ffmpeg, ffmpeg_first_keyframe_s = ffmpeg_latencies(mic, work)
    floor = srt_floor()
    row("capture → picture received − SRT latency", _summary(box), "≤ 50 ms p95",
        f"ffmpeg CLI, same job: {_summary(ffmpeg)}")
    row(f"  pictures, max (SRT latency {SRT_LATENCY_MS} ms)",
        f"{len(box)}, max {max(box, default=0):.1f} ms", "",
        f"SRT link alone: {_summary(floor)}")
    return ffmpeg_first_keyframe_s


@dataclass
class Soak:
    idle_mb: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds live, MB)
    split: str = ""  # how the first live sample splits, with its PSS


@dataclass
class Join:
    """One join's times, seconds from publishing ``meeting.join``."""

    keyframe_s: float  # the first keyframe out of SRT at the receiver
    live_s: float  # the box's ``joined`` event arrived: its first bytes had left
    # (the ``joined`` event is sent once the media process has sent its first packet)


def join(observer: Observer, meeting_id: str) -> tuple[Join, Receiver]:
    """Send meeting.join to a new receiver; when the first keyframe and the box's ``joined``
    event arrived."""
    receiver = Receiver().start()
    sent = time.time()
    jti = observer.command(DEV, "meeting.join", {
        "meeting_id": meeting_id, "publish": receiver.url, "profile": PROFILE})
    try:
        at = receiver.wait_first_keyframe(20)
        observer.wait_reply(DEV, jti, status="succeeded", timeout=20)
        joined = observer.wait_for(lambda m: m.topic == device_topic(DEV, "event")
                                   and m.json().get("kind") == "joined", after=sent, timeout=20)
    except BaseException:
        receiver.close()
        raise
    return Join(at - sent, joined.at - sent), receiver


def leave(observer: Observer, receiver: Receiver) -> None:
    jti = observer.command(DEV, "meeting.leave")
    observer.wait_reply(DEV, jti, status="succeeded", timeout=20)
    receiver.close()


def bench_box(mic: SimulatedMicrophone, work: Path,
              soak_s: float) -> tuple[list[Join], list[Join], Soak]:
    """Joins through the real box process (cold and warm), then the soak on the last one."""
    from tests.bench.__main__ import box_rss

    colds: list[Join] = []
    warms: list[Join] = []
    soak = Soak()
    centre = CentreKey()
    with Broker(work / "broker") as broker:
        observer = Observer(broker, centre)
        try:
            for i in range(JOINS):
                box = Box(work / f"box-{i}", broker, centre, device_id=DEV, env=mic.env,
                          microphone=mic.pcm, health_interval_s=30)
                box.start()
                try:
                    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                                      and b"ready" in m.payload, after=box.started_at,
                                      timeout=15)
                    time.sleep(SETTLE_S)
                    assert box.pid is not None
                    soak.idle_mb = box_rss(box.pid)[0]
                    timed, receiver = join(observer, f"bench-cold-{i}")
                    colds.append(timed)
                    leave(observer, receiver)
                    timed, receiver = join(observer, f"bench-warm-{i}")
                    warms.append(timed)
                    if i == JOINS - 1:
                        soak.samples, soak.split = memory_over(box.pid, soak_s)
                    leave(observer, receiver)
                finally:
                    box.stop()
        finally:
            observer.close()
    return colds, warms, soak


def memory_over(pid: int, seconds: float) -> tuple[list[tuple[float, float]], str]:
    """RSS every few seconds for ``seconds``, from WARMUP_S after going live; and how
    the first sample splits.

    Encoders and buffers settle in the first seconds; counted from there, a
    change over the soak is growth, not start-up.
    """
    from tests.bench.__main__ import box_rss

    time.sleep(WARMUP_S)
    began = time.monotonic()
    samples = []
    split = ""
    while True:
        now = time.monotonic() - began
        mb, text = box_rss(pid)
        samples.append((now, mb))
        split = split or text
        if now >= seconds:
            return samples, split
        time.sleep(min(MEMORY_SAMPLE_S, seconds - now))


def run(work: Path, options: argparse.Namespace, row: Row) -> None:
    """All the media figures, printed with ``row`` (what, figure, budget, reference)."""
    work.mkdir(parents=True, exist_ok=True)
    mic = make_microphone(work / "mic", seconds=120)
    soak_s = options.soak_minutes * 60

    box_alone = ffmpeg = None
    reference_s = None
    if not options.no_media_path:
        box_alone, ffmpeg = bench_cpu(mic, work, row)
        reference_s = bench_latency(mic, work, row)
    colds, warms, soak = bench_box(mic, work, soak_s)
    # Each join starts the media process: its start is in both figures.
    for name, joins, budget in (("cold", colds, "≤ 1.5 s"), ("warm", warms, "≤ 0.5 s")):
        values = [j.keyframe_s for j in joins]
        row(f"meeting.join → first keyframe, {name}",
            f"median {statistics.median(values):.2f} s, max {max(values):.2f} s", budget,
            f"ffmpeg start → keyframe: {reference_s:.2f} s"
            if name == "cold" and reference_s is not None else "")
        # Where it goes: up to the box's first bytes sent (the control plane, the media
        # process's imports, PyAV, the encoders, the SRT handshake, the first picture), then
        # SRT's latency setting and the transfer.
        row(f"  of which: command → first bytes sent ({name})",
            f"median {statistics.median(j.live_s for j in joins):.2f} s", "",
            f"then → keyframe out of SRT: median "
            f"{statistics.median(j.keyframe_s - j.live_s for j in joins):.2f} s "
            f"(SRT latency {SRT_LATENCY_MS} ms)")

    (_, first), (last_s, last) = soak.samples[0], soak.samples[-1]
    peak = max(mb for _, mb in soak.samples)
    row(f"resident memory, live 720p30, {WARMUP_S:g} s in", f"{first:.1f} MB", "≤ 120 MB",
        f"{soak.split}; box idle {soak.idle_mb:.1f} MB"
        + (f"; ffmpeg CLI {ffmpeg.rss_mb:.1f} MB" if ffmpeg else ""))
    row(f"  {last_s / 60:.1f} min later (--soak-minutes)",
        f"{last:.1f} MB ({last - first:+.1f}), peak {peak:.1f} MB", "flat over 1 h",
        f"MediaSession alone in Python: {box_alone.rss_mb:.1f} MB" if box_alone else "")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    from tests.bench import before
    from tests.bench.__main__ import header, row

    work = Path(tempfile.mkdtemp(prefix="diemcau-bench-media-"))
    print(f"diemcau media benchmarks on {psutil.cpu_count()} cores; loopback; work files in "
          f"{work}; soak {options.soak_minutes:g} min\n")
    print(before.ABOUT)
    header()
    run(work, options, row)
    print("\nFigures only: nothing here is asserted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
