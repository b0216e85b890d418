"""A real media server stand-in: Debian's ``ffmpeg`` listening for one SRT caller.

``SrtListener`` runs ``ffmpeg -i srt://127.0.0.1:PORT?mode=listener ...`` and
copies what arrives, untouched (``-c copy``), into a new ``.ts`` file per
start. ``read_recording`` decodes such a file with PyAV and reads the frame
stamp of every picture, so a test can say exactly which frames arrived.

    listener = SrtListener(tmp_path)
    listener.start()
    ...  # the box publishes to listener.url
    recording = read_recording(listener.stop())
    assert recording.frame_numbers == sorted(recording.frame_numbers)

An ffmpeg listener takes one caller; when that caller hangs up, ffmpeg
finishes the file and exits. Call ``start()`` again (or ``restart()``) to
take the next one. The last frames a sender writes before it closes can be
lost in SRT's buffers: compare counts with a tolerance.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from diemcau.media import framestamp

from .broker import free_port
from .process import stop_process

_LOCALHOST = "127.0.0.1"


def free_udp_port() -> int:
    """A UDP port on loopback that nobody is bound to right now (below the ephemeral range)."""
    return free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """A TCP port on loopback that nobody is bound to right now (below the ephemeral range)."""
    return free_port(socket.SOCK_STREAM)


def udp_port_bound(port: int) -> bool:
    """Whether some process has a UDP socket bound to ``port`` (IPv4 or IPv6)."""
    return port_bound(port, "udp")


def port_bound(port: int, protocol: str = "udp", prefix: list[str] | None = None) -> bool:
    """Whether a ``protocol`` ("udp" or "tcp") socket is bound to ``port``.

    ``prefix`` (``["ip", "netns", "exec", NAME]``) looks in another network
    namespace. A TCP socket counts once it listens.
    """
    wanted = f":{port:04X}"
    for table in (f"/proc/net/{protocol}", f"/proc/net/{protocol}6"):
        if prefix:
            done = subprocess.run([*prefix, "cat", table], capture_output=True, text=True,
                                  check=False, timeout=10)
            text = done.stdout
        else:
            try:
                with open(table, encoding="ascii") as rows:
                    text = rows.read()
            except OSError:
                continue
        for row in text.splitlines()[1:]:
            columns = row.split()
            if len(columns) > 3 and columns[1].endswith(wanted) \
                    and (protocol == "udp" or columns[3] == "0A"):  # 0A: LISTEN
                return True
    return False


class SrtListener:
    """``ffmpeg`` as an SRT listener on loopback, saving each caller's stream to a .ts file.

    ``latency_ms`` is the listener's SRT latency (SRT uses the larger of the
    two sides'); ``port`` defaults to a free one. ffmpeg's own messages go to
    ``ffmpeg-<n>.log`` beside the recordings, for when a test fails.
    """

    def __init__(self, directory: Path, port: int | None = None, *, latency_ms: int = 120,
                 passphrase: str | None = None, host: str = _LOCALHOST,
                 prefix: list[str] | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_udp_port()
        self.latency_ms = latency_ms
        self.passphrase = passphrase
        self.host = host
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME]: run it elsewhere
        self.recordings: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        """What the box publishes to (a caller URL, without options)."""
        return f"srt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_text(self) -> str:
        """ffmpeg's messages for the latest start."""
        return self._log.read_text(errors="replace") if self._log and self._log.exists() else ""

    def start(self, ready_timeout_s: float = 10.0) -> Path:
        """Start listening; return once the UDP port is bound. Returns the new recording's path."""
        if self.running:
            raise RuntimeError("the listener is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        n = len(self.recordings) + 1
        path = self.directory / f"received-{n}.ts"
        self._log = self.directory / f"ffmpeg-{n}.log"
        command = [*self.prefix, "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning",
                   "-y", *self._input(), "-map", "0", "-c", "copy", "-f", "mpegts", str(path)]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)
        self.recordings.append(path)
        deadline = time.monotonic() + ready_timeout_s
        while not self._bound():
            if self._process.poll() is not None:
                raise RuntimeError(f"ffmpeg listener exited at once:\n{self.log_text}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ffmpeg did not bind port {self.port}:\n{self.log_text}")
            time.sleep(0.02)
        return path

    def _input(self) -> list[str]:
        # SRT's latency is in microseconds in FFmpeg's URL options.
        source = f"{self.url}?mode=listener&latency={self.latency_ms * 1000}"
        if self.passphrase:
            source += f"&passphrase={self.passphrase}"
        return ["-i", source]

    def _bound(self) -> bool:
        return port_bound(self.port, "udp", self.prefix)

    def wait(self, timeout_s: float) -> bool:
        """Wait for ffmpeg to exit by itself (the caller hung up); True if it did."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout_s: float = 10.0) -> Path:
        """Let ffmpeg finish the file (SIGTERM, then SIGKILL); return the latest recording."""
        if self._process is not None:
            stop_process(self._process, timeout_s=timeout_s)
        self._process = None
        return self.recordings[-1]

    def kill(self) -> None:
        """The server disappears: SIGKILL, no goodbye to the caller."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused one too
            process.kill()
            process.wait()
        self._process = None

    def pause(self) -> None:
        """The server stops reading (SIGSTOP): its socket fills, nothing is acknowledged."""
        if self._process is None:
            raise RuntimeError("the listener is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Reading again (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> Path:
        """Kill and start again on the same port, into a new recording."""
        self.kill()
        return self.start()

    def __enter__(self) -> SrtListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@dataclass
class Recording:
    """What a received MPEG-TS file holds, as a receiver would see it."""

    path: Path
    frame_numbers: list[int | None] = field(default_factory=list)  # per picture; None: no stamp
    keyframes: list[bool] = field(default_factory=list)  # per picture, beside frame_numbers
    # per picture, beside frame_numbers: decoded after a damaged packet and before
    # the next keyframe, so the decoder may have painted it from an older picture
    concealed: list[bool] = field(default_factory=list)
    packet_keyframes: list[bool] = field(default_factory=list)  # per video packet, file order
    width: int = 0
    height: int = 0
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_sample_rate: int = 0
    audio_channels: int = 0
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # mono, -1..1

    @property
    def stamped(self) -> list[int]:
        """The frame numbers that could be read, in arrival order."""
        return [n for n in self.frame_numbers if n is not None]

    @property
    def stamped_undamaged(self) -> list[int]:
        """The frame numbers read from pictures that no lost packet touched.

        After a lost packet the decoder conceals: it paints what is missing from
        an earlier picture, stamp strip included, until the next keyframe. A
        receiver trusts such pictures again from that keyframe; so does this.
        """
        return [n for n, concealed in zip(self.frame_numbers, self.concealed, strict=True)
                if n is not None and not concealed]

    def dominant_frequency_hz(self) -> float:
        """The strongest frequency in the audio (numpy FFT over all of it)."""
        if self.audio.size < 2 or not self.audio_sample_rate:
            return 0.0
        window = np.hanning(self.audio.size)
        spectrum = np.abs(np.fft.rfft(self.audio * window))
        spectrum[0] = 0.0  # DC says nothing about a tone
        freqs = np.fft.rfftfreq(self.audio.size, 1 / self.audio_sample_rate)
        return float(freqs[int(np.argmax(spectrum))])


def _luma(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width]


def read_recording(path: Path) -> Recording:
    """Decode ``path`` and read the frame stamp of every picture.

    A damaged packet (the tail of a stream cut off mid-packet) is skipped,
    as a receiver would. A packet is damaged when the demuxer saw TS packets
    missing in it (a continuity-counter gap: SRT dropped what came too late)
    or the decoder refused it; pictures from then to the next keyframe are
    marked ``concealed``.
    """
    rec = Recording(path)
    if not path.exists() or path.stat().st_size == 0:
        return rec
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is not None:
            rec.video_codec = video.codec_context.name
        if audio is not None:
            rec.audio_codec = audio.codec_context.name
            rec.audio_sample_rate = audio.codec_context.sample_rate
            rec.audio_channels = audio.codec_context.channels
        damaged_pts: set[int | None] = set()  # the video packets that lost TS packets
        concealing = False  # a damaged picture decoded since the last keyframe
        for packet in container.demux(*[s for s in (video, audio) if s is not None]):
            if packet.size == 0:
                continue  # a flush marker at the end of the file
            if packet.stream is video:
                rec.packet_keyframes.append(bool(packet.is_keyframe))
                if packet.is_corrupt:
                    damaged_pts.add(packet.pts)
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                if packet.stream is video:
                    concealing = True
                continue
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    # Frames carry their packet's pts (the decoder may hold a few back).
                    if frame.pts in damaged_pts:
                        concealing = True
                    elif frame.key_frame:
                        concealing = False
                    rec.concealed.append(concealing)
                    rec.width, rec.height = frame.width, frame.height
                    gray = frame if frame.format.name in ("yuv420p", "yuvj420p") else \
                        frame.reformat(format="yuv420p")
                    rec.frame_numbers.append(framestamp.read(_luma(gray)))
                    rec.keyframes.append(bool(frame.key_frame))
                elif isinstance(frame, av.AudioFrame):
                    samples = frame.to_ndarray().astype(np.float32)
                    if frame.format.is_planar:
                        chunks.append(samples.mean(axis=0))
                    else:
                        chunks.append(samples.reshape(-1, frame.layout.channels).mean(axis=1))
    if chunks:
        audio_samples = np.concatenate(chunks)
        if np.issubdtype(audio_samples.dtype, np.integer):
            audio_samples = audio_samples / 32768.0
        rec.audio = audio_samples.astype(np.float32)
    return rec


def save_frame_png(ts_path: Path, png_path: Path, index: int = -1) -> int | None:
    """Save picture number ``index`` (in arrival order; -1: the last) of ``ts_path`` as PNG.

    Returns the frame number read from that picture's stamp, or None.
    """
    chosen: av.VideoFrame | None = None
    with av.open(str(ts_path)) as container:
        frames = []
        for packet in container.demux(video=0):
            try:
                frames.extend(packet.decode())
            except av.error.InvalidDataError:
                continue
            if index >= 0 and len(frames) > index:
                break
        if frames:
            chosen = frames[index] if -len(frames) <= index < len(frames) else None
    if chosen is None:
        raise ValueError(f"{ts_path} has no picture number {index}")
    number = framestamp.read(_luma(chosen.reformat(format="yuv420p")))
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = chosen.width, chosen.height, "rgb24"
    packets = encoder.encode(chosen.reformat(format="rgb24")) + encoder.encode(None)
    png_path.write_bytes(b"".join(bytes(p) for p in packets))
    return number


class RtspListener(SrtListener):
    """``ffmpeg -rtsp_flags listen``: an RTSP server that takes one publisher over TCP.

    Same use as :class:`SrtListener`; the box publishes to ``url`` (``rtsp://``).
    """

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/live/m-e2e"

    def _input(self) -> list[str]:
        return ["-rtsp_flags", "listen", "-rtsp_transport", "tcp", "-timeout", "30",
                "-i", self.url]

    def _bound(self) -> bool:
        return port_bound(self.port, "tcp", self.prefix)
