"""A programme feed as a centre sends it: stamped pictures and a tone, encoded by ffmpeg, served
by ``srt-live-transmit`` (Debian's ``srt-tools``) as an SRT listener that the box calls.

    python frames ──raw──▶ ffmpeg (x264 + AAC, MPEG-TS) ──UDP──▶ [hold] ──UDP──▶
        srt-live-transmit (SRT listener) ◀── the box's player calls ``feed.url``

The pictures are a grey test card with the frame number stamped in
(:mod:`diemcau.media.framestamp`); ``captured[n]`` is the wall-clock time
frame ``n`` was handed to the encoder, so a receiver that knows when it
showed frame ``n`` knows the latency. The sound, written by the same loop through a
FIFO, is a steady tone (-12 dBFS) with a 40 ms beep (``beep_factor`` × the
tone) at each whole second of the stream: beep ``k`` belongs with frame
``k * fps``.

The sender (frames + ffmpeg) can be killed and started again while
``srt-live-transmit`` keeps listening, as a media server stays up when its
source drops. ``hold()`` keeps what the encoder sends in a UDP relay and
``release()`` sends it on in one burst: the backlog a media server's GOP
cache gives a player at connect.

:func:`resizing_programme` records one MPEG-TS whose picture changes size part-way
(one mux, as an encoder that changes resolution mid-stream sends it), and
:class:`PacedFeed` sends such a recording live through ONE SRT connection.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diemcau.media import framestamp

from .process import stop_process
from .srt_listener import free_udp_port

LOCALHOST = "127.0.0.1"
RATE = 48000
BEEP_S = 0.04
TONE_LEVEL = 10 ** (-12 / 20)  # -12 dBFS
MUXRATE_BPS = 2_000_000  # a recorded programme's constant rate, so it is paced by bytes
TS_CHUNK = 7 * 188  # what one SRT packet carries


@dataclass
class FeedShape:
    width: int = 640
    height: int = 360
    fps: int = 25
    video: bool = True
    audio: bool = True
    tone_hz: int = 1000
    beep_factor: int = 4
    gop: int = 10  # frames between keyframes: a player joining waits at most this long
    bitrate_kbps: int = 600


@dataclass
class ProgrammeFeed:
    directory: Path
    shape: FeedShape = field(default_factory=FeedShape)
    srt_latency_ms: int = 120
    passphrase: str = ""
    streamid: str = "#!::r=live/programme,m=request,s=sess-9f3e1c"
    captured: dict[int, float] = field(default_factory=dict)
    listeners: int = 1  # SRT listeners serving the same packets: one player each, at once

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.srt_ports = [free_udp_port() for _ in range(self.listeners)]
        self.srt_port = self.srt_ports[0]
        self._relay_ports = [free_udp_port() for _ in range(self.listeners)]  # theirs to read
        self._ffmpeg: subprocess.Popen[bytes] | None = None
        self._transmits: list[subprocess.Popen[bytes]] = []
        self._frames: threading.Thread | None = None
        self._stop_frames = threading.Event()
        self._hold = _HoldingRelay(self._relay_ports)
        self._next_frame = 0
        self.size = (self.shape.width, self.shape.height)

    # -- the URL the box is given

    @property
    def url(self) -> str:
        return self.url_of(0)

    def url_of(self, listener: int) -> str:
        """The URL of one of the ``listeners`` (each takes one player at a time)."""
        query = f"streamid={self.streamid}&latency={self.srt_latency_ms * 1000}"
        if self.passphrase:
            query += f"&passphrase={self.passphrase}"
        return f"srt://{LOCALHOST}:{self.srt_ports[listener]}?{query}"

    # -- the server side

    def start(self) -> ProgrammeFeed:
        self.start_server()
        self.start_sender()
        return self

    def start_server(self) -> None:
        options = f"mode=listener&latency={self.srt_latency_ms}"
        if self.passphrase:
            options += f"&passphrase={self.passphrase}"
        log = (self.directory / "srt-live-transmit.log").open("ab")
        self._transmits = [subprocess.Popen(
            ["srt-live-transmit", "-a:yes", f"udp://{LOCALHOST}:{relay_port}",
             f"srt://{LOCALHOST}:{srt_port}?{options}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            for relay_port, srt_port in zip(self._relay_ports, self.srt_ports, strict=True)]
        self._hold.start()

    def start_sender(self, shape: FeedShape | None = None) -> None:
        """Start (or start again) the encoder and the frames; ``shape``: a new picture size etc."""
        if shape is not None:
            self.shape = shape
            self.size = (shape.width, shape.height)
        s = self.shape
        args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
        if s.video:
            # Raw inputs need no probing; probing one would wait for data the other holds up.
            args += ["-probesize", "32", "-analyzeduration", "0",
                     "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{s.width}x{s.height}",
                     "-framerate", str(s.fps), "-i", "pipe:0"]
        if s.audio:
            # The sound comes from the same loop as the pictures, through a FIFO: beep k
            # is written with frame k * fps, so the stream carries them together.
            self._audio_fifo = self.directory / f"audio-{time.monotonic_ns()}.fifo"
            os.mkfifo(self._audio_fifo)
            args += ["-probesize", "32", "-analyzeduration", "0", "-f", "s16le", "-ar", str(RATE), "-ac", "2", "-i", str(self._audio_fifo)]
        if s.video:
            args += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                     "-g", str(s.gop), "-bf", "0", "-b:v", f"{s.bitrate_kbps}k",
                     "-pix_fmt", "yuv420p"]
        if s.audio:
            args += ["-c:a", "aac", "-b:a", "96k", "-ac", "2"]
        # Each audio frame its own PES, as live encoders send it (FFmpeg's default packs
        # ~250 ms of audio per PES, which a player must wait for).
        args += ["-f", "mpegts", "-flush_packets", "1", "-pes_payload_size", "0", "-muxdelay", "0",
                 f"udp://{LOCALHOST}:{self._hold.port}?pkt_size=1316"]
        log = (self.directory / "ffmpeg-sender.log").open("ab")
        self._ffmpeg = subprocess.Popen(args, stdin=subprocess.PIPE if s.video else subprocess.DEVNULL,
                                        stdout=log, stderr=log)
        self._stop_frames.clear()
        self._frames = threading.Thread(target=self._send_frames, daemon=True,
                                        name="programme-frames")
        self._frames.start()

    def kill_sender(self) -> None:
        """The source dies (SIGKILL); the SRT server keeps listening."""
        self._stop_frames.set()
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
            self._ffmpeg.wait()
        if self._frames is not None:
            self._frames.join(5)

    def wait_connected(self, timeout_s: float, count: int = 1) -> None:
        """Until ``srt-live-transmit`` has accepted ``count`` players' connections in all."""
        log = self.directory / "srt-live-transmit.log"
        deadline = time.monotonic() + timeout_s
        while log.read_bytes().count(b"Accepted SRT target connection") < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no player connected within {timeout_s} s")
            time.sleep(0.01)

    def hold(self) -> None:
        self._hold.holding = True

    def release(self) -> None:
        self._hold.holding = False

    def stop(self) -> None:
        self.kill_sender()
        self._hold.stop()
        for transmit in self._transmits:
            stop_process(transmit, timeout_s=3)

    def __enter__(self) -> ProgrammeFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the pictures

    def _send_frames(self) -> None:
        s = self.shape
        process = self._ffmpeg
        assert process is not None
        # Opened read-write: an open for writing only would wait for ffmpeg, which waits
        # for the pictures first.
        audio = os.fdopen(os.open(self._audio_fifo, os.O_RDWR), "wb") if s.audio else None
        # Written from a thread of its own: ffmpeg reads its two inputs in its own order, and
        # one pipe full must not hold the other back.
        sound: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        writer = threading.Thread(target=_drain, args=(sound, audio), daemon=True)
        if audio is not None:
            writer.start()
        try:
            self._pace(process, sound if audio is not None else None)
        finally:
            sound.put(None)

    def _pace(self, process: subprocess.Popen[bytes], audio: Any) -> None:
        s = self.shape
        card = grey_card(s.width, s.height)
        period = 1 / s.fps
        start = time.monotonic()
        sent = 0
        while not self._stop_frames.is_set():
            number = self._next_frame
            frame = stamped(card, number, s.width, s.height)
            self.captured[number] = time.time()
            try:
                if s.video:
                    assert process.stdin is not None
                    process.stdin.write(frame)
                    process.stdin.flush()
                if audio is not None:
                    audio.put(programme_sound(number, s))
            except (BrokenPipeError, ValueError, OSError):
                return
            self._next_frame += 1
            sent += 1
            delay = start + sent * period - time.monotonic()
            if delay > 0:
                self._stop_frames.wait(delay)


def grey_card(width: int, height: int) -> np.ndarray:
    """A grey YUV 4:2:0 card with a gradient, so the picture is not flat (the encoder has
    work to do)."""
    ys = width * height
    card = np.full(ys * 3 // 2, 128, np.uint8)
    card[:ys] = (np.arange(ys) % width * 200 // width + 30).astype(np.uint8)
    return card


def stamped(card: np.ndarray, number: int, width: int, height: int) -> bytes:
    """``card`` with frame ``number`` stamped in, as raw YUV 4:2:0."""
    ys = width * height
    frame = card.copy()
    framestamp.stamp(number, frame[:ys], width=width, height=height)
    # Grey chroma under the strip keeps the blocks black and white.
    cw, crows = width // 2, framestamp.strip_height(height) // 2
    frame[ys:ys + cw * crows] = 128
    frame[ys + ys // 4:ys + ys // 4 + cw * crows] = 128
    return frame.tobytes()


def programme_sound(number: int, s: FeedShape) -> bytes:
    """The samples (S16_LE stereo) that go with frame ``number``: the tone, and a beep in each
    second's first ``BEEP_S``."""
    per_frame = RATE // s.fps
    first = number * per_frame
    t = np.arange(first, first + per_frame) / RATE
    beeping = (t % 1.0) < BEEP_S
    frequency = np.where(beeping, s.tone_hz * s.beep_factor, s.tone_hz)
    # The phase of each frequency runs from t = 0, so the tone is the same sine throughout.
    mono = np.round(TONE_LEVEL * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    return np.repeat(mono, 2).tobytes()


def _drain(sound: queue.SimpleQueue[bytes | None], out: Any) -> None:
    try:
        while (chunk := sound.get()) is not None:
            out.write(chunk)
            out.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            out.close()


class _HoldingRelay:
    """UDP from the encoder to each srt-live-transmit; while ``holding``, keeps the packets."""

    def __init__(self, to_ports: list[int]) -> None:
        self._to = [(LOCALHOST, port) for port in to_ports]
        self._in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._in.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._in.bind((LOCALHOST, 0))
        self.port = self._in.getsockname()[1]
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.holding = False
        self._kept: list[bytes] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="programme-relay")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        self._in.close()
        self._out.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._in], [], [], 0.05)
            if ready:
                data = self._in.recv(65536)
                if self.holding:
                    self._kept.append(data)
                    continue
            if self._kept and not self.holding:
                kept, self._kept = self._kept, []
                for packet in kept:
                    self._send(packet)
                    time.sleep(0.0002)  # a burst, but not faster than the loopback takes it
            if ready:
                self._send(data)

    def _send(self, packet: bytes) -> None:
        for to in self._to:
            self._out.sendto(packet, to)


def resizing_programme(directory: Path, sizes: list[tuple[int, int]], seconds_each: float,
                       shape: FeedShape | None = None) -> Path:
    """One MPEG-TS programme whose picture changes size from piece to piece, as an encoder
    that changes resolution mid-stream sends it: one mux, one set of PIDs, clocks and
    continuity counters throughout; only the H.264 stream starts again (a keyframe with
    the new sequence header) at each new size.

    Frame numbers run on across the pieces; the sound (tone and beeps) runs under all of
    it. The mux is constant-rate (``MUXRATE_BPS``) so a sender can pace it by bytes.
    Returns the ``.ts`` file.
    """
    shape = shape or FeedShape()
    directory.mkdir(parents=True, exist_ok=True)
    count = round(seconds_each * shape.fps)
    video = directory / "programme.h264"
    with video.open("wb") as joined:
        for index, (width, height) in enumerate(sizes):
            piece = directory / f"piece-{index}.h264"
            encoder = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                 "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}",
                 "-framerate", str(shape.fps), "-i", "pipe:0",
                 "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                 "-g", str(shape.gop), "-bf", "0", "-b:v", f"{shape.bitrate_kbps}k",
                 "-maxrate", f"{shape.bitrate_kbps * 5 // 4}k",
                 "-bufsize", f"{shape.bitrate_kbps // 2}k", "-f", "h264", str(piece)],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            assert encoder.stdin is not None
            card = grey_card(width, height)
            for number in range(index * count, (index + 1) * count):
                encoder.stdin.write(stamped(card, number, width, height))
            _, errors = encoder.communicate()
            if encoder.returncode:
                raise RuntimeError(f"ffmpeg could not encode a piece: {errors.decode()}")
            joined.write(piece.read_bytes())
    sound = directory / "programme.pcm"
    sound.write_bytes(b"".join(programme_sound(n, shape) for n in range(len(sizes) * count)))
    out = directory / "programme.ts"
    # The raw H.264 has no timestamps: the frame rate gives them (pts = dts, no B-frames).
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-fflags", "+genpts", "-framerate", str(shape.fps), "-f", "h264", "-i", str(video),
         "-f", "s16le", "-ar", str(RATE), "-ac", "2", "-i", str(sound),
         "-c:v", "copy", "-bsf:v", "setts=pts=DTS", "-c:a", "aac", "-b:a", "96k",
         "-f", "mpegts", "-muxrate", str(MUXRATE_BPS), "-muxdelay", "0.1",
         "-pes_payload_size", "0", str(out)],
        check=True, capture_output=True, timeout=60)
    return out


@dataclass
class PacedFeed:
    """A recorded constant-rate MPEG-TS sent live over ONE SRT connection: ``srt-live-transmit``
    reads it from its stdin (written at the mux rate, from the first byte once the player has
    connected) and serves it as an SRT listener that the box calls at ``url``.

    ``started_at``: wall-clock time the first byte went out; the stream's second ``t`` is
    sent at ``started_at + t``.
    """

    directory: Path
    programme: Path
    muxrate_bps: int = MUXRATE_BPS
    srt_latency_ms: int = 120
    connect_timeout_s: float = 15.0
    started_at: float | None = None

    def __post_init__(self) -> None:
        self.srt_port = free_udp_port()
        self._transmit: subprocess.Popen[bytes] | None = None
        self._log = self.directory / "srt-live-transmit-paced.log"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True, name="paced-feed")
        self.finished = threading.Event()

    @property
    def url(self) -> str:
        return f"srt://{LOCALHOST}:{self.srt_port}?latency={self.srt_latency_ms * 1000}"

    def __enter__(self) -> PacedFeed:
        # No auto-reconnect: one connection, the whole stream through it.
        self._transmit = subprocess.Popen(
            ["srt-live-transmit", "-a:no", f"-chunk:{TS_CHUNK}", "file://con",
             f"srt://{LOCALHOST}:{self.srt_port}?mode=listener&latency={self.srt_latency_ms}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log.open("wb"))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)
        if self._transmit is not None:
            stop_process(self._transmit, timeout_s=3)

    def _send(self) -> None:
        # srt-live-transmit drops what it reads before a caller is there: wait for the player.
        deadline = time.monotonic() + self.connect_timeout_s
        while b"Accepted SRT target connection" not in self._log.read_bytes():
            if time.monotonic() > deadline or self._stopping.wait(0.02):
                return
        transmit = self._transmit
        assert transmit is not None and transmit.stdin is not None
        data = self.programme.read_bytes()
        per_s = self.muxrate_bps / 8
        self.started_at = time.time()
        start = time.monotonic()
        try:
            for offset in range(0, len(data), TS_CHUNK):
                delay = start + offset / per_s - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    return
                transmit.stdin.write(data[offset:offset + TS_CHUNK])
                transmit.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return
        self.finished.set()
