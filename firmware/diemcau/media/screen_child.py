"""The screen process: the room's TV and speaker, through libmpv (python-mpv).

    python -m diemcau.media.screen_child --down-fd R --up-fd W [--log-level debug]

Started by :class:`~diemcau.media.screen.ScreenProcess`, never by hand. It
reads a ``Setup`` (the ``[screen]`` section), then obeys ``Show`` (the idle
screen), ``Play`` (the programme feed full screen), ``StopPlay``, ``Volume``,
``Prompt`` and ``Stop`` (:mod:`diemcau.media.pipe`), and sends up the
programme's state and figures. One thread owns the player: the pipe's
messages, mpv's events and a tick (every 0.1 s, or 0.5 s while the programme plays
well within the lag rule: :func:`diemcau.core.lag.LagRule.tick_s`) all land in its loop.

The rules (docs/farend.md):

- **States**: ``starting`` (connecting, first picture not shown yet),
  ``live``, ``reconnecting`` (the feed failed, stalled or lagged too far: it
  is loaded again after a backoff), ``error`` (the URL cannot be played as
  given: not retried), ``off`` (the idle screen).
- **Lag**: how far playback is behind the newest data received, read as
  mpv's ``demuxer-cache-duration`` (the demuxer reads ahead up to
  ``lag_reload_ms``, so all of a backlog shows). Over ``lag_bound_ms`` the
  player plays at ``catchup_speed`` (pitch kept) until under
  ``lag_target_ms``; over ``lag_reload_ms`` it loads the feed again. The rule
  itself is pure: :mod:`diemcau.core.lag`.
- **Stall**: no new picture (or sound, for a feed without pictures) for
  ``stall_s`` while live: reconnect.
- **Sound**: mpv writes it into a FIFO that :class:`~diemcau.media.speaker.Speaker`
  mixes with the prompts; mpv's ``audio-delay`` follows what the speaker
  holds, so the sound heard keeps with the picture shown.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import math
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..adapters.logs import log_to_stderr, scrub_log_handlers
from ..adapters.process import settle
from ..config import Screen
from ..core.backoff import backoff_delay
from ..core.idlescreen import IdleScreen
from ..core.lag import FAST_TICK_S, RELOAD, SLOW_DOWN, SPEED_UP, LagRule
from ..core.scrub import scrub
from . import framestamp, idle
from .pipe import (
    Channel,
    PipeClosed,
    Play,
    PlayFigures,
    Programme,
    Prompt,
    ScreenDown,
    Setup,
    Show,
    Stop,
    StopPlay,
    Volume,
)
from .reference import ReferenceSender
from .speaker import Speaker, make_fifo, mpv_volume, player_sound_env

log = logging.getLogger("diemcau.media.screen")

FIGURES_S = 1.0
PERIOD_SAMPLES = 40  # steps between pictures watched to know the feed's picture period
MAX_STEP_S = 2.0  # the position moved more than this between ticks: the feed's clock jumped
START_TIMEOUT_S = 8.0  # connected (or not) but no picture yet: load again
SCHEMES = ("srt", "rtsp", "rtsps")
DEFAULT_SIZE = (1280, 720)
# mpv's end-file errors that say the stream itself cannot be played (not the network).
UNPLAYABLE = ("unrecognized file format", "no audio or video data played",
              "nothing to play", "unsupported")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diemcau.media.screen_child")
    parser.add_argument("--down-fd", type=int, required=True)
    parser.add_argument("--up-fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faulthandler.enable()  # a crash in a C library leaves every thread's stack in the journal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_to_stderr(args.log_level)
    channel = Channel(args.down_fd, args.up_fd)
    try:
        first = channel.receive(ScreenDown)
    except PipeClosed:
        return 0
    setup, pending = first[0], first[1:]
    if not isinstance(setup, Setup):
        log.error("the screen process expected Setup first, got %s", type(setup).__name__)
        return 2
    scrub_log_handlers(known=())
    settle()
    screen = ScreenPlayer(setup.screen, channel, reference_socket=setup.reference_socket)
    try:
        return screen.serve(pending)
    finally:
        screen.close()


def check_play_url(url: str) -> str:
    """"" if ``url`` can be given to the player, else what is wrong with it (scrubbed)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the play URL is malformed ({exc}): {scrub(url)}"
    if parts.scheme.lower() not in SCHEMES:
        return f"the play URL's scheme {parts.scheme!r} is not one of {', '.join(SCHEMES)}"
    if not parts.hostname:
        return f"the play URL names no host: {scrub(url)}"
    if parts.scheme.lower() == "srt" and port is None:
        return f"an SRT play URL needs a port: {scrub(url)}"
    return ""


def with_srt_defaults(url: str, latency_ms: int) -> str:
    """An SRT URL with a latency (µs, as FFmpeg reads it) and a connect timeout if it has none."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "srt":
        return url
    keys = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = []
    if "latency" not in keys:
        extra.append(f"latency={latency_ms * 1000}")
    if "connect_timeout" not in keys:
        extra.append("connect_timeout=2000")
    if not extra:
        return url
    joiner = "&" if parts.query else ("?" if not url.endswith("?") else "")
    return url + joiner + "&".join(extra)


def mpv_options(cfg: Screen) -> dict[str, str]:
    """The player's options: the low-latency profile, the output, the sound to the mixer."""
    options = {
        "profile": "low-latency",
        "vo": cfg.vo,
        "hwdec": cfg.hwdec,
        "cache": "no",
        # A backlog must reach the demuxer to be seen (and measured): read ahead that far.
        "demuxer-readahead-secs": str(max(2.0, cfg.lag_reload_ms / 1000 + 1)),
        "untimed": "no",
        "keep-open": "no",
        "idle": "yes",
        # A feed without pictures keeps the output (black) instead of handing the TV back
        # to the console.
        "force-window": "yes",
        "osc": "no",
        "input-default-bindings": "no",
        "input-vo-keyboard": "no",
        "terminal": "no",
        "image-display-duration": "inf",
        # Only while catching up (see _lag_s): scaletempo, once in, keeps ~130 ms of sound.
        "audio-pitch-correction": "no",
        # Into the FIFO the speaker's mixer reads: SDL's "disk" audio driver (see speaker.py).
        "ao": "sdl",
        "sdl-buflen": "0.04",  # with the speaker's delay followed: A/V within 10 ms (farend.md),
        "audio-format": "s16",
        "audio-channels": "stereo",
        "audio-samplerate": str(cfg.sample_rate_hz),
        "network-timeout": "5",
    }
    if cfg.vo == "gpu":
        options["gpu-context"] = cfg.gpu_context
    if cfg.drm_connector:
        options["drm-connector"] = cfg.drm_connector
    if cfg.drm_mode:
        options["drm-mode"] = cfg.drm_mode
    options.update(cfg.options)
    return options


def screen_size(cfg: Screen) -> tuple[int, int]:
    """The idle picture's size: the pinned DRM mode's, else 1280x720."""
    mode = cfg.drm_mode.split("@")[0]
    width, _, height = mode.partition("x")
    if width.isdigit() and height.isdigit():
        return int(width), int(height)
    return DEFAULT_SIZE


class ScreenPlayer:
    """The state of the TV; every method runs on the serving thread."""

    def __init__(self, cfg: Screen, channel: Channel, *, reference_socket: str = "") -> None:
        self.cfg = cfg
        self.channel = channel
        self._runtime = Path(tempfile.mkdtemp(prefix="diemcau-screen-"))
        fifo = str(self._runtime / "programme.pcm")
        make_fifo(fifo)
        os.environ.update(player_sound_env(fifo))
        import mpv  # libmpv: in this process only; SDL reads its environment after this

        self._recorder: Recorder | None = None
        if cfg.record_dir:
            self._recorder = Recorder(Path(cfg.record_dir))
        # What the speaker plays goes to the lab's record and to the echo canceller.
        self._reference = ReferenceSender(reference_socket) if reference_socket else None
        taps = [tap for tap in (self._recorder.played if self._recorder else None,
                                self._send_reference if self._reference else None) if tap]
        self.speaker = Speaker(cfg.speaker, fifo, rate_hz=cfg.sample_rate_hz,
                               buffer_ms=cfg.audio_buffer_ms, duck_db=cfg.duck_db,
                               on_played=(lambda period, heard_at: [tap(period, heard_at)
                                                                    for tap in taps])
                               if taps else None)
        self.speaker.start()
        self._events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self.mpv = mpv.MPV(log_handler=self._mpv_log, loglevel="error",
                           **mpv_options(cfg))
        self.mpv.register_event_callback(self._on_event)
        # Pictures shown: the time played (the position read on the tick) over the picture
        # period. Observing the position all along woke this process at every picture
        # (python-mpv's event thread): 0.2-0.3 % of a core, and as much again in mpv's core.
        self._frames_shown = 0.0
        self._played_s = 0.0  # since the last count
        self._frame_period: float | None = None
        self._sampling = False
        self._steps: list[float] = []
        self._step_from: float | None = None
        if self._recorder is not None:
            self._recorder.start(self.mpv)
        # What is wanted, and what the player is doing about it.
        self.view: dict[str, Any] | None = None
        self.meeting_id = ""
        self.url = ""
        self.state = "off"
        self.detail = ""
        self.showing = ""  # "idle" or "programme": what the last loadfile was
        self._reload_at: float | None = None
        self._attempt = 0
        self._loaded_at = 0.0
        self._file_loaded = False
        self._last_pos: float | None = None
        self._progress_at = 0.0
        self._figures_at = 0.0
        self._idle_next: datetime | None = None
        self._audio_delay = 0.0
        self.lag = LagRule(bound_ms=cfg.lag_bound_ms, target_ms=cfg.lag_target_ms,
                           reload_ms=cfg.lag_reload_ms, catchup_speed=cfg.catchup_speed)
        self.counters = {"reconnects": 0, "catchups": 0}

    # -- the loop

    def serve(self, pending: list[Any]) -> int:
        self._show_idle()
        while True:
            for message in pending:
                if isinstance(message, Stop):
                    return 0
                self._obey(message)
            self._drain_events()
            self._tick(time.monotonic())
            try:
                pending = self.channel.receive(ScreenDown, timeout_s=self._tick_s())
            except PipeClosed:
                log.warning("the control plane has gone: the screen process ends")
                return 0

    def _tick_s(self) -> float:
        """Until the next look at the player: slower while live and well under the lag bound
        (each look wakes this process and mpv's core), fast while anything may need acting on."""
        if self.url and self.state == "live" and self._reload_at is None:
            return self.lag.tick_s()
        return FAST_TICK_S

    def _send_reference(self, period: bytes, heard_at: float) -> None:
        """One stereo period as played, downmixed to mono, stamped on the monotonic clock."""
        import numpy as np

        assert self._reference is not None
        frames = np.frombuffer(period, dtype="<i2").reshape(-1, 2).astype(np.int32)
        mono = ((frames[:, 0] + frames[:, 1]) // 2).astype("<i2").tobytes()
        self._reference.send(mono, at=heard_at - time.time() + time.monotonic(),
                             rate_hz=self.cfg.sample_rate_hz)

    def close(self) -> None:
        if self._reference is not None:
            self._reference.close()
        with contextlib.suppress(Exception):
            if self._recorder is not None:
                self._recorder.stop()
        with contextlib.suppress(Exception):
            self.mpv.terminate()
        self.speaker.stop()
        shutil.rmtree(self._runtime, ignore_errors=True)

    def _obey(self, message: Any) -> None:
        match message:
            case Show(view=view):
                self.view = view
                if not self.url:
                    self._show_idle()
            case Play(meeting_id=meeting_id, url=url):
                self._play(meeting_id, url)
            case StopPlay():
                self._stop_playing()
            case Volume(percent=percent):
                self.mpv.volume = mpv_volume(percent)  # the mixer then copies the programme
            case Prompt(samples=samples, rate_hz=rate_hz, channels=channels):
                try:
                    self.speaker.prompt(samples, rate_hz, channels)
                except ValueError as exc:
                    log.error("prompt refused: %s", exc)
            case Setup():
                log.warning("a second Setup for the screen process: ignored")

    # -- what is shown

    def _show_idle(self) -> None:
        self.showing = "idle"
        target = self._idle_picture()
        self.mpv.command("loadfile", target, "replace")

    def _idle_picture(self) -> str:
        """A PNG of the idle view, or a plain dark screen (no view, or no renderer)."""
        width, height = screen_size(self.cfg)
        plain = f"av://lavfi:color=c=0x10202c:s={width}x{height}:r=1"
        self._idle_next = None
        if self.view is None:
            return plain
        import msgspec

        now = datetime.now().astimezone()
        try:
            view = msgspec.convert(self.view, IdleScreen)  # checks each field's type
            image = idle.render(view, now, (width, height))
            self._idle_next = idle.next_change(view, now)
        except Exception as exc:  # noqa: BLE001 - a bad view must leave a screen up
            log.error("cannot draw the idle screen: %s", exc)
            return plain
        path = self._runtime / f"idle-{time.monotonic_ns()}.png"
        image.save(path, "PNG")
        if self.cfg.record_dir:  # a lab's record: the idle screen as last shown, whole
            shown = Path(self.cfg.record_dir) / "idle.png"
            shutil.copyfile(path, shown.with_suffix(".part"))
            os.replace(shown.with_suffix(".part"), shown)
        for old in self._runtime.glob("idle-*.png"):
            if old != path:
                old.unlink(missing_ok=True)
        return str(path)

    def _play(self, meeting_id: str, url: str) -> None:
        self.meeting_id = meeting_id
        self._attempt = 0
        problem = check_play_url(url)
        if problem:
            self.url = ""
            self._set_state("error", problem)
            return
        self.url = with_srt_defaults(url, self.cfg.srt_latency_ms)
        self._load("starting", f"connecting to {scrub(url)}")

    def _load(self, state: str, detail: str) -> None:
        self.showing = "programme"
        self._reload_at = None
        self._file_loaded = False
        self._loaded_at = time.monotonic()
        self._last_pos = None
        self._stop_sampling()
        self._frame_period = None  # measured again: the feed may have changed
        self.lag.restart()  # and its live edge found again
        self._set_speed(1.0)
        self._pitch_correction(False)
        self.mpv.command("loadfile", self.url, "replace")
        self._set_state(state, detail)

    def _stop_playing(self) -> None:
        self.url = ""
        self._stop_sampling()
        self.meeting_id = ""
        self._reload_at = None
        if self.showing == "programme":
            self._show_idle()
        self._set_state("off", "", always=True)  # the proxy waits for this "off"

    def _set_state(self, state: str, detail: str, *, always: bool = False) -> None:
        detail = scrub(detail)
        if (state, detail) == (self.state, self.detail) and not always:
            return
        self.state, self.detail = state, detail
        log.info("programme %s%s", state, f": {detail}" if detail else "")
        self.channel.send(Programme(state, detail))  # type: ignore[arg-type]

    def _retry(self, why: str) -> None:
        """The feed failed: idle nothing, say reconnecting, load it again after a backoff."""
        delay = backoff_delay(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s,
                              random.random)
        self._attempt += 1
        self._stop_sampling()
        self.counters["reconnects"] += 1
        self._reload_at = time.monotonic() + delay
        self._set_state("reconnecting", f"{why}; trying again in {delay:.1f} s")

    # -- mpv's events (from python-mpv's thread: queued, handled on the loop)

    def _on_event(self, event: Any) -> None:
        name = {6: "start-file", 7: "end-file", 8: "file-loaded",
                21: "playback-restart"}.get(event.event_id.value)
        if name is None:
            return
        data: dict[str, Any] = {}
        if name == "end-file":
            with contextlib.suppress(Exception):
                data = {k: (v.decode() if isinstance(v, bytes) else v)
                        for k, v in event.as_dict().items()}
        self._events.put((name, data))

    def _mpv_log(self, level: str, prefix: str, text: str) -> None:
        log.warning("mpv %s: %s", prefix, scrub(text.rstrip()))

    def _drain_events(self) -> None:
        while True:
            try:
                name, data = self._events.get_nowait()
            except queue.Empty:
                return
            if self.showing != "programme" or not self.url:
                continue
            if name == "file-loaded":
                self._file_loaded = True
            elif name == "playback-restart" and self.state in ("starting", "reconnecting"):
                self._went_live()
            elif name == "end-file":
                self._ended(data)

    def _went_live(self) -> None:
        self._attempt = 0
        self._sample_frame_period()
        self._progress_at = time.monotonic()
        self._set_state("live", self._missing())

    def _missing(self) -> str:
        """What the programme lacks ("": nothing); its tracks may show up after it starts."""
        tracks = self._get("track-list") or []
        kinds = {t.get("type") for t in tracks if isinstance(t, dict) and t.get("selected")}
        missing = [what for what, kind in (("no pictures", "video"), ("no sound", "audio"))
                   if kind not in kinds]
        return "the programme has " + " and ".join(missing) if missing else ""

    def _ended(self, data: dict[str, Any]) -> None:
        reason = str(data.get("reason", ""))
        if reason not in ("eof", "error"):
            return  # replaced or stopped by this process
        error = str(data.get("file_error", "") or "")
        if reason == "error" and self._file_loaded and any(u in error for u in UNPLAYABLE):
            self._reload_at = None
            self._stop_sampling()
            self.url = ""  # an unplayable feed is not tried again
            self._set_state("error", f"the programme feed has nothing the player can show "
                                     f"({error})")
            self._show_idle()
            return
        why = f"the programme feed {'ended' if reason == 'eof' else 'failed'}"
        self._retry(f"{why} ({error})" if error else why)

    # -- the tick: lag, stall, figures, the idle clock

    def _get(self, name: str) -> Any:
        try:
            return self.mpv._get_property(name)  # noqa: SLF001 - python-mpv's one getter
        except Exception:  # noqa: BLE001 - unavailable (no file, no video): None
            return None

    def _tick(self, now: float) -> None:
        if self.showing == "idle" and self._idle_next is not None \
                and datetime.now().astimezone() >= self._idle_next:
            self._show_idle()  # the clock on the idle screen, the join window opening
        if not self.url:
            return
        if self._reload_at is not None:
            if now >= self._reload_at:
                self._load("reconnecting", self.detail.split("; trying again")[0])
            return
        if self.state in ("starting", "reconnecting"):
            if now - self._loaded_at > START_TIMEOUT_S:
                self._retry(f"no picture {START_TIMEOUT_S:.0f} s after connecting")
            return
        if self.state != "live":
            return
        pos = self._get("time-pos")
        if isinstance(pos, (int, float)) and pos != self._last_pos:
            if self._last_pos is not None and 0 < pos - self._last_pos <= MAX_STEP_S:
                self._played_s += pos - self._last_pos
            self._last_pos = pos
            self._progress_at = now
        elif now - self._progress_at > self.cfg.stall_s:
            self._retry(f"nothing new shown for {self.cfg.stall_s:.1f} s")
            return
        lag_s = self._lag_s(now)
        if self.state != "live":
            return  # loaded again: the lag was past lag_reload_ms
        self._follow_speaker()
        # Ticks come every 0.1 or 0.5 s: a little early still counts as a second.
        if now - self._figures_at >= FIGURES_S - 0.05:
            self._figures_at = now
            self._set_state("live", self._missing())  # says so only if it changed
            self.channel.send(PlayFigures(self.figures(lag_s)))

    def _lag_s(self, now: float) -> float | None:
        """The lag rule's measure (:mod:`diemcau.core.lag`), after acting on a new sample."""
        cached = self._get("demuxer-cache-duration")
        if not isinstance(cached, (int, float)):
            return None
        action = self.lag.observe(now, float(cached))
        lag_s = self.lag.lag_s
        assert lag_s is not None
        if action == RELOAD:
            self.counters["catchups"] += 1
            log.warning("programme %.1f s behind: loading it again", lag_s)
            self._load("reconnecting", f"{lag_s:.1f} s behind the live feed: loading it again")
        elif action == SPEED_UP:
            self.counters["catchups"] += 1
            log.info("programme %.2f s behind: playing at %.2fx to catch up", lag_s,
                     self.lag.speed)
            self._pitch_correction(True)
            self._set_speed(self.lag.speed)
        elif action == SLOW_DOWN:
            if self.lag.edge_ms:
                log.info("programme at its live edge %.0f ms behind", self.lag.edge_ms)
            self._set_speed(1.0)
            self._pitch_correction(False)
        return lag_s

    def _set_speed(self, speed: float) -> None:
        self.mpv.speed = speed  # read back from mpv only for the figures

    def _sample_frame_period(self) -> None:
        """Watch the position picture by picture for a moment: the feed's picture period.

        With the low-latency profile mpv knows no frame rate of a live feed (it probes
        no stream info and keeps no frames ahead), so the period is measured here, once
        per load, and the watching stops: it woke this process at every picture.
        """
        self._steps.clear()
        self._step_from = None
        if not self._sampling:
            self._sampling = True
            self.mpv.observe_property("time-pos", self._on_position)

    def _on_position(self, _name: str, value: Any) -> None:
        """mpv's event thread, while sampling: the steps between pictures' positions."""
        if isinstance(value, float):
            if self._step_from is not None and 0 < value - self._step_from < MAX_STEP_S:
                self._steps.append(value - self._step_from)
            self._step_from = value

    def _stop_sampling(self) -> None:
        """Stop watching the position (measured or not): a stop, a reload, a failure."""
        if self._sampling:
            self._sampling = False
            with contextlib.suppress(Exception):
                self.mpv.unobserve_property("time-pos", self._on_position)
        self._steps.clear()
        self._step_from = None

    def _count_frames(self) -> None:
        """Turn the time played since the last count into pictures, at the feed's rate."""
        if self._sampling and len(self._steps) >= PERIOD_SAMPLES:
            period = statistics.median(self._steps)
            self._stop_sampling()
            self._frame_period = period
        if self._frame_period:
            self._frames_shown += self._played_s / self._frame_period
            self._played_s = 0.0

    def _pitch_correction(self, on: bool) -> None:
        """Voices at their pitch while faster; off again after, or its buffer stays as lag."""
        try:
            self.mpv.audio_pitch_correction = on
        except Exception as exc:  # noqa: BLE001 - only the pitch suffers
            log.warning("cannot switch pitch correction: %s", exc)

    def _follow_speaker(self) -> None:
        """mpv feeds the FIFO as the pictures go; what the speaker holds is late: say so."""
        held = round(self.speaker.delay_s, 3)
        if abs(held - self._audio_delay) >= 0.005:
            self._audio_delay = held
            try:
                self.mpv.audio_delay = -held
            except Exception as exc:  # noqa: BLE001 - the figures say the delay is not followed
                log.warning("cannot set the audio delay: %s", exc)

    def figures(self, lag_s: float | None) -> dict[str, Any]:
        params = self._get("video-params") or {}
        if params:
            self._count_frames()
        avsync = self._get("avsync")
        hwdec = self._get("hwdec-current")
        codec = str(self._get("video-codec") or "").split(" ")[0]  # "h264 (H.264 / AVC …)"
        decoder = f"{codec}_{hwdec}" if codec and hwdec and hwdec != "no" else codec
        return {
            "state": self.state,
            "frames_shown": round(self._frames_shown) if params else 0,
            "frames_dropped": int((self._get("frame-drop-count") or 0)
                                  + (self._get("decoder-frame-drop-count") or 0)),
            "lag_ms": round(lag_s * 1000) if lag_s is not None else None,
            "speed": self._get("speed"),
            "reconnects": self.counters["reconnects"],
            "catchups": self.counters["catchups"],
            "decoder": decoder,
            "width": int(params.get("w") or 0) if isinstance(params, dict) else 0,
            "height": int(params.get("h") or 0) if isinstance(params, dict) else 0,
            "av_sync_ms": round(avsync * 1000, 1) if isinstance(avsync, (int, float))
            and math.isfinite(avsync) else None,
            "speaker_delay_ms": round(self.speaker.delay_s * 1000, 1),
            "audio_delay_ms": round(float(self._get("audio-delay") or 0) * 1000, 1),
            "speaker_underruns": self.speaker.underruns,
            "speaker_error": self.speaker.error,
        }


class Recorder:
    """A lab's record of what the TV showed and the speaker played (``screen.record_dir``).

    ``shown.tsv``: one line per new picture, when it was handed to the output
    (wall clock, s), the playback position, its size and the frame stamp it
    carries (:mod:`diemcau.media.framestamp`; -1: none). ``played.tsv``: one
    line per period written to the speaker: when it is heard, and the frames
    written so far. ``programme.png``: the newest picture, once a second.
    ``idle.png``: the idle screen as last drawn.
    """

    POLL_S = 0.004

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._shown = (directory / "shown.tsv").open("a", buffering=1)
        self._played = (directory / "played.tsv").open("a", buffering=1)
        self._frames_played = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, player: Any) -> None:
        self._thread = threading.Thread(target=self._run, args=(player,), daemon=True,
                                        name="screen-recorder")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2)

    def played(self, samples: bytes, heard_at: float) -> None:
        self._frames_played += len(samples) // 4
        self._played.write(f"{heard_at:.6f}\t{self._frames_played}\n")

    def _run(self, player: Any) -> None:
        import numpy as np

        last: Any = None
        last_number: int | None = None
        saved_at = 0.0
        while not self._stopping.wait(self.POLL_S):
            try:
                pos = player._get_property("time-pos")  # noqa: SLF001
            except Exception:  # noqa: BLE001
                continue
            if pos == last:
                continue
            last = pos
            seen = time.time()
            try:
                shot = player.command("screenshot-raw", "video", decoder=lambda b: b)
            except Exception:  # noqa: BLE001 - no picture (sound only, idle)
                continue
            width, height, stride = shot["w"], shot["h"], shot["stride"]
            pixels = np.frombuffer(shot["data"], np.uint8).reshape(height, stride // 4, 4)
            green = np.ascontiguousarray(pixels[:, :width, 1])
            try:
                number = framestamp.read(green)
            except ValueError:
                number = None
            if number is not None and number == last_number:
                continue  # the position moved (sound), the picture did not
            last_number = number
            self._shown.write(f"{seen:.6f}\t{pos}\t{width}\t{height}\t"
                              f"{-1 if number is None else number}\n")
            if seen - saved_at >= 1.0:
                saved_at = seen
                with contextlib.suppress(Exception):
                    player.command("screenshot-to-file", str(self.directory / "programme.png"),
                                   "video")


if __name__ == "__main__":
    sys.exit(main())
