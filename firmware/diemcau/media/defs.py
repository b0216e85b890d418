"""The media path's vocabulary: its faults, the profile table, and the numbers its parts agree on.

A leaf: it imports nothing of diemcau, so every other module of the media
path (and a test, a benchmark, a child process) can import it without
pulling in the rest. The profile *names* are the protocol's (``meeting.join``
and ``media.profile`` carry them); the table of what each name means for the
camera and the encoder is here, once.

    >>> PROFILES["480p25"]
    VideoProfile(width=854, height=480, fps=25, bitrate_kbps=800)
    >>> top_kbps(PROFILES["480p25"], configured_kbps=0), top_kbps(PROFILES["480p25"], 600)
    (800, 600)
    >>> top_kbps(None, configured_kbps=600)  # audio only
    0
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


class MediaFault(Exception):
    """Something retrying cannot fix (no encoder, no microphone, no camera, a bad URL)."""


class LinkError(Exception):
    """The media server cannot be reached, refused us, or went away: retry."""


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


def top_kbps(profile: VideoProfile | None, configured_kbps: int) -> int:
    """The video bitrate at the top of the ladder: ``media.video_bitrate_kbps``, 0 meaning
    the profile's own; 0 for no pictures (``profile`` None: audio only)."""
    if profile is None:
        return 0
    return configured_kbps if configured_kbps > 0 else profile.bitrate_kbps


# A keyframe every GOP_S seconds, whoever encodes (x264, the Pi 4's encoder).
GOP_S = 2
X264_PRESET = "veryfast"
MPEG_TS_TIME_BASE = Fraction(1, 90_000)  # MPEG-TS's own unit, for every video timestamp
# Seven 188-byte TS packets: the payload of one SRT packet.
TS_CHUNK = 7 * 188
AUDIO_PERIOD_S = 0.02
SILENCE_DBFS = -100.0

# The send queue: media.send_queue_ms of the top bitrate, within these bounds.
MIN_QUEUE_BYTES = 64 * 1024
MAX_QUEUE_PACKETS = 512
# SRT's own send buffer, in seconds of the top bitrate: with the sender's
# too-late drop off, a network that cannot keep up blocks the writer once
# this is full, and the box's queue (which drops by GOP) takes over.
SRT_SNDBUF_S = 0.5
MIN_SRT_SNDBUF = 64 * 1024
# Never let a single SRT write wait longer than this, whatever the config says.
MIN_IO_TIMEOUT_MS = 1000
FIGURES_INTERVAL_S = 1.0
SRT_STATS_INTERVAL_S = 0.1
# A connection that carried media this long counts as good: the next failure
# starts the backoff from the shortest delay again.
STABLE_S = 10.0
