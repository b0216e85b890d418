"""The encoders: libx264 for the camera's frames, AAC (or Opus) for the microphone's periods.

Both are PyAV codec contexts, opened when made; a failure to open is a
:class:`~diemcau.media.defs.MediaFault`. :func:`x264_options` is the one
place the H.264 settings are written (the muxer's RTSP track and the
benchmarks use it too).

    x264 = X264(PROFILES["720p30"], kbps=1500)
    packets = x264.encode(frame, keyframe=False)
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from .defs import GOP_S, MPEG_TS_TIME_BASE, X264_PRESET, MediaFault, VideoProfile

if TYPE_CHECKING:
    import av

    from ..config import Media


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


class X264:
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


class AudioEncoder:
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
