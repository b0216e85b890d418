"""One meeting's media: camera and microphone → H.264 + AAC → MPEG-TS over SRT (or RTSP).

:class:`MediaSession` is what the supervisor starts for a joined meeting
and stops after it; import it from here, ``diemcau.media.session``. It runs
on two threads: the encoding thread (:class:`~diemcau.media.pump.Pump`)
captures, encodes and offers each packet to a bounded send queue
(:class:`~diemcau.core.sendqueue.SendQueue`: drops video by GOP, audio
last); the network thread (:class:`~diemcau.media.writer.Writer`)
connects, reconnects and sends what is queued. They share one
:class:`~diemcau.media.shared.Shared` and nothing else. The session tells
the supervisor what happens only by posting events:

    starting ──▶ live (first bytes sent) ──▶ reconnecting ──▶ live ... ──▶ off
        └──────▶ error (fatal: no encoder, no microphone, no camera) ──▶ off

plus :class:`StreamFiguresUpdated` about once a second and
:class:`MediaStepped` on every adaptive bitrate step.

    session = MediaSession(cfg.media, request, events.put_nowait, device_id="c00001-01")
    session.start()
    ...
    session.set_profile("480p25")  # media.profile
    session.stop()      # "off" follows once the threads have finished

The parts: :mod:`~diemcau.media.defs` (faults, profiles, numbers),
:mod:`~diemcau.media.urls`, :mod:`~diemcau.media.link` (SRT off the GIL),
:mod:`~diemcau.media.encoders`, :mod:`~diemcau.media.muxer`,
:mod:`~diemcau.media.camera`, :mod:`~diemcau.media.microphone`,
:mod:`~diemcau.media.framestamp`. See ``docs/media.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.events import StreamChanged
from ..core.scrub import scrub
from ..core.sendqueue import SendQueue
from .defs import MAX_QUEUE_PACKETS, MIN_QUEUE_BYTES, PROFILES, MediaFault, top_kbps
from .microphone import CancellingMicrophone, Microphone
from .pump import Pump
from .shared import Shared
from .urls import publish_url, redact, redact_ffmpeg_logs
from .writer import Writer

if TYPE_CHECKING:
    from ..config import Media
    from ..core.meeting import StreamRequest

log = logging.getLogger("diemcau.media")

class MediaSession:
    """Publish one meeting: capture and encode on one thread, send on another, until ``stop()``.

    ``post`` receives StreamChanged, StreamFiguresUpdated and MediaStepped;
    it must never block. ``device_id`` goes into the SRT stream id.
    ``echo_canceller`` (``speex``, ``webrtc`` or ``none``) and ``reference``
    (the socket the speaker sends what it plays to): the room's echo
    canceller, as the control plane chose it for the room's sound kit.
    """

    def __init__(self, cfg: Media, request: StreamRequest, post: Callable[[object], None], *,
                 device_id: str, echo_canceller: str = "none", reference: str = "") -> None:
        self._request = request
        self._echo = (echo_canceller, reference) if echo_canceller != "none" and reference else None
        self._device_id = device_id
        self._thread: threading.Thread | None = None
        self._writer: Writer | None = None
        self._writer_thread: threading.Thread | None = None
        self._off_posted = False
        # The send queue: media.send_queue_ms of the top bitrate, within bounds.
        profile = PROFILES.get(request.profile)
        budget_bytes = ((top_kbps(profile, cfg.video_bitrate_kbps) + cfg.audio_bitrate_kbps)
                        * 125 * cfg.send_queue_ms // 1000)
        self._shared = Shared(
            cfg=cfg, post_raw=post,
            secrets=(cfg.srt_passphrase,) if cfg.srt_passphrase else (),
            queue=SendQueue(max(budget_bytes, MIN_QUEUE_BYTES), MAX_QUEUE_PACKETS),
            muted=request.muted, video_track=profile, profile=request.profile)

    # -- what the supervisor calls (any thread; each returns at once)

    def start(self) -> None:
        """Start the worker thread; returns at once."""
        if self._thread is not None or self._shared.stop.is_set():
            raise RuntimeError("a MediaSession starts once")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"media-{self._request.meeting_id}")
        self._thread.start()

    def stop(self) -> None:
        """Ask the threads to finish; returns at once. "off" is posted when they have."""
        self._shared.stop.set()
        writer = self._writer
        if writer is not None:
            writer.cancel()
        if self._thread is None and not self._off_posted:
            self._off_posted = True
            self._shared.post(StreamChanged("off"))

    def set_muted(self, muted: bool) -> None:
        """Muted: send silence (the audio track stays, so receivers need not re-sync)."""
        self._shared.muted = muted

    def request_keyframe(self) -> None:
        """Make the next video frame an IDR (a receiver that joined late can start)."""
        self._shared.keyframe_wanted = True

    def set_profile(self, profile: str) -> None:
        """Switch to ``profile`` (``media.profile``); it becomes the top of the ABR ladder."""
        if profile != "audio" and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}")
        self._shared.profile_wanted = profile

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True if it has finished (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the session thread (it becomes the encoding thread)

    def _run(self) -> None:
        shared = self._shared
        try:
            shared.set_state("starting")
            self._serve()
        except MediaFault as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - nothing may leave this thread unseen
            log.exception("media path failed")
            self._fail(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            shared.state, shared.detail, shared.bitrate_kbps = "off", "", 0.0
            self._off_posted = True
            shared.post_figures()
            shared.post(StreamChanged("off"))

    def _fail(self, detail: str) -> None:
        shared = self._shared
        detail = scrub(detail, shared.secrets)
        log.error("media path stopped: %s", detail)
        shared.set_state("error", detail, fatal=True)
        # Stay until told to stop, so "off" always answers a stop().
        shared.stop.wait()

    def _serve(self) -> None:
        import av

        shared, request = self._shared, self._request
        cfg = shared.cfg
        profile = PROFILES.get(request.profile)
        if profile is None and request.profile != "audio":
            raise MediaFault(f"unknown profile {request.profile!r}")
        shared.url = publish_url(request.publish_url, meeting_id=request.meeting_id,
                                 device_id=self._device_id, cfg=cfg,
                                 top_kbps=top_kbps(profile, cfg.video_bitrate_kbps))
        if profile is not None and "libx264" not in av.codecs_available:
            raise MediaFault("no H.264 encoder: this FFmpeg has no libx264")
        audio_codec = "aac" if cfg.audio_codec == "aac" else "libopus"
        if audio_codec not in av.codecs_available:
            raise MediaFault(f"no {cfg.audio_codec} encoder: this FFmpeg has no {audio_codec}")

        redact_ffmpeg_logs()
        microphone: Microphone | CancellingMicrophone = Microphone(cfg)
        if self._echo is not None:
            microphone = CancellingMicrophone(microphone, *self._echo)
        writer = Writer(shared)
        pump = Pump(shared, microphone, writer)
        try:
            microphone.open()
            pump.open_video(request.profile)
            self._writer = writer
            self._writer_thread = threading.Thread(target=writer.run, daemon=True,
                                                   name=f"media-net-{request.meeting_id}")
            self._writer_thread.start()
            log.info("publishing %s to %s (%s)", request.meeting_id, redact(shared.url),
                     request.profile)
            pump.run()
        finally:
            self._stop_writer()
            pump.close()
            microphone.close()

    def _stop_writer(self) -> None:
        if self._writer is not None and self._writer_thread is not None:
            self._writer.finish()
            self._writer_thread.join()
