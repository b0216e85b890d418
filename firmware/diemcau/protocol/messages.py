"""Message schemas of protocol v1, as msgspec structs encoded to JSON.

One struct per topic. Times are Unix seconds (float, millisecond precision);
units are in the field names. Unknown fields are ignored when decoding so
that a newer box can talk to an older centre and back.

    >>> encode(Reply(id="c1", cmd="audio.mute", status="succeeded", code=200, detail="muted", ts=1.0))
    b'{"id":"c1","cmd":"audio.mute","status":"succeeded","code":200,"detail":"muted","ts":1.0,"first_status":null}'
"""

from __future__ import annotations

import time
from typing import Any, Literal, TypeVar

import msgspec

PROTOCOL_VERSION = 1

DeviceState = Literal["ready", "updating", "disconnected", "lost"]
MeetingState = Literal["idle", "invited", "joining", "live", "leaving", "error"]
StreamState = Literal["off", "starting", "live", "reconnecting", "error"]
ReplyStatus = Literal[
    "accepted", "in_progress", "succeeded", "failed", "rejected", "expired", "duplicate"
]
Severity = Literal["warning", "critical"]

# The command names of protocol v1. A box that does not (yet) handle one
# answers 404, like any unknown name.
COMMAND_NAMES: tuple[str, ...] = (
    "meeting.invite",
    "meeting.join",
    "meeting.leave",
    "meeting.cancel",
    "audio.mute",
    "audio.unmute",
    "audio.volume",
    "floor.grant",
    "floor.revoke",
    "media.keyframe",
    "media.profile",
    "health.report",
    "device.identify",
    "device.reboot",
    "config.set",
    "firmware.update",
    "keys.update",
)

# Statuses after which no further reply comes for the same command id.
FINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "rejected", "expired", "duplicate"}
)

ALERT_CODES: tuple[str, ...] = (
    "temperature_high",
    "undervoltage",
    "throttled",
    "disk_low",
    "clock_unsynced",
    "stream_failing",
    "camera_missing",
    "microphone_silent",
    "certificate_expiring",
    "programme_lost",
)

# The kinds of ``event`` a box sends (docs/protocol.md says what each means).
EVENT_KINDS: tuple[str, ...] = (
    # the meeting
    "invited", "invitation_cancelled", "invitation_expired", "joining", "joined", "leaving",
    "left", "muted", "unmuted", "floor_granted", "floor_revoked", "identify", "error",
    "stream_reconnecting", "stream_error", "media_step", "programme_lost", "programme_back",
    # the room's panel
    "button", "call_request", "hand_raised", "hand_lowered", "join_too_early", "factory_reset",
    # the link and updates
    "link_lost", "update_failed", "update_committed", "update_rolled_back", "update_abandoned",
)


def now_ts() -> float:
    return round(time.time(), 3)


class _Msg(msgspec.Struct, kw_only=True):
    pass


class State(_Msg, kw_only=True):
    """``dev/{dev}/state`` (retained): the box's presence, birth and will."""

    state: DeviceState
    session: int  # bumped on every connect; a will from an older session is stale
    ts: float


class Site(_Msg, kw_only=True):
    name: str
    province: str
    district: str
    commune: str
    room: str = ""


class RoomSound(_Msg, kw_only=True):
    """The room's sound kit and who cancels the echo of the programme (docs/audio.md)."""

    kit: Literal["speakerphone", "separate", "none"]
    # "device": the speakerphone's own canceller; "webrtc"/"speex": the box's; "none".
    echo_canceller: Literal["device", "webrtc", "speex", "none"]
    device: str = ""  # the sound card in use, as ALSA names it


class Meta(_Msg, kw_only=True):
    """``dev/{dev}/meta`` (retained): what the box is."""

    model: str
    serial: str
    firmware: str
    protocol: int = PROTOCOL_VERSION
    capabilities: list[str]
    site: Site
    groups: list[str]
    config_version: str
    sound: RoomSound | None = None  # None: not known yet (an older box says nothing)
    ts: float


class StreamFigures(_Msg, kw_only=True):
    state: StreamState = "off"
    detail: str = ""
    profile: str | None = None
    frames_captured: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    bitrate_kbps: float = 0.0
    target_kbps: int = 0  # the video encoder's bitrate now (adaptive bitrate moves it)
    audio_level_dbfs: float | None = None
    reconnects: int = 0
    queue_packets: int = 0  # waiting for the network now
    queue_bytes: int = 0
    audio_dropped: int = 0  # audio packets the send queue had to drop


class ProgrammeFigures(_Msg, kw_only=True):
    """The meeting's programme feed as the room's TV and speaker play it (the far end)."""

    state: StreamState = "off"
    detail: str = ""
    frames_shown: int = 0
    frames_dropped: int = 0  # by the player: decoded too late to show
    lag_ms: float | None = None  # how far behind the feed the picture is; None: unknown
    catchups: int = 0  # times the player skipped ahead because the lag passed its bound
    reconnects: int = 0
    decoder: str = ""  # e.g. "h264_v4l2m2m" in hardware, "h264" in software
    width: int = 0
    height: int = 0
    av_sync_ms: float | None = None  # audio minus video, as the player measures it


class Status(_Msg, kw_only=True):
    """``dev/{dev}/status`` (retained): the meeting as the box sees it."""

    meeting_state: MeetingState
    meeting_id: str | None = None
    invited_meeting_id: str | None = None
    muted: bool = False
    floor: bool = False
    hand_raised: bool = False
    volume_percent: int = 80
    stream: StreamFigures = msgspec.field(default_factory=StreamFigures)
    programme: ProgrammeFigures = msgspec.field(default_factory=ProgrammeFigures)
    ts: float


class Interface(_Msg, kw_only=True):
    name: str
    up: bool
    addresses: list[str]


class Health(_Msg, kw_only=True):
    """``dev/{dev}/health`` (QoS 0, periodic and on demand)."""

    seq: int
    ts: float
    uptime_s: float
    cpu_percent: float
    load_1m: float
    memory_used_percent: float
    memory_available_mb: float
    process_rss_mb: float
    disk_free_mb: float
    disk_used_percent: float
    interfaces: list[Interface]
    wifi_signal_dbm: float | None = None
    cpu_temperature_c: float | None = None
    undervoltage: bool | None = None  # None: the platform cannot tell
    throttled: bool | None = None
    clock_synced: bool | None = None
    stream: StreamFigures = msgspec.field(default_factory=StreamFigures)
    programme: ProgrammeFigures = msgspec.field(default_factory=ProgrammeFigures)
    alerts: list[str] = []


class Alert(_Msg, kw_only=True):
    """``dev/{dev}/alert/{code}`` (retained while active; empty payload clears)."""

    code: str
    severity: Severity
    detail: str
    since: float


class Event(_Msg, kw_only=True):
    """``dev/{dev}/event``: something that happened, numbered by ``seq``."""

    seq: int
    ts: float
    kind: str
    meeting_id: str | None = None
    detail: str = ""
    data: dict[str, Any] = {}


class Reply(_Msg, kw_only=True):
    """``dev/{dev}/reply``: the result of one command (``id`` is its ``jti``)."""

    id: str | None
    cmd: str | None
    status: ReplyStatus
    code: int
    detail: str
    ts: float
    first_status: ReplyStatus | None = None  # set on status "duplicate"


# A command's lifetime (exp - iat): the centre's default, and the longest a box
# accepts unless its config says otherwise (commands.max_token_lifetime_s);
# sign_command makes none longer. Here, not in commands.py, so that the box's
# configuration can name them without loading PyJWT and cryptography.
DEFAULT_TTL_S = 120
MAX_TOKEN_LIFETIME_S = 24 * 3600

# The broker saves its persistence database on a timer, every BROKER_SAVE_S
# seconds (``autosave_interval``), not after every change: a broker that
# crashes loses what it acknowledged since its last save. Mosquitto 2.0 saves
# once a whole second more than the interval has passed (it compares whole
# seconds, strictly), so the window is up to twice the interval, plus the
# save itself. Whoever sees the broker go away re-sends what it was
# acknowledged within RESEND_GRACE_S before, and receivers drop the repeats
# (an event by its device and seq, a reply by its command id).
BROKER_SAVE_S = 1
BROKER_LOSS_WINDOW_S = 2 * BROKER_SAVE_S
RESEND_GRACE_S = BROKER_LOSS_WINDOW_S + 1  # one second for the save itself and the clocks


class CommandClaims(_Msg, kw_only=True):
    """The claims of a signed command (a compact JWS, EdDSA)."""

    jti: str
    aud: str
    iat: float
    exp: float
    cmd: str
    args: dict[str, Any] = {}


_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode(payload: bytes | str, type: type[T]) -> T:
    """Decode a payload into a message struct; raises msgspec.ValidationError/DecodeError."""
    return msgspec.json.decode(payload, type=type)
