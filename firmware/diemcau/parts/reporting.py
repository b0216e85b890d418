"""What the box tells the centre: status, meta, health, alerts, events, and the outbox.

Replies, events and alert changes are reliable: each is written to the
outbox inside the supervisor's current durable step, and published only
once that step is committed (:meth:`Reporting.committed`). The broker's
acknowledgement (:meth:`Reporting.delivered`) does not delete it at once:
the broker saves on a timer, and a crash inside its save window loses what
it acknowledged. So the outbox keeps the message for ``RESEND_GRACE_S`` after
its PUBACK, and when the link comes back the box sends it again, unchanged
(same event ``seq``, same reply id: the centre drops the repeat). The grace
is counted by the broker's later acknowledgements, not by when the box saw
the link drop: a broker that dies without closing its connections is found
out only by the keepalive, long after; a box with nothing more to send
publishes its retained status again at its next health report, for a
PUBACK. ``status``, ``meta`` and ``health`` are retained or periodic, so
they are published at once when the link is up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from .. import __version__
from ..adapters.health import Reading, health_message, observation_from
from ..config import Config
from ..core import alerts as alert_rules
from ..core.events import CertificateStatus
from ..core.meeting import Room
from ..ports import HealthProbe, Ledger, Link, Outbox
from ..protocol import (
    RESEND_GRACE_S,
    Event,
    Meta,
    ProgrammeFigures,
    RoomSound,
    Site,
    Status,
    StreamFigures,
    alert_topic,
    device_topic,
    encode,
    now_ts,
)

# The supervisor's parts log as the supervisor: one name in the journal for the loop's work.
log = logging.getLogger("diemcau.supervisor")


class Reporting:
    """The centre's view of the box, sent through ``link``; reliable messages through ``outbox``.

    ``durably`` opens (or joins) the supervisor's durable step; ``status``
    builds the ``status`` message from the supervisor's state.
    """

    def __init__(self, cfg: Config, *, link: Link, outbox: Outbox, ledger: Ledger,
                 health: HealthProbe, model: str, serial: str,
                 durably: Callable[[], AbstractContextManager[None]],
                 status: Callable[[], Status], clock: Callable[[], float],
                 sound: RoomSound | None = None) -> None:
        self._cfg = cfg
        self._sound = sound
        self._dev = cfg.device.id
        self._link = link
        self._outbox = outbox
        self._ledger = ledger
        self._health = health
        self._model = model
        self._serial = serial
        self._durably = durably
        self._status = status
        self._clock = clock
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row
        # (topic, payload, qos, retain, outbox row or None), in the order the step made them
        self._unsent: list[tuple[str, bytes, int, bool, int | None]] = []
        self._last_status: bytes = b""
        self._health_seq = 0
        self.alerts = alert_rules.AlertState.after_restart()
        self.thresholds = alert_rules.Thresholds.from_config(cfg.health)
        self.clock_synced = True  # as the last health reading said
        # The camera in meta: the configured one, until "auto" has been resolved.
        self.camera_capability: str = cfg.media.camera
        self.certificate: CertificateStatus | None = None  # None: no enrolled identity

    # ------------------------------------------------------------ reliable messages

    def send_reliable(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Into the outbox, and to the broker once the step that made it is committed."""
        with self._durably():
            row = self._outbox.add(topic, payload, retain)
            self._unsent.append((topic, payload, 1, retain, row))

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Not kept in the outbox (retained state, health): sent after the step's commit, in
        order with what the step put in the outbox, so a status never overtakes its event."""
        with self._durably():
            self._unsent.append((topic, payload, qos, retain, None))

    def emit(self, kind: str, *, meeting_id: str | None = None, detail: str = "",
             data: dict[str, Any] | None = None) -> None:
        """An event for the centre, with the next ``seq``."""
        with self._durably():  # the seq and the outbox row: one step, no gaps after a crash
            seq = self._ledger.bump("event_seq")
            event = Event(seq=seq, ts=now_ts(), kind=kind, meeting_id=meeting_id,
                          detail=detail, data=data or {})
            self.send_reliable(device_topic(self._dev, "event"), encode(event))

    def committed(self) -> None:
        """The step is on disk: publish what it wrote to the outbox."""
        unsent, self._unsent = self._unsent, []
        if self._link.connected:
            in_flight = set(self._inflight.values())
            for topic, payload, qos, retain, row in unsent:
                if row is None:
                    self._link.publish(topic, payload, qos=qos, retain=retain)
                elif row not in in_flight:  # a link-up in this step may send it twice
                    self._inflight[self._link.publish(topic, payload, qos=qos, retain=retain)] = row
                    in_flight.add(row)

    def rolled_back(self) -> None:
        """The step failed: nothing it wrote exists, so nothing of it is sent."""
        self._unsent.clear()

    def delivered(self, mid: int) -> None:
        """The broker acknowledged ``mid``: its row waits out the grace, older ones go."""
        now = self._clock()
        row = self._inflight.pop(mid, None)
        if row is not None:
            self._outbox.acknowledged(row, now)
        # The broker is alive now, so it has saved what it acknowledged a grace ago.
        self._outbox.prune(now - RESEND_GRACE_S)

    def link_up(self) -> None:
        """Online again: meta, status, the active alerts, then the outbox in order: what
        the broker had not acknowledged, and what it acknowledged within the grace before
        it went away (it may have crashed before saving it)."""
        self.publish_meta()
        self.publish_status(force=True)
        for code, alert in self.alerts.active.items():
            self.publish(alert_topic(self._dev, code), encode(alert), retain=True)
        with self._durably():
            again = self._outbox.reopen()
            if again:
                log.info("sending again %d message(s) the broker may have lost unsaved", again)
            for item in self._outbox.pending():
                self._unsent.append((item.topic, item.payload, 1, item.retain, item.row))

    # ------------------------------------------------------------ status and meta

    def publish_status(self, force: bool = False) -> None:
        """Publish ``status`` if it changed since the last time (or ``force``)."""
        status = self._status()
        # Compare without the timestamp so that figures alone do not flood the topic.
        key = encode(replace_ts(status))
        if key == self._last_status and not force:
            return
        self._last_status = key
        if self._link.connected:
            self.publish(device_topic(self._dev, "status"), encode(status), retain=True)

    def publish_meta(self) -> None:
        cfg = self._cfg
        site = cfg.site
        meta = Meta(
            model=self._model, serial=self._serial, firmware=__version__,
            capabilities=["srt", "h264", cfg.media.audio_codec, self.camera_capability],
            site=Site(name=site.name, province=site.province, district=site.district,
                      commune=site.commune, room=site.room),
            groups=cfg.groups, config_version=cfg.config_version, sound=self._sound,
            ts=now_ts(),
        )
        self.publish(device_topic(self._dev, "meta"), encode(meta), retain=True)

    def camera_detected(self, backend: str) -> None:
        log.info("camera: %s (media.camera = %s)", backend, self._cfg.media.camera)
        capability = "no_camera" if backend == "none" else backend
        if capability != self.camera_capability:
            self.camera_capability = capability
            if self._link.connected:
                self.publish_meta()

    # ------------------------------------------------------------ health and alerts

    def health(self, room: Room, stream: StreamFigures, stream_failing_since: float | None,
               programme: ProgrammeFigures | None = None,
               programme_lost_since: float | None = None) -> Reading:
        """Measure, raise or clear alerts, publish ``health`` and ``status``; the reading."""
        now = self._clock()
        reading = self._health.measure()
        self.clock_synced = reading.clock_synced is not False
        observation = observation_from(
            reading, meeting_state=room.state, muted=room.muted, stream=stream,
            stream_failing_since=stream_failing_since,
            camera_missing=room.state == "error" and "camera" in room.last_error,
            programme=programme, programme_lost_since=programme_lost_since,
        )
        if self.certificate is not None:
            cert = self.certificate
            observation = dataclasses.replace(
                observation, certificate_not_before=cert.not_before,
                certificate_not_after=cert.not_after, renewal_error=cert.last_error)
        was_active = self.alerts.active
        update = alert_rules.evaluate(self.alerts, observation, self.thresholds, now)
        self.alerts = update.state
        for alert in update.raised:
            log.warning("alert %s: %s", alert.code, alert.detail)
            self.send_reliable(alert_topic(self._dev, alert.code), encode(alert), retain=True)
        for code in update.cleared:
            # After a start every code is taken down once, in case the broker still
            # retains it: only a clearing of an alert that was raised is news.
            if code in was_active:
                log.info("alert %s cleared", code)
            self.send_reliable(alert_topic(self._dev, code), b"", retain=True)
        self._health_seq += 1
        message = health_message(reading, seq=self._health_seq, stream=stream,
                                 programme=programme, alerts=self.alerts.codes)
        if self._link.connected:
            self.publish(device_topic(self._dev, "health"), encode(message), qos=0)
        # Health has no PUBACK: a box with nothing more to say would keep what the broker
        # acknowledged until its next reliable message, and send it again at every
        # reconnect. Its retained status again (QoS 1): that PUBACK ends the grace.
        self.publish_status(force=bool(self._outbox.kept()))
        return reading


def replace_ts(status: Status) -> Status:
    return msgspec.structs.replace(status, ts=0.0)
