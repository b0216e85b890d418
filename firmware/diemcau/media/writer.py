"""The network thread: connect (and reconnect), then send what the encoders queued.

A slow or dead network blocks only this thread: the encoding thread never
waits for it, it only offers packets to the bounded send queue in
:class:`~diemcau.media.shared.Shared` (which drops). Connections go through
:class:`~diemcau.media.link.Link` (SRT) or the RTSP muxer; a lost one is
retried with backoff, and the stream's state (``live``, ``reconnecting``) is
posted through the shared state.

    writer = Writer(shared)
    threading.Thread(target=writer.run).start()
    writer.offer("video", packets)   # from the encoding thread
    writer.finish()                  # the encoding side is done: close and end
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..core.backoff import backoff_delay
from ..core.scrub import scrub
from ..core.sendqueue import Kind
from ..core.sendqueue import Packet as QueuedPacket
from .defs import SRT_STATS_INTERVAL_S, STABLE_S, LinkError, MediaFault
from .link import Interrupt, Link
from .muxer import Muxer
from .urls import ffmpeg_error_text, redact

if TYPE_CHECKING:
    import av

    from .shared import Shared

log = logging.getLogger("diemcau.media")


class Writer:
    """The network side of one session (see the module's docstring).

    Its own fields are the network thread's alone; what the encoding thread
    needs to know is in ``shared``.
    """

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        # The encoding thread rings when it queues for an idle writer. A
        # SimpleQueue waits in C; threading.Condition runs Python code at every
        # wait and notify (the network thread's CPU went from 24 to 17 ms a second).
        self._doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._idle = False  # the writer found the queue empty and waits for the bell (lock)
        self._interrupt = Interrupt()  # ends a connect or send in progress (stop, reopen)
        self._reopen = False  # the tracks changed: start a new connection
        self._finished = threading.Event()  # set when the encoding side has finished
        self._muxer: Muxer | None = None
        self._link_bytes = 0
        self._connect_at = 0.0
        self._connected_at = 0.0
        self._attempt = 0
        self._stats_at = 0.0

    # -- the encoding thread's side

    def offer(self, kind: Kind, packets: list[av.Packet]) -> bool:
        """Queue encoded packets; True when the encoder should make a keyframe."""
        shared = self.shared
        want_keyframe = False
        with shared.lock:
            for packet in packets:
                item = QueuedPacket(kind, packet.size, bool(packet.is_keyframe), packet)
                want_keyframe |= shared.queue.offer(item)
            ring, self._idle = self._idle, False
        if ring:
            self._doorbell.put(None)
        return want_keyframe

    def open_gap(self) -> bool:
        """Hold video back until the next keyframe; True if it was flowing until now."""
        shared = self.shared
        with shared.lock:
            was_open = shared.queue.video_gap
            shared.queue.video_gap = True
        return not was_open

    def reopen(self) -> None:
        """The tracks changed: end this connection and start a new one."""
        self._reopen = True
        self.cancel()

    # -- any thread

    def cancel(self) -> None:
        """End the connect or send in progress: the session stops or the tracks changed."""
        self._interrupt.set()
        self._doorbell.put(None)

    def finish(self) -> None:
        """The encoding side has finished: close the connection and end the thread."""
        self._finished.set()
        self.cancel()

    # -- the writer thread

    def run(self) -> None:
        try:
            self._run()
        except MediaFault as exc:
            self.shared.fault = exc  # the encoding thread raises it: the session ends in "error"
        except Exception as exc:  # noqa: BLE001 - nothing may leave this thread unseen
            log.exception("the network thread failed")
            self.shared.fault = MediaFault(f"internal error: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        finished, shared = self._finished, self.shared
        try:
            while not finished.is_set():
                if self._muxer is None:
                    delay = self._connect_at - time.monotonic()
                    if delay > 0:
                        finished.wait(min(delay, 0.1))
                        continue
                    self._connect()
                    continue
                if self._reopen:
                    self._drop_connection()
                    self._connect_at = 0.0
                    continue
                with shared.lock:
                    item = shared.queue.take()
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

        assert self._muxer is not None
        shared = self.shared
        started = time.monotonic()
        try:
            self._muxer.write(item.payload, item.kind)  # type: ignore[arg-type]
        except (LinkError, av.error.FFmpegError, OSError) as exc:
            self._lost(exc)
            return
        finally:
            shared.busy_s += time.monotonic() - started
        if item.kind == "video":
            shared.frames_sent += 1
        if self._muxer.link is not None:
            link_bytes = self._muxer.link.bytes_sent
            shared.bytes_sent += link_bytes - self._link_bytes
            self._link_bytes = link_bytes
            self._sample_srt(self._muxer.link, started)
        else:
            shared.bytes_sent += item.size_bytes  # RTSP: what the muxer was handed
        if not shared.live:
            shared.live = True
            shared.set_state("live")

    def _sample_srt(self, link: Link, now: float) -> None:
        if link.stats is None or now - self._stats_at < SRT_STATS_INTERVAL_S:
            return
        self._stats_at = now
        stats = link.stats.read()
        if stats is not None:
            self.shared.note_srt(stats.unacked_ms - stats.rtt_ms, stats.packets_sent,
                                 stats.packets_lost)

    def _connect(self) -> None:
        """One attempt; on failure, schedule the next with backoff."""
        shared = self.shared
        started = time.monotonic()
        url = shared.url
        log.info("connecting to %s", redact(url))
        link: Link | None = None
        self._reopen = False
        self._interrupt.clear()
        if self._finished.is_set() or shared.stop.is_set():
            return  # stopped since the loop looked
        try:
            if urlsplit(url.partition("?")[0]).scheme == "srt":  # as publish_url decided
                link = Link(url, self._interrupt)
            self._muxer = Muxer(link if link is not None else url, shared.video_track,
                                shared.cfg)
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
        with shared.lock:
            shared.srt_sent = shared.srt_lost = 0
            thrown = shared.queue.restart()  # what waited is stale; video restarts at a keyframe
        log.debug("%d packets queued before the connection were dropped", thrown)
        shared.keyframe_wanted = True
        self._connected_at = time.monotonic()
        self._connect_at = math.inf
        shared.live = False
        shared.connected = True
        log.info("connected to %s in %.0f ms", redact(url), (self._connected_at - started) * 1000)

    def _retry_later(self, reason: str, *, stable: bool) -> None:
        shared, cfg = self.shared, self.shared.cfg
        if self._finished.is_set() or shared.stop.is_set():
            return  # the failure is our own interrupt
        if stable:
            self._attempt = 0
        delay = backoff_delay(self._attempt, cfg.reconnect_min_s, cfg.reconnect_max_s,
                              random.random)
        self._attempt += 1
        shared.reconnects += 1
        self._connect_at = time.monotonic() + delay
        reason = scrub(reason, shared.secrets)
        log.warning("%s; retrying in %.1f s", reason, delay)
        shared.set_state("reconnecting", f"{reason}; retrying in {delay:.1f} s")

    def _drop_connection(self) -> None:
        self.shared.connected = False
        self.shared.live = False
        if self._muxer is not None:
            self._muxer.close()
            self._muxer = None

    def _lost(self, exc: Exception) -> None:
        """Sending failed: drop the connection and schedule the next attempt."""
        stable = self.shared.live and time.monotonic() - self._connected_at >= STABLE_S
        self._drop_connection()
        reason = str(exc) if isinstance(exc, LinkError) else \
            f"sending failed: {ffmpeg_error_text(exc, self.shared.secrets)}"
        self._retry_later(reason, stable=stable)
