"""The supervisor: one queue, one loop, the only owner of the box's state.

Every other thread (the MQTT link, the media session, signal handlers) posts
small events to :meth:`Supervisor.post` and returns at once. The loop takes
them one at a time, asks the pure core what they mean, and carries out the
result: replies, events, media start/stop, health, alerts.

Start order: outbox and replay cache (disk) → link → loop. Stop order, in
reverse: media first (so the centre never sees a live stream from a box that
says it is gone), then the final status, then the link (``disconnected``).
"""

from __future__ import annotations

import logging
import queue
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from . import __version__
from .adapters.health import health_message, observation_from
from .config import Config
from .core import alerts as alert_rules
from .core import meeting as core
from .core.events import (
    CommandArrived,
    Delivered,
    FromMedia,
    HealthDue,
    LinkDown,
    LinkUp,
    MediaStepped,
    OwnStateSeen,
    StopRequested,
    StreamChanged,
    StreamFiguresUpdated,
)
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
    verify_command,
)

log = logging.getLogger("diemcau.supervisor")

QUEUE_SIZE = 10_000
REPLAY_PURGE_EVERY_S = 300.0


class Link(Protocol):
    session: int

    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self, final_state: str = ..., timeout_s: float = ...) -> None: ...
    def publish(self, topic: str, payload: bytes, *, qos: int = ..., retain: bool = ...) -> int: ...
    def publish_birth(self) -> None: ...


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
    outbox: Any  # adapters.outbox.Outbox
    replay: ReplayCache
    counters: Any  # adapters.statefile.Counters
    model: str
    serial: str
    service: Any = None  # adapters.service.ServiceManager (systemd notify), optional


class Supervisor:
    def __init__(self, cfg: Config, adapters: Adapters, *, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.a = adapters
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped_events = 0
        self.room = core.Room()
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
        self._thresholds = alert_rules.Thresholds.from_config(cfg.health)
        self._health_seq = 0
        self._clock_synced = True
        self._last_status: bytes = b""
        self._stream_failing_since: float | None = None
        self.link: Link = adapters.make_link(self.post)

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
        self.link.start()
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
                if now_m >= next_purge:
                    if self._clock_synced:
                        self.a.replay.purge(self._clock(), self.cfg.commands.leeway_s)
                    next_purge = now_m + REPLAY_PURGE_EVERY_S
                wake = min(next_health, next_alive) if watchdog_s else next_health
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
        if self._media is not None:
            self._media.stop()
            self._media.join(timeout=5.0)
            self._media = None
        self.stream = StreamFigures()
        if self.room.state != "idle":
            self.room = core.Room(volume_percent=self.room.volume_percent)
        self._publish_status()
        self.link.stop("disconnected")
        self.a.outbox.close()
        self.a.replay.close()

    # ------------------------------------------------------------ dispatch

    def handle(self, event: object) -> None:
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
                # Made while offline: the outbox delivers it once the link is back.
                self.emit("link_lost", detail=reason)
            case OwnStateSeen(payload=payload):
                self._on_own_state(payload)
            case HealthDue():
                self._health_tick()
            case _:
                log.error("unknown event %r", event)

    # ------------------------------------------------------------ commands

    def _on_command(self, event: CommandArrived) -> None:
        now = self._clock()
        try:
            command = verify_command(event.payload, self._keys, self._audiences, now=now,
                                     clock_synced=self._clock_synced,
                                     leeway_s=self.cfg.commands.leeway_s)
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
        log.info("command %s %s args=%s", command.id, command.cmd, _short(command.args))
        outcome = core.handle_command(self.room, command.cmd, command.id, command.args,
                                      self._policy)
        self._apply(outcome)

    def _apply(self, outcome: core.Outcome) -> None:
        before = self.room
        self.room = outcome.room
        for draft in outcome.replies:
            self._send_reply(draft)
        for effect in outcome.effects:
            self._carry_out(effect)
        if before != self.room:
            self._publish_status()

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
                log.info("speaker volume %d%%", percent)  # the speaker path comes with prompts
            case core.PublishHealth():
                self._health_tick()
            case core.Identify(duration_s=duration):
                log.info("identify for %d s: site %s", duration, self.cfg.site.name)
            case core.EmitEvent(kind=kind, meeting_id=meeting_id, detail=detail):
                self.emit(kind, meeting_id=meeting_id, detail=detail)

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
        self._publish_meta()
        self._publish_status(force=True)
        for code, alert in self._alerts.active.items():
            self.link.publish(alert_topic(self._dev, code), encode(alert), qos=1, retain=True)
        in_flight = set(self._inflight.values())
        for item in self.a.outbox.pending():
            if item.row not in in_flight:
                mid = self.link.publish(item.topic, item.payload, qos=1, retain=item.retain)
                self._inflight[mid] = item.row

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
        row = self.a.outbox.add(topic, payload, retain)
        if self.link.connected:
            mid = self.link.publish(topic, payload, qos=1, retain=retain)
            self._inflight[mid] = row

    def emit(self, kind: str, *, meeting_id: str | None = None, detail: str = "",
             data: dict[str, Any] | None = None) -> None:
        seq = self.a.counters.bump("event_seq")
        event = Event(seq=seq, ts=now_ts(), kind=kind, meeting_id=meeting_id, detail=detail,
                      data=data or {})
        self._send_reliable(device_topic(self._dev, "event"), encode(event))

    def _publish_meta(self) -> None:
        site = self.cfg.site
        meta = Meta(
            model=self.a.model, serial=self.a.serial, firmware=__version__,
            capabilities=["srt", "h264", self.cfg.media.audio_codec, self.cfg.media.camera],
            site=Site(name=site.name, province=site.province, district=site.district,
                      commune=site.commune, room=site.room),
            groups=self.cfg.groups, config_version=self.cfg.config_version, ts=now_ts(),
        )
        self.link.publish(device_topic(self._dev, "meta"), encode(meta), qos=1, retain=True)

    def status_message(self) -> Status:
        room = self.room
        return Status(
            meeting_state=room.state, meeting_id=room.meeting_id,
            invited_meeting_id=room.invitation.meeting_id if room.invitation else None,
            muted=room.muted, floor=room.floor, volume_percent=room.volume_percent,
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
        update = alert_rules.evaluate(self._alerts, observation, self._thresholds, now)
        self._alerts = update.state
        for alert in update.raised:
            log.warning("alert %s: %s", alert.code, alert.detail)
            self._send_reliable(alert_topic(self._dev, alert.code), encode(alert), retain=True)
        for code in update.cleared:
            log.info("alert %s cleared", code)
            self._send_reliable(alert_topic(self._dev, code), b"", retain=True)
        self._health_seq += 1
        health = health_message(reading, seq=self._health_seq, stream=self.stream,
                                alerts=self._alerts.codes)
        if self.link.connected:
            self.link.publish(device_topic(self._dev, "health"), encode(health), qos=0)
        self._publish_status()


def replace_ts(status: Status) -> Status:
    return msgspec.structs.replace(status, ts=0.0)


_SECRET_IN_URL = re.compile(r"(passphrase|password|pbkeylen)=[^&'\"\s]*")


def _short(args: dict[str, Any]) -> str:
    """Arguments for the log: short, and without an SRT passphrase or password."""
    text = _SECRET_IN_URL.sub(r"\1=***", repr(args))
    return text if len(text) <= 200 else text[:200] + "…"

