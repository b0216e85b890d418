"""Alert rules: pure, no I/O, no clock. ``now`` is always passed in.

``evaluate`` takes what the box last observed (:class:`Observation`), the
limits from ``[health]`` (:class:`Thresholds`) and the previous
:class:`AlertState`, and returns the new state with what changed: alerts to
publish (retained, on ``alert/{code}``) and codes to clear (an empty retained
payload on the same topic).

Two clocks, because a Raspberry Pi has no real-time clock and its wall clock
jumps when NTP first answers: ``now`` is a monotonic clock (seconds, any
origin) used for every duration, ``ts`` is Unix time stamped on raised alerts.
``Observation.stream_failing_since`` is on the ``now`` clock.

    >>> up = evaluate(AlertState(), Observation(cpu_temperature_c=83.0), Thresholds(), now=10.0)
    >>> [(a.code, a.detail) for a in up.raised]
    [('temperature_high', 'CPU at 83.0 °C (limit 80.0 °C)')]

A figure that is unknown (``None``: the platform cannot tell or the probe
failed) neither raises nor clears its alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..protocol.messages import ALERT_CODES, Alert, Severity
from .events import StreamState
from .identity import expiring_detail
from .meeting import IN_MEETING, MeetingState

if TYPE_CHECKING:
    from ..config import HealthConfig

# Hysteresis, so that a figure hovering at its limit does not flap the alert.
TEMPERATURE_CLEAR_MARGIN_C = 5.0
DISK_CLEAR_FACTOR = 1.2

SEVERITY: Mapping[str, Severity] = MappingProxyType({
    "temperature_high": "warning",
    "undervoltage": "critical",
    "throttled": "warning",
    "disk_low": "warning",
    "clock_unsynced": "warning",
    "stream_failing": "critical",
    "camera_missing": "critical",
    "microphone_silent": "warning",
    "certificate_expiring": "warning",
    "programme_lost": "critical",
})

_FAILING_STREAM = ("reconnecting", "error")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits the rules use; the names are the ``[health]`` config keys."""

    temperature_high_c: float = 80.0
    disk_low_mb: float = 500.0
    microphone_silent_dbfs: float = -60.0
    microphone_silent_s: float = 60.0
    stream_failing_s: float = 30.0
    programme_lost_s: float = 10.0

    @classmethod
    def from_config(cls, health: HealthConfig) -> Thresholds:
        return cls(
            temperature_high_c=health.temperature_high_c,
            disk_low_mb=health.disk_low_mb,
            microphone_silent_dbfs=health.microphone_silent_dbfs,
            microphone_silent_s=health.microphone_silent_s,
            stream_failing_s=health.stream_failing_s,
            programme_lost_s=health.programme_lost_s,
        )


@dataclass(frozen=True, slots=True)
class Observation:
    """What the rules look at, gathered by the supervisor from probes and the room.

    ``stream_failing_since`` is when (on the ``now`` clock) the stream last
    went from working to reconnecting/error; ``None`` while it works.
    ``audio_level_dbfs`` is the microphone's level; ``None`` when unknown.
    """

    cpu_temperature_c: float | None = None
    undervoltage: bool | None = None
    throttled: bool | None = None
    disk_free_mb: float | None = None
    clock_synced: bool | None = None
    meeting_state: MeetingState = "idle"
    muted: bool = False
    stream_state: StreamState = "off"
    stream_failing_since: float | None = None
    stream_detail: str = ""
    camera_missing: bool = False
    audio_level_dbfs: float | None = None
    # The certificate in use (Unix seconds) and why its renewal last failed; None: no identity.
    certificate_not_before: float | None = None
    certificate_not_after: float | None = None
    renewal_error: str = ""
    # The programme feed on the room's TV (the far end): "off" when the meeting has none.
    programme_state: StreamState = "off"
    programme_lost_since: float | None = None
    programme_detail: str = ""


def _frozen(mapping: Mapping[str, Alert] | None = None) -> Mapping[str, Alert]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class AlertState:
    """The active alerts by code, and the timers the rules keep between steps.

    ``unconfirmed`` holds codes the broker may still retain from before a
    restart; the next step clears each of them that is not active. Start the
    box with :meth:`after_restart`.
    """

    active: Mapping[str, Alert] = field(default_factory=_frozen)
    quiet_since: float | None = None  # when the microphone went under its limit
    unconfirmed: frozenset[str] = frozenset()

    @classmethod
    def after_restart(cls) -> AlertState:
        return cls(unconfirmed=frozenset(ALERT_CODES))

    @property
    def codes(self) -> list[str]:
        """Active codes in protocol order, for ``Health.alerts``."""
        return [c for c in ALERT_CODES if c in self.active]


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """The result of one step: publish ``raised``, send empty payloads for ``cleared``."""

    state: AlertState
    raised: tuple[Alert, ...] = ()
    cleared: tuple[str, ...] = ()


# ---------------------------------------------------------------- rules
# Each rule returns a detail string to raise (or keep) the alert, False to
# clear it, or None to leave it as it is.

Verdict = str | bool | None


def _temperature(obs: Observation, lim: Thresholds, active: bool) -> Verdict:
    t = obs.cpu_temperature_c
    if t is None:
        return None
    if t >= lim.temperature_high_c:
        return f"CPU at {t:.1f} °C (limit {lim.temperature_high_c:.1f} °C)"
    if active and t > lim.temperature_high_c - TEMPERATURE_CLEAR_MARGIN_C:
        return None
    return False


def _disk(obs: Observation, lim: Thresholds, active: bool) -> Verdict:
    free = obs.disk_free_mb
    if free is None:
        return None
    if free < lim.disk_low_mb:
        return f"{free:.0f} MB free on the state disk (limit {lim.disk_low_mb:.0f} MB)"
    if active and free < lim.disk_low_mb * DISK_CLEAR_FACTOR:
        return None
    return False


def _flag(value: bool | None, detail: str) -> Verdict:
    if value is None:
        return None
    return detail if value else False


def _stream(obs: Observation, lim: Thresholds, now: float) -> Verdict:
    if obs.meeting_state not in IN_MEETING or obs.stream_state == "live":
        return False
    since = obs.stream_failing_since
    if obs.stream_state not in _FAILING_STREAM or since is None:
        # "starting" between two attempts, or "off" while joining: not proof
        # either way, so an active alert stays until the stream is live.
        return None
    failing_s = now - since
    if failing_s < lim.stream_failing_s:
        return None
    detail = f"stream {obs.stream_state} for {failing_s:.0f} s (limit {lim.stream_failing_s:.0f} s)"
    return f"{detail}: {obs.stream_detail}" if obs.stream_detail else detail


def _programme(obs: Observation, lim: Thresholds, now: float) -> Verdict:
    # The same shape as the stream's rule: only a meeting that has a programme counts.
    if obs.meeting_state not in IN_MEETING or obs.programme_state in ("live", "off"):
        return False
    since = obs.programme_lost_since
    if obs.programme_state not in _FAILING_STREAM or since is None:
        return None
    lost_s = now - since
    if lost_s < lim.programme_lost_s:
        return None
    detail = (f"programme on the TV {obs.programme_state} for {lost_s:.0f} s"
              f" (limit {lim.programme_lost_s:.0f} s)")
    return f"{detail}: {obs.programme_detail}" if obs.programme_detail else detail


def _microphone(obs: Observation, lim: Thresholds, now: float, quiet_since: float | None,
                ) -> tuple[Verdict, float | None]:
    # Muted, the level says nothing about the microphone (and most sites sit
    # muted through most of a meeting): no silence is counted then.
    if obs.meeting_state != "live" or obs.muted:
        return False, None
    level = obs.audio_level_dbfs
    if level is None:
        return None, quiet_since
    if level >= lim.microphone_silent_dbfs:
        return False, None
    quiet_since = now if quiet_since is None else quiet_since
    quiet_s = now - quiet_since
    if quiet_s < lim.microphone_silent_s:
        return None, quiet_since
    return (f"microphone under {lim.microphone_silent_dbfs:.0f} dBFS for {quiet_s:.0f} s"
            f" (now {level:.1f} dBFS)"), quiet_since


def _certificate(obs: Observation, ts: float) -> Verdict:
    # Wall-clock dates against the wall clock (``ts``), not the monotonic ``now``.
    if obs.certificate_not_before is None or obs.certificate_not_after is None:
        return None
    detail = expiring_detail(ts, obs.certificate_not_before, obs.certificate_not_after,
                             obs.renewal_error)
    return detail if detail is not None else False


def evaluate(previous: AlertState, obs: Observation, limits: Thresholds, now: float,
             ts: float | None = None) -> AlertUpdate:
    """Apply every rule once; ``ts`` (Unix seconds) defaults to ``now``."""
    stamp = now if ts is None else ts
    mic, quiet_since = _microphone(obs, limits, now, previous.quiet_since)
    verdicts: dict[str, Verdict] = {
        "temperature_high": _temperature(obs, limits, "temperature_high" in previous.active),
        "undervoltage": _flag(obs.undervoltage, "supply voltage too low (under-voltage now)"),
        "throttled": _flag(obs.throttled, "CPU slowed by the firmware (capped or throttled now)"),
        "disk_low": _disk(obs, limits, "disk_low" in previous.active),
        "clock_unsynced": _flag(None if obs.clock_synced is None else not obs.clock_synced,
                                "system clock not synchronised"),
        "stream_failing": _stream(obs, limits, now),
        "camera_missing": _flag(obs.camera_missing, "no camera found"),
        "microphone_silent": mic,
        "certificate_expiring": _certificate(obs, stamp),
        "programme_lost": _programme(obs, limits, now),
    }
    active = dict(previous.active)
    raised: list[Alert] = []
    cleared: list[str] = []
    for code in ALERT_CODES:
        verdict = verdicts[code]
        if isinstance(verdict, str):
            if code not in active:
                alert = Alert(code=code, severity=SEVERITY[code], detail=verdict,
                              since=round(stamp, 3))
                active[code] = alert
                raised.append(alert)
        elif verdict is False and code in active:
            del active[code]
            cleared.append(code)
        elif code in previous.unconfirmed and code not in active:
            # Retained from before a restart and not raised again: take it down.
            cleared.append(code)
    state = replace(previous, active=_frozen(active), quiet_since=quiet_since,
                    unconfirmed=frozenset())
    return AlertUpdate(state, tuple(raised), tuple(cleared))
