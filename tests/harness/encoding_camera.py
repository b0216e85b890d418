"""A camera that encodes by itself, as the Pi 4's (picamera2's H264Encoder) and H.264 USB cameras do.

Off a Pi there is no such camera, so this one is made of real parts: FFmpeg's
test pattern through PyAV, the frame number stamped in (as the box does for
its own test pattern), and libx264 through PyAV giving H.264 in Annex B with
the parameter sets in-band. It has the interface the media session expects
of a camera with ``encodes = True``: ``open()``, ``read()`` (an ``av.Packet``),
``close()``, ``request_keyframe()``, ``set_bitrate(kbps)``; and it counts the
requests, so a test can see them arrive.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av

from diemcau.media import camera, framestamp
from diemcau.media.defs import VideoProfile
from diemcau.media.encoders import x264_options


class EncodingTestCamera:
    backend = "test_encoder"
    encodes = True

    def __init__(self, profile: VideoProfile) -> None:
        self.profile = profile
        self.pattern = camera.TestPattern(profile)
        self.keyframe_requests = 0
        self.bitrates_kbps: list[int] = []
        self._ctx: Any = None
        self._number = 0
        self._keyframe = False

    def open(self) -> None:
        self.pattern.open()
        p = self.profile
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = p.width, p.height, "yuv420p"
        ctx.time_base = Fraction(1, p.fps)
        ctx.framerate = Fraction(p.fps, 1)
        ctx.bit_rate = p.bitrate_kbps * 1000
        ctx.options = x264_options(p, p.bitrate_kbps)
        ctx.open()
        self._ctx = ctx

    def read(self) -> av.Packet:
        while True:
            frame = self.pattern.read()
            framestamp.stamp_frame(self._number, frame)
            frame.pts = self._number
            frame.time_base = Fraction(1, self.profile.fps)
            frame.pict_type = "I" if self._keyframe else "NONE"
            self._keyframe = False
            self._number += 1
            packets = self._ctx.encode(frame)
            if packets:
                return packets[0]

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._keyframe = True

    def set_bitrate(self, kbps: int) -> None:
        self.bitrates_kbps.append(kbps)
        self._ctx.bit_rate = kbps * 1000

    def close(self) -> None:
        self.pattern.close()
        self._ctx = None
