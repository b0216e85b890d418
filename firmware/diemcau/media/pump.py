"""The encoding thread: take each frame and audio period when it is due, encode it, queue it.

Neither source is paced by itself off a Pi (``lavfi`` and ALSA's ``file``
plugin give data as fast as it is read), so :class:`Pump` paces both on
``time.monotonic``; a camera and microphone keep running while the network
is down (what they capture then is counted as dropped). Once a second it
posts the figures and steps the picture down or up (:mod:`diemcau.core.abr`).
It never waits for the network: it offers packets to the
:class:`~diemcau.media.writer.Writer`, whose queue drops.

    pump = Pump(shared, microphone, writer)
    pump.open_video("720p30")
    pump.run()      # until shared.stop is set; MediaFault on a fault
    pump.close()
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import sys
import time
from array import array
from typing import TYPE_CHECKING

from ..core.abr import AbrState, Measurement, Rung, ladder
from ..core.abr import step as abr_step
from ..core.events import MediaStepped
from . import camera as cameras
from .defs import (
    DEFAULT_VIDEO_PROFILE,
    FIGURES_INTERVAL_S,
    MPEG_TS_TIME_BASE,
    PROFILES,
    SILENCE_DBFS,
    VideoProfile,
    top_kbps,
)
from .encoders import X264, AudioEncoder
from .framestamp import stamp_frame

if TYPE_CHECKING:
    import av

    from .camera import Camera
    from .microphone import Microphone
    from .shared import Shared
    from .writer import Writer

log = logging.getLogger("diemcau.media")


class Pump:
    """The encoding thread's loop: take each frame and audio period when due, encode, queue."""

    def __init__(self, shared: Shared, microphone: Microphone, writer: Writer) -> None:
        self.shared = shared
        self.microphone = microphone
        self.writer = writer
        self.audio = AudioEncoder(shared.cfg)
        self.camera: Camera | None = None
        self.camera_profile: VideoProfile | None = None
        self.x264: X264 | None = None
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
        shared, cfg = self.shared, self.shared.cfg
        if self.camera is not None:
            self.camera.close()
            self.camera, self.camera_profile = None, None
        self.x264 = None
        self.rungs = ladder([(name, p.bitrate_kbps) for name, p in PROFILES.items()], top,
                            top_kbps=top_kbps(PROFILES.get(top), cfg.video_bitrate_kbps))
        if not cfg.abr:
            self.rungs = self.rungs[:1]
        self.abr = AbrState()
        shared.profile, shared.target_kbps = self.rungs[0].profile, self.rungs[0].kbps
        if top == "audio":
            self.frame_s = math.inf
            return
        profile = PROFILES[top]
        camera = cameras.open_camera(cfg, profile, self.rungs[0].kbps)
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
        shared = self.shared
        stop = shared.stop
        self.t0 = self.last_figures = self.frames_t0 = time.monotonic()
        figures_at = self.t0 + FIGURES_INTERVAL_S
        rate = self.microphone.rate_hz
        period = self.microphone.period_frames
        while not stop.is_set():
            if shared.fault is not None:
                raise shared.fault
            if shared.profile_wanted is not None:
                self._switch_profile(shared.profile_wanted)
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
        shared = self.shared
        shared.profile_wanted = None
        log.info("profile %s requested", profile)
        self.open_video(profile)
        shared.keyframe_wanted = True
        if profile != "audio" and shared.video_track is None:
            # The connection has no video track: the next one will.
            shared.video_track = PROFILES[DEFAULT_VIDEO_PROFILE]
            self.writer.reopen()

    # -- audio and video

    def _audio(self, now: float) -> None:
        import av

        shared, mic = self.shared, self.microphone
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
        if not shared.connected:
            return  # nobody to send to: no point encoding
        if shared.muted:
            data = bytes(len(data))
        frame = av.AudioFrame(format="s16", layout="mono" if mic.channels == 1 else "stereo",
                              samples=len(samples) // mic.channels)
        frame.planes[0].update(data)
        frame.sample_rate = mic.rate_hz
        frame.pts = pts
        frame.time_base = self.audio.time_base
        if self.writer.offer("audio", self.audio.encode(frame)):
            shared.keyframe_wanted = True

    def _video(self, now: float, due: float) -> None:
        shared, writer = self.shared, self.writer
        assert self.camera is not None and self.camera_profile is not None
        item = self.camera.read()
        number, index = self.next_frame, self.camera_frames
        self.next_frame += 1
        self.camera_frames += 1
        shared.frames_captured += 1
        rung = self.rungs[self.abr.index]
        encodes = self.camera.encodes
        late = now - due > max(2 * self.frame_s, 0.1)
        if not shared.connected or rung.profile == "audio" or (
                not encodes and (late or not self._take(index, PROFILES[rung.profile].fps))):
            shared.frames_dropped += 1
            if encodes and writer.open_gap():
                # The camera's stream goes on without this packet: what follows
                # refers to it, so video waits for the keyframe asked for here.
                shared.keyframe_wanted = True
            return
        if encodes:
            if shared.keyframe_wanted:
                shared.keyframe_wanted = False
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
            shared.keyframe_wanted = True

    def _take(self, index: int, fps: int) -> bool:
        """Whether the camera's frame ``index`` is one of the frames a lower rate keeps."""
        assert self.camera_profile is not None
        cam_fps = self.camera_profile.fps
        if fps >= cam_fps or index == 0:
            return True
        return index * fps // cam_fps != (index - 1) * fps // cam_fps

    def _encode(self, frame: av.VideoFrame, number: int, due: float, profile: VideoProfile,
                kbps: int) -> list[av.Packet]:
        shared = self.shared
        if (frame.width, frame.height) != (profile.width, profile.height):
            frame = frame.reformat(width=profile.width, height=profile.height)
        if self.x264 is None or self.x264.profile != profile:
            self.x264 = X264(profile, kbps)  # starts with an IDR by itself
            shared.keyframe_wanted = False
        stamp_frame(number, frame)
        frame.pts = round((due - self.t0) * 90_000)
        frame.time_base = MPEG_TS_TIME_BASE
        keyframe, shared.keyframe_wanted = shared.keyframe_wanted, False
        return self.x264.encode(frame, keyframe)

    # -- figures and the ladder

    def _figures(self, now: float) -> None:
        shared = self.shared
        elapsed = max(now - self.last_figures, 1e-3)
        sent, busy = shared.bytes_sent, shared.busy_s
        shared.bitrate_kbps = max(0, sent - self.last_bytes) * 8 / 1000 / elapsed
        with shared.lock:
            queue = shared.queue
            dropped = (queue.dropped_video, queue.dropped_audio)
            fill = queue.bytes / queue.max_bytes
        backlog_ms, srt_sent, srt_lost = shared.take_srt_figures()
        if srt_sent < self.last_srt[0]:
            self.last_srt = (0, 0)  # a new connection
        sent_packets = srt_sent - self.last_srt[0]
        measured = Measurement(
            queue_fill=fill, stalled_fraction=min(1.0, (busy - self.last_busy_s) / elapsed),
            dropped_video=dropped[0] - self.last_dropped[0],
            dropped_audio=dropped[1] - self.last_dropped[1],
            backlog_fraction=max(0.0, backlog_ms) / max(1, shared.cfg.srt_latency_ms),
            loss_fraction=(srt_lost - self.last_srt[1]) / sent_packets if sent_packets else 0.0)
        self.last_bytes, self.last_busy_s, self.last_dropped = sent, busy, dropped
        self.last_srt = (srt_sent, srt_lost)
        if shared.live and len(self.rungs) > 1:
            self._adapt(measured)
        self.last_figures = now
        if self.level_count:
            mean_square = self.level_sum / self.level_count / 32768.0**2
            level = 10 * math.log10(mean_square) if mean_square > 0 else SILENCE_DBFS
            shared.level_dbfs = round(max(SILENCE_DBFS, level), 1)
        self.level_sum, self.level_count = 0.0, 0
        shared.post_figures()

    def _adapt(self, measured: Measurement) -> None:
        shared = self.shared
        log.debug("network: %s", measured)
        self.abr, change = abr_step(self.abr, measured, self.rungs)
        if change is None:
            return
        rung = change.rung
        log.info("stepping %s to %s at %d kb/s: %s", change.direction, rung.profile, rung.kbps,
                 change.reason)
        shared.profile, shared.target_kbps = rung.profile, rung.kbps
        if change.previous.profile == "audio":
            shared.keyframe_wanted = True  # the pictures start again: from a keyframe
        if rung.profile == "audio":
            self.x264 = None  # frees the encoder; a new one starts with an IDR
        elif self.camera is not None and self.camera.encodes:
            self.camera.set_bitrate(rung.kbps)
        elif self.x264 is not None and self.x264.profile == PROFILES[rung.profile]:
            self.x264.set_bitrate(rung.kbps)
        shared.post(MediaStepped(rung.profile, rung.kbps, change.direction, change.reason))
