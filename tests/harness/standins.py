"""Stand-ins for the supervisor's ports (``diemcau.ports``): real implementations for tests.

Each one does what its port promises, without threads, sockets or hardware,
and records what it was asked so a test can look: the :class:`Link` keeps
every publish and acknowledgement and goes up or down when told; a
:class:`Media` posts ``StreamChanged`` as a real session would (``"off"``
once stopped) and lets the test post the stream's changes; :class:`Releases`
keeps the update record in memory. The ledger, outbox and replay cache are
the real ones (one SQLite file): they have no threads either.

:func:`standin_box` builds a supervisor on them; the test then drives it with
``supervisor.handle(event)`` and ``supervisor.handle_queued()``, never its loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from diemcau.adapters.health import Reading
from diemcau.adapters.ledger import FILE_NAME, Ledger
from diemcau.adapters.outbox import Outbox
from diemcau.config import Config, parse_config
from diemcau.core.events import (
    ButtonPressed,
    CommandArrived,
    LinkDown,
    LinkUp,
    ProgrammeChanged,
    PromptSpoken,
    StopRequested,
    StreamChanged,
)
from diemcau.core.light import Pattern
from diemcau.core.meeting import StreamRequest
from diemcau.core.update import Outcome as UpdateOutcome
from diemcau.ports import Post
from diemcau.protocol import Event, ReplayCache, Reply, Status, device_topic
from diemcau.supervisor import Adapters, Supervisor

from .box import CentreKey, offline_config

DEV = "c00001-r1"  # offline_config's device


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class Link:
    """The MQTT link: publishes are recorded (and get a mid), commands arrive from the test.

    Starts down. :meth:`up` and :meth:`down` change it as the broker would and
    return the event the real link posts; the test hands that to the supervisor.
    """

    def __init__(self, post: Post) -> None:
        self.post = post
        self.session = 1
        self._connected = False
        self._next_mid = 0
        self.published: list[Published] = []
        self.acked: list[Any] = []
        self.births = 0
        self.certificate_reloads = 0
        self.started = False
        self.stopped_as: str | None = None
        # Asked at each publish and ack, if set: what the test wants to know at that moment.
        self.watch: Callable[[], object] | None = None
        self.moments: list[tuple[str, object]] = []

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        self.started = True

    def stop(self, final_state: str = "disconnected", timeout_s: float = 5.0) -> None:
        self.stopped_as = final_state
        self._connected = False

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> int:
        self._next_mid += 1
        self._moment(f"publish {topic}")
        self.published.append(Published(topic, payload, qos, retain, self._next_mid))
        return self._next_mid

    def publish_birth(self) -> None:
        self.births += 1

    def ack(self, token: Any) -> None:
        self._moment(f"ack {token}")
        self.acked.append(token)

    def _moment(self, what: str) -> None:
        if self.watch is not None:
            self.moments.append((what, self.watch()))

    def reload_certificate(self) -> None:
        self.certificate_reloads += 1

    # ------------------------------------------------------------ driven by the test

    def up(self) -> LinkUp:
        self.session += 1
        self._connected = True
        self.publish_birth()
        return LinkUp(session=self.session, session_present=True)

    def down(self, reason: str = "test: connection lost") -> LinkDown:
        self._connected = False
        return LinkDown(reason)

    def on(self, suffix: str) -> list[Published]:
        """What was published on the device's ``suffix`` topic (``reply``, ``event``, …)."""
        return [p for p in self.published if p.topic == device_topic(DEV, suffix)]

    def replies(self) -> list[Reply]:
        return [msgspec.json.decode(p.payload, type=Reply) for p in self.on("reply")]

    def events(self) -> list[Event]:
        return [msgspec.json.decode(p.payload, type=Event) for p in self.on("event")]

    def statuses(self) -> list[Status]:
        return [msgspec.json.decode(p.payload, type=Status) for p in self.on("status")]


class Media:
    """One meeting's stream: calls recorded; :meth:`stream` posts a change as the session would."""

    def __init__(self, request: StreamRequest, post: Post) -> None:
        self.request = request
        self.post = post
        self.calls: list[tuple[str, Any]] = []

    def start(self) -> None:
        self.calls.append(("start", None))

    def stop(self) -> None:
        self.calls.append(("stop", None))
        self.post(StreamChanged("off"))  # its thread has ended

    def set_muted(self, muted: bool) -> None:
        self.calls.append(("set_muted", muted))

    def request_keyframe(self) -> None:
        self.calls.append(("request_keyframe", None))

    def set_profile(self, profile: str) -> None:
        self.calls.append(("set_profile", profile))

    def join(self, timeout: float | None = None) -> bool:
        return True

    def stream(self, state: str, detail: str = "", fatal: bool = False) -> None:
        self.post(StreamChanged(state, detail, fatal))  # type: ignore[arg-type]


class Screen:
    """The room's TV and speaker: calls recorded; :meth:`programme` posts a change as the player would."""

    def __init__(self, post: Post) -> None:
        self.post = post
        self.calls: list[tuple[str, Any]] = []
        self.playing: tuple[str, str] | None = None

    def start(self) -> None:
        self.calls.append(("start", None))

    def close(self) -> None:
        self.calls.append(("close", None))

    def show_idle(self, view: Any) -> None:
        self.calls.append(("show_idle", view))

    def play(self, meeting_id: str, url: str) -> None:
        self.calls.append(("play", (meeting_id, url)))
        self.playing = (meeting_id, url)

    def stop_playing(self) -> None:
        self.calls.append(("stop_playing", None))
        if self.playing is not None:
            self.playing = None
            self.post(ProgrammeChanged("off"))  # the player has stopped

    def set_volume(self, percent: int) -> None:
        self.calls.append(("set_volume", percent))

    def prompt(self, samples: bytes, rate_hz: int, channels: int = 1) -> None:
        self.calls.append(("prompt", (len(samples), rate_hz, channels)))

    def programme(self, state: str, detail: str = "") -> None:
        self.post(ProgrammeChanged(state, detail))  # type: ignore[arg-type]

    def called(self, name: str) -> list[Any]:
        return [arg for what, arg in self.calls if what == name]


class MediaMaker:
    """The media factory: every session it made, the last one first to hand."""

    def __init__(self) -> None:
        self.made: list[Media] = []

    def __call__(self, request: StreamRequest, post: Post) -> Media:
        self.made.append(Media(request, post))
        return self.made[-1]

    @property
    def last(self) -> Media:
        return self.made[-1]


def reading(**figures: Any) -> Reading:
    """A health reading of a box that is well, with ``figures`` changed."""
    well: dict[str, Any] = dict(
        ts=1.7e9, uptime_s=60.0, boot_uptime_s=600.0, cpu_percent=5.0, load_1m=0.1,
        memory_used_percent=30.0, memory_available_mb=1500.0, process_rss_mb=60.0,
        disk_free_mb=5000.0, disk_used_percent=20.0, interfaces=(), wifi_signal_dbm=None,
        cpu_temperature_c=45.0, throttled_flags=0, undervoltage=False, throttled=False,
        clock_synced=True)
    return Reading(**(well | figures))


class Health:
    """The health probe: returns :attr:`reading`, which the test may replace."""

    def __init__(self) -> None:
        self.reading = reading()

    def measure(self) -> Reading:
        return self.reading


class Light:
    """The status light: the patterns shown, in order (repeats included, as the supervisor shows)."""

    def __init__(self) -> None:
        self.patterns: list[Pattern] = []
        self.closed = False

    @property
    def shown(self) -> Pattern | None:
        return self.patterns[-1] if self.patterns else None

    def show(self, pattern: Pattern) -> None:
        self.patterns.append(pattern)

    def close(self) -> None:
        self.closed = True


class Voice:
    """The voice: what it was asked to say; :meth:`spoken` is the event the real one posts."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []
        self.volumes: list[int] = []
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def set_volume(self, percent: int) -> None:
        self.volumes.append(percent)

    def say(self, key: str, text: str) -> None:
        self.said.append((key, text))

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.said]

    def spoken(self, key: str) -> PromptSpoken:
        return PromptSpoken(key)


class Button:
    """A push button: the test makes its presses (``press``), as the classifier would post them."""

    def __init__(self, post: Post, name: str = "join") -> None:
        self.post = post
        self.name = name
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def press(self, kind: str = "short_press", held_s: float = 0.1) -> ButtonPressed:
        return ButtonPressed(self.name, kind, held_s)  # type: ignore[arg-type]


class Service:
    """The service manager: what it was told."""

    watchdog_interval_s: float | None = None

    def __init__(self) -> None:
        self.told: list[str] = []

    def ready(self, status: str = "") -> None:
        self.told.append("ready")

    def alive(self) -> None:
        self.told.append("alive")

    def stopping(self) -> None:
        self.told.append("stopping")


@dataclass
class Releases:
    """The release store's record, in memory: what was accepted, switched to and reported."""

    minimum_version: str | None = None
    accepted: list[tuple[str, str, float]] = field(default_factory=list)
    trials: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    unreported: UpdateOutcome | None = None
    dropped: int = 0

    def minimum(self) -> str | None:
        return self.minimum_version

    def accept(self, version: str, command_id: str, command_exp: float) -> None:
        self.accepted.append((version, command_id, command_exp))

    def drop_pending(self) -> None:
        self.dropped += 1

    def begin_trial(self, version: str, command_id: str, command_exp: float) -> None:
        self.trials.append(version)

    def commit(self, running: str) -> bool:
        self.committed.append(running)
        return True

    def take_unreported(self) -> UpdateOutcome | None:
        return self.unreported

    def mark_reported(self) -> None:
        self.unreported = None


@dataclass
class StandinBox:
    """A supervisor on stand-ins, and the stand-ins to drive and look at."""

    supervisor: Supervisor
    centre: CentreKey
    media: MediaMaker
    health: Health
    light: Light
    voice: Voice
    service: Service
    releases: Releases
    buttons: list[Button]
    ledger: Ledger
    now: list[float]  # the wall clock the supervisor reads: now[0]
    screens: list[Screen] = field(default_factory=list)  # the one made, if the box has a screen

    @property
    def screen(self) -> Screen:
        return self.screens[-1]

    @property
    def link(self) -> Link:
        return self.supervisor.link  # type: ignore[return-value]

    def command(self, cmd: str, args: dict[str, Any] | None = None, *, jti: str,
                ack: Any = "unset", **sign: Any) -> CommandArrived:
        """A signed command as the link posts it; its ack token is ``ack-<jti>``."""
        token = self.centre.sign(DEV, cmd, args, jti=jti, now=self.now[0], **sign)
        return CommandArrived(device_topic(DEV, "cmd"), token.encode(),
                              f"ack-{jti}" if ack == "unset" else ack)

    def handle(self, *events: object) -> list[StopRequested]:
        """Each event as one step, then whatever they posted, as the loop would.

        Returns the StopRequested events posted (the loop would stop at the first).
        """
        for event in events:
            self.supervisor.handle(event)
        return self.supervisor.handle_queued()

    def close(self) -> None:
        self.ledger.close()


def standin_box(tmp_path: Path, *, extra: str = "", releases: bool = True, screen: bool = False,
                config: Callable[[Config], Config] | None = None) -> StandinBox:
    """A supervisor on stand-ins, its state (the real ledger) under ``tmp_path``.

    ``screen``: the box has a TV and speaker (a :class:`Screen`).
    """
    centre = CentreKey()
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(offline_config(state, centre, extra=extra))
    if config is not None:
        cfg = config(cfg)
    ledger = Ledger(state / FILE_NAME)
    media, health, light, voice = MediaMaker(), Health(), Light(), Voice()
    service, store = Service(), Releases()
    buttons: list[Button] = []

    def make_buttons(post: Post) -> list[Button]:
        buttons.append(Button(post))
        return buttons

    screens: list[Screen] = []

    def make_screen(post: Post) -> Screen:
        screens.append(Screen(post))
        return screens[-1]

    now = [1.8e9]
    adapters = Adapters(
        make_link=Link, make_media=media, health=health,
        outbox=Outbox(ledger.db, cfg.outbox.max_messages), replay=ReplayCache(ledger.db),
        ledger=ledger, model="test board", serial="0001", service=service, light=light,
        make_buttons=make_buttons, voice=voice, releases=store if releases else None,
        make_screen=make_screen if screen else None)
    supervisor = Supervisor(cfg, adapters, clock=lambda: now[0], monotonic=lambda: now[0])
    return StandinBox(supervisor, centre, media, health, light, voice, service, store,
                      buttons, ledger, now, screens)
