"""The meeting state machine and command policy: pure, no I/O, no threads.

``handle_command`` and ``handle_stream`` take the current :class:`Room` and
return an :class:`Outcome`: the new room, the replies to send, and the
effects for the supervisor to carry out (start media, publish health, ...).

    idle ──invite──▶ invited ──join──▶ joining ──stream live──▶ live
      ▲                 │                 │                      │
      └──── cancel ─────┘                 └──leave──▶ leaving ◀──┘
                                                         │ stream off
      idle ◀─────────────────────────────────────────────┘

A fatal media error (no camera, no encoder) puts the room in ``error``; a
``meeting.join`` retries from there, a ``meeting.leave`` returns to ``idle``.

    >>> policy = Policy(frozenset({"srt"}), frozenset({"media.example.vn"}))
    >>> out = handle_command(Room(), "meeting.leave", "c1", {}, policy)
    >>> out.replies[0].code, out.replies[0].detail
    (409, 'nothing to leave: the meeting state is idle')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

MeetingState = Literal["idle", "invited", "joining", "live", "leaving", "error"]
Profile = Literal["720p30", "480p25", "360p15", "audio"]

_MEETING_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Invitation:
    meeting_id: str
    title: str = ""
    starts_at: float | None = None
    ends_at: float | None = None
    mandatory: bool = False


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What the media path needs to publish one meeting."""

    meeting_id: str
    publish_url: str
    profile: Profile
    muted: bool
    play_url: str | None = None


@dataclass(frozen=True, slots=True)
class Room:
    """Everything the supervisor knows about the meeting, in one value."""

    state: MeetingState = "idle"
    meeting_id: str | None = None
    invitation: Invitation | None = None
    stream: StreamRequest | None = None
    muted: bool = False
    floor: bool = False
    volume_percent: int = 80
    # Command ids that still owe their final reply.
    pending_join: tuple[str, str] | None = None  # (id, cmd)
    pending_leave: tuple[str, str] | None = None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the configuration the command policy needs."""

    allowed_schemes: frozenset[str]
    media_hosts: frozenset[str]


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ReplyDraft:
    id: str | None
    cmd: str | None
    status: str
    code: int
    detail: str


@dataclass(frozen=True, slots=True)
class StartMedia:
    request: StreamRequest


@dataclass(frozen=True, slots=True)
class StopMedia:
    pass


@dataclass(frozen=True, slots=True)
class SetMuted:
    muted: bool


@dataclass(frozen=True, slots=True)
class SetVolume:
    percent: int


@dataclass(frozen=True, slots=True)
class PublishHealth:
    pass


@dataclass(frozen=True, slots=True)
class RequestKeyframe:
    pass


@dataclass(frozen=True, slots=True)
class SetProfile:
    profile: Profile


@dataclass(frozen=True, slots=True)
class Identify:
    duration_s: int


@dataclass(frozen=True, slots=True)
class EmitEvent:
    kind: str
    meeting_id: str | None = None
    detail: str = ""


Effect = (StartMedia | StopMedia | SetMuted | SetVolume | PublishHealth | Identify | EmitEvent
          | RequestKeyframe | SetProfile)


@dataclass(frozen=True, slots=True)
class Outcome:
    room: Room
    replies: tuple[ReplyDraft, ...] = ()
    effects: tuple[Effect, ...] = ()


# ---------------------------------------------------------------- arguments


class _Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class InviteArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str
    title: str = ""
    starts_at: float | None = None
    ends_at: float | None = None
    mandatory: bool = False


class JoinArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str
    publish: str
    play: str | None = None
    profile: Profile = "720p30"
    muted: bool = False


class LeaveArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str | None = None


class CancelArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    meeting_id: str


class NoArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    pass


class VolumeArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    percent: int


class IdentifyArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    duration_s: int = 10


class ProfileArgs(_Args, kw_only=True, forbid_unknown_fields=True):
    profile: Profile


ARGS: dict[str, type[_Args]] = {
    "meeting.invite": InviteArgs,
    "meeting.join": JoinArgs,
    "meeting.leave": LeaveArgs,
    "meeting.cancel": CancelArgs,
    "audio.mute": NoArgs,
    "audio.unmute": NoArgs,
    "audio.volume": VolumeArgs,
    "floor.grant": NoArgs,
    "floor.revoke": NoArgs,
    "health.report": NoArgs,
    "device.identify": IdentifyArgs,
    "media.keyframe": NoArgs,
    "media.profile": ProfileArgs,
}
HANDLED_COMMANDS = frozenset(ARGS)


class BadArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _parse_args(cmd: str, args: Any) -> _Args:
    try:
        return msgspec.convert(args, ARGS[cmd])
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `$")
        field = "args" + where.rstrip("`")
        raise BadArgs(400, f"{field}: {text.replace('`', '')}") from None


def _check_meeting_id(value: str, field: str = "args.meeting_id") -> None:
    if not _MEETING_ID_RE.fullmatch(value):  # fullmatch: '$' alone lets a final '\n' through
        raise BadArgs(400, f"{field}: 1-64 letters, digits, '.', '_' or '-'")


def check_media_url(url: str, field: str, policy: Policy) -> None:
    """A media URL must use an allowed scheme and point at an allowed host."""
    if len(url) > 1024:
        raise BadArgs(400, f"{field}: longer than 1024 characters")
    # On the raw text, before urlsplit, which silently drops tabs and newlines.
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise BadArgs(400, f"{field}: contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        # FFmpeg reads options from the first '?' to the end, a '#...' part included.
        query = parse_qs(url.partition("?")[2], strict_parsing=False)
    except ValueError as exc:
        raise BadArgs(400, f"{field}: not a URL ({exc})") from None
    if parts.scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes))
        raise BadArgs(400, f"{field}: scheme {parts.scheme!r} not allowed (allowed: {allowed})")
    if not parts.hostname:
        raise BadArgs(400, f"{field}: no host")
    if port is None:
        raise BadArgs(400, f"{field}: no port")
    if parts.hostname not in policy.media_hosts:
        raise BadArgs(403, f"{field}: host {parts.hostname!r} is not an allowed media host")
    if "mode" in query and query["mode"] != ["caller"]:
        raise BadArgs(400, f"{field}: the box only calls out (mode=caller)")


def validate(cmd: str, args: Any, policy: Policy) -> _Args:
    """Parse and check a command's arguments; raise BadArgs naming the field."""
    parsed = _parse_args(cmd, args)
    match parsed:
        case InviteArgs() | CancelArgs():
            _check_meeting_id(parsed.meeting_id)
        case JoinArgs():
            _check_meeting_id(parsed.meeting_id)
            check_media_url(parsed.publish, "args.publish", policy)
            if parsed.play is not None:
                check_media_url(parsed.play, "args.play", policy)
        case LeaveArgs() if parsed.meeting_id is not None:
            _check_meeting_id(parsed.meeting_id)
        case VolumeArgs() if not 0 <= parsed.percent <= 100:
            raise BadArgs(400, "args.percent: must be 0-100")
        case IdentifyArgs() if not 1 <= parsed.duration_s <= 300:
            raise BadArgs(400, "args.duration_s: must be 1-300")
    if (isinstance(parsed, InviteArgs) and parsed.starts_at is not None
            and parsed.ends_at is not None and parsed.ends_at <= parsed.starts_at):
        raise BadArgs(400, "args.ends_at: must be after args.starts_at")
    return parsed


# ---------------------------------------------------------------- transitions


def _reply(cid: str, cmd: str, status: str, code: int, detail: str) -> ReplyDraft:
    return ReplyDraft(cid, cmd, status, code, detail)


def _conflict(cid: str, cmd: str, detail: str) -> Outcome:
    raise _Conflict(_reply(cid, cmd, "rejected", 409, detail))


class _Conflict(Exception):
    def __init__(self, reply: ReplyDraft) -> None:
        self.reply = reply


IN_MEETING = ("joining", "live")


def handle_command(room: Room, cmd: str, cid: str, args: Any, policy: Policy) -> Outcome:
    """Decide what a verified command does to the room."""
    if cmd not in HANDLED_COMMANDS:
        return Outcome(room, (_reply(cid, cmd, "rejected", 404, f"unknown command {cmd!r}"),))
    try:
        parsed = validate(cmd, args, policy)
        return _transition(room, cmd, cid, parsed)
    except BadArgs as exc:
        return Outcome(room, (_reply(cid, cmd, "rejected", exc.code, exc.detail),))
    except _Conflict as exc:
        return Outcome(room, (exc.reply,))


def _transition(room: Room, cmd: str, cid: str, a: _Args) -> Outcome:  # noqa: C901, PLR0911, PLR0912
    ok = _reply(cid, cmd, "succeeded", 200, "")
    state = room.state
    match cmd, a:
        case "meeting.invite", InviteArgs():
            if state not in ("idle", "invited"):
                _conflict(cid, cmd, f"busy: the meeting state is {state}")
            inv = Invitation(a.meeting_id, a.title, a.starts_at, a.ends_at, a.mandatory)
            new = replace(room, state="invited", invitation=inv)
            return Outcome(new, (replace(ok, detail=f"invited to {a.meeting_id}"),),
                           (EmitEvent("invited", a.meeting_id, a.title),))

        case "meeting.join", JoinArgs():
            if state in IN_MEETING or state == "leaving":
                if room.meeting_id == a.meeting_id and state != "leaving":
                    _conflict(cid, cmd, f"already {state} in {a.meeting_id}")
                _conflict(cid, cmd, f"busy: the meeting state is {state} ({room.meeting_id})")
            request = StreamRequest(a.meeting_id, a.publish, a.profile, a.muted, a.play)
            new = replace(room, state="joining", meeting_id=a.meeting_id, invitation=None,
                          stream=request, muted=a.muted, floor=False,
                          pending_join=(cid, cmd), last_error="")
            return Outcome(new, (_reply(cid, cmd, "accepted", 202, f"joining {a.meeting_id}"),),
                           (StartMedia(request), EmitEvent("joining", a.meeting_id)))

        case "meeting.leave", LeaveArgs():
            if state not in (*IN_MEETING, "error"):
                _conflict(cid, cmd, f"nothing to leave: the meeting state is {state}")
            if a.meeting_id is not None and a.meeting_id != room.meeting_id:
                _conflict(cid, cmd, f"not in {a.meeting_id} (in {room.meeting_id})")
            replies = [_reply(cid, cmd, "accepted", 202, f"leaving {room.meeting_id}")]
            if room.pending_join:
                jid, jcmd = room.pending_join
                replies.append(_reply(jid, jcmd, "failed", 409, "left before the stream was up"))
            new = replace(room, state="leaving", pending_join=None, pending_leave=(cid, cmd))
            return Outcome(new, tuple(replies), (StopMedia(),))

        case "meeting.cancel", CancelArgs():
            if state == "invited" and room.invitation and room.invitation.meeting_id == a.meeting_id:
                new = replace(room, state="idle", invitation=None)
                return Outcome(new, (replace(ok, detail=f"invitation to {a.meeting_id} withdrawn"),),
                               (EmitEvent("invitation_cancelled", a.meeting_id),))
            if state in (*IN_MEETING, "error") and room.meeting_id == a.meeting_id:
                replies = [_reply(cid, cmd, "accepted", 202, f"{a.meeting_id} cancelled: leaving")]
                if room.pending_join:
                    jid, jcmd = room.pending_join
                    replies.append(_reply(jid, jcmd, "failed", 409, "meeting cancelled"))
                new = replace(room, state="leaving", pending_join=None, pending_leave=(cid, cmd))
                return Outcome(new, tuple(replies), (StopMedia(),))
            _conflict(cid, cmd, f"no invitation to or meeting {a.meeting_id}: the meeting state is {state}")

        case ("audio.mute" | "audio.unmute"), NoArgs():
            if state not in IN_MEETING:
                _conflict(cid, cmd, f"not in a meeting: the meeting state is {state}")
            muted = cmd == "audio.mute"
            new = replace(room, muted=muted)
            return Outcome(new, (replace(ok, detail="muted" if muted else "unmuted"),),
                           (SetMuted(muted), EmitEvent("muted" if muted else "unmuted", room.meeting_id)))

        case "audio.volume", VolumeArgs():
            new = replace(room, volume_percent=a.percent)
            return Outcome(new, (replace(ok, detail=f"volume {a.percent}%"),), (SetVolume(a.percent),))

        case "floor.grant", NoArgs():
            if state not in IN_MEETING:
                _conflict(cid, cmd, f"not in a meeting: the meeting state is {state}")
            new = replace(room, floor=True, muted=False)
            return Outcome(new, (replace(ok, detail="floor granted, microphone on"),),
                           (SetMuted(False), EmitEvent("floor_granted", room.meeting_id)))

        case "floor.revoke", NoArgs():
            if state not in IN_MEETING:
                _conflict(cid, cmd, f"not in a meeting: the meeting state is {state}")
            new = replace(room, floor=False, muted=True)
            return Outcome(new, (replace(ok, detail="floor revoked, microphone off"),),
                           (SetMuted(True), EmitEvent("floor_revoked", room.meeting_id)))

        case "media.keyframe", NoArgs():
            if state not in IN_MEETING:
                _conflict(cid, cmd, f"not in a meeting: the meeting state is {state}")
            return Outcome(room, (replace(ok, detail="keyframe requested"),), (RequestKeyframe(),))

        case "media.profile", ProfileArgs():
            if state not in IN_MEETING or room.stream is None:
                _conflict(cid, cmd, f"not in a meeting: the meeting state is {state}")
            new = replace(room, stream=replace(room.stream, profile=a.profile))
            return Outcome(new, (replace(ok, detail=f"profile {a.profile}"),),
                           (SetProfile(a.profile),))

        case "health.report", NoArgs():
            return Outcome(room, (replace(ok, detail="health published"),), (PublishHealth(),))

        case "device.identify", IdentifyArgs():
            return Outcome(room, (replace(ok, detail=f"identifying for {a.duration_s} s"),),
                           (Identify(a.duration_s), EmitEvent("identify", None, f"{a.duration_s} s")))
    raise AssertionError(f"no transition for {cmd}")  # ARGS and the cases above disagree


def handle_stream(room: Room, state: str, detail: str = "", fatal: bool = False) -> Outcome:
    """What a change in the media path does to the room."""
    if state == "live" and room.state == "joining":
        replies = ()
        if room.pending_join:
            jid, jcmd = room.pending_join
            replies = (_reply(jid, jcmd, "succeeded", 200, f"live in {room.meeting_id}"),)
        new = replace(room, state="live", pending_join=None)
        return Outcome(new, replies, (EmitEvent("joined", room.meeting_id),))

    if state == "off" and room.state == "leaving":
        replies = ()
        if room.pending_leave:
            lid, lcmd = room.pending_leave
            replies = (_reply(lid, lcmd, "succeeded", 200, f"left {room.meeting_id}"),)
        new = Room(muted=False, volume_percent=room.volume_percent)
        return Outcome(new, replies, (EmitEvent("left", room.meeting_id),))

    if state == "error" and fatal and room.state in IN_MEETING:
        replies = ()
        if room.pending_join:
            jid, jcmd = room.pending_join
            replies = (_reply(jid, jcmd, "failed", 500, detail),)
        new = replace(room, state="error", pending_join=None, last_error=detail)
        return Outcome(new, replies, (StopMedia(), EmitEvent("error", room.meeting_id, detail)))

    if state == "off" and room.state in IN_MEETING:
        # Media ends only when asked to; ending by itself mid-meeting is an error.
        return handle_stream(room, "error", detail or "media stopped unexpectedly", fatal=True)

    if state in ("reconnecting", "error") and room.state in IN_MEETING:
        return Outcome(room, (), (EmitEvent("stream_" + state, room.meeting_id, detail),))
    return Outcome(room)
