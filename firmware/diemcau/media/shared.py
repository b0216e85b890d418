"""What a media session's threads share: one object, every field with its writer named.

Three parties touch a session: the supervisor (through
:class:`~diemcau.media.session.MediaSession`'s methods), the encoding thread
(:class:`~diemcau.media.pump.Pump`) and the network thread
(:class:`~diemcau.media.writer.Writer`). They share this :class:`Shared` and
nothing else of each other's; the encoding thread also calls the writer's
three methods for its side (``offer``, ``open_gap``, ``reopen``).

- ``lock`` guards ``queue`` (the bounded send queue between the threads) and
  SRT's figures (``backlog_ms``, ``srt_sent``, ``srt_lost``).
- ``stop`` is set once, by ``MediaSession.stop()``; both threads see it.
- Every other field is a plain value written by the one party named beside
  it and read by the others without the lock, as a hint (a single attribute
  store is atomic in Python). ``keyframe_wanted`` is the exception: anyone
  sets it, the encoding thread clears it when it makes the keyframe.

The figures (``state`` to ``level_dbfs``) go to the supervisor in
:class:`~diemcau.core.events.StreamFiguresUpdated`, posted by whichever
thread changed them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.events import StreamChanged, StreamFiguresUpdated, StreamState
from ..core.scrub import scrub
from ..core.sendqueue import SendQueue
from .defs import MediaFault, VideoProfile

if TYPE_CHECKING:
    from ..config import Media

log = logging.getLogger("diemcau.media")


@dataclass(eq=False, slots=True)
class Shared:
    """The state a media session's threads share (see the module's docstring for the rules)."""

    # Set when the session is made, then only read.
    cfg: Media
    post_raw: Callable[[object], None]  # the supervisor's queue: must never block
    secrets: tuple[str, ...]  # to scrub from every detail
    queue: SendQueue  # under ``lock``: the encoding thread offers, the network thread takes
    url: str = ""  # the session thread, before the network thread starts
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What the supervisor asks for; the encoding thread carries it out.
    muted: bool = False
    keyframe_wanted: bool = False  # anyone sets; the encoding thread clears
    profile_wanted: str | None = None  # the supervisor sets; the encoding thread clears
    # The encoding thread: the video track a new connection carries (None: audio only).
    video_track: VideoProfile | None = None
    # The network thread: how the connection goes.
    connected: bool = False  # a connection is up: worth encoding for
    live: bool = False  # media went out on this connection
    fault: MediaFault | None = None  # ended the network thread; the encoding thread raises it
    bytes_sent: int = 0  # this session, all connections
    busy_s: float = 0.0  # time spent inside network writes, all connections
    # The network thread, under ``lock``: SRT's own view, sampled while sending.
    backlog_ms: float = 0.0  # the worst since the encoding thread last took it
    srt_sent: int = 0  # totals of this connection
    srt_lost: int = 0
    # Figures. state and detail: either thread, through set_state.
    state: StreamState = "off"
    detail: str = ""
    profile: str = ""  # the encoding thread (the rung it sends)
    target_kbps: int = 0  # the encoding thread
    frames_captured: int = 0  # the encoding thread
    frames_dropped: int = 0  # the encoding thread (the queue counts its own)
    bitrate_kbps: float = 0.0  # the encoding thread
    level_dbfs: float | None = None  # the encoding thread
    frames_sent: int = 0  # the network thread
    reconnects: int = 0  # the network thread

    def post(self, event: object) -> None:
        """Hand ``event`` to the supervisor; a full queue is logged, never raised."""
        try:
            self.post_raw(event)
        except Exception as exc:  # noqa: BLE001 - a full queue must not kill the media path
            log.warning("could not post %s: %r", type(event).__name__, exc)

    def set_state(self, state: StreamState, detail: str = "", fatal: bool = False) -> None:
        """Post the stream's new state, and the figures with it."""
        # What leaves the media path (status, events, replies) holds no credentials.
        detail = scrub(detail, self.secrets)
        self.state, self.detail = state, detail
        self.post(StreamChanged(state, detail, fatal))
        self.post_figures()

    def post_figures(self) -> None:
        queue = self.queue
        self.post(StreamFiguresUpdated(figures={
            "state": self.state,
            "detail": self.detail,
            "profile": self.profile,
            "frames_captured": self.frames_captured,
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped + queue.dropped_video,
            "bitrate_kbps": round(self.bitrate_kbps, 1),
            "target_kbps": self.target_kbps,
            "audio_level_dbfs": self.level_dbfs,
            "reconnects": self.reconnects,
            "queue_packets": len(queue),
            "queue_bytes": queue.bytes,
            "audio_dropped": queue.dropped_audio,
        }))

    def note_srt(self, unacked_beyond_rtt_ms: float, sent: int, lost: int) -> None:
        """The network thread: SRT's figures now (the backlog keeps its worst)."""
        with self.lock:
            self.backlog_ms = max(self.backlog_ms, unacked_beyond_rtt_ms)
            self.srt_sent, self.srt_lost = sent, lost

    def take_srt_figures(self) -> tuple[float, int, int]:
        """The encoding thread: (worst backlog in ms since the last call, packets sent, lost)."""
        with self.lock:
            backlog, self.backlog_ms = self.backlog_ms, 0.0
            return backlog, self.srt_sent, self.srt_lost
