"""The muxer: the network thread's packets into one connection's container (MPEG-TS or RTSP)."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .defs import (
    MIN_IO_TIMEOUT_MS,
    MPEG_TS_TIME_BASE,
    TS_CHUNK,
    LinkError,
    MediaFault,
    VideoProfile,
)
from .encoders import x264_options
from .link import Link
from .urls import ffmpeg_error_text, redact

if TYPE_CHECKING:
    import av

    from ..config import Media

log = logging.getLogger("diemcau.media")


class Muxer:
    """One connection's container: MPEG-TS into a :class:`Link`, or FFmpeg's RTSP muxer.

    It only muxes packets encoded elsewhere. PyAV opens an encoder for each
    stream it adds, to fill in the stream's parameters; those encoders are
    never fed (the video one is made as cheap as x264 allows).
    """

    def __init__(self, target: Link | str, video: VideoProfile | None, cfg: Media) -> None:
        import av

        self.link = target if isinstance(target, Link) else None
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
