"""The supervisor's ports: what it asks of each outside thing, typed in one place.

The adapters under :mod:`diemcau.adapters` implement these for the box (paho,
PyAV, SQLite, gpiozero, espeak-ng, systemd); ``tests/harness/standins.py``
implements them for fast tests of the supervisor, without threads or
sockets. Neither side imports the other: the composition root
(:mod:`diemcau.app`) hands the real ones to the supervisor.

Every port is a :class:`typing.Protocol`: an adapter matches by its shape,
not by inheriting from it. A port takes no part in the supervisor's state;
what it reports comes back as an event through the ``post`` it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .adapters.health import Reading
    from .adapters.outbox import Pending
    from .core.light import Pattern
    from .core.meeting import StreamRequest
    from .core.update import Outcome as UpdateOutcome
    from .protocol import Reply

Post = Callable[[object], None]
"""Where a thread reports: the supervisor's queue. Never blocks."""


class Link(Protocol):
    """The MQTT link to the centre (:class:`diemcau.adapters.mqtt.MqttLink`).

    Posts ``LinkUp``, ``LinkDown``, ``CommandArrived``, ``Delivered`` (a
    QoS 1 publish acknowledged by the broker, by its ``mid``) and
    ``OwnStateSeen``.
    """

    session: int  # bumped before every connection attempt; the will and the birth carry it

    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self, final_state: str = ..., timeout_s: float = ...) -> None: ...
    def publish(self, topic: str, payload: bytes, *, qos: int = ..., retain: bool = ...) -> int:
        """Send; returns the message id (``mid``) that ``Delivered`` names later."""
        ...
    def publish_birth(self) -> None: ...
    def ack(self, token: Any) -> None:
        """A command is on disk with its reply: the broker may forget it (PUBACK)."""
        ...
    def reload_certificate(self) -> None:
        """After a renewal: the next connection uses the new certificate files."""
        ...


LinkFactory = Callable[[Post], Link]


class Media(Protocol):
    """One meeting's stream (:class:`diemcau.media.session.MediaSession`).

    Posts ``StreamChanged`` (``"off"`` once it has stopped, also after
    :meth:`stop`), ``StreamFiguresUpdated`` and ``MediaStepped``.
    """

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    def request_keyframe(self) -> None: ...
    def set_profile(self, profile: str) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...


MediaFactory = Callable[["StreamRequest", Post], Media]


class Screen(Protocol):
    """The room's TV and speaker (:class:`diemcau.media.screen.ScreenProcess`): the idle
    screen, the meeting's programme, and the voice's prompts mixed into it.

    Posts ``ProgrammeChanged`` (``"off"`` once a programme has stopped) and
    ``ProgrammeFiguresUpdated``. Every method returns at once.
    """

    def start(self) -> None: ...
    def close(self) -> None: ...
    def show_idle(self, view: Any) -> None:
        """What the idle screen shows (:class:`diemcau.core.idlescreen.IdleScreen`); the clock is its own."""
        ...
    def play(self, meeting_id: str, url: str) -> None: ...
    def stop_playing(self) -> None: ...
    def set_volume(self, percent: int) -> None: ...
    def prompt(self, samples: bytes, rate_hz: int, channels: int = ...) -> None: ...


ScreenFactory = Callable[[Post], Screen]


class HealthProbe(Protocol):
    """Measures the box (:class:`diemcau.adapters.health.HealthProbe`); never raises."""

    def measure(self) -> Reading: ...


class Ledger(Protocol):
    """The one file of durable state (:class:`diemcau.adapters.ledger.Ledger`)."""

    def transaction(self) -> AbstractContextManager[None]:
        """One durable step: committed together, or not at all. Nested blocks join it."""
        ...
    def bump(self, name: str) -> int: ...
    def get_setting(self, name: str) -> Any: ...
    def put_setting(self, name: str, value: Any) -> None: ...
    def close(self) -> None: ...


class Outbox(Protocol):
    """Messages for the centre, kept until the broker has them (a table of the ledger)."""

    def add(self, topic: str, payload: bytes, retain: bool = False) -> int: ...
    def pending(self) -> Sequence[Pending]: ...
    def remove(self, row: int) -> None: ...
    def acknowledged(self, row: int, at: float) -> None:
        """The broker has it (PUBACK): kept a while, in case the broker loses it unsaved."""
        ...
    def prune(self, acked_before: float) -> int: ...
    def kept(self) -> int:
        """Acknowledged messages still kept (waiting out the grace)."""
        ...
    def reopen(self) -> int:
        """What was acknowledged and is still kept is pending again (the link is back)."""
        ...


class Replay(Protocol):
    """The replay cache (:class:`diemcau.protocol.ReplayCache`, a table of the ledger)."""

    def first_result(self, jti: str) -> Reply | None: ...
    def remember(self, jti: str, exp: float, reply: Reply | None = None) -> None: ...
    def unfinished(self) -> list[tuple[str, float, Reply | None]]: ...
    def purge(self, now: float, leeway_s: float = ...) -> int: ...


class Light(Protocol):
    """The status light (:class:`diemcau.adapters.panel.StatusLight`)."""

    @property
    def shown(self) -> Pattern | None: ...
    def show(self, pattern: Pattern) -> None: ...
    def close(self) -> None: ...


class Button(Protocol):
    """One push button (:class:`diemcau.adapters.panel.PanelButton`); posts ``ButtonPressed``."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


ButtonsFactory = Callable[[Post], Sequence[Button]]


class Voice(Protocol):
    """Spoken prompts (:class:`diemcau.adapters.voice.Voice`); posts ``PromptSpoken``."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_volume(self, percent: int) -> None: ...
    def say(self, key: str, text: str) -> None: ...


class ServiceManager(Protocol):
    """The service manager (:class:`diemcau.adapters.service.ServiceManager`: systemd)."""

    watchdog_interval_s: float | None  # None: nobody watches the loop

    def ready(self, status: str = "") -> None: ...
    def alive(self) -> None: ...
    def stopping(self) -> None: ...


class Releases(Protocol):
    """The installed releases and the update record (:class:`diemcau.adapters.releases.ReleaseStore`)."""

    def minimum(self) -> str | None: ...
    def accept(self, version: str, command_id: str, command_exp: float) -> None: ...
    def drop_pending(self) -> None: ...
    def begin_trial(self, version: str, command_id: str, command_exp: float) -> None:
        """Switch to ``version`` for a trial; raises ``InstallError`` or ``OSError``, switching nothing."""
        ...
    def commit(self, running: str) -> bool: ...
    def take_unreported(self) -> UpdateOutcome | None: ...
    def mark_reported(self) -> None: ...


# Download, verify and install in a thread, posting UpdateProgress, then UpdateInstalled
# or UpdateFailed (adapters.releases.run_update): (releases, manifest, command id, post, CA file).
Download = Callable[[Any, Any, str, Post, str], object]
