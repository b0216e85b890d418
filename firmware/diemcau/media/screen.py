"""The room's TV and speaker, seen from the control plane: the screen process's proxy.

One :class:`ScreenProcess` for the box's life (when ``[screen] enabled``). It
starts ``python -m diemcau.media.screen_child`` (:mod:`diemcau.media.screen_child`),
which owns libmpv, the TV and the speaker, and turns what comes up the pipe
into ``ProgrammeChanged`` and ``ProgrammeFiguresUpdated`` for the supervisor. mpv,
PyAV, numpy and Pillow are never loaded here.

If the child dies (a crash inside libmpv, the OOM killer), this posts
``ProgrammeChanged("reconnecting", "the screen process ended (…)")`` while a
meeting's programme was wanted, waits ``backoff_delay(attempt,
screen.reconnect_min_s, screen.reconnect_max_s)`` and starts a new child,
giving it again what is wanted: the idle view or the programme URL, and the
volume. The figures' counters run on across children.

    screen = ScreenProcess(cfg.screen, supervisor.post, speaker=cfg.screen.speaker)
    screen.start()
    screen.show_idle(view)                 # between meetings
    screen.play("m-42", play_url)          # ProgrammeChanged starting → live
    screen.prompt(samples, 22050, 1)       # ducks the programme while it speaks
    screen.stop_playing()                  # ProgrammeChanged("off") once stopped
    screen.close()
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.backoff import backoff_delay
from ..core.events import ProgrammeChanged
from .pipe import (
    Channel,
    PipeClosed,
    Play,
    PlayFigures,
    Programme,
    Prompt,
    ScreenUp,
    Setup,
    Show,
    Stop,
    StopPlay,
    Volume,
    from_wire,
)
from .process import STABLE_S, STOP_GRACE_S, how_ended, kill_if_overdue, reap, spawn_child

if TYPE_CHECKING:
    from ..config import Screen

log = logging.getLogger("diemcau.media.screen")

CHILD_MODULE = "diemcau.media.screen_child"
POLL_S = 0.1
PROMPT_PIECE = 256 * 1024  # bytes of PCM per message (a pipe message stays well under 1 MiB)
COUNTERS = ("reconnects", "catchups", "frames_shown", "frames_dropped")


class ScreenProcess:
    """The screen process's proxy: every method returns at once, from any thread.

    ``post`` receives ProgrammeChanged and ProgrammeFiguresUpdated (from the reader
    thread; it must not block). ``speaker``: the ALSA PCM the child owns
    (normally ``cfg.speaker``); ``log_level``: the child's. ``reference_socket``:
    where the speaker sends what it plays, for the echo canceller
    (:mod:`diemcau.media.reference`); "" for none.
    """

    def __init__(self, cfg: Screen, post: Callable[[object], None], *, speaker: str,
                 log_level: str = "info", reference_socket: str = "") -> None:
        self._cfg = msgspec.structs.replace(cfg, speaker=speaker)
        self._reference = reference_socket
        self._post_raw = post
        self._log_level = log_level
        self._lock = threading.Lock()
        self._channel: Channel | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._close_asked_at: float | None = None
        # What is wanted: given again to a restarted child.
        self._view: dict[str, Any] | None = None
        self._playing: tuple[str, str] | None = None
        self._volume: int | None = None
        self._stop_pending = False  # StopPlay sent: "off" is posted when the child says so
        self._base: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._last: dict[str, Any] = {}
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a ScreenProcess starts once")
        self._thread = threading.Thread(target=self._run, daemon=True, name="screen-process")
        self._thread.start()

    def show_idle(self, view: object | None) -> None:
        """The idle screen for ``view`` (a ``core.idlescreen.IdleScreen``; None: a plain screen)."""
        self._view = msgspec.to_builtins(view) if view is not None else None
        self._send(Show(self._view))

    def play(self, meeting_id: str, url: str) -> None:
        """The programme feed ``url`` full screen, with its sound on the speaker."""
        self._playing = (meeting_id, url)
        self._stop_pending = False
        self._send(Play(meeting_id, url))

    def stop_playing(self) -> None:
        """Back to the idle screen; ProgrammeChanged("off") once the player has stopped."""
        was = self._playing
        self._playing = None
        if was is None:
            return
        self._stop_pending = True
        if not self._send(StopPlay()):
            self._stop_pending = False
            self._post(ProgrammeChanged("off"))  # no child: nothing plays

    def set_volume(self, percent: int) -> None:
        self._volume = max(0, min(100, int(percent)))
        self._send(Volume(self._volume))

    def prompt(self, samples: bytes, rate_hz: int, channels: int) -> None:
        """S16_LE PCM to say over the programme (which it ducks); lost if no child runs."""
        frame = 2 * channels
        piece = PROMPT_PIECE // frame * frame
        for start in range(0, len(samples), piece):
            self._send(Prompt(samples[start:start + piece], rate_hz, channels))

    def close(self) -> None:
        """Stop the child: asked over the pipe, killed if still there after a grace."""
        if self._close_asked_at is None:
            self._close_asked_at = time.monotonic()
        self._closing.set()
        self._send(Stop())
        if self._thread is not None:
            self._thread.join(STOP_GRACE_S + 2)

    # -- the reader thread

    def _send(self, message: msgspec.Struct) -> bool:
        with self._lock:
            channel = self._channel
        return channel is not None and channel.send(message)

    def _post(self, event: object) -> None:
        try:
            self._post_raw(event)
        except Exception as exc:  # noqa: BLE001 - a full queue must not kill the reader
            log.warning("could not post %s: %r", type(event).__name__, exc)

    def _run(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            started = time.monotonic()
            outcome, ran_s = self._one_child()
            if self._closing.is_set():
                break
            if ran_s >= STABLE_S:
                attempt = 0
            delay = backoff_delay(attempt, self._cfg.reconnect_min_s, self._cfg.reconnect_max_s,
                                  random.random)
            attempt += 1
            self.restarts += 1
            for key in COUNTERS:
                self._base[key] += int(self._last.get(key) or 0)
            self._last = {}
            log.warning("the screen process ended unexpectedly (%s) after %.1f s: starting it "
                        "again in %.1f s", outcome, time.monotonic() - started, delay)
            if self._playing is not None:
                self._post(ProgrammeChanged("reconnecting", f"the screen process ended "
                                                            f"({outcome}); starting it again "
                                                            f"in {delay:.1f} s"))
            elif self._stop_pending:
                self._stop_pending = False
                self._post(ProgrammeChanged("off"))
            self._closing.wait(delay)

    def _one_child(self) -> tuple[str, float]:
        started = time.monotonic()
        try:
            process, channel = self._spawn()
        except OSError as exc:
            log.error("cannot start the screen process: %s", exc)
            return f"not started: {exc.strerror or exc}", 0.0
        try:
            while True:
                if kill_if_overdue(process, self._close_asked_at, "screen"):
                    break
                try:
                    messages: list[ScreenUp] = channel.receive(ScreenUp, timeout_s=POLL_S)
                except PipeClosed as exc:
                    if "closed" not in str(exc):
                        log.error("screen process %d: %s", process.pid, exc)
                    break
                for message in messages:
                    self._handle(message)
            code = reap(process, "screen")
        finally:
            with self._lock:
                self._channel = None
            channel.close()
        return how_ended(code), time.monotonic() - started

    def _handle(self, message: ScreenUp) -> None:
        if isinstance(message, Programme):
            if message.state == "off":
                if not self._stop_pending:
                    return  # the child's own "off" before any play: nothing to say
                self._stop_pending = False
        elif isinstance(message, PlayFigures):
            self._last = message.figures
            if self.restarts:
                figures = dict(message.figures)
                for key, base in self._base.items():
                    if isinstance(figures.get(key), int):
                        figures[key] += base
                message = PlayFigures(figures)
        self._post(from_wire(message))

    def _spawn(self) -> tuple[subprocess.Popen[bytes], Channel]:
        process, channel = spawn_child(self._log_level, CHILD_MODULE)
        # Under the lock: a show_idle, play or set_volume that comes meanwhile waits for the
        # channel, so it is either in what is given here or sent after it, never lost.
        with self._lock:
            channel.send(Setup(self._cfg, self._reference))
            channel.send(Show(self._view))  # what is wanted now: the idle view, the volume,
            if self._volume is not None:    # the programme
                channel.send(Volume(self._volume))
            if self._playing is not None:
                channel.send(Play(*self._playing))
            self._process, self._channel = process, channel
        if self._closing.is_set():
            channel.send(Stop())
        log.info("screen process %d started", process.pid)
        return process, channel
