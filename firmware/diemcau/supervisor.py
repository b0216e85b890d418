"""The supervisor: one queue, one loop, the only owner of the box's state.

Every other thread (the MQTT link, the media session, signal handlers) posts
small events to :meth:`Supervisor.post` and returns at once. The loop takes
them one at a time, asks the pure core what they mean, and carries out the
result: replies, events, media start/stop, health, alerts.

Each event is handled as one durable step (:meth:`Supervisor._durably`):
what it writes to the ledger (replies, events, the replay cache, the room's
settings) is committed together, and only then are the messages sent and the
command acknowledged to the broker. A box killed at any moment has either
recorded a command and its reply, or not acknowledged it: the broker sends it
again (docs/protocol.md, "Delivery guarantees").

Start order: ledger (disk) → link → loop. Stop order, in
reverse: media first (so the centre never sees a live stream from a box that
says it is gone), then the final status, then the link (``disconnected``).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from . import __version__
from .adapters.enroll import store_centre_keys
from .adapters.health import health_message, observation_from
from .config import Config
from .core import alerts as alert_rules
from .core import meeting as core
from .core import update as update_policy
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
    PromptSpoken,
    StopRequested,
    StreamChanged,
    StreamFiguresUpdated,
    Tick,
    UpdateFailed,
    UpdateInstalled,
    UpdateProgress,
)
from .core.light import LABELS, LightView, Phase, light_for, offline_phase
from .core.prompts import PROMPTS, prompt_for_event
from .core.scrub import scrub
from .protocol import (
    CommandRejected,
    Event,
    Meta,
    ReplayCache,
    Reply,
    Site,
    State,
    Status,
    StreamFigures,
    alert_topic,
    decode,
    device_topic,
    encode,
    now_ts,
    public_key_from_text,
    public_keys_from_text,
    verify_command,
)
from .protocol.arguments import UPDATE_COMMAND as UPDATE_CMD
from .protocol.arguments import BadKeyUpdate, key_update

log = logging.getLogger("diemcau.supervisor")

QUEUE_SIZE = 10_000
REPLAY_PURGE_EVERY_S = 300.0
TICK_S = 1.0  # the schedule timer: invitations' start and end, identify, reset
RESET_CONFIRM_MAX_S = 15.0  # a factory reset waits for the voice at most this long
# EX_TEMPFAIL: not 0, so the service manager (Restart=on-failure) starts the box again.
EXIT_RESTART = 75  # after installing an update: the new release starts
EXIT_FACTORY_RESET = EXIT_RESTART  # after a factory reset: the box enrolls afresh


class Link(Protocol):
    session: int

    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self, final_state: str = ..., timeout_s: float = ...) -> None: ...
    def publish(self, topic: str, payload: bytes, *, qos: int = ..., retain: bool = ...) -> int: ...
    def publish_birth(self) -> None: ...
    # A command is on disk with its reply: the broker may forget it (PUBACK).
    def ack(self, token: Any) -> None: ...
    # After a renewal: the next connection uses the new certificate files.
    def reload_certificate(self) -> None: ...


class Media(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    def request_keyframe(self) -> None: ...
    def set_profile(self, profile: str) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...


MediaFactory = Callable[[core.StreamRequest, Callable[[object], None]], Media]


@dataclass
class Adapters:
    """What the supervisor drives; built by the composition root (:mod:`diemcau.app`)."""

    make_link: Callable[[Callable[[object], None]], Link]
    make_media: MediaFactory
    health: Any  # adapters.health.HealthProbe
    outbox: Any  # adapters.outbox.Outbox, a table of the ledger
    replay: ReplayCache  # a table of the ledger
    ledger: Any  # adapters.ledger.Ledger: transactions, the event seq, the room's settings
    model: str
    serial: str
    service: Any = None  # adapters.service.ServiceManager (systemd notify), optional
    # The room's panel and voice, all optional (a box without them still joins meetings).
    light: Any = None  # adapters.panel.StatusLight
    make_buttons: Callable[[Callable[[object], None]], list[Any]] | None = None  # PanelButtons
    voice: Any = None  # adapters.voice.Voice
    releases: Any = None  # adapters.releases.ReleaseStore; None: no firmware updates


class Supervisor:
    def __init__(self, cfg: Config, adapters: Adapters, *, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.a = adapters
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped_events = 0
        self.stream = StreamFigures()
        self._policy = core.Policy(frozenset(cfg.commands.allowed_schemes),
                                   frozenset(cfg.commands.media_hosts))
        self._keys = {kid: public_key_from_text(text)
                      for kid, text in cfg.commands.centre_keys.items()}
        self._audiences = cfg.audiences
        self._dev = cfg.device.id
        self._media: Media | None = None
        self._media_generation = 0
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row
        self._command_exp: dict[str, float] = {}  # pending command id -> its exp
        self._alerts = alert_rules.AlertState.after_restart()
        # The camera in meta: the configured one, until "auto" has been resolved.
        self._camera_capability: str = cfg.media.camera
        self._thresholds = alert_rules.Thresholds.from_config(cfg.health)
        self._health_seq = 0
        self._clock_synced = True
        self._last_status: bytes = b""
        self._stream_failing_since: float | None = None
        # The room's panel: what the light shows besides the Room, and how presses are timed.
        self._phase: Phase = "starting"
        self._identify_until: float | None = None  # monotonic seconds
        self._reset_deadline: float | None = None  # monotonic; set while a reset is confirmed
        self.factory_reset = False  # run() erased the state: exit with EXIT_FACTORY_RESET
        self._join_early_s = cfg.panel.join_early_s if cfg.panel else 900.0
        self.room = core.Room(volume_percent=cfg.voice.volume_percent)
        self._restore_room()
        self._buttons: list[Any] = []
        self._certificate: CertificateStatus | None = None  # None: no enrolled identity
        self.link: Link = adapters.make_link(self.post)
        self.exit_code = 0  # EXIT_RESTART after installing an update: the service restarts us
        self._update: tuple[str, str] | None = None  # (command id, version) under way
        self._installed = False  # the update is installed and waits for the meeting to end
        # One durable step at a time: what it sends and acknowledges waits for its commit.
        self._in_step = False
        self._unsent: list[tuple[str, bytes, bool, int]] = []  # topic, payload, retain, row
        self._acks: list[Any] = []
        self._handling: tuple[str, str] | None = None  # (id, name) of the command being handled

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

    def run(self) -> None:
        """Run until a StopRequested arrives; then stop everything in reverse order."""
        self._show_light()  # "starting", before anything that can take time
        if self.a.voice is not None:
            if self.room.volume_percent != self.cfg.voice.volume_percent:
                self.a.voice.set_volume(self.room.volume_percent)  # as the centre last set it
            self.a.voice.start()
        with self._durably():
            self._finish_interrupted_commands()
        if self.a.make_buttons is not None:
            # From here the reset window runs: a press held now counts for nothing.
            self._buttons = self.a.make_buttons(self.post)
            for button in self._buttons:
                button.start()
        self.link.start()
        self._phase = "connecting"
        self._show_light()
        next_tick = time.monotonic()
        service = self.a.service
        watchdog_s = service.watchdog_interval_s if service else None
        if service:
            service.ready(f"device {self._dev}")
        next_health = time.monotonic()
        next_purge = time.monotonic() + REPLAY_PURGE_EVERY_S
        next_alive = time.monotonic()
        try:
            while True:
                now_m = time.monotonic()
                if watchdog_s and now_m >= next_alive:
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
                    if self._clock_synced:
                        self.a.replay.purge(self._clock(), self.cfg.commands.leeway_s)
                    next_purge = now_m + REPLAY_PURGE_EVERY_S
                wake = min(next_health, next_tick, next_alive if watchdog_s else next_tick)
                try:
                    event = self._queue.get(timeout=max(0.0, wake - time.monotonic()))
                except queue.Empty:
                    continue
                if isinstance(event, StopRequested):
                    log.info("stopping: %s", event.reason)
                    break
                try:
                    self.handle(event)
                except Exception:  # noqa: BLE001 - one bad event must not stop the box
                    log.exception("error handling %s", type(event).__name__)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.a.service:
            self.a.service.stopping()
        for button in reversed(self._buttons):
            button.stop()
        if self._media is not None:
            self._media.stop()
            self._media.join(timeout=5.0)
            self._media = None
        self.stream = StreamFigures()
        if self.room.state != "idle":
            self.room = core.Room(volume_percent=self.room.volume_percent)
        self._publish_status()
        self.link.stop("updating" if self.exit_code == EXIT_RESTART else "disconnected")
        self.a.ledger.close()
        if self.a.voice is not None:
            self.a.voice.stop()
        if self._reset_deadline is not None:
            self._erase_state()
        if self.a.light is not None:
            self.a.light.close()

    # ------------------------------------------------------------ dispatch

    def handle(self, event: object) -> None:
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
            self._unsent.clear()
            self._acks.clear()
            raise
        finally:
            self._in_step = False
        unsent, self._unsent = self._unsent, []
        acks, self._acks = self._acks, []
        if self.link.connected:
            in_flight = set(self._inflight.values())
            for topic, payload, retain, row in unsent:
                if row not in in_flight:  # a link-up in this step may have sent it already
                    self._inflight[self.link.publish(topic, payload, qos=1, retain=retain)] = row
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
                row = self._inflight.pop(mid, None)
                if row is not None:
                    self.a.outbox.remove(row)
            case LinkUp():
                self._on_link_up()
            case LinkDown(reason=reason):
                log.warning("link down: %s", reason)
                if self._phase == "ready":
                    self._say("link_lost")
                self._phase = "connecting"
                # Made while offline: the outbox delivers it once the link is back.
                self.emit("link_lost", detail=reason)
            case OwnStateSeen(payload=payload):
                self._on_own_state(payload)
            case HealthDue():
                self._health_tick()
            case ButtonPressed():
                self._on_press(event)
            case Tick():
                self._on_tick()
            case PromptSpoken(key=key):
                if key == "factory_reset" and self._reset_deadline is not None:
                    self.post(StopRequested("factory reset"))
            case CertificateStatus():
                self._on_certificate(event)
            case CameraDetected(backend=backend):
                self._on_camera_detected(backend)
            case UpdateProgress() | UpdateInstalled() | UpdateFailed():
                self._on_update_event(event)
            case _:
                log.error("unknown event %r", event)
        self._show_light()

    # ------------------------------------------------------------ commands

    def _on_command(self, event: CommandArrived) -> None:
        if event.ack is not None:
            self._acks.append(event.ack)  # sent once this step is committed
        self._handling = None
        try:
            self._verify_and_handle(event)
        except Exception as exc:  # noqa: BLE001 - every command gets a reply, even on a bug
            log.exception("error handling a command on %s", event.topic)
            if self._handling is not None:
                cid, cmd = self._handling
                self._send_reply(core.ReplyDraft(cid, cmd, "failed", 500,
                                                 f"the box could not carry it out "
                                                 f"({type(exc).__name__}); see its log"))

    def _verify_and_handle(self, event: CommandArrived) -> None:
        now = self._clock()
        try:
            command = verify_command(event.payload, self._keys, self._audiences, now=now,
                                     clock_synced=self._clock_synced,
                                     leeway_s=self.cfg.commands.leeway_s,
                                     max_lifetime_s=self.cfg.commands.max_token_lifetime_s)
        except CommandRejected as rej:
            log.warning("command refused on %s: %s %d %s (id=%s)", event.topic, rej.status,
                        rej.code, rej.detail, rej.id)
            self._send_reply(core.ReplyDraft(rej.id, rej.cmd, rej.status, rej.code, rej.detail))
            return

        first = self.a.replay.first_result(command.id)
        if first is not None:
            log.info("duplicate command %s (%s): first result %s", command.id, command.cmd,
                     first.status)
            self._send_reply(core.ReplyDraft(command.id, command.cmd, "duplicate", first.code,
                                             first.detail), first_status=first.status,
                             remember=False)
            return
        self.a.replay.remember(command.id, command.exp)
        self._command_exp[command.id] = command.exp
        self._handling = (command.id, command.cmd)
        log.info("command %s %s args=%s", command.id, command.cmd, _short(command.args))
        if command.cmd == "keys.update":
            self._update_keys(command.id, command.args)
            return
        outcome = core.handle_command(self.room, command.cmd, command.id, command.args,
                                      self._policy, now if self._clock_synced else None)
        self._apply(outcome)

    def _update_keys(self, cid: str, args: dict[str, Any]) -> None:
        """``keys.update``: the whole new set of centre keys, persisted before it is used."""
        try:
            texts = key_update(args)
            keys, problems = public_keys_from_text(texts, "keys")
            if problems:
                raise BadKeyUpdate(problems[0])
        except BadKeyUpdate as exc:
            self._send_reply(core.ReplyDraft(cid, "keys.update", "rejected", 400, str(exc)))
            return
        try:
            store_centre_keys(Path(self.cfg.device.state_dir), texts)
        except OSError as exc:
            log.error("cannot store the new centre keys: %s", exc)
            self._send_reply(core.ReplyDraft(cid, "keys.update", "failed", 500,
                                             f"cannot store the keys: {exc.strerror}"))
            return
        self._keys = keys
        log.warning("centre keys replaced: now %s", ", ".join(sorted(keys)))
        self._send_reply(core.ReplyDraft(cid, "keys.update", "succeeded", 200,
                                         f"centre keys: {', '.join(sorted(keys))}"))

    def _on_certificate(self, status: CertificateStatus) -> None:
        self._certificate = status
        if status.renewed:
            self.link.reload_certificate()

    def _apply(self, outcome: core.Outcome) -> None:
        before = self.room
        self.room = outcome.room
        for draft in outcome.replies:
            self._send_reply(draft)
        for effect in outcome.effects:
            self._carry_out(effect)
        if before != self.room:
            self._publish_status()
        if before.invitation != self.room.invitation:
            self._save_invitation()
        if self._installed and update_policy.may_restart(self.room.state):
            self._restart_into_update()

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
                if self.a.voice is not None:
                    self.a.voice.set_volume(percent)
            case core.PublishHealth():
                self._health_tick()
            case core.Identify(duration_s=duration):
                log.info("identify for %d s: site %s", duration, self.cfg.site.name)
                self._identify_until = time.monotonic() + duration
                self._say("identify", self.cfg.site.name)
            case core.Say(prompt=prompt):
                self._say(prompt)
            case core.EmitEvent(kind=kind, meeting_id=meeting_id, detail=detail):
                self.emit(kind, meeting_id=meeting_id, detail=detail)
                key = prompt_for_event(kind)
                if key is not None:
                    self._say(key)
            case core.StartUpdate(command_id=cid, manifest=manifest):
                self._start_update(cid, manifest)

    def _send_reply(self, draft: core.ReplyDraft, *, first_status: str | None = None,
                    remember: bool = True) -> None:
        reply = Reply(id=draft.id, cmd=draft.cmd, status=draft.status,  # type: ignore[arg-type]
                      code=draft.code, detail=draft.detail, ts=now_ts(),
                      first_status=first_status)  # type: ignore[arg-type]
        if remember and draft.id is not None and draft.id in self._command_exp:
            self.a.replay.remember(draft.id, self._command_exp[draft.id], reply)
            if draft.status not in ("accepted", "in_progress"):
                self._command_exp.pop(draft.id, None)
        self._send_reliable(device_topic(self._dev, "reply"), encode(reply))

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

    def _stop_media(self) -> None:
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
                self._publish_status()  # the stream's state changed, even if the room did not
            case MediaStepped(profile=profile, kbps=kbps, direction=direction, reason=reason):
                self._on_media_step(profile, kbps, direction, reason)
            case StreamFiguresUpdated(figures=figures):
                try:
                    merged = msgspec.structs.asdict(self.stream) | figures
                    self.stream = msgspec.convert(merged, StreamFigures)
                except (msgspec.ValidationError, TypeError) as exc:
                    log.error("media reported bad figures %r: %s", figures, exc)

    def _on_media_step(self, profile: str, kbps: int, direction: str, reason: str) -> None:
        """Adaptive bitrate moved the stream: an event, and ``status`` shows the new profile."""
        log.info("media stepped %s to %s at %d kb/s: %s", direction, profile, kbps, reason)
        self.stream = msgspec.structs.replace(self.stream, profile=profile, target_kbps=kbps)
        self.emit("media_step", meeting_id=self.room.meeting_id, detail=reason,
                  data={"profile": profile, "kbps": kbps, "direction": direction})
        self._publish_status()

    # ------------------------------------------------------------ link

    def _on_link_up(self) -> None:
        if self._phase != "ready":
            self._say("connected")
        self._phase = "ready"
        self._publish_meta()
        self._publish_status(force=True)
        for code, alert in self._alerts.active.items():
            self.link.publish(alert_topic(self._dev, code), encode(alert), qos=1, retain=True)
        in_flight = set(self._inflight.values())
        for item in self.a.outbox.pending():
            if item.row not in in_flight:
                mid = self.link.publish(item.topic, item.payload, qos=1, retain=item.retain)
                self._inflight[mid] = item.row
        try:
            self._update_on_link_up()
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

    def _send_reliable(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Into the outbox, and to the broker once the step that made it is committed."""
        with self._durably():
            row = self.a.outbox.add(topic, payload, retain)
            self._unsent.append((topic, payload, retain, row))

    def emit(self, kind: str, *, meeting_id: str | None = None, detail: str = "",
             data: dict[str, Any] | None = None) -> None:
        with self._durably():  # the seq and the outbox row: one step, no gaps after a crash
            seq = self.a.ledger.bump("event_seq")
            event = Event(seq=seq, ts=now_ts(), kind=kind, meeting_id=meeting_id,
                          detail=detail, data=data or {})
            self._send_reliable(device_topic(self._dev, "event"), encode(event))

    def _publish_meta(self) -> None:
        site = self.cfg.site
        meta = Meta(
            model=self.a.model, serial=self.a.serial, firmware=__version__,
            capabilities=["srt", "h264", self.cfg.media.audio_codec, self._camera_capability],
            site=Site(name=site.name, province=site.province, district=site.district,
                      commune=site.commune, room=site.room),
            groups=self.cfg.groups, config_version=self.cfg.config_version, ts=now_ts(),
        )
        self.link.publish(device_topic(self._dev, "meta"), encode(meta), qos=1, retain=True)

    def _on_camera_detected(self, backend: str) -> None:
        log.info("camera: %s (media.camera = %s)", backend, self.cfg.media.camera)
        capability = "no_camera" if backend == "none" else backend
        if capability != self._camera_capability:
            self._camera_capability = capability
            if self.link.connected:
                self._publish_meta()

    def status_message(self) -> Status:
        room = self.room
        return Status(
            meeting_state=room.state, meeting_id=room.meeting_id,
            invited_meeting_id=room.invitation.meeting_id if room.invitation else None,
            muted=room.muted, floor=room.floor, hand_raised=room.hand_raised,
            volume_percent=room.volume_percent,
            stream=self.stream, ts=now_ts(),
        )

    def _publish_status(self, force: bool = False) -> None:
        """Publish ``status`` if it changed since the last time (or ``force``)."""
        status = self.status_message()
        # Compare without the timestamp so that figures alone do not flood the topic.
        key = encode(replace_ts(status))
        if key == self._last_status and not force:
            return
        self._last_status = key
        if self.link.connected:
            self.link.publish(device_topic(self._dev, "status"), encode(status), qos=1, retain=True)

    # ------------------------------------------------------------ health

    def _health_tick(self) -> None:
        now = self._clock()
        reading = self.a.health.measure()
        self._clock_synced = reading.clock_synced is not False
        observation = observation_from(
            reading, meeting_state=self.room.state, muted=self.room.muted, stream=self.stream,
            stream_failing_since=self._stream_failing_since,
            camera_missing=self.room.state == "error" and "camera" in self.room.last_error,
        )
        if self._certificate is not None:
            cert = self._certificate
            observation = dataclasses.replace(
                observation, certificate_not_before=cert.not_before,
                certificate_not_after=cert.not_after, renewal_error=cert.last_error)
        was_active = self._alerts.active
        update = alert_rules.evaluate(self._alerts, observation, self._thresholds, now)
        self._alerts = update.state
        for alert in update.raised:
            log.warning("alert %s: %s", alert.code, alert.detail)
            self._send_reliable(alert_topic(self._dev, alert.code), encode(alert), retain=True)
        for code in update.cleared:
            # After a start every code is taken down once, in case the broker still
            # retains it: only a clearing of an alert that was raised is news.
            if code in was_active:
                log.info("alert %s cleared", code)
            self._send_reliable(alert_topic(self._dev, code), b"", retain=True)
        if not self.link.connected:
            # Without a network, the broker is not the problem: the light says which it is.
            self._phase = offline_phase(reading.interfaces)
        self._health_seq += 1
        health = health_message(reading, seq=self._health_seq, stream=self.stream,
                                alerts=self._alerts.codes)
        if self.link.connected:
            self.link.publish(device_topic(self._dev, "health"), encode(health), qos=0)
        self._publish_status()

    # ------------------------------------------------------------ firmware updates
    # The policy is core/update.py's, the file work adapters/releases.py's
    # (see docs/updates.md). Here: replies, the `updating` state, the restart.

    def _start_update(self, cid: str, token: str) -> None:
        from .adapters.releases import run_update
        from .protocol.release import ManifestRejected, verify_manifest

        def refuse(code: int, detail: str) -> None:
            log.warning("firmware.update refused: %s", detail)
            self._send_reply(core.ReplyDraft(cid, UPDATE_CMD, "rejected", code, detail))

        releases, keys = self.a.releases, self.cfg.updates.release_keys
        if releases is None or not keys:
            return refuse(403, "this box takes no updates: no release keys in its configuration")
        if self._update is not None:
            return refuse(409, f"an update to {self._update[1]} is already under way")
        try:
            manifest = verify_manifest(token, {k: public_key_from_text(v) for k, v in keys.items()})
            update_policy.check_manifest(
                manifest.version, url=manifest.url, sha256=manifest.sha256,
                size_bytes=manifest.size_bytes, running=__version__, minimum=releases.minimum())
        except (ManifestRejected, update_policy.UpdateRefused) as exc:
            return refuse(exc.code, exc.detail)
        try:
            releases.accept(manifest.version, cid, self._command_exp.get(cid, self._clock() + 3600))
        except OSError as exc:
            log.error("cannot write the update record: %s", exc)
            return self._send_reply(core.ReplyDraft(cid, UPDATE_CMD, "failed", 500,
                                                    f"cannot write the update record: {exc}"))
        self._update = (cid, manifest.version)
        self._send_reply(core.ReplyDraft(cid, UPDATE_CMD, "accepted", 202,
                                         f"updating {__version__} -> {manifest.version}"))
        self._publish_updating()
        run_update(releases, manifest, cid, self.post, ca_file=self.cfg.updates.ca_file)

    def _on_update_event(self, event: UpdateProgress | UpdateInstalled | UpdateFailed) -> None:
        if self._update is None or event.command_id != self._update[0]:
            return
        cid, version = self._update
        match event:
            case UpdateProgress(detail=detail):
                self._send_reply(core.ReplyDraft(cid, UPDATE_CMD, "in_progress", 202, detail))
            case UpdateFailed(code=code, detail=detail):
                log.error("update to %s failed: %s", version, detail)
                self._update = None
                self.a.releases.drop_pending()
                self._send_reply(core.ReplyDraft(cid, UPDATE_CMD, "failed", code, detail))
                self.emit("update_failed", detail=f"{version}: {detail}")
                if self.link.connected:
                    self.link.publish_birth()  # back to `ready`
            case UpdateInstalled():
                self._installed = True
                if update_policy.may_restart(self.room.state):
                    self._restart_into_update()
                else:  # a meeting began meanwhile: never cut it short
                    self._send_reply(core.ReplyDraft(
                        cid, UPDATE_CMD, "in_progress", 202,
                        f"installed {version}; restarting into it when the meeting ends"))

    def _restart_into_update(self) -> None:
        from .adapters.releases import InstallError

        assert self._update is not None
        cid, version = self._update
        self._installed = False
        exp = self._command_exp.get(cid, self._clock() + 3600)
        try:
            self.a.releases.begin_trial(version, cid, exp)
        except (InstallError, OSError) as exc:  # nothing switched: stay on this release
            return self._on_update_event(UpdateFailed(cid, 500, f"cannot switch: {exc}"))
        self._send_reply(core.ReplyDraft(
            cid, UPDATE_CMD, "in_progress", 202,
            f"installed {version}; restarting into it (it must connect within "
            f"{self.cfg.updates.health_deadline_s:g} s or the box goes back)"))
        self.exit_code = EXIT_RESTART
        self.post(StopRequested(f"restarting into release {version}"))

    def _publish_updating(self) -> None:
        if self.link.connected:
            state = State(state="updating", session=self.link.session, ts=now_ts())
            self.link.publish(device_topic(self._dev, "state"), encode(state), qos=1, retain=True)

    def _update_on_link_up(self) -> None:
        """Online: commit this release if it is on trial, then say how the last update ended."""
        releases = self.a.releases
        if releases is None:
            return
        if self._update is not None:
            self._publish_updating()  # the birth said `ready`; still downloading
            return
        releases.commit(__version__)
        outcome = releases.take_unreported()
        if outcome is None:
            return
        ok = outcome.result == "committed"
        reply = core.ReplyDraft(outcome.command_id, UPDATE_CMD, "succeeded" if ok else "failed",
                                200 if ok else 500, outcome.detail)
        self._command_exp[outcome.command_id] = outcome.command_exp  # so the replay cache keeps it
        self._send_reply(reply)
        self.emit(f"update_{outcome.result}", detail=outcome.detail,
                  data={"version": outcome.version, "running": __version__})
        releases.mark_reported()


    # ------------------------------------------------------------ the room's panel and voice

    def _on_press(self, press: ButtonPressed) -> None:
        self.emit("button", meeting_id=self.room.meeting_id or (
            self.room.invitation.meeting_id if self.room.invitation else None),
            detail=press.kind, data={"button": press.button, "press": press.kind,
                                     "held_s": press.held_s})
        if self._reset_deadline is not None:
            return  # the box is being erased: no press changes anything now
        if press.kind == "reset_hold":
            self._start_factory_reset()
            return
        self._apply(core.handle_press(self.room, press.button, press.kind, self._clock(),
                                      self._join_early_s, online=self.link.connected))

    def _on_tick(self) -> None:
        now_m = time.monotonic()
        if self._identify_until is not None and now_m >= self._identify_until:
            self._identify_until = None
        if self._reset_deadline is not None:
            if now_m >= self._reset_deadline:
                log.warning("factory reset: the voice did not confirm in time; erasing anyway")
                self.post(StopRequested("factory reset"))
            return
        if self._clock_synced:  # an unsynchronised clock cannot start or end a meeting
            self._apply(core.handle_tick(self.room, self._clock()))

    def _start_factory_reset(self) -> None:
        """Confirm with the light and the voice; the state goes once the voice has spoken."""
        log.warning("factory reset requested by the button: erasing %s", self.cfg.device.state_dir)
        self._reset_deadline = time.monotonic() + RESET_CONFIRM_MAX_S
        self.emit("factory_reset", detail="button held at start")
        self._show_light()
        if self.a.voice is not None:
            self._say("factory_reset")  # PromptSpoken("factory_reset") then stops the box
        else:
            self.post(StopRequested("factory reset"))

    def _erase_state(self) -> None:
        """Forget identity and state: everything under the state directory (not the directory)."""
        state = Path(self.cfg.device.state_dir)
        for child in state.iterdir() if state.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        self.factory_reset = True
        log.warning("factory reset: %s erased; the box starts afresh", state)

    def _say(self, key: str, text: str | None = None) -> None:
        if self._reset_deadline is not None and key != "factory_reset":
            return  # nothing may push the reset's confirmation out of the voice's queue
        if self.a.voice is not None:
            self.a.voice.say(key, text if text is not None else PROMPTS[key])

    def light_view(self) -> LightView:
        """What the light shows, from the supervisor's state alone."""
        return LightView.from_room(self.room, self._phase, hand_raised=self.room.hand_raised,
                                   identify=self._identify_until is not None,
                                   resetting=self._reset_deadline is not None,
                                   updating=self._update is not None)

    def _show_light(self) -> None:
        if self.a.light is not None:
            pattern = light_for(self.light_view())
            if pattern != self.a.light.shown:
                # The journal tells a technician what the room saw, and when.
                log.info("light: %s (%s)", pattern.state, LABELS[pattern.state][0])
            self.a.light.show(pattern)

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
            inv = core.invitation_from(core.validate("meeting.invite", saved, self._policy))
        except core.BadArgs as exc:
            log.error("saved invitation dropped: %s", exc.detail)
            self.a.ledger.put_setting("invitation", None)
            return
        log.info("invitation to %s restored", inv.meeting_id)
        self.room = dataclasses.replace(self.room, state="invited", invitation=inv)

    def _save_invitation(self) -> None:
        inv = self.room.invitation
        self.a.ledger.put_setting("invitation", None if inv is None else core.invitation_args(inv))

    def _finish_interrupted_commands(self) -> None:
        """The final reply that a 202 promised, for commands the last run did not finish.

        A restart ends whatever meeting the box was in: a join never finished
        has failed, a leave has happened. ``firmware.update`` has its own
        record (the release store), reported once the box is online.
        """
        for cid, exp, reply in self.a.replay.unfinished():
            cmd = reply.cmd if reply is not None else None
            if cmd == UPDATE_CMD:
                continue
            if cmd in ("meeting.leave", "meeting.cancel"):
                final = core.ReplyDraft(cid, cmd, "succeeded", 200,
                                        "the box restarted, which ended the meeting")
            else:
                doing = f" ({reply.detail})" if reply is not None and reply.detail else ""
                final = core.ReplyDraft(cid, cmd, "failed", 500,
                                        f"the box restarted before it finished{doing}; "
                                        "it is not in the meeting: send the command again")
            log.warning("command %s (%s) was interrupted by a restart: %s %d", cid, cmd,
                        final.status, final.code)
            self._command_exp[cid] = exp
            self._send_reply(final)


def replace_ts(status: Status) -> Status:
    return msgspec.structs.replace(status, ts=0.0)


def _short(args: dict[str, Any]) -> str:
    """Arguments for the log: short, and without credentials (``core.scrub``)."""
    text = scrub(repr(args))
    return text if len(text) <= 200 else text[:200] + "…"

