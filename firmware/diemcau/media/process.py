"""The uplink in a child process: the supervisor's ``Media`` port, kept in the control plane.

One :class:`MediaProcess` per meeting. It starts ``python -m
diemcau.media.child`` (:mod:`diemcau.media.child`), sends
it the ``[media]`` configuration and the stream request, and turns what
comes back up the pipe (:mod:`diemcau.media.pipe`) into the same
events an in-process :class:`~diemcau.adapters.media.MediaSession` posts:
``StreamChanged``, ``StreamFiguresUpdated``, ``MediaStepped``. PyAV, FFmpeg
and x264 are never loaded here.

If the child ends while the meeting lasts (a crash inside FFmpeg, the
kernel's OOM killer, ``kill -9``), the control plane stays up: this posts
``StreamChanged("reconnecting", "the media process ended (…)")`` (the
supervisor tells the centre: ``stream_reconnecting``), waits
``backoff_delay(attempt, media.reconnect_min_s, media.reconnect_max_s)`` and
starts a new child with the meeting's request and the mute and profile now
wanted; that child goes ``starting`` → ``live`` as any session does. The
counters in the figures (frames, reconnects) run on across children.

``StreamChanged("off")`` is posted only once the child has exited (reaped),
so an ``off`` means the media's memory is back. ``stop()`` returns at once;
a child that has not ended ``STOP_GRACE_S`` after being asked is killed.

    media = MediaProcess(cfg.media, request, supervisor.post, device_id="c00001-01")
    media.start()
    media.set_muted(True)
    media.stop()        # "off" follows once the child process has exited
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args

from ..core.backoff import backoff_delay
from ..core.events import StreamChanged
from ..protocol.arguments import Profile as ProfileName
from .pipe import (
    Changed,
    Channel,
    Figures,
    Keyframe,
    Mute,
    PipeClosed,
    Profile,
    Start,
    Stop,
    Up,
    from_wire,
)

if TYPE_CHECKING:
    from ..config import Media
    from ..core.meeting import StreamRequest

log = logging.getLogger("diemcau.media.process")

CHILD_MODULE = "diemcau.media.child"
POLL_S = 0.1  # how often the reader looks at the clock while the pipe is quiet
STOP_GRACE_S = 5.0  # asked to stop, a child still there after this is killed
STABLE_S = 10.0  # a child that ran this long resets the restart backoff
# Figures that count from a session's start: added up across children.
COUNTERS = ("frames_captured", "frames_sent", "frames_dropped", "reconnects", "audio_dropped")


class MediaProcess:
    """Publish one meeting from a child process; the same methods as ``MediaSession``.

    ``post`` receives StreamChanged, StreamFiguresUpdated and MediaStepped
    (from the reader thread; it must never block). ``log_level``: the
    child's, as the box's ``log.level``. ``spare``: the first child is taken from
    it if it has one waiting, and it is filled again once this meeting's media
    has ended (before ``off``). ``echo_canceller`` and ``reference_socket``: the
    room's software echo canceller (:class:`~diemcau.media.session.MediaSession`).
    """

    def __init__(self, cfg: Media, request: StreamRequest, post: Callable[[object], None], *,
                 device_id: str, log_level: str = "info", spare: Spare | None = None,
                 echo_canceller: str = "none", reference_socket: str = "") -> None:
        self._cfg = cfg
        self._echo = (echo_canceller, reference_socket)
        self._spare = spare
        self._request = request
        self._post_raw = post
        self._device_id = device_id
        self._log_level = log_level
        self._stopping = threading.Event()
        self._stop_asked_at: float | None = None
        self._thread: threading.Thread | None = None
        self._off_posted = False
        self._lock = threading.Lock()  # the channel and process of the child now running
        self._channel: Channel | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._muted = request.muted
        self._profile: str = request.profile
        self._base: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._last: dict[str, Any] = {}
        self.restarts = 0

    # -- what the supervisor calls (any thread; each returns at once)

    @property
    def pid(self) -> int | None:
        """The child now running, if any."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the child (from a thread of this object's); returns at once."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("a MediaProcess starts once")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"media-process-{self._request.meeting_id}")
        self._thread.start()

    def stop(self) -> None:
        """Ask the child to finish; returns at once. "off" is posted once it has exited."""
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        self._stopping.set()
        self._send(Stop())
        if self._thread is None and not self._off_posted:
            self._off_posted = True
            self._post(StreamChanged("off"))

    def set_muted(self, muted: bool) -> None:
        """Muted: the child sends silence; a restarted child starts muted too."""
        self._muted = muted
        self._send(Mute(muted))

    def request_keyframe(self) -> None:
        """The next picture an IDR (a new child starts with one anyway)."""
        self._send(Keyframe())

    def set_profile(self, profile: str) -> None:
        """Switch to ``profile``; a restarted child starts with it."""
        if profile not in get_args(ProfileName):
            raise ValueError(f"unknown profile {profile!r}")
        self._profile = profile
        self._send(Profile(profile))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the child to have exited; True if it has (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the reader thread

    def _send(self, message: Any) -> None:
        with self._lock:
            channel = self._channel
        if channel is not None:
            channel.send(message)  # False: the child has gone; the reader deals with that

    def _post(self, event: object) -> None:
        try:
            self._post_raw(event)
        except Exception as exc:  # noqa: BLE001 - a full queue must not kill the reader
            log.warning("could not post %s: %r", type(event).__name__, exc)

    def _run(self) -> None:
        attempt = 0
        off_detail = ""
        while not self._stopping.is_set():
            started = time.monotonic()
            outcome, off_detail, live_at = self._one_child()
            if outcome == "off" or self._stopping.is_set():
                break
            if live_at is not None and time.monotonic() - live_at >= STABLE_S:
                attempt = 0
            delay = backoff_delay(attempt, self._cfg.reconnect_min_s, self._cfg.reconnect_max_s,
                                  random.random)
            attempt += 1
            self.restarts += 1
            for key in COUNTERS:
                self._base[key] += int(self._last.get(key) or 0)
            self._base["reconnects"] += 1
            self._last = {}
            log.warning("media process for %s ended unexpectedly (%s) after %.1f s: starting "
                        "it again in %.1f s (restart %d)", self._request.meeting_id, outcome,
                        time.monotonic() - started, delay, self.restarts)
            self._post(StreamChanged("reconnecting", f"the media process ended ({outcome}); "
                                                     f"starting it again in {delay:.1f} s"))
            self._stopping.wait(delay)
        if self._spare is not None:
            self._spare.fill()  # the next meeting's, now that this one's memory is back
        self._off_posted = True
        self._post(StreamChanged("off", off_detail))

    def _one_child(self) -> tuple[str, str, float | None]:
        """Run one child until it exits: ("off", its detail, …) if it ended as asked (or by
        itself, cleanly), else (how it ended, "", …); and when it went live (monotonic)."""
        try:
            process, channel = self._spawn()
        except OSError as exc:
            log.error("cannot start the media process: %s", exc)
            return f"not started: {exc.strerror or exc}", "", None
        off: str | None = None
        live_at: float | None = None
        try:
            while True:
                if kill_if_overdue(process, self._stop_asked_at, "media"):
                    break
                try:
                    messages: list[Up] = channel.receive(Up, timeout_s=POLL_S)
                except PipeClosed as exc:
                    if "closed" not in str(exc):
                        log.error("media process %d: %s", process.pid, exc)
                    break
                for message in messages:
                    if isinstance(message, Changed):
                        if message.state == "off":
                            off = message.detail  # posted once the process has exited
                            continue
                        if message.state == "live" and live_at is None:
                            live_at = time.monotonic()
                    self._post(from_wire(self._counted(message)))
            code = reap(process, "media")
        finally:
            with self._lock:
                self._channel = None
            channel.close()
        if off is not None or self._stopping.is_set():
            if code != 0:
                log.warning("media process %d ended %s", process.pid, how_ended(code))
            return "off", off or "", live_at
        return how_ended(code), "", live_at

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Channel]:
        spare = self._spare.take() if self._spare is not None and not self.restarts else None
        process, channel = spare or spawn_child(self._log_level)
        request = self._request
        channel.send(Start(media=self._cfg, device_id=self._device_id,
                           meeting_id=request.meeting_id, publish_url=request.publish_url,
                           profile=self._profile, muted=self._muted, play_url=request.play_url,
                           echo_canceller=self._echo[0], reference_socket=self._echo[1]))
        with self._lock:
            self._process, self._channel = process, channel
        log.info("media process %d %s for %s", process.pid,
                 "(the spare) taken" if spare else "started", request.meeting_id)
        if self._stopping.is_set():
            channel.send(Stop())  # stop() came while the child was being started
        return process, channel

    def _counted(self, message: Up) -> Up:
        """Figures with the counters run on from the children before this one."""
        if not isinstance(message, Figures):
            return message
        self._last = message.figures
        if not self.restarts:
            return message
        figures = dict(message.figures)
        for key, base in self._base.items():
            if isinstance(figures.get(key), int):
                figures[key] += base
        return Figures(figures)


def spawn_child(log_level: str, module: str = CHILD_MODULE,
                ) -> tuple[subprocess.Popen[bytes], Channel]:
    """Start ``python -m module`` (the media child, or the screen child) with its two pipes;
    it waits for its first message."""
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--down-fd", str(down_r),
             "--up-fd", str(up_w), "--log-level", log_level],
            stdin=subprocess.DEVNULL, pass_fds=(down_r, up_w), close_fds=True)
    except BaseException:
        for fd in (down_r, down_w, up_r, up_w):
            os.close(fd)
        raise
    os.close(down_r)
    os.close(up_w)
    return process, Channel(up_r, down_w)


class Spare:
    """One media process started ahead of the next meeting, waiting for its Start.

    A join then skips starting Python and importing the media code (what a
    child does before it reads its Start); PyAV is imported only after the
    Start, so the spare stays small (it is part of the idle box's memory).
    ``fill`` starts one if there is none (returns at once; the child imports
    by itself); ``take`` hands it over (None if there is none, or it died);
    ``close`` ends it (its pipe closes; it exits without a word).
    """

    def __init__(self, log_level: str = "info") -> None:
        self._log_level = log_level
        self._lock = threading.Lock()
        self._waiting: tuple[subprocess.Popen[bytes], Channel] | None = None
        self._closed = False
        self._busy = False  # a meeting's media process is running: no spare until it ends
        self._timer: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        waiting = self._waiting
        return waiting[0].pid if waiting is not None else None

    def fill(self) -> None:
        """Start a spare if there is none; a meeting's media has ended (or none began)."""
        with self._lock:
            self._busy = False
        self._fill()

    def _fill(self) -> None:
        with self._lock:
            if self._closed or self._busy or (self._waiting is not None and self._waiting[0].poll() is None):
                return
            if self._waiting is not None:
                self._discard(self._waiting)
            try:
                self._waiting = spawn_child(self._log_level)
            except OSError as exc:
                self._waiting = None
                log.warning("cannot start a spare media process: %s", exc)

    def fill_later(self, delay_s: float) -> None:
        """``fill`` after ``delay_s`` (at the box's start: after it is online)."""
        self._timer = threading.Timer(delay_s, self._fill)  # not while a meeting runs
        self._timer.daemon = True
        self._timer.start()

    def take(self) -> tuple[subprocess.Popen[bytes], Channel] | None:
        with self._lock:
            waiting, self._waiting = self._waiting, None
            self._busy = True
        if waiting is not None and waiting[0].poll() is not None:
            log.warning("the spare media process had ended (%s): starting a new one",
                        how_ended(waiting[0].returncode))
            self._discard(waiting)
            return None
        return waiting

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, None
        if self._timer is not None:
            self._timer.cancel()
        if waiting is not None:
            self._discard(waiting)

    @staticmethod
    def _discard(waiting: tuple[subprocess.Popen[bytes], Channel]) -> None:
        process, channel = waiting
        channel.close()  # the child reads EOF instead of a Start and exits
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def kill_if_overdue(process: subprocess.Popen[bytes], asked_at: float | None, what: str) -> bool:
    """A child asked to stop at ``asked_at`` (monotonic) and still there after the grace: killed."""
    if asked_at is None or time.monotonic() - asked_at < STOP_GRACE_S:
        return False
    log.error("%s process %d did not end %.0f s after being asked: killing it",
              what, process.pid, STOP_GRACE_S)
    process.kill()
    return True


def reap(process: subprocess.Popen[bytes], what: str) -> int:
    """Wait for a child whose pipe has closed (it is ending); kill it if it lingers."""
    try:
        return process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.error("%s process %d closed its pipe but did not exit: killing it", what, process.pid)
        process.kill()
        return process.wait()


def how_ended(code: int) -> str:
    """``exit code 3``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
