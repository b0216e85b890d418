"""The media path: camera and microphone → H.264 + AAC → MPEG-TS → SRT to the media server.

One :class:`MediaSession` per joined meeting. ``start()`` returns at once; a
worker thread captures, encodes and sends until ``stop()``. The thread tells
the supervisor what happens only by posting events:

    starting ──▶ live (first bytes sent) ──▶ reconnecting ──▶ live ... ──▶ off
        └──────▶ error (fatal: no encoder, no microphone, no camera) ──▶ off

plus :class:`StreamFiguresUpdated` about once a second.

    session = MediaSession(cfg.media, request, events.put_nowait, device_id="c00001-01")
    session.start()
    ...
    session.stop()      # "off" follows once the thread has finished

Sources: the test pattern is FFmpeg's ``testsrc2`` through PyAV's ``lavfi``
input, with the frame number drawn in twice (as text, and as a strip that
:mod:`diemcau.adapters.framestamp` reads back); the microphone is ALSA
through pyalsaaudio. Neither is paced by itself off a Pi, so the thread paces
both on ``time.monotonic``: each frame and each audio period is taken when it
is due, and a camera and microphone keep running while the network is down
(what they capture then is counted as dropped).

The network: PyAV opens an output URL while holding the GIL, so an SRT
handshake with a dead server would freeze every thread of the box (the
supervisor, MQTT keep-alives) for the whole connect timeout. So PyAV muxes
MPEG-TS into :class:`_Link`, which sends it through FFmpeg's own ``srt://``
protocol called through ctypes: the same code and URL options, without the
GIL, and cut short by an interrupt callback the moment ``stop()`` is called.
See ``docs/media.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..core.backoff import backoff_delay
from ..core.events import StreamChanged, StreamFiguresUpdated, StreamState

if TYPE_CHECKING:
    import av

    from ..config import Media
    from ..core.meeting import StreamRequest
    from .camera import Camera
    from .microphone import Microphone

log = logging.getLogger("diemcau.media")


@dataclass(frozen=True, slots=True)
class VideoProfile:
    """A picture size and rate, and the H.264 bitrate that suits it."""

    width: int
    height: int
    fps: int
    bitrate_kbps: int


# "audio" has no entry: no video track at all.
PROFILES: dict[str, VideoProfile] = {
    "720p30": VideoProfile(1280, 720, 30, 1500),
    "480p25": VideoProfile(854, 480, 25, 800),
    "360p15": VideoProfile(640, 360, 15, 400),
}

FIGURES_INTERVAL_S = 1.0
GOP_S = 2
X264_PRESET = "veryfast"
# A connection that carried media this long counts as good: the next failure
# starts the backoff from the shortest delay again.
STABLE_S = 10.0
# Never let a single SRT write wait longer than this, whatever the config says.
MIN_IO_TIMEOUT_MS = 1000
AUDIO_PERIOD_S = 0.02
# Seven 188-byte TS packets: the payload of one SRT packet.
TS_CHUNK = 7 * 188
SILENCE_DBFS = -100.0


class MediaFault(Exception):
    """Something retrying cannot fix (no encoder, no microphone, no camera, a bad URL)."""


class LinkError(Exception):
    """The media server cannot be reached, refused us, or went away: retry."""


# ---------------------------------------------------------------- the URL


def publish_url(url: str, *, meeting_id: str, device_id: str, cfg: Media) -> str:
    """The SRT caller URL to open, with the box's defaults for options the URL lacks.

    Adds ``streamid=publish:{meeting_id}/{device_id}``, ``latency`` (µs, from
    ``srt_latency_ms``), ``connect_timeout`` (ms) and ``timeout`` (µs, the
    longest one write may wait). The centre's own options are kept verbatim,
    as FFmpeg reads them: everything after the first ``?``, split at ``&``
    (so a ``#!::r=...`` stream id is data, not a URL fragment).

        >>> from diemcau.config import Media
        >>> url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="b1",
        ...                   cfg=Media())
        >>> url.split("&")  # doctest: +NORMALIZE_WHITESPACE
        ['srt://media.example:9000?mode=caller', 'streamid=publish:m1/b1', 'latency=200000',
         'connect_timeout=3000', 'timeout=3000000']
    """
    base, _, query = url.partition("?")
    scheme = urlsplit(base).scheme
    if scheme != "srt":
        raise MediaFault(f"publishing over {scheme}:// is not supported yet (only srt://)")
    present = {item.partition("=")[0] for item in query.split("&")}
    io_timeout_ms = max(cfg.connect_timeout_ms, MIN_IO_TIMEOUT_MS)
    defaults = [
        ("mode", "caller"),
        ("streamid", f"publish:{meeting_id}/{device_id}"),
        ("latency", str(cfg.srt_latency_ms * 1000)),  # FFmpeg wants microseconds
        ("connect_timeout", str(cfg.connect_timeout_ms)),  # ...but milliseconds here
        ("timeout", str(io_timeout_ms * 1000)),  # microseconds again
    ]
    added = "&".join(f"{key}={value}" for key, value in defaults if key not in present)
    query = "&".join(part for part in (query, added) if part)
    return f"{base}?{query}" if query else base


def redact(url: str) -> str:
    """``scheme://host:port`` only: stream ids and passphrases stay out of logs."""
    parts = urlsplit(url.partition("?")[0])
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


_URL_QUERY = re.compile(r"(srt://[^\s?]*)\?\S*")


class _RedactUrls(logging.Filter):
    """Cut the query (stream id, passphrase) off SRT URLs in FFmpeg's own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "srt://" in text:
            record.msg, record.args = _URL_QUERY.sub(r"\1?…", text), ()
        return True


def _redact_ffmpeg_logs() -> None:
    # PyAV logs FFmpeg's messages under "libav.<component>"; logger filters are
    # not inherited, so the SRT protocol's own logger gets it.
    srt_log = logging.getLogger("libav.srt")
    if not any(isinstance(f, _RedactUrls) for f in srt_log.filters):
        srt_log.addFilter(_RedactUrls())


# ---------------------------------------------------------------- the network link


class _Avio:
    """libavformat's own I/O calls through ctypes: the library PyAV has loaded, used off the GIL.

    ctypes releases the GIL for the length of each call, which PyAV does not
    do when it opens an output URL.
    """

    WRITE = 2  # AVIO_FLAG_WRITE

    def __init__(self) -> None:
        import ctypes

        import av

        major = av.library_versions["libavformat"][0]
        try:
            lib = ctypes.CDLL(f"libavformat.so.{major}")
        except OSError as exc:
            raise MediaFault(f"cannot load FFmpeg's libavformat for the network: {exc}") from None
        self.callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

        class InterruptCB(ctypes.Structure):  # AVIOInterruptCB
            _fields_ = [("callback", self.callback_type), ("opaque", ctypes.c_void_p)]

        class Head(ctypes.Structure):
            # AVIOContext's public fields up to ``error``; the same since FFmpeg 4.
            _fields_ = [("av_class", ctypes.c_void_p), ("buffer", ctypes.c_void_p),
                        ("buffer_size", ctypes.c_int), ("buf_ptr", ctypes.c_void_p),
                        ("buf_end", ctypes.c_void_p), ("opaque", ctypes.c_void_p),
                        ("read_packet", ctypes.c_void_p), ("write_packet", ctypes.c_void_p),
                        ("seek", ctypes.c_void_p), ("pos", ctypes.c_int64),
                        ("eof_reached", ctypes.c_int), ("error", ctypes.c_int)]

        self.interrupt_cb_type = InterruptCB
        self.head_type = Head
        pointer = ctypes.c_void_p
        lib.avio_open2.argtypes = [ctypes.POINTER(pointer), ctypes.c_char_p, ctypes.c_int,
                                   ctypes.POINTER(InterruptCB), pointer]
        lib.avio_open2.restype = ctypes.c_int
        lib.avio_write.argtypes = [pointer, ctypes.c_char_p, ctypes.c_int]
        lib.avio_write.restype = None
        lib.avio_flush.argtypes = [pointer]
        lib.avio_flush.restype = None
        lib.avio_closep.argtypes = [ctypes.POINTER(pointer)]
        lib.avio_closep.restype = ctypes.c_int
        self.lib = lib

    def head(self, pb: Any) -> Any:
        return self.head_type.from_address(pb.value)


_avio_api: _Avio | None = None


def _avio() -> _Avio:
    global _avio_api
    if _avio_api is None:
        _avio_api = _Avio()
    return _avio_api


def _reason(code: int) -> tuple[Exception, str]:
    """PyAV's exception for an FFmpeg error code, and its text."""
    import av.error

    exc = av.error.make_error(code)
    return exc, getattr(exc, "strerror", None) or str(exc)


class _Link:
    """One connection to the media server: bytes in, SRT packets out, never holding the GIL.

    ``cancelled`` is polled by FFmpeg (about every 100 ms while it waits);
    when it returns True the connect or write in progress ends at once.
    PyAV writes the MPEG-TS here as to a file (``write``).
    """

    def __init__(self, url: str, cancelled: Callable[[], bool]) -> None:
        import ctypes

        import av.error

        api = _avio()
        self._api = api
        self._callback = api.callback_type(lambda _opaque: 1 if cancelled() else 0)
        # FFmpeg keeps a pointer to the callback for the connection's life: keep both alive.
        self._interrupt = api.interrupt_cb_type(self._callback, None)
        self._pb = ctypes.c_void_p()
        self.bytes_sent = 0
        self._failed = False
        code = api.lib.avio_open2(ctypes.byref(self._pb), url.encode(), api.WRITE,
                                  ctypes.byref(self._interrupt), None)
        if code < 0:
            exc, reason = _reason(code)
            if isinstance(exc, av.error.ProtocolNotFoundError):
                raise MediaFault("this FFmpeg has no SRT support (PyPI's PyAV wheels lack it; "
                                 "use the distribution's python3-av)")
            if isinstance(exc, av.error.ValueError):
                raise MediaFault(f"FFmpeg rejects the publish URL {redact(url)}: {reason}")
            raise LinkError(f"cannot connect to {redact(url)}: {reason}")
        if not 0 < api.head(self._pb).buffer_size <= 1 << 20:
            self.close()
            raise MediaFault("this libavformat's AVIOContext is not laid out as expected")

    def write(self, data: bytes) -> int:
        """Send ``data`` now; LinkError if the connection is gone."""
        if self._failed or not self._pb:
            return len(data)  # already reported; PyAV's trailer may still write
        lib = self._api.lib
        lib.avio_write(self._pb, data, len(data))
        lib.avio_flush(self._pb)  # whole TS packets: send them now, not when a buffer fills
        code = self._api.head(self._pb).error
        if code < 0:
            self._failed = True
            raise LinkError(f"connection lost: {_reason(code)[1]}")
        self.bytes_sent += len(data)
        return len(data)

    def close(self) -> None:
        import ctypes

        if self._pb:
            self._api.lib.avio_closep(ctypes.byref(self._pb))


# ---------------------------------------------------------------- sources


# ---------------------------------------------------------------- encoders and muxer


class _Output:
    """Encoders and the MPEG-TS muxer for one connection; a new one (and keyframe) per connect."""

    def __init__(self, link: _Link, profile: VideoProfile | None, cfg: Media,
                 video_kbps: int) -> None:
        import av

        self.link = link
        # max_interleave_delta=1 µs: write each packet at once instead of holding
        # video back until the audio (later, in 1,024-sample AAC frames) catches
        # up; measured in make bench, capture → picture p95 went from 99 to 42 ms.
        self.container = av.open(link, "w", format="mpegts", buffer_size=4 * TS_CHUNK,
                                 container_options={"flush_packets": "1",
                                                    "max_interleave_delta": "1"})
        self.video: Any = None
        self.audio: Any = None
        try:
            if profile is not None:
                self.video = self._add_video(profile, video_kbps)
            self.audio = self._add_audio(cfg)
            self.container.start_encoding()  # opens the encoders; sends nothing yet
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaFault(f"encoder setup failed: {exc}") from None

    def _add_video(self, p: VideoProfile, kbps: int) -> Any:
        gop = GOP_S * p.fps
        stream = self.container.add_stream("libx264", rate=p.fps, options={
            "preset": X264_PRESET,
            "tune": "zerolatency",  # no lookahead, no frame delay, sliced threads
            "bf": "0",
            "g": str(gop),
            "forced-idr": "1",  # a requested keyframe is an IDR a receiver can start from
            # VBV: a one-second buffer keeps the rate steady on a weak uplink.
            "maxrate": f"{kbps}k",
            "bufsize": f"{kbps}k",
        })
        stream.width, stream.height, stream.pix_fmt = p.width, p.height, "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.thread_type = "SLICE"  # libx264 reads this as sliced threads: no frame delay
        stream.codec_context.time_base = Fraction(1, p.fps)
        return stream

    def _add_audio(self, cfg: Media) -> Any:
        codec = "aac" if cfg.audio_codec == "aac" else "libopus"
        stream = self.container.add_stream(codec, rate=cfg.sample_rate_hz)
        stream.layout = "mono" if cfg.channels == 1 else "stereo"
        stream.bit_rate = cfg.audio_bitrate_kbps * 1000
        stream.codec_context.time_base = Fraction(1, cfg.sample_rate_hz)
        return stream

    def send_video(self, frame: av.VideoFrame) -> None:
        self.container.mux(self.video.encode(frame))

    def send_audio(self, frame: av.AudioFrame) -> None:
        self.container.mux(self.audio.encode(frame))

    def close(self) -> None:
        for stream in (self.video, self.audio):
            if stream is not None:
                # Drain the encoder (AAC holds two frames back, and says so when
                # closed full) and drop what comes out: this connection is ending.
                with contextlib.suppress(Exception):
                    stream.encode(None)
        try:
            self.container.close()
        except Exception as exc:  # noqa: BLE001 - the link may be gone; nothing to save
            log.debug("closing the muxer: %s", exc)
        self.link.close()


# ---------------------------------------------------------------- the session


class MediaSession:
    """Publish one meeting: capture, encode and send on a worker thread until ``stop()``.

    ``post`` receives StreamChanged and StreamFiguresUpdated; it must never
    block. ``device_id`` goes into the SRT stream id.
    """

    def __init__(self, cfg: Media, request: StreamRequest, post: Callable[[object], None], *,
                 device_id: str) -> None:
        self._cfg = cfg
        self._request = request
        self._post_raw = post
        self._device_id = device_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._muted = request.muted
        self._keyframe_wanted = False
        self._off_posted = False
        # Figures: written by the worker thread only.
        self._state: StreamState = "off"
        self._detail = ""
        self._captured = 0
        self._sent = 0
        self._dropped = 0
        self._reconnects = 0
        self._bitrate_kbps = 0.0
        self._level_dbfs: float | None = None

    # -- what the supervisor calls (any thread; each returns at once)

    def start(self) -> None:
        """Start the worker thread; returns at once."""
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a MediaSession starts once")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"media-{self._request.meeting_id}")
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish; returns at once. "off" is posted when it has."""
        self._stop.set()
        if self._thread is None and not self._off_posted:
            self._off_posted = True
            self._post(StreamChanged("off"))

    def set_muted(self, muted: bool) -> None:
        """Muted: send silence (the audio track stays, so receivers need not re-sync)."""
        self._muted = muted

    def request_keyframe(self) -> None:
        """Make the next video frame an IDR (a receiver that joined late can start)."""
        self._keyframe_wanted = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True if it has finished (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker thread

    def _post(self, event: object) -> None:
        try:
            self._post_raw(event)
        except Exception as exc:  # noqa: BLE001 - a full queue must not kill the media path
            log.warning("could not post %s: %r", type(event).__name__, exc)

    def _set_state(self, state: StreamState, detail: str = "", fatal: bool = False) -> None:
        self._state, self._detail = state, detail
        self._post(StreamChanged(state, detail, fatal))
        self._post_figures()

    def _post_figures(self) -> None:
        self._post(StreamFiguresUpdated(figures={
            "state": self._state,
            "detail": self._detail,
            "profile": self._request.profile,
            "frames_captured": self._captured,
            "frames_sent": self._sent,
            "frames_dropped": self._dropped,
            "bitrate_kbps": round(self._bitrate_kbps, 1),
            "audio_level_dbfs": self._level_dbfs,
            "reconnects": self._reconnects,
        }))

    def _run(self) -> None:
        try:
            self._set_state("starting")
            self._serve()
        except MediaFault as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - nothing may leave this thread unseen
            log.exception("media path failed")
            self._fail(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._state, self._detail, self._bitrate_kbps = "off", "", 0.0
            self._off_posted = True
            self._post_figures()
            self._post(StreamChanged("off"))

    def _fail(self, detail: str) -> None:
        log.error("media path stopped: %s", detail)
        self._set_state("error", detail, fatal=True)
        # Stay until told to stop, so "off" always answers a stop().
        self._stop.wait()

    def _serve(self) -> None:
        import av

        cfg, request = self._cfg, self._request
        profile = PROFILES.get(request.profile)
        if profile is None and request.profile != "audio":
            raise MediaFault(f"unknown profile {request.profile!r}")
        url = publish_url(request.publish_url, meeting_id=request.meeting_id,
                          device_id=self._device_id, cfg=cfg)
        if profile is not None and "libx264" not in av.codecs_available:
            raise MediaFault("no H.264 encoder: this FFmpeg has no libx264")
        audio_codec = "aac" if cfg.audio_codec == "aac" else "libopus"
        if audio_codec not in av.codecs_available:
            raise MediaFault(f"no {cfg.audio_codec} encoder: this FFmpeg has no {audio_codec}")
        video_kbps = 0
        if profile is not None:
            video_kbps = cfg.video_bitrate_kbps if cfg.video_bitrate_kbps > 0 \
                else profile.bitrate_kbps

        from .camera import open_camera
        from .microphone import Microphone

        _redact_ffmpeg_logs()
        camera = open_camera(cfg, profile, video_kbps) if profile is not None else None
        microphone = Microphone(cfg)
        try:
            if camera is not None:
                camera.open()
            microphone.open()
            log.info("publishing %s to %s (%s)", request.meeting_id, redact(url), request.profile)
            _Pump(self, camera, microphone, url, profile, video_kbps).run()
        finally:
            microphone.close()
            if camera is not None:
                camera.close()


class _Pump:
    """The worker's loop: take each frame and audio period when due, send while connected."""

    def __init__(self, session: MediaSession, camera: Camera | None,
                 microphone: Microphone, url: str, profile: VideoProfile | None,
                 video_kbps: int) -> None:
        import numpy

        self.np = numpy
        self.s = session
        self.camera = camera
        self.microphone = microphone
        self.url = url
        self.profile = profile
        self.video_kbps = video_kbps
        self.output: _Output | None = None
        self.connect_at = 0.0  # monotonic; inf while connected
        self.connected_at = 0.0  # monotonic; what was due before it is not sent
        self.live = False
        self.attempt = 0
        self.next_frame = 0  # session frame number: what the stamp says
        self.next_sample = 0  # session sample position of the next audio period
        self.frame_s = 1 / profile.fps if profile else math.inf
        # A frame this late is not worth sending: the next one is nearly due.
        self.late_s = max(2 * self.frame_s, 0.1)
        self.level_sum = 0.0
        self.level_count = 0
        self.last_bytes = 0
        self.t0 = self.last_figures = 0.0

    def run(self) -> None:
        stop = self.s._stop
        self.t0 = self.last_figures = self.connect_at = time.monotonic()
        figures_at = self.t0 + FIGURES_INTERVAL_S
        rate = self.microphone.rate_hz
        period = self.microphone.period_frames
        try:
            while not stop.is_set():
                now = time.monotonic()
                if self.output is None and now >= self.connect_at:
                    self._connect()
                    continue
                video_due = self.t0 + self.next_frame * self.frame_s if self.camera else math.inf
                audio_due = self.t0 + (self.next_sample + period) / rate
                due = min(video_due, audio_due, figures_at, self.connect_at)
                if due > now:
                    stop.wait(due - now)
                elif due == figures_at:
                    self._figures(now)
                    # After a long block (a connect), one report, not a burst of them.
                    figures_at = max(figures_at + FIGURES_INTERVAL_S, now)
                elif due == audio_due:
                    self._audio(now, audio_due)
                elif due == video_due:
                    self._video(now, video_due)
        finally:
            if self.output is not None:
                self.output.close()
                self.output = None

    # -- connecting

    def _connect(self) -> None:
        """One attempt; on failure, schedule the next with backoff."""
        s = self.s
        started = time.monotonic()
        log.info("connecting to %s", redact(self.url))
        link: _Link | None = None
        try:
            link = _Link(self.url, s._stop.is_set)
            self.output = _Output(link, self.profile, s._cfg, self.video_kbps)
        except LinkError as exc:
            if link is not None:
                link.close()
            self._retry_later(str(exc), stable=False)
            return
        except BaseException:
            if link is not None:
                link.close()
            raise
        self.connected_at = time.monotonic()
        self.connect_at = math.inf
        self.live = False
        self.last_bytes = 0
        log.info("connected to %s in %.0f ms", redact(self.url),
                 (self.connected_at - started) * 1000)

    def _retry_later(self, reason: str, *, stable: bool) -> None:
        s, cfg = self.s, self.s._cfg
        if s._stop.is_set():
            return  # the failure is our own interrupt
        if stable:
            self.attempt = 0
        delay = backoff_delay(self.attempt, cfg.reconnect_min_s, cfg.reconnect_max_s,
                              random.random)
        self.attempt += 1
        s._reconnects += 1
        self.connect_at = time.monotonic() + delay
        log.warning("%s; retrying in %.1f s", reason, delay)
        s._set_state("reconnecting", f"{reason}; retrying in {delay:.1f} s")

    def _lost(self, exc: Exception) -> None:
        """Sending failed: drop the connection and schedule the next attempt."""
        assert self.output is not None
        stable = self.live and time.monotonic() - self.connected_at >= STABLE_S
        self.output.close()
        self.output = None
        self.live = False
        reason = str(exc) if isinstance(exc, LinkError) else f"sending failed: {exc}"
        self._retry_later(reason, stable=stable)

    def _sent_some(self) -> None:
        if not self.live and self.output is not None and self.output.link.bytes_sent > 0:
            self.live = True
            self.s._set_state("live")

    # -- audio and video

    def _audio(self, now: float, due: float) -> None:
        import av

        s, np, mic = self.s, self.np, self.microphone
        data = mic.read()
        if not data:
            # An overrun lost samples: realign the timestamps with the clock.
            self.next_sample = max(self.next_sample + mic.period_frames,
                                   round((now - self.t0) * mic.rate_hz) - mic.period_frames)
            return
        samples = np.frombuffer(data, "<i2")
        values = samples.astype(np.float32)
        self.level_sum += float(np.dot(values, values))
        self.level_count += samples.size
        pts = self.next_sample
        self.next_sample += samples.size // mic.channels
        if self.output is None or due < self.connected_at:
            return
        if s._muted:
            samples = np.zeros_like(samples)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16",
                                           layout="mono" if mic.channels == 1 else "stereo")
        frame.sample_rate = mic.rate_hz
        frame.pts = pts
        frame.time_base = Fraction(1, mic.rate_hz)
        try:
            self.output.send_audio(frame)
        except (LinkError, av.error.FFmpegError) as exc:
            self._lost(exc)
            return
        self._sent_some()

    def _video(self, now: float, due: float) -> None:
        import av

        from .framestamp import stamp, strip_height

        s, np = self.s, self.np
        assert self.camera is not None and self.profile is not None
        frame = self.camera.read()
        number = self.next_frame
        self.next_frame += 1
        s._captured += 1
        if self.output is None or due < self.connected_at or now - due > self.late_s:
            s._dropped += 1
            return
        luma = frame.planes[0]
        rows = np.frombuffer(luma, np.uint8).reshape(frame.height, luma.line_size)
        stamp(number, rows[:, :frame.width])
        # Grey chroma under the strip: plain black and white blocks on screen too.
        chroma_rows = strip_height(frame.height) // 2
        for plane in frame.planes[1:]:
            np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:chroma_rows] = 128
        frame.pts = number
        frame.time_base = Fraction(1, self.profile.fps)
        # testsrc2 marks every frame as I: only a wanted keyframe may say so (a new
        # encoder starts with one by itself).
        frame.pict_type = "I" if s._keyframe_wanted else "NONE"
        s._keyframe_wanted = False
        try:
            self.output.send_video(frame)
        except (LinkError, av.error.FFmpegError) as exc:
            s._dropped += 1
            self._lost(exc)
            return
        s._sent += 1
        self._sent_some()

    # -- figures

    def _figures(self, now: float) -> None:
        s = self.s
        elapsed = max(now - self.last_figures, 1e-3)
        sent = self.output.link.bytes_sent if self.output is not None else 0
        s._bitrate_kbps = max(0, sent - self.last_bytes) * 8 / 1000 / elapsed
        self.last_bytes = sent
        self.last_figures = now
        if self.level_count:
            mean_square = self.level_sum / self.level_count / 32768.0**2
            level = 10 * math.log10(mean_square) if mean_square > 0 else SILENCE_DBFS
            s._level_dbfs = round(max(SILENCE_DBFS, level), 1)
        self.level_sum, self.level_count = 0.0, 0
        s._post_figures()
