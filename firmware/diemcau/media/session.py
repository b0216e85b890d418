"""The media path: camera and microphone → H.264 + AAC → MPEG-TS over SRT (or RTSP) to the media server.

One :class:`MediaSession` per joined meeting, on two threads. The encoding
thread (:class:`_Pump`) captures, encodes and offers each packet to a
bounded send queue (:class:`~diemcau.core.sendqueue.SendQueue`: drops video
by GOP, audio last); the network thread (:class:`_Writer`) connects,
reconnects and sends what is queued. The encoding thread never waits for
the network. Once a second it also steps the picture down or up
(:mod:`diemcau.core.abr`). The session tells the supervisor what happens
only by posting events:

    starting ──▶ live (first bytes sent) ──▶ reconnecting ──▶ live ... ──▶ off
        └──────▶ error (fatal: no encoder, no microphone, no camera) ──▶ off

plus :class:`StreamFiguresUpdated` about once a second and
:class:`MediaStepped` on every adaptive bitrate step.

    session = MediaSession(cfg.media, request, events.put_nowait, device_id="c00001-01")
    session.start()
    ...
    session.set_profile("480p25")  # media.profile
    session.stop()      # "off" follows once the threads have finished

Sources: the test pattern is FFmpeg's ``testsrc2`` through PyAV's ``lavfi``
input, with the frame number drawn in twice (as text, and as a strip that
:mod:`diemcau.media.framestamp` reads back); the microphone is ALSA
through pyalsaaudio. Neither is paced by itself off a Pi, so the encoding
thread paces both on ``time.monotonic``: each frame and each audio period is
taken when it is due, and a camera and microphone keep running while the
network is down (what they capture then is counted as dropped).

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
import errno
import logging
import math
import operator
import queue
import random
import re
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..core.abr import AbrState, Measurement, Rung, ladder
from ..core.abr import step as abr_step
from ..core.backoff import backoff_delay
from ..core.events import MediaStepped, StreamChanged, StreamFiguresUpdated, StreamState
from ..core.meeting import normalise_media_url
from ..core.scrub import scrub
from ..core.sendqueue import Kind, SendQueue
from ..core.sendqueue import Packet as QueuedPacket

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

# What a new connection's video track is declared as when the session began
# audio only (the pictures that follow carry their own size in-band).
DEFAULT_VIDEO_PROFILE = "360p15"
# The send queue: media.send_queue_ms of the top bitrate, within these bounds.
MIN_QUEUE_BYTES = 64 * 1024
MAX_QUEUE_PACKETS = 512
# SRT's own send buffer, in seconds of the top bitrate: with the sender's
# too-late drop off, a network that cannot keep up blocks the writer once
# this is full, and the box's queue (which drops by GOP) takes over.
SRT_SNDBUF_S = 0.5
MIN_SRT_SNDBUF = 64 * 1024
FIGURES_INTERVAL_S = 1.0
SRT_STATS_INTERVAL_S = 0.1
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
MPEG_TS_TIME_BASE = Fraction(1, 90_000)  # MPEG-TS's own unit, for every video timestamp
SILENCE_DBFS = -100.0


class MediaFault(Exception):
    """Something retrying cannot fix (no encoder, no microphone, no camera, a bad URL)."""


class LinkError(Exception):
    """The media server cannot be reached, refused us, or went away: retry."""


# ---------------------------------------------------------------- the URL


def publish_url(url: str, *, meeting_id: str, device_id: str, cfg: Media,
                top_kbps: int = 0) -> str:
    """The URL to publish to, with the box's defaults for options an SRT URL lacks.

    ``rtsp://`` URLs are used as given (the RTSP muxer's options are set on
    it, see ``_Muxer``). For ``srt://`` this adds
    ``streamid=publish:{meeting_id}/{device_id}``, ``latency`` (µs, from
    ``srt_latency_ms``), ``connect_timeout`` (ms), ``timeout`` (µs, the
    longest one write may wait), ``tlpktdrop=0`` and ``sndbuf`` (bytes, half
    a second at ``top_kbps`` plus the audio: SRT's own buffer stays short and
    a slow network blocks the writer, so the box's queue decides what to
    drop), and ``passphrase`` when ``srt_passphrase`` is set (AES). The
    centre's own options are kept verbatim, as FFmpeg reads them: everything
    after the first ``?``, split at ``&`` (so a ``#!::r=...`` stream id is
    data, not a URL fragment).

        >>> from diemcau.config import Media
        >>> url = publish_url("srt://media.example:9000", meeting_id="m1", device_id="b1",
        ...                   cfg=Media())
        >>> url.split("&")  # doctest: +NORMALIZE_WHITESPACE
        ['srt://media.example:9000?mode=caller', 'streamid=publish:m1/b1', 'latency=200000',
         'connect_timeout=3000', 'timeout=3000000', 'tlpktdrop=0', 'sndbuf=65536']

    The scheme and host come out in lower case (the command policy has done
    so already; this is for any other caller).
    """
    url = normalise_media_url(url)
    base, _, query = url.partition("?")
    scheme = urlsplit(base).scheme
    if scheme == "rtsp":
        return url
    if scheme != "srt":
        raise MediaFault(f"publishing over {scheme}:// is not supported (only srt:// and rtsp://)")
    present = {item.partition("=")[0] for item in query.split("&")}
    io_timeout_ms = max(cfg.connect_timeout_ms, MIN_IO_TIMEOUT_MS)
    sndbuf = max(MIN_SRT_SNDBUF, int((top_kbps + cfg.audio_bitrate_kbps) * 125 * SRT_SNDBUF_S))
    defaults = [
        ("mode", "caller"),
        ("streamid", f"publish:{meeting_id}/{device_id}"),
        ("latency", str(cfg.srt_latency_ms * 1000)),  # FFmpeg wants microseconds
        ("connect_timeout", str(cfg.connect_timeout_ms)),  # ...but milliseconds here
        ("timeout", str(io_timeout_ms * 1000)),  # microseconds again
        ("tlpktdrop", "0"),
        ("sndbuf", str(sndbuf)),
    ]
    if cfg.srt_passphrase:
        if not 10 <= len(cfg.srt_passphrase) <= 79:
            raise MediaFault("media.srt_passphrase must be 10-79 characters (SRT's rule)")
        defaults.append(("passphrase", quote(cfg.srt_passphrase, safe="")))
    added = "&".join(f"{key}={value}" for key, value in defaults if key not in present)
    query = "&".join(part for part in (query, added) if part)
    return f"{base}?{query}" if query else base


def redact(url: str) -> str:
    """``scheme://host:port`` only: stream ids and passphrases stay out of logs."""
    parts = urlsplit(url.partition("?")[0])
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def ffmpeg_error_text(exc: Exception, known: tuple[str, ...] = ()) -> str:
    """PyAV's error as a detail: FFmpeg's reason and its last error message, scrubbed.

    Not ``str(exc)``: PyAV puts the whole URL in it (the file name), passphrase
    and ``user:password@`` included, and FFmpeg's last error message may name
    another URL. ``known``: secrets to remove wherever they appear.
    """
    reason = getattr(exc, "strerror", None) or str(exc)
    entry = getattr(exc, "log", None)
    if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
        reason = f"{reason} ([{entry[1]}] {str(entry[2]).strip()})"
    return scrub(reason, known)


# scheme://host:port of a media URL in a log line, without credentials, path or options.
_URL_QUERY = re.compile(r"(?i)((?:srt|rtsp|rtsps)://)(?:[^\s/?#]*@)?([^\s?/#]*)\S*")


class _RedactUrls(logging.Filter):
    """Cut stream ids, passphrases and credentials off media URLs in FFmpeg's own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = scrub(_URL_QUERY.sub(r"\1\2/…", text))
        if clean != text:
            record.msg, record.args = clean, ()
        return True


def _redact_ffmpeg_logs() -> None:
    # PyAV logs FFmpeg's messages under "libav.<component>"; logger filters are
    # not inherited, so the SRT protocol's own logger gets it.
    for name in ("libav.srt", "libav.rtsp", "libav.tcp"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactUrls) for f in logger.filters):
            logger.addFilter(_RedactUrls())


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

        class InterruptCB(ctypes.Structure):  # AVIOInterruptCB
            _fields_ = [("callback", ctypes.c_void_p), ("opaque", ctypes.c_void_p)]

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


# SRT_TRACEBSTATS (libsrt 1.5's srt.h, CBytePerfMon) up to the fields read
# here, as type codes in declaration order; the rest of the struct is room.
_SRT_STATS_FIELDS = (
    "q msTimeStamp q pktSentTotal q pktRecvTotal i pktSndLossTotal i pktRcvLossTotal "
    "i pktRetransTotal i pktSentACKTotal i pktRecvACKTotal i pktSentNAKTotal i pktRecvNAKTotal "
    "q usSndDurationTotal i pktSndDropTotal i pktRcvDropTotal i pktRcvUndecryptTotal "
    "Q byteSentTotal Q byteRecvTotal Q byteRcvLossTotal Q byteRetransTotal Q byteSndDropTotal "
    "Q byteRcvDropTotal Q byteRcvUndecryptTotal q pktSent q pktRecv i pktSndLoss i pktRcvLoss "
    "i pktRetrans i pktRcvRetrans i pktSentACK i pktRecvACK i pktSentNAK i pktRecvNAK "
    "d mbpsSendRate d mbpsRecvRate q usSndDuration i pktReorderDistance d pktRcvAvgBelatedTime "
    "q pktRcvBelated i pktSndDrop i pktRcvDrop i pktRcvUndecrypt Q byteSent Q byteRecv "
    "Q byteRcvLoss Q byteRetrans Q byteSndDrop Q byteRcvDrop Q byteRcvUndecrypt "
    "d usPktSndPeriod i pktFlowWindow i pktCongestionWindow i pktFlightSize d msRTT "
    "d mbpsBandwidth i byteAvailSndBuf i byteAvailRcvBuf d mbpsMaxBW i byteMSS i pktSndBuf "
    "i byteSndBuf i msSndBuf"
)
SRT_STATS_BYTES = 1024  # 496 in libsrt 1.5; newer ones append fields


@dataclass(frozen=True, slots=True)
class SrtStats:
    """What SRT itself knows about the connection, for adaptive bitrate.

    ``unacked_ms``: the span of data sent but not yet acknowledged;
    ``rtt_ms``: the round trip; the totals count since the connection began.
    """

    unacked_ms: int
    rtt_ms: float
    packets_sent: int
    packets_lost: int  # reported lost by the receiver (each is sent again)


class _SrtStatsReader:
    """libsrt's ``srt_bstats`` for the socket inside FFmpeg's ``srt://`` connection.

    FFmpeg does not give the socket out, so it is read from FFmpeg's own
    structs: ``AVIOContext.opaque`` is the ``URLContext``, whose protocol is
    checked to be ``srt`` (FFmpeg's libsrt protocol) and whose ``priv_data`` starts with the SRT
    context's class and socket. If anything does not look as expected the
    reader is not made, and adaptive bitrate goes on the send queue alone.
    """

    def __init__(self, lib: Any, socket_id: int) -> None:
        import ctypes

        codes = {"q": ctypes.c_int64, "Q": ctypes.c_uint64, "i": ctypes.c_int,
                 "d": ctypes.c_double}
        items = _SRT_STATS_FIELDS.split()

        class Stats(ctypes.Structure):
            _fields_ = [(name, codes[code]) for code, name in zip(items[::2], items[1::2],
                                                                  strict=True)]

        self._lib = lib
        self._socket = socket_id
        self._buffer = ctypes.create_string_buffer(SRT_STATS_BYTES)
        self._stats = Stats.from_buffer(self._buffer)

    @classmethod
    def attach(cls, pb: Any, head: Any) -> _SrtStatsReader | None:
        import ctypes

        try:
            url_context = head.opaque
            prot, priv = (ctypes.c_void_p * 3).from_address(url_context)[1:3]
            name = ctypes.c_char_p.from_address(prot).value if prot else None
            if name != b"srt" or not priv:
                return None
            socket_id = ctypes.c_int.from_address(priv + ctypes.sizeof(ctypes.c_void_p)).value
            lib = _libsrt()
            if lib is None:
                return None
            reader = cls(lib, socket_id)
            return reader if reader.read() is not None else None
        except (OSError, ValueError, TypeError) as exc:
            log.debug("no SRT statistics: %s", exc)
            return None

    def read(self) -> SrtStats | None:
        if self._lib.srt_bstats(self._socket, self._buffer, 0) != 0:
            return None
        s = self._stats
        return SrtStats(unacked_ms=s.msSndBuf, rtt_ms=s.msRTT, packets_sent=s.pktSentTotal,
                        packets_lost=s.pktSndLossTotal)


_libsrt_handle: list[Any] = []


def _libsrt() -> Any:
    """The libsrt that libavformat was linked with (found among the loaded libraries)."""
    import ctypes

    if not _libsrt_handle:
        path = None
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                if "/libsrt" in line:
                    path = line.split(None, 5)[-1].strip()
                    break
        lib = ctypes.CDLL(path) if path else None
        if lib is not None:
            lib.srt_bstats.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            lib.srt_bstats.restype = ctypes.c_int
        _libsrt_handle.append(lib)
    return _libsrt_handle[0]


class Interrupt:
    """A flag FFmpeg polls while it connects or waits to send: once set, that call ends at once.

    FFmpeg asks its interrupt callback before every send and every 100 ms
    while it waits, several hundred times a second when live. A Python
    callback would take the GIL each time (measured: ~420 calls a second,
    about 4 ms of CPU a second plus the thread switches), so the callback is
    libc's ``strlen`` over a two-byte buffer, answered in C: "" is 0 (go
    on), "x" is 1 (give up).
    """

    def __init__(self) -> None:
        import ctypes

        self._flag = ctypes.create_string_buffer(2)
        strlen = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
        # FFmpeg copies the struct when it connects; the buffer must outlive the connection.
        self.callback = _avio().interrupt_cb_type(strlen, ctypes.addressof(self._flag))

    def set(self) -> None:
        self._flag[0] = b"x"

    def clear(self) -> None:
        self._flag[0] = b"\0"

    def is_set(self) -> bool:
        return self._flag[0] != b"\0"


class _Link:
    """One connection to the media server: bytes in, SRT packets out, never holding the GIL.

    FFmpeg polls ``interrupt`` while it connects or waits; once it is set,
    the connect or write in progress ends at once. PyAV writes the MPEG-TS
    here as to a file (``write``).
    """

    def __init__(self, url: str, interrupt: Interrupt) -> None:
        import ctypes

        import av.error

        api = _avio()
        self._api = api
        self._interrupt = interrupt  # FFmpeg reads its flag for the connection's life
        self._pb = ctypes.c_void_p()
        self.bytes_sent = 0
        self._failed = False
        code = api.lib.avio_open2(ctypes.byref(self._pb), url.encode(), api.WRITE,
                                  ctypes.byref(interrupt.callback), None)
        if code < 0:
            exc, reason = _reason(code)
            if isinstance(exc, av.error.ProtocolNotFoundError):
                raise MediaFault("this FFmpeg has no SRT support (PyPI's PyAV wheels lack it; "
                                 "use the distribution's python3-av)")
            if isinstance(exc, av.error.ValueError):
                raise MediaFault(f"FFmpeg rejects the publish URL {redact(url)}: {reason}")
            if code == -errno.EIO:
                # How FFmpeg reports an SRT handshake the server rejected; the
                # reason (libsrt's) is gone with the socket.
                secret = "passphrase=" in url.partition("?")[2]
                hint = ("a passphrase that differs from the server's (media.srt_passphrase), "
                        "or a stream id it refuses") if secret else \
                    "a stream id it refuses, or it wants a passphrase (media.srt_passphrase)"
                raise LinkError(f"{redact(url)} rejected the connection: {hint}")
            raise LinkError(f"cannot connect to {redact(url)}: {reason}")
        if not 0 < api.head(self._pb).buffer_size <= 1 << 20:
            self.close()
            raise MediaFault("this libavformat's AVIOContext is not laid out as expected")
        self.stats = _SrtStatsReader.attach(self._pb, api.head(self._pb))
        if self.stats is None:
            log.warning("SRT statistics are not available: adaptive bitrate goes on the "
                        "send queue alone")

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


def x264_options(profile: VideoProfile, kbps: int) -> dict[str, str]:
    """libx264's options for ``profile`` at ``kbps``: tuned for latency (see docs/media.md)."""
    return {
        "preset": X264_PRESET,
        "tune": "zerolatency",  # no lookahead, no frame delay, sliced threads
        "bf": "0",
        "g": str(GOP_S * profile.fps),
        "forced-idr": "1",  # a requested keyframe is an IDR a receiver can start from
        # VBV: a one-second buffer keeps the rate steady on a weak uplink.
        "maxrate": f"{kbps}k",
        "bufsize": f"{kbps}k",
    }


class _X264:
    """libx264 for one profile: the camera's frames in, H.264 (Annex B) packets out.

    Timestamps are in 1/90,000 s (MPEG-TS's own unit), so a change of profile
    (and frame rate) keeps them running on.
    """

    def __init__(self, profile: VideoProfile, kbps: int) -> None:
        import av

        self.profile = profile
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = profile.width, profile.height, "yuv420p"
        ctx.time_base = MPEG_TS_TIME_BASE
        ctx.framerate = Fraction(profile.fps, 1)
        ctx.bit_rate = kbps * 1000
        ctx.thread_type = "SLICE"  # libx264 reads this as sliced threads: no frame delay
        ctx.options = x264_options(profile, kbps)
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaFault(f"H.264 encoder setup failed: {exc}") from None
        self.ctx = ctx

    def encode(self, frame: av.VideoFrame, keyframe: bool) -> list[av.Packet]:
        # testsrc2 marks every frame as I: only a wanted keyframe may say so.
        frame.pict_type = "I" if keyframe else "NONE"
        return self.ctx.encode(frame)

    def set_bitrate(self, kbps: int) -> None:
        """Change the target rate now: libx264 reconfigures itself at the next frame, no IDR."""
        self.ctx.bit_rate = kbps * 1000


class _AudioEncoder:
    """AAC (or Opus) for the microphone's S16 periods; timestamps in samples."""

    def __init__(self, cfg: Media) -> None:
        import av

        codec = "aac" if cfg.audio_codec == "aac" else "libopus"
        self.ctx = av.CodecContext.create(codec, "w")
        self.ctx.sample_rate = cfg.sample_rate_hz
        self.ctx.layout = "mono" if cfg.channels == 1 else "stereo"
        self.ctx.format = self.ctx.codec.audio_formats[0].name
        self.ctx.bit_rate = cfg.audio_bitrate_kbps * 1000
        self.time_base = Fraction(1, cfg.sample_rate_hz)  # made once: a Fraction costs ~15 µs
        self.ctx.time_base = self.time_base
        try:
            self.ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaFault(f"audio encoder setup failed: {exc}") from None

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        return self.ctx.encode(frame)


# ---------------------------------------------------------------- the muxer and the writer


class _Muxer:
    """One connection's container: MPEG-TS into a :class:`_Link`, or FFmpeg's RTSP muxer.

    It only muxes packets encoded elsewhere. PyAV opens an encoder for each
    stream it adds, to fill in the stream's parameters; those encoders are
    never fed (the video one is made as cheap as x264 allows).
    """

    def __init__(self, target: _Link | str, video: VideoProfile | None, cfg: Media) -> None:
        import av

        self.link = target if isinstance(target, _Link) else None
        try:
            if self.link is not None:
                # max_interleave_delta=1 µs: write each packet at once instead of
                # holding video back until the audio catches up (capture → picture
                # p95 went from 99 to 42 ms in make bench).
                self.container = av.open(self.link, "w", format="mpegts",
                                         buffer_size=4 * TS_CHUNK,
                                         container_options={"flush_packets": "1",
                                                            "max_interleave_delta": "1"})
            else:
                io_timeout_us = max(cfg.connect_timeout_ms, MIN_IO_TIMEOUT_MS) * 1000
                self.container = av.open(str(target), "w", format="rtsp", container_options={
                    "rtsp_transport": "tcp", "timeout": str(io_timeout_us),
                    "max_interleave_delta": "1"})
        except av.error.FFmpegError as exc:
            raise LinkError(f"cannot open {redact(str(target))}: "
                            f"{ffmpeg_error_text(exc, (cfg.srt_passphrase,))}") from None
        self.video: Any = None
        self.audio: Any = None
        try:
            if video is not None:
                # RTSP's SDP carries this encoder's SPS: it must match the real one's
                # (profile, level). MPEG-TS carries none: the cheapest x264 will do.
                options = {**x264_options(video, video.bitrate_kbps), "threads": "1"} \
                    if self.link is None else {"preset": "ultrafast", "tune": "zerolatency",
                                               "threads": "1"}
                self.video = self.container.add_stream("libx264", rate=video.fps,
                                                       options=options)
                if self.link is None:
                    self.video.width, self.video.height = video.width, video.height
                else:
                    self.video.width, self.video.height = 128, 72  # TS carries no size
                self.video.pix_fmt = "yuv420p"
                self.video.codec_context.time_base = MPEG_TS_TIME_BASE
            codec = "aac" if cfg.audio_codec == "aac" else "libopus"
            self.audio = self.container.add_stream(codec, rate=cfg.sample_rate_hz)
            self.audio.layout = "mono" if cfg.channels == 1 else "stereo"
            self.audio.bit_rate = cfg.audio_bitrate_kbps * 1000
        except (av.error.FFmpegError, ValueError) as exc:
            self.close()
            raise MediaFault(f"muxer setup failed: {ffmpeg_error_text(exc)}") from None
        try:
            self.container.start_encoding()  # RTSP: the ANNOUNCE and SETUP happen here
        except av.error.FFmpegError as exc:
            self.close()
            raise LinkError(f"cannot publish to {redact(str(target))}: "
                            f"{ffmpeg_error_text(exc, (cfg.srt_passphrase,))}") from None

    def write(self, packet: av.Packet, kind: str) -> None:
        stream = self.video if kind == "video" else self.audio
        if stream is None:
            return
        packet.stream = stream
        self.container.mux(packet)

    def close(self) -> None:
        for stream in (self.video, self.audio):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.codec_context.close()
        try:
            self.container.close()
        except Exception as exc:  # noqa: BLE001 - the link may be gone; nothing to save
            log.debug("closing the muxer: %s", exc)
        if self.link is not None:
            self.link.close()


class _Writer:
    """The network side: connect (and reconnect), then send what the encoders queued.

    Runs on a thread of its own, so a slow or dead network blocks only it;
    the encoding thread never waits for the network, it only offers packets
    to the bounded :class:`~diemcau.core.sendqueue.SendQueue` (which drops).
    """

    def __init__(self, session: MediaSession, queue_bytes: int, queue_packets: int) -> None:
        self.s = session
        self.lock = threading.Lock()  # guards the queue
        self.queue = SendQueue(queue_bytes, queue_packets)
        # The encoding thread rings when it queues for an idle writer. A
        # SimpleQueue waits in C; threading.Condition runs Python code at every
        # wait and notify (the network thread's CPU went from 24 to 17 ms a second).
        self._doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._idle = False  # the writer found the queue empty and waits for the bell
        self.interrupt = Interrupt()  # ends a connect or send in progress (stop, reopen)
        self.connected = False  # read by the encoding thread without the lock: a hint only
        self.reopen = False  # the tracks changed: start a new connection
        self.fault: MediaFault | None = None  # what ended the network thread for good
        self.muxer: _Muxer | None = None
        self.stop = threading.Event()  # set when the encoding side has finished
        self._link_bytes = 0
        self.connect_at = 0.0
        self.connected_at = 0.0
        self.live = False
        self.attempt = 0
        self.bytes_sent = 0  # this session, all connections
        self.busy_s = 0.0  # time spent inside network writes, all connections
        # SRT's own view, sampled while sending: the worst backlog since the last
        # look, and its loss counters (totals of this connection).
        self.backlog_ms = 0.0
        self.srt_sent = 0
        self.srt_lost = 0
        self._stats_at = 0.0

    # -- the encoding thread's side

    def offer(self, kind: Kind, packets: list[av.Packet]) -> bool:
        """Queue encoded packets; True when the encoder should make a keyframe."""
        want_keyframe = False
        with self.lock:
            for packet in packets:
                item = QueuedPacket(kind, packet.size, bool(packet.is_keyframe), packet)
                want_keyframe |= self.queue.offer(item)
            ring, self._idle = self._idle, False
        if ring:
            self._doorbell.put(None)
        return want_keyframe

    def open_gap(self) -> bool:
        """Hold video back until the next keyframe; True if it was flowing until now."""
        with self.lock:
            was_open = self.queue.video_gap
            self.queue.video_gap = True
        return not was_open

    def wake(self) -> None:
        self._doorbell.put(None)

    def cancel(self) -> None:
        """End the connect or send in progress: the session stops or the tracks changed."""
        self.interrupt.set()
        self.wake()

    # -- the writer thread

    def run(self) -> None:
        try:
            self._run()
        except MediaFault as exc:
            self.fault = exc  # the encoding thread raises it: the session ends in "error"
        except Exception as exc:  # noqa: BLE001 - nothing may leave this thread unseen
            log.exception("the network thread failed")
            self.fault = MediaFault(f"internal error: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        stop = self.stop
        try:
            while not stop.is_set():
                if self.muxer is None:
                    delay = self.connect_at - time.monotonic()
                    if delay > 0:
                        stop.wait(min(delay, 0.1))
                        continue
                    self._connect()
                    continue
                if self.reopen:
                    self._drop_connection()
                    self.connect_at = 0.0
                    continue
                with self.lock:
                    item = self.queue.take()
                    self._idle = item is None
                if item is None:
                    with contextlib.suppress(queue.Empty):
                        self._doorbell.get(timeout=0.1)
                    continue
                self._send(item)
        finally:
            self._drop_connection()

    def _send(self, item: QueuedPacket) -> None:
        import av

        assert self.muxer is not None
        started = time.monotonic()
        try:
            self.muxer.write(item.payload, item.kind)  # type: ignore[arg-type]
        except (LinkError, av.error.FFmpegError, OSError) as exc:
            self._lost(exc)
            return
        finally:
            self.busy_s += time.monotonic() - started
        if item.kind == "video":
            self.s._sent += 1
        if self.muxer.link is not None:
            link_bytes = self.muxer.link.bytes_sent
            self.bytes_sent += link_bytes - self._link_bytes
            self._link_bytes = link_bytes
            self._sample_srt(self.muxer.link, started)
        else:
            self.bytes_sent += item.size_bytes  # RTSP: what the muxer was handed
        if not self.live:
            self.live = True
            self.s._set_state("live")

    def _sample_srt(self, link: _Link, now: float) -> None:
        if link.stats is None or now - self._stats_at < SRT_STATS_INTERVAL_S:
            return
        self._stats_at = now
        stats = link.stats.read()
        if stats is not None:
            self.backlog_ms = max(self.backlog_ms, stats.unacked_ms - stats.rtt_ms)
            self.srt_sent, self.srt_lost = stats.packets_sent, stats.packets_lost

    def take_srt_figures(self) -> tuple[float, int, int]:
        """(worst backlog in ms since the last call, packets sent, packets lost)."""
        backlog, self.backlog_ms = self.backlog_ms, 0.0
        return backlog, self.srt_sent, self.srt_lost

    def _connect(self) -> None:
        """One attempt; on failure, schedule the next with backoff."""
        s = self.s
        started = time.monotonic()
        url = s._url
        log.info("connecting to %s", redact(url))
        link: _Link | None = None
        self.reopen = False
        self.interrupt.clear()
        if self.stop.is_set() or s._stop.is_set():
            return  # stopped since the loop looked
        try:
            if urlsplit(url.partition("?")[0]).scheme == "srt":  # as publish_url decided
                link = _Link(url, self.interrupt)
            self.muxer = _Muxer(link if link is not None else url, s._muxer_video(), s._cfg)
        except LinkError as exc:
            if link is not None:
                link.close()
            self._retry_later(str(exc), stable=False)
            return
        except BaseException:
            if link is not None:
                link.close()
            raise
        self._link_bytes = 0
        self.srt_sent = self.srt_lost = 0
        with self.lock:
            thrown = self.queue.restart()  # what waited is stale; video restarts at a keyframe
        log.debug("%d packets queued before the connection were dropped", thrown)
        s._keyframe_wanted = True
        self.connected_at = time.monotonic()
        self.connect_at = math.inf
        self.live = False
        self.connected = True
        log.info("connected to %s in %.0f ms", redact(url), (self.connected_at - started) * 1000)

    def _retry_later(self, reason: str, *, stable: bool) -> None:
        s, cfg = self.s, self.s._cfg
        if self.stop.is_set() or s._stop.is_set():
            return  # the failure is our own interrupt
        if stable:
            self.attempt = 0
        delay = backoff_delay(self.attempt, cfg.reconnect_min_s, cfg.reconnect_max_s,
                              random.random)
        self.attempt += 1
        s._reconnects += 1
        self.connect_at = time.monotonic() + delay
        reason = scrub(reason, s._secrets)
        log.warning("%s; retrying in %.1f s", reason, delay)
        s._set_state("reconnecting", f"{reason}; retrying in {delay:.1f} s")

    def _drop_connection(self) -> None:
        self.connected = False
        self.live = False
        if self.muxer is not None:
            self.muxer.close()
            self.muxer = None

    def _lost(self, exc: Exception) -> None:
        """Sending failed: drop the connection and schedule the next attempt."""
        stable = self.live and time.monotonic() - self.connected_at >= STABLE_S
        self._drop_connection()
        reason = str(exc) if isinstance(exc, LinkError) else \
            f"sending failed: {ffmpeg_error_text(exc, self.s._secrets)}"
        self._retry_later(reason, stable=stable)


# ---------------------------------------------------------------- the session


class MediaSession:
    """Publish one meeting: capture and encode on one thread, send on another, until ``stop()``.

    ``post`` receives StreamChanged, StreamFiguresUpdated and MediaStepped;
    it must never block. ``device_id`` goes into the SRT stream id.
    """

    def __init__(self, cfg: Media, request: StreamRequest, post: Callable[[object], None], *,
                 device_id: str) -> None:
        self._cfg = cfg
        self._request = request
        self._post_raw = post
        self._device_id = device_id
        self._secrets = (cfg.srt_passphrase,) if cfg.srt_passphrase else ()
        self._url = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._muted = request.muted
        self._keyframe_wanted = False
        self._profile_wanted: str | None = None
        self._off_posted = False
        self._has_video = request.profile != "audio"
        # Figures: written by the worker threads only.
        self._state: StreamState = "off"
        self._detail = ""
        self._profile = request.profile
        self._target_kbps = 0
        self._captured = 0
        self._sent = 0
        self._dropped = 0
        self._reconnects = 0
        self._bitrate_kbps = 0.0
        self._level_dbfs: float | None = None
        self._writer: _Writer | None = None

    # -- what the supervisor calls (any thread; each returns at once)

    def start(self) -> None:
        """Start the worker thread; returns at once."""
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a MediaSession starts once")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"media-{self._request.meeting_id}")
        self._thread.start()

    def stop(self) -> None:
        """Ask the threads to finish; returns at once. "off" is posted when they have."""
        self._stop.set()
        writer = self._writer
        if writer is not None:
            writer.cancel()
        if self._thread is None and not self._off_posted:
            self._off_posted = True
            self._post(StreamChanged("off"))

    def set_muted(self, muted: bool) -> None:
        """Muted: send silence (the audio track stays, so receivers need not re-sync)."""
        self._muted = muted

    def request_keyframe(self) -> None:
        """Make the next video frame an IDR (a receiver that joined late can start)."""
        self._keyframe_wanted = True

    def set_profile(self, profile: str) -> None:
        """Switch to ``profile`` (``media.profile``); it becomes the top of the ABR ladder."""
        if profile != "audio" and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}")
        self._profile_wanted = profile

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True if it has finished (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker threads

    def _post(self, event: object) -> None:
        try:
            self._post_raw(event)
        except Exception as exc:  # noqa: BLE001 - a full queue must not kill the media path
            log.warning("could not post %s: %r", type(event).__name__, exc)

    def _set_state(self, state: StreamState, detail: str = "", fatal: bool = False) -> None:
        # What leaves the media path (status, events, replies) holds no credentials.
        detail = scrub(detail, self._secrets)
        self._state, self._detail = state, detail
        self._post(StreamChanged(state, detail, fatal))
        self._post_figures()

    def _post_figures(self) -> None:
        writer = self._writer
        queue = writer.queue if writer is not None else None
        self._post(StreamFiguresUpdated(figures={
            "state": self._state,
            "detail": self._detail,
            "profile": self._profile,
            "frames_captured": self._captured,
            "frames_sent": self._sent,
            "frames_dropped": self._dropped + (queue.dropped_video if queue else 0),
            "bitrate_kbps": round(self._bitrate_kbps, 1),
            "target_kbps": self._target_kbps,
            "audio_level_dbfs": self._level_dbfs,
            "reconnects": self._reconnects,
            "queue_packets": len(queue) if queue else 0,
            "queue_bytes": queue.bytes if queue else 0,
            "audio_dropped": queue.dropped_audio if queue else 0,
        }))

    def _muxer_video(self) -> VideoProfile | None:
        """The video track a new connection carries (None: audio only)."""
        if not self._has_video:
            return None
        return PROFILES.get(self._request.profile) or PROFILES[DEFAULT_VIDEO_PROFILE]

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
        detail = scrub(detail, self._secrets)
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
        top_kbps = profile.bitrate_kbps if profile else 0
        if cfg.video_bitrate_kbps > 0 and profile is not None:
            top_kbps = cfg.video_bitrate_kbps
        self._url = publish_url(request.publish_url, meeting_id=request.meeting_id,
                                device_id=self._device_id, cfg=cfg, top_kbps=top_kbps)
        if profile is not None and "libx264" not in av.codecs_available:
            raise MediaFault("no H.264 encoder: this FFmpeg has no libx264")
        audio_codec = "aac" if cfg.audio_codec == "aac" else "libopus"
        if audio_codec not in av.codecs_available:
            raise MediaFault(f"no {cfg.audio_codec} encoder: this FFmpeg has no {audio_codec}")

        _redact_ffmpeg_logs()
        from .microphone import Microphone  # imports this module: not at the top

        microphone = Microphone(cfg)
        pump = _Pump(self, microphone)
        try:
            microphone.open()
            pump.open_video(request.profile)
            budget_bytes = (top_kbps + cfg.audio_bitrate_kbps) * 125 * cfg.send_queue_ms // 1000
            self._writer = _Writer(self, max(budget_bytes, MIN_QUEUE_BYTES), MAX_QUEUE_PACKETS)
            self._writer_thread = threading.Thread(target=self._writer.run, daemon=True,
                                                   name=f"media-net-{request.meeting_id}")
            self._writer_thread.start()
            log.info("publishing %s to %s (%s)", request.meeting_id, redact(self._url),
                     request.profile)
            pump.run()
        finally:
            self._stop_writer()
            pump.close()
            microphone.close()

    def _stop_writer(self) -> None:
        if self._writer is not None and self._writer_thread is not None:
            self._writer.stop.set()
            self._writer.cancel()
            self._writer_thread.join()


class _Pump:
    """The encoding thread's loop: take each frame and audio period when due, encode, queue."""

    def __init__(self, session: MediaSession, microphone: Microphone) -> None:
        self.s = session
        self.microphone = microphone
        self.audio = _AudioEncoder(session._cfg)
        self.camera: Camera | None = None
        self.camera_profile: VideoProfile | None = None
        self.x264: _X264 | None = None
        self.rungs: list[Rung] = [Rung("audio", 0)]
        self.abr = AbrState()
        self.next_frame = 0  # session frame number: what the stamp says
        self.camera_frames = 0  # frames read from this camera: its pacing
        self.next_sample = 0  # session sample position of the next audio period
        self.frame_s = math.inf
        self.t0 = self.last_figures = self.frames_t0 = 0.0
        self.level_sum = 0.0
        self.level_count = 0
        self.last_bytes = 0
        self.last_busy_s = 0.0
        self.last_dropped = (0, 0)
        self.last_srt = (0, 0)  # SRT's packets sent and lost, at the last look

    # -- the camera and the ladder

    def open_video(self, top: str) -> None:
        """Open the camera for ``top`` (None for audio) and set the ABR ladder under it."""
        s, cfg = self.s, self.s._cfg
        if self.camera is not None:
            self.camera.close()
            self.camera, self.camera_profile = None, None
        self.x264 = None
        top_kbps = cfg.video_bitrate_kbps if cfg.video_bitrate_kbps > 0 else None
        self.rungs = ladder([(name, p.bitrate_kbps) for name, p in PROFILES.items()], top,
                            top_kbps=top_kbps)
        if not cfg.abr:
            self.rungs = self.rungs[:1]
        self.abr = AbrState()
        s._profile, s._target_kbps = self.rungs[0].profile, self.rungs[0].kbps
        if top == "audio":
            self.frame_s = math.inf
            return
        profile = PROFILES[top]
        from .camera import open_camera  # imports this module: not at the top

        camera = open_camera(cfg, profile, self.rungs[0].kbps)
        camera.open()
        self.camera, self.camera_profile = camera, profile
        self.frame_s = 1 / profile.fps
        self.frames_t0 = time.monotonic()
        self.camera_frames = 0

    def close(self) -> None:
        # Drain the encoders (AAC holds two frames back, and says so when closed
        # full) and drop what comes out: the session is ending.
        for encoder in (self.audio, self.x264):
            if encoder is not None:
                with contextlib.suppress(Exception):
                    encoder.ctx.encode(None)
        if self.camera is not None:
            self.camera.close()
            self.camera = None

    # -- the loop

    def run(self) -> None:
        s = self.s
        stop = s._stop
        self.t0 = self.last_figures = self.frames_t0 = time.monotonic()
        figures_at = self.t0 + FIGURES_INTERVAL_S
        rate = self.microphone.rate_hz
        period = self.microphone.period_frames
        while not stop.is_set():
            if s._writer is not None and s._writer.fault is not None:
                raise s._writer.fault
            if s._profile_wanted is not None:
                self._switch_profile(s._profile_wanted)
            now = time.monotonic()
            video_due = self.frames_t0 + self.camera_frames * self.frame_s if self.camera \
                else math.inf
            audio_due = self.t0 + (self.next_sample + period) / rate
            due = min(video_due, audio_due, figures_at)
            if due > now:
                # Not stop.wait(): Event.wait's Python code costs more CPU than
                # the sleep, 80 times a second. Nothing is due more than an
                # audio period away, so a stop is seen within one.
                time.sleep(due - now)
            elif due == figures_at:
                self._figures(now)
                # After a long block, one report, not a burst of them.
                figures_at = max(figures_at + FIGURES_INTERVAL_S, now)
            elif due == audio_due:
                self._audio(now)
            else:
                self._video(now, video_due)

    def _switch_profile(self, profile: str) -> None:
        s = self.s
        s._profile_wanted = None
        log.info("profile %s requested", profile)
        self.open_video(profile)
        s._keyframe_wanted = True
        if profile != "audio" and not s._has_video:
            # The connection has no video track: the next one will.
            s._has_video = True
            if s._writer is not None:
                s._writer.reopen = True
                s._writer.cancel()

    # -- audio and video

    def _audio(self, now: float) -> None:
        import av

        s, mic = self.s, self.microphone
        data = mic.read()
        if not data:
            # An overrun lost samples: realign the timestamps with the clock.
            self.next_sample = max(self.next_sample + mic.period_frames,
                                   round((now - self.t0) * mic.rate_hz) - mic.period_frames)
            return
        # The level in plain Python: numpy here would cost its import (~20 MB
        # resident, a BLAS thread pool) for one sum of squares per period.
        samples = array("h", data)
        if sys.byteorder == "big":
            samples.byteswap()  # ALSA gave S16_LE
        self.level_sum += sum(map(operator.mul, samples, samples))
        self.level_count += len(samples)
        pts = self.next_sample
        self.next_sample += len(samples) // mic.channels
        writer = s._writer
        if writer is None or not writer.connected:
            return  # nobody to send to: no point encoding
        if s._muted:
            data = bytes(len(data))
        frame = av.AudioFrame(format="s16", layout="mono" if mic.channels == 1 else "stereo",
                              samples=len(samples) // mic.channels)
        frame.planes[0].update(data)
        frame.sample_rate = mic.rate_hz
        frame.pts = pts
        frame.time_base = self.audio.time_base
        if writer.offer("audio", self.audio.encode(frame)):
            s._keyframe_wanted = True

    def _video(self, now: float, due: float) -> None:
        s = self.s
        assert self.camera is not None and self.camera_profile is not None
        item = self.camera.read()
        number, index = self.next_frame, self.camera_frames
        self.next_frame += 1
        self.camera_frames += 1
        s._captured += 1
        rung = self.rungs[self.abr.index]
        writer = s._writer
        encodes = self.camera.encodes
        late = now - due > max(2 * self.frame_s, 0.1)
        if writer is None or not writer.connected or rung.profile == "audio" or (
                not encodes and (late or not self._take(index, PROFILES[rung.profile].fps))):
            s._dropped += 1
            if encodes and writer is not None and writer.open_gap():
                # The camera's stream goes on without this packet: what follows
                # refers to it, so video waits for the keyframe asked for here.
                s._keyframe_wanted = True
            return
        if encodes:
            if s._keyframe_wanted:
                s._keyframe_wanted = False
                self.camera.request_keyframe()
            # The camera counts time from its own first packet, the session from its start.
            shift = round((self.frames_t0 - self.t0) / item.time_base)
            item.pts += shift
            if item.dts is not None:
                item.dts += shift
            packets = [item]
        else:
            packets = self._encode(item, number, due, PROFILES[rung.profile], rung.kbps)
        if writer.offer("video", packets):
            s._keyframe_wanted = True

    def _take(self, index: int, fps: int) -> bool:
        """Whether the camera's frame ``index`` is one of the frames a lower rate keeps."""
        assert self.camera_profile is not None
        cam_fps = self.camera_profile.fps
        if fps >= cam_fps or index == 0:
            return True
        return index * fps // cam_fps != (index - 1) * fps // cam_fps

    def _encode(self, frame: av.VideoFrame, number: int, due: float, profile: VideoProfile,
                kbps: int) -> list[av.Packet]:
        from .framestamp import stamp_frame

        s = self.s
        if (frame.width, frame.height) != (profile.width, profile.height):
            frame = frame.reformat(width=profile.width, height=profile.height)
        if self.x264 is None or self.x264.profile != profile:
            self.x264 = _X264(profile, kbps)  # starts with an IDR by itself
            s._keyframe_wanted = False
        stamp_frame(number, frame)
        frame.pts = round((due - self.t0) * 90_000)
        frame.time_base = MPEG_TS_TIME_BASE
        keyframe, s._keyframe_wanted = s._keyframe_wanted, False
        return self.x264.encode(frame, keyframe)

    # -- figures and the ladder

    def _figures(self, now: float) -> None:
        s = self.s
        elapsed = max(now - self.last_figures, 1e-3)
        writer = s._writer
        if writer is not None:
            sent, busy = writer.bytes_sent, writer.busy_s
            s._bitrate_kbps = max(0, sent - self.last_bytes) * 8 / 1000 / elapsed
            with writer.lock:
                queue = writer.queue
                dropped = (queue.dropped_video, queue.dropped_audio)
                fill = queue.bytes / queue.max_bytes
            backlog_ms, srt_sent, srt_lost = writer.take_srt_figures()
            if srt_sent < self.last_srt[0]:
                self.last_srt = (0, 0)  # a new connection
            sent_packets = srt_sent - self.last_srt[0]
            measured = Measurement(
                queue_fill=fill, stalled_fraction=min(1.0, (busy - self.last_busy_s) / elapsed),
                dropped_video=dropped[0] - self.last_dropped[0],
                dropped_audio=dropped[1] - self.last_dropped[1],
                backlog_fraction=max(0.0, backlog_ms) / max(1, s._cfg.srt_latency_ms),
                loss_fraction=(srt_lost - self.last_srt[1]) / sent_packets if sent_packets else 0.0)
            self.last_bytes, self.last_busy_s, self.last_dropped = sent, busy, dropped
            self.last_srt = (srt_sent, srt_lost)
            if writer.live and len(self.rungs) > 1:
                self._adapt(measured)
        self.last_figures = now
        if self.level_count:
            mean_square = self.level_sum / self.level_count / 32768.0**2
            level = 10 * math.log10(mean_square) if mean_square > 0 else SILENCE_DBFS
            s._level_dbfs = round(max(SILENCE_DBFS, level), 1)
        self.level_sum, self.level_count = 0.0, 0
        s._post_figures()

    def _adapt(self, measured: Measurement) -> None:
        s = self.s
        log.debug("network: %s", measured)
        self.abr, change = abr_step(self.abr, measured, self.rungs)
        if change is None:
            return
        rung = change.rung
        log.info("stepping %s to %s at %d kb/s: %s", change.direction, rung.profile, rung.kbps,
                 change.reason)
        s._profile, s._target_kbps = rung.profile, rung.kbps
        if change.previous.profile == "audio":
            s._keyframe_wanted = True  # the pictures start again: from a keyframe
        if rung.profile == "audio":
            self.x264 = None  # frees the encoder; a new one starts with an IDR
        elif self.camera is not None and self.camera.encodes:
            self.camera.set_bitrate(rung.kbps)
        elif self.x264 is not None and self.x264.profile == PROFILES[rung.profile]:
            self.x264.set_bitrate(rung.kbps)
        s._post(MediaStepped(rung.profile, rung.kbps, change.direction, change.reason))
