"""The supervisor: one queue, one loop, the only owner of the box's state.

Every other thread (the MQTT link, the media session, signal handlers) posts
small events to :meth:`Supervisor.post` and returns at once. The loop takes
them one at a time, asks the pure core what they mean, and carries out the
result through its parts (:mod:`diemcau.parts`), which it owns and calls on
its own thread: ``commands`` (verification, replay, replies), ``reporting``
(status, meta, health, alerts, events, the outbox), ``updates`` (firmware
updates) and ``panel`` (light, presses, voice, identify, factory reset). The
room, the media session and the stream's figures are the loop's own.

Each event is handled as one durable step (:meth:`Supervisor._durably`):
what it writes to the ledger (replies, events, the replay cache, the room's
settings) is committed together, and only then are the messages sent and the
command acknowledged to the broker. A box killed at any moment has either
recorded a command and its reply, or not acknowledged it: the broker sends it
again (docs/protocol.md, "Delivery guarantees").

Start and stop are one list (:meth:`Supervisor._start_list`): light → ledger
(the final replies owed from the last run) → voice → buttons → link → media →
service manager, stopped in reverse: media before the link (so the centre
never sees a live stream from a box that says it is gone), then the final
status and the link (``disconnected``).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from .config import Config
from .core import meeting as core
from .core.events import (
    ButtonPressed,
    CameraDetected,
    CertificateStatus,
    CommandArrived,
    Delivered,
    FromMedia,
    HealthDue,
    LinkDown,
    LinkUp,
    MediaStepped,
    OwnStateSeen,
    ProgrammeChanged,
    ProgrammeFiguresUpdated,
    PromptSpoken,
    StopRequested,
    StreamChanged,
    StreamFiguresUpdated,
    Tick,
    UpdateFailed,
    UpdateInstalled,
    UpdateProgress,
)
from .core.idlescreen import IdleScreen, idle_screen
from .core.light import LightView, offline_phase
from .core.prompts import prompt_for_event
from .parts.commands import Commands
from .parts.panel import RESET_CONFIRM_MAX_S, Panel
from .parts.reporting import Reporting, replace_ts
from .parts.updates import Updates
from .ports import (
    Button,
    ButtonsFactory,
    HealthProbe,
    Ledger,
    Light,
    Link,
    LinkFactory,
    Media,
    MediaFactory,
    Outbox,
    Releases,
    Replay,
    Screen,
    ScreenFactory,
    ServiceManager,
    Voice,
)
from .protocol import (
    Command,
    ProgrammeFigures,
    RoomSound,
    State,
    Status,
    StreamFigures,
    decode,
    now_ts,
)

log = logging.getLogger("diemcau.supervisor")

__all__ = [
    "EXIT_FACTORY_RESET", "EXIT_RESTART", "QUEUE_SIZE", "RESET_CONFIRM_MAX_S", "TICK_S",
    "Adapters", "Link", "Media", "MediaFactory", "Supervisor", "replace_ts",
]

QUEUE_SIZE = 10_000
REPLAY_PURGE_EVERY_S = 300.0
TICK_S = 1.0  # the schedule timer: invitations' start and end, identify, reset
# EX_TEMPFAIL: not 0, so the service manager (Restart=on-failure) starts the box again.
EXIT_RESTART = 75  # after installing an update: the new release starts
EXIT_FACTORY_RESET = EXIT_RESTART  # after a factory reset: the box enrolls afresh


@dataclass
class Adapters:
    """What the supervisor drives (:mod:`diemcau.ports`); built by the composition root (:mod:`diemcau.app`)."""

    make_link: LinkFactory
    make_media: MediaFactory
    health: HealthProbe
    outbox: Outbox  # a table of the ledger
    replay: Replay  # a table of the ledger
    ledger: Ledger  # transactions, the event seq, the room's settings
    model: str
    serial: str
    service: ServiceManager | None = None  # systemd notify, optional
    # The room's panel and voice, all optional (a box without them still joins meetings).
    light: Light | None = None
    make_buttons: ButtonsFactory | None = None
    voice: Voice | None = None
    releases: Releases | None = None  # None: no firmware updates
    make_screen: ScreenFactory | None = None  # the room's TV and speaker; None: no far end
    sound: RoomSound | None = None  # the room's sound kit, for meta


class Step(NamedTuple):
    """One entry of the start list: started in order, stopped in reverse."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], None]


class Supervisor:
    def __init__(self, cfg: Config, adapters: Adapters, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.a = adapters
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped_events = 0
        self._dev = cfg.device.id
        # The loop's own state: the room, its media session and the stream's figures.
        self.room = core.Room(volume_percent=cfg.voice.volume_percent)
        self.stream = StreamFigures()
        self._media: Media | None = None
        self._media_generation = 0
        self._stream_failing_since: float | None = None
        # The far end: the programme on the room's TV, and when it was last lost.
        self.screen: Screen | None = (adapters.make_screen(self.post)
                                      if adapters.make_screen is not None else None)
        self.programme = ProgrammeFigures()
        self._programme_lost_since: float | None = None
        self._programme_lost_told = False
        self._programme_seen = False  # live at least once this meeting
        self._idle_shown: IdleScreen | None = None  # what the screen was last told to show
        self._buttons: Sequence[Button] = []
        self.exit_code = 0  # EXIT_RESTART after installing an update: the service restarts us
        # One durable step at a time: what it sends and acknowledges waits for its commit.
        self._in_step = False
        self._acks: list[Any] = []
        self.link: Link = adapters.make_link(self.post)
        # The parts: each gets the ports it drives and a few callbacks, never the supervisor.
        self.reporting = Reporting(
            cfg, link=self.link, outbox=adapters.outbox, ledger=adapters.ledger,
            health=adapters.health, model=adapters.model, serial=adapters.serial,
            durably=self._durably, status=self.status_message, clock=clock,
            sound=adapters.sound)
        self.emit = self.reporting.emit  # an event for the centre, with the next seq
        self.commands = Commands(
            cfg, replay=adapters.replay, send_reliable=self.reporting.send_reliable,
            clock=clock, clock_synced=lambda: self.reporting.clock_synced)
        self.panel = Panel(cfg, light=adapters.light, voice=adapters.voice,
                           emit=self.emit, post=self.post, clock=clock, monotonic=monotonic)
        self.updates = Updates(
            cfg, releases=adapters.releases, link=self.link, reply=self.commands.reply,
            emit=self.emit, expiry=self.commands.expiry, owe=self.commands.owe,
            post=self.post, restart=self._restart, clock=clock)
        self._restore_room()

    @property
    def factory_reset(self) -> bool:
        """run() erased the state: exit with EXIT_FACTORY_RESET."""
        return self.panel.erased

    # ------------------------------------------------------------ the queue

    def post(self, event: object) -> None:
        """Called from any thread; never blocks. A full queue drops and counts."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped_events += 1
            if self.dropped_events in (1, 10, 100) or self.dropped_events % 1000 == 0:
                log.error("supervisor queue full: dropped %d events so far (last: %s)",
                          self.dropped_events, type(event).__name__)

    def post_from_signal_handler(self, event: object) -> None:
        """:meth:`post` for a signal handler, which never takes the queue's lock itself.

        A handler runs on the main thread between two bytecodes, and the main
        thread may be inside the loop's ``get`` holding that (not re-entrant)
        lock: a put there waits for itself for ever (seen: a box that ignored
        SIGTERM until it was killed). From another thread, the put waits for
        ``get`` to let go.
        """
        threading.Thread(target=self.post, args=(event,), name="signal", daemon=True).start()

    def handle_queued(self) -> list[StopRequested]:
        """Handle every event waiting in the queue, on the caller's thread, as the loop would.

        For tests that drive the supervisor without its loop. Returns the
        StopRequested events taken (the loop would have stopped on the first).
        """
        stops: list[StopRequested] = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return stops
            if isinstance(event, StopRequested):
                stops.append(event)
            else:
                self.handle(event)

    # ------------------------------------------------------------ start and stop

    def _start_list(self) -> list[Step]:
        """What run() starts, in order; stopped in reverse, each only if it was started."""
        return [
            Step("light", self._show_light, self.panel.close_light),
            Step("ledger", self._finish_owed_replies, self._close_ledger),
            # Before the voice: with a screen, the prompts go to the speaker through it.
            Step("screen", self._start_screen, self._stop_screen),
            Step("voice", lambda: self.panel.start_voice(self.room.volume_percent),
                 self.panel.stop_voice),
            # From here the reset window runs: a press held now counts for nothing.
            Step("buttons", self._start_buttons, self._stop_buttons),
            Step("link", self._start_link, self._stop_link),
            Step("media", lambda: None, self._stop_media_now),  # a meeting starts it
            Step("service", self._service_ready, self._service_stopping),
        ]

    def run(self) -> None:
        """Start the list, run until a StopRequested arrives, then stop the list in reverse."""
        started: list[Step] = []
        try:
            for step in self._start_list():
                step.start()
                started.append(step)
            self._loop()
        finally:
            for step in reversed(started):
                try:
                    step.stop()
                except Exception:  # noqa: BLE001 - the rest must still stop
                    log.exception("error stopping %s", step.name)

    def _finish_owed_replies(self) -> None:
        with self._durably():
            self.commands.finish_interrupted()

    def _close_ledger(self) -> None:
        self.a.ledger.close()
        self.panel.erase_if_reset()  # everything under the state directory, the ledger too

    def _start_screen(self) -> None:
        if self.screen is not None:
            self.screen.set_volume(self.room.volume_percent)
            self._show_idle()
            self.screen.start()

    def _stop_screen(self) -> None:
        if self.screen is not None:
            self.screen.close()

    def _start_buttons(self) -> None:
        if self.a.make_buttons is not None:
            self._buttons = self.a.make_buttons(self.post)
            for button in self._buttons:
                button.start()

    def _stop_buttons(self) -> None:
        for button in reversed(self._buttons):
            button.stop()

    def _start_link(self) -> None:
        self.link.start()
        self.panel.phase = "connecting"
        self._show_light()

    def _stop_link(self) -> None:
        self.reporting.publish_status()  # the final status: no meeting, no stream
        self.link.stop("updating" if self.exit_code == EXIT_RESTART else "disconnected")

    def _stop_media_now(self) -> None:
        if self._media is not None:
            self._media.stop()
            self._media.join(timeout=5.0)
            self._media = None
        if self.screen is not None and self.programme.state != "off":
            self.screen.stop_playing()
        self.stream = StreamFigures()
        self.programme = ProgrammeFigures()
        if self.room.state != "idle":
            self.room = core.Room(volume_percent=self.room.volume_percent)

    def _service_ready(self) -> None:
        if self.a.service is not None:
            self.a.service.ready(f"device {self._dev}")

    def _service_stopping(self) -> None:
        if self.a.service is not None:
            self.a.service.stopping()

    def _loop(self) -> None:
        service = self.a.service
        watchdog_s = service.watchdog_interval_s if service else None
        next_tick = next_health = next_alive = time.monotonic()
        next_purge = time.monotonic() + REPLAY_PURGE_EVERY_S
        while True:
            now_m = time.monotonic()
            if service and watchdog_s and now_m >= next_alive:
                # From the loop itself: a stalled loop stops these, and systemd restarts us.
                service.alive()
                next_alive = now_m + watchdog_s
            if now_m >= next_health:
                self.post(HealthDue())
                next_health = now_m + self.cfg.health.interval_s
            if now_m >= next_tick:
                self.post(Tick())
                next_tick = now_m + TICK_S
            if now_m >= next_purge:
                self.commands.purge()
                next_purge = now_m + REPLAY_PURGE_EVERY_S
            wake = min(next_health, next_tick, next_alive if watchdog_s else next_tick)
            try:
                event = self._queue.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                continue
            if isinstance(event, StopRequested):
                log.info("stopping: %s", event.reason)
                return
            try:
                self.handle(event)
            except Exception:  # noqa: BLE001 - one bad event must not stop the box
                log.exception("error handling %s", type(event).__name__)

    def _restart(self, reason: str) -> None:
        """An update is installed and switched to: stop, so that the service starts it."""
        self.exit_code = EXIT_RESTART
        self.post(StopRequested(reason))

    # ------------------------------------------------------------ dispatch

    def handle(self, event: object) -> None:
        """Handle one event as one durable step (the loop calls this; so do fast tests)."""
        with self._durably():
            self._dispatch(event)

    @contextmanager
    def _durably(self) -> Iterator[None]:
        """One durable step: everything the block writes is committed together; what it
        sends, and the acknowledgement of the command it handled, go out after the commit.

        Nested blocks join the outer one. An exception rolls the step back and sends
        nothing of it: an unacknowledged command comes again from the broker.
        """
        if self._in_step:
            yield
            return
        self._in_step = True
        try:
            with self.a.ledger.transaction():
                yield
        except BaseException:
            self.reporting.rolled_back()
            self._acks.clear()
            raise
        finally:
            self._in_step = False
        self.reporting.committed()
        acks, self._acks = self._acks, []
        for token in acks:
            self.link.ack(token)

    def _dispatch(self, event: object) -> None:
        match event:
            case CommandArrived():
                self._on_command(event)
            case FromMedia(generation=gen, event=inner):
                if gen == self._media_generation:
                    self._on_media(inner)
            case Delivered(mid=mid):
                self.reporting.delivered(mid)
            case LinkUp():
                self._on_link_up()
            case LinkDown(reason=reason):
                log.warning("link down: %s", reason)
                self.panel.link_down()
                # Made while offline: the outbox delivers it once the link is back.
                self.emit("link_lost", detail=reason)
            case OwnStateSeen(payload=payload):
                self._on_own_state(payload)
            case HealthDue():
                self._health_tick()
            case ButtonPressed():
                outcome = self.panel.press(event, self.room, online=self.link.connected)
                if outcome is not None:
                    self._apply(outcome)
            case Tick():
                # An unsynchronised clock cannot start or end a meeting.
                if self.panel.tick() and self.reporting.clock_synced:
                    self._apply(core.handle_tick(self.room, self._clock()))
            case PromptSpoken(key=key):
                self.panel.prompt_spoken(key)
            case CertificateStatus():
                self.reporting.certificate = event
                if event.renewed:
                    self.link.reload_certificate()
            case ProgrammeChanged(state=state, detail=detail):
                self._on_programme(state, detail)
            case ProgrammeFiguresUpdated(figures=figures):
                try:
                    merged = msgspec.structs.asdict(self.programme) | figures
                    self.programme = msgspec.convert(merged, ProgrammeFigures)
                except (msgspec.ValidationError, TypeError) as exc:
                    log.error("the player reported bad figures %r: %s", figures, exc)
            case CameraDetected(backend=backend):
                self.reporting.camera_detected(backend)
            case UpdateProgress() | UpdateInstalled() | UpdateFailed():
                self.updates.on_event(event, self.room.state)
            case _:
                log.error("unknown event %r", event)
        self._show_light()

    # ------------------------------------------------------------ commands

    def _on_command(self, event: CommandArrived) -> None:
        if event.ack is not None:
            self._acks.append(event.ack)  # sent once this step is committed
        self.commands.handle(event, self._run_command)

    def _run_command(self, command: Command, now: float) -> None:
        synced = self.reporting.clock_synced
        self._apply(core.handle_command(self.room, command.cmd, command.id, command.args,
                                        self.commands.policy, now if synced else None))

    def _apply(self, outcome: core.Outcome) -> None:
        before = self.room
        self.room = outcome.room
        for draft in outcome.replies:
            self.commands.reply(draft)
        for effect in outcome.effects:
            self._carry_out(effect)
        if before != self.room:
            self.reporting.publish_status()
        if before.invitation != self.room.invitation:
            self._save_invitation()
        self.updates.room_changed(self.room.state)

    def _carry_out(self, effect: core.Effect) -> None:
        match effect:
            case core.StartMedia(request=request):
                self._start_media(request)
            case core.StopMedia():
                self._stop_media()
            case core.SetMuted(muted=muted):
                if self._media is not None:
                    self._media.set_muted(muted)
            case core.RequestKeyframe():
                if self._media is not None:
                    self._media.request_keyframe()
            case core.SetProfile(profile=profile):
                if self._media is not None:
                    self._media.set_profile(profile)
                    self.stream = msgspec.structs.replace(self.stream, profile=profile)
            case core.SetVolume(percent=percent):
                log.info("speaker volume %d%%", percent)
                self.a.ledger.put_setting("volume_percent", percent)  # with the command's reply
                self.panel.set_volume(percent)
                if self.screen is not None:
                    self.screen.set_volume(percent)
            case core.PublishHealth():
                self._health_tick()
            case core.Identify(duration_s=duration):
                log.info("identify for %d s: site %s", duration, self.cfg.site.name)
                self.panel.identify(duration, self.cfg.site.name)
            case core.Say(prompt=prompt):
                self.panel.say(prompt)
            case core.EmitEvent(kind=kind, meeting_id=meeting_id, detail=detail):
                self.emit(kind, meeting_id=meeting_id, detail=detail)
                key = prompt_for_event(kind)
                if key is not None:
                    self.panel.say(key)
            case core.StartUpdate(command_id=cid, manifest=manifest):
                self.updates.start(cid, manifest)

    # ------------------------------------------------------------ media

    def _start_media(self, request: core.StreamRequest) -> None:
        if self._media is not None:
            self._media.stop()
        self._media_generation += 1
        gen = self._media_generation
        self._media = self.a.make_media(request, lambda ev: self.post(FromMedia(gen, ev)))
        self.stream = StreamFigures(state="starting", profile=request.profile)
        self._stream_failing_since = None
        self._media.start()
        # The far end goes with the uplink: the programme plays while the meeting lasts.
        if self.screen is not None and request.play_url:
            self.programme = ProgrammeFigures(state="starting")
            self._programme_lost_since = None
            self._programme_lost_told = self._programme_seen = False
            self.screen.play(request.meeting_id, request.play_url)

    def _stop_media(self) -> None:
        if self.screen is not None and self.programme.state != "off":
            self.screen.stop_playing()  # back to the idle screen; "off" follows
        if self._media is None:
            self.post(FromMedia(self._media_generation, StreamChanged("off")))
            return
        self._media.stop()  # posts StreamChanged("off") when its thread has ended

    def _on_media(self, event: object) -> None:
        match event:
            case StreamChanged(state=state, detail=detail, fatal=fatal):
                log.info("stream %s %s", state, detail)
                self.stream = msgspec.structs.replace(self.stream, state=state, detail=detail)
                if state in ("reconnecting", "error"):
                    if self._stream_failing_since is None:
                        self._stream_failing_since = self._clock()
                elif state in ("live", "off"):
                    # "starting" between two retries does not end the failure.
                    self._stream_failing_since = None
                if state == "off":
                    self._media = None
                    self.stream = StreamFigures()
                self._apply(core.handle_stream(self.room, state, detail, fatal))
                # The stream's state changed, even if the room did not.
                self.reporting.publish_status()
            case MediaStepped(profile=profile, kbps=kbps, direction=direction, reason=reason):
                self._on_media_step(profile, kbps, direction, reason)
            case StreamFiguresUpdated(figures=figures):
                try:
                    merged = msgspec.structs.asdict(self.stream) | figures
                    self.stream = msgspec.convert(merged, StreamFigures)
                except (msgspec.ValidationError, TypeError) as exc:
                    log.error("media reported bad figures %r: %s", figures, exc)

    def _on_programme(self, state: str, detail: str) -> None:
        """The programme on the TV changed: status, and the centre told when it is lost and back."""
        log.info("programme %s %s", state, detail)
        if state == "off":
            self.programme = ProgrammeFigures()
            self._programme_lost_since = None
            self._programme_lost_told = False
            self.reporting.publish_status()
            return
        self.programme = msgspec.structs.replace(self.programme, state=state, detail=detail)
        in_meeting = self.room.state in core.IN_MEETING
        if state in ("reconnecting", "error"):
            if self._programme_lost_since is None:
                self._programme_lost_since = self._clock()
            if in_meeting and not self._programme_lost_told and self._programme_seen:
                # Only a programme that was seen can be lost; one that never came is an alert's.
                self._programme_lost_told = True
                self.emit("programme_lost", meeting_id=self.room.meeting_id, detail=detail)
        elif state == "live":
            self._programme_seen = True
            self._programme_lost_since = None
            if self._programme_lost_told:
                self._programme_lost_told = False
                self.emit("programme_back", meeting_id=self.room.meeting_id)
        self.reporting.publish_status()

    def _on_media_step(self, profile: str, kbps: int, direction: str, reason: str) -> None:
        """Adaptive bitrate moved the stream: an event, and ``status`` shows the new profile."""
        log.info("media stepped %s to %s at %d kb/s: %s", direction, profile, kbps, reason)
        self.stream = msgspec.structs.replace(self.stream, profile=profile, target_kbps=kbps)
        self.emit("media_step", meeting_id=self.room.meeting_id, detail=reason,
                  data={"profile": profile, "kbps": kbps, "direction": direction})
        self.reporting.publish_status()

    # ------------------------------------------------------------ link and health

    def _on_link_up(self) -> None:
        self.panel.link_up()
        self.reporting.link_up()
        try:
            self.updates.link_up()
        except Exception:  # noqa: BLE001 - the update record must never keep the box offline
            log.exception("could not commit or report the last update")

    def _on_own_state(self, payload: bytes) -> None:
        try:
            seen = decode(payload, State)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return  # an empty or foreign payload: the next birth overwrites it
        if seen.state != "ready" and seen.session < self.link.session and self.link.connected:
            log.warning("broker holds a stale %r from session %d; publishing birth again",
                        seen.state, seen.session)
            self.link.publish_birth()

    def _health_tick(self) -> None:
        reading = self.reporting.health(self.room, self.stream, self._stream_failing_since,
                                        self.programme, self._programme_lost_since)
        if not self.link.connected:
            # Without a network, the broker is not the problem: the light says which it is.
            self.panel.phase = offline_phase(reading.interfaces)

    def status_message(self) -> Status:
        room = self.room
        return Status(
            meeting_state=room.state, meeting_id=room.meeting_id,
            invited_meeting_id=room.invitation.meeting_id if room.invitation else None,
            muted=room.muted, floor=room.floor, hand_raised=room.hand_raised,
            volume_percent=room.volume_percent,
            stream=self.stream, programme=self.programme, ts=now_ts(),
        )

    # ------------------------------------------------------------ the light and the room's settings

    def light_view(self) -> LightView:
        """What the light shows, from the supervisor's state alone."""
        return self.panel.light_view(self.room, updating=self.updates.under_way is not None)

    def _show_light(self) -> None:
        self.panel.show(self.room, updating=self.updates.under_way is not None)
        self._show_idle()

    def _show_idle(self) -> None:
        """The idle screen's facts to the screen, when they changed (the child draws the clock)."""
        if self.screen is None:
            return
        facts = idle_screen(self.cfg.site, self._dev, self.panel.phase, self.room,
                            now=self._clock(), join_early_s=self.panel.join_early_s)
        if facts != self._idle_shown:
            self._idle_shown = facts
            self.screen.show_idle(facts)

    def _restore_room(self) -> None:
        """The room's settings as the last run left them: the volume, the invitation."""
        volume = self.a.ledger.get_setting("volume_percent")
        if isinstance(volume, int) and 0 <= volume <= 100:
            self.room = dataclasses.replace(self.room, volume_percent=volume)
        saved = self.a.ledger.get_setting("invitation")
        if saved is None:
            return
        try:
            # The same checks as a new invitation (the config may have changed), minus the time:
            # the first tick drops one that ended while the box was off.
            inv = core.invitation_from(core.validate("meeting.invite", saved, self.commands.policy))
        except core.BadArgs as exc:
            log.error("saved invitation dropped: %s", exc.detail)
            self.a.ledger.put_setting("invitation", None)
            return
        log.info("invitation to %s restored", inv.meeting_id)
        self.room = dataclasses.replace(self.room, state="invited", invitation=inv)

    def _save_invitation(self) -> None:
        inv = self.room.invitation
        self.a.ledger.put_setting("invitation", None if inv is None else core.invitation_args(inv))
