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

import math
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

from ..protocol.arguments import (
    ARGS,
    MEETING_ID_RE,
    CancelArgs,
    IdentifyArgs,
    InviteArgs,
    JoinArgs,
    LeaveArgs,
    NoArgs,
    Profile,
    ProfileArgs,
    UpdateArgs,
    VolumeArgs,
)
from .button import ButtonName, PressKind
from .update import may_restart

MeetingState = Literal["idle", "invited", "joining", "live", "leaving", "error"]


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Invitation:
    meeting_id: str
    title: str = ""
    starts_at: float | None = None
    ends_at: float | None = None
    mandatory: bool = False
    # What a press (or the start of a mandatory meeting) needs to join without the centre.
    publish: str | None = None
    play: str | None = None
    profile: Profile = "720p30"
    muted: bool = False

    def join_window(self, join_early_s: float) -> tuple[float, float]:
        """From when until when a press joins: ``join_early_s`` before the start until the end."""
        opens = -math.inf if self.starts_at is None else self.starts_at - join_early_s
        return opens, math.inf if self.ends_at is None else self.ends_at

    def stream_request(self) -> StreamRequest | None:
        if self.publish is None:
            return None
        return StreamRequest(self.meeting_id, self.publish, self.profile, self.muted, self.play)


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
    hand_raised: bool = False
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


@dataclass(frozen=True, slots=True)
class StartUpdate:
    """Check the manifest and, if it holds, download and install (see core/update.py)."""

    command_id: str
    manifest: str


@dataclass(frozen=True, slots=True)
class Say:
    """A prompt for the room with no event behind it (``core.prompts`` key)."""

    prompt: str


Effect = (StartMedia | StopMedia | SetMuted | SetVolume | PublishHealth | Identify | EmitEvent
          | StartUpdate | Say | RequestKeyframe | SetProfile)


@dataclass(frozen=True, slots=True)
class Outcome:
    room: Room
    replies: tuple[ReplyDraft, ...] = ()
    effects: tuple[Effect, ...] = ()


# ---------------------------------------------------------------- arguments


# The schemas are the protocol's (protocol/arguments.py); what they may hold beyond
# their types, and what each command does, is decided here.
HANDLED_COMMANDS = frozenset(ARGS)


class BadArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _parse_args(cmd: str, args: Any) -> msgspec.Struct:
    try:
        return msgspec.convert(args, ARGS[cmd])
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `$")
        field = "args" + where.rstrip("`")
        raise BadArgs(400, f"{field}: {text.replace('`', '')}") from None


def _check_meeting_id(value: str, field: str = "args.meeting_id") -> None:
    if not MEETING_ID_RE.fullmatch(value):  # fullmatch: '$' alone lets a final '\n' through
        raise BadArgs(400, f"{field}: 1-64 letters, digits, '.', '_' or '-'")


def normalise_media_url(url: str) -> str:
    """``url`` with its scheme and host in lower case, the rest as given.

    Done once, where the URL is checked: everything after (the media path,
    the saved invitation) sees one form, so ``SRT://`` is an SRT URL like
    ``srt://``. The host ends where FFmpeg ends it, at the first ``/``, ``?``
    or ``#``; user information before an ``@`` is kept as it is.

    >>> normalise_media_url("SRT://Media.Example.VN:9000?streamid=#!::r=Live")
    'srt://media.example.vn:9000?streamid=#!::r=Live'
    >>> normalise_media_url("RTSP://Op:PW@Media.Example.VN:8554/Live")
    'rtsp://Op:PW@media.example.vn:8554/Live'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    return f"{scheme.lower()}://{userinfo}{at}{host.lower()}{rest[end:]}"


def check_media_url(url: str, field: str, policy: Policy) -> str:
    """A media URL must use an allowed scheme and point at an allowed host; returns it
    normalised (:func:`normalise_media_url`)."""
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
    return normalise_media_url(url)


# A start this far in the past is still "now": the invitation may have waited in the broker.
START_GRACE_S = 300.0


def _check_invite(a: InviteArgs, policy: Policy, now: float | None) -> None:
    _check_meeting_id(a.meeting_id)
    for field, value in (("args.starts_at", a.starts_at), ("args.ends_at", a.ends_at)):
        if value is not None and not math.isfinite(value):
            raise BadArgs(400, f"{field}: must be a finite number")
    if a.publish is not None:
        a.publish = check_media_url(a.publish, "args.publish", policy)
    if a.play is not None:
        a.play = check_media_url(a.play, "args.play", policy)
    if a.starts_at is not None and a.ends_at is not None and a.ends_at <= a.starts_at:
        raise BadArgs(400, "args.ends_at: must be after args.starts_at")
    if now is None:  # the clock is not synchronised: times cannot be judged
        return
    if a.ends_at is not None and a.ends_at <= now:
        raise BadArgs(400, "args.ends_at: already past")
    if a.ends_at is None and a.starts_at is not None and a.starts_at < now - START_GRACE_S:
        raise BadArgs(400, "args.starts_at: in the past (give ends_at for a meeting already "
                           "under way)")


def validate(cmd: str, args: Any, policy: Policy, now: float | None = None) -> msgspec.Struct:
    """Parse and check a command's arguments; raise BadArgs naming the field.

    Media URLs come back normalised (:func:`normalise_media_url`).

    ``now`` (Unix seconds) judges an invitation's times; None when the clock is
    not synchronised.
    """
    parsed = _parse_args(cmd, args)
    match parsed:
        case InviteArgs():
            _check_invite(parsed, policy, now)
        case CancelArgs():
            _check_meeting_id(parsed.meeting_id)
        case JoinArgs():
            _check_meeting_id(parsed.meeting_id)
            parsed.publish = check_media_url(parsed.publish, "args.publish", policy)
            if parsed.play is not None:
                parsed.play = check_media_url(parsed.play, "args.play", policy)
        case LeaveArgs() if parsed.meeting_id is not None:
            _check_meeting_id(parsed.meeting_id)
        case VolumeArgs() if not 0 <= parsed.percent <= 100:
            raise BadArgs(400, "args.percent: must be 0-100")
        case IdentifyArgs() if not 1 <= parsed.duration_s <= 300:
            raise BadArgs(400, "args.duration_s: must be 1-300")
    return parsed


def invitation_from(a: InviteArgs) -> Invitation:
    return Invitation(a.meeting_id, a.title, a.starts_at, a.ends_at, a.mandatory, a.publish,
                      a.play, a.profile, a.muted)


def invitation_args(inv: Invitation) -> dict[str, Any]:
    """The ``meeting.invite`` arguments that give ``inv`` (how the schedule is saved)."""
    return {f.name: getattr(inv, f.name) for f in msgspec.structs.fields(InviteArgs)}


# ---------------------------------------------------------------- transitions


def _reply(cid: str, cmd: str, status: str, code: int, detail: str) -> ReplyDraft:
    return ReplyDraft(cid, cmd, status, code, detail)


def _conflict(cid: str, cmd: str, detail: str) -> Outcome:
    raise _Conflict(_reply(cid, cmd, "rejected", 409, detail))


class _Conflict(Exception):
    def __init__(self, reply: ReplyDraft) -> None:
        self.reply = reply


IN_MEETING = ("joining", "live")


def handle_command(room: Room, cmd: str, cid: str, args: Any, policy: Policy,
                   now: float | None = None) -> Outcome:
    """Decide what a verified command does to the room; ``now`` as in :func:`validate`."""
    if cmd not in HANDLED_COMMANDS:
        return Outcome(room, (_reply(cid, cmd, "rejected", 404, f"unknown command {cmd!r}"),))
    try:
        parsed = validate(cmd, args, policy, now)
        return _transition(room, cmd, cid, parsed)
    except BadArgs as exc:
        return Outcome(room, (_reply(cid, cmd, "rejected", exc.code, exc.detail),))
    except _Conflict as exc:
        return Outcome(room, (exc.reply,))


def _transition(room: Room, cmd: str, cid: str, a: msgspec.Struct) -> Outcome:  # noqa: C901, PLR0911, PLR0912
    ok = _reply(cid, cmd, "succeeded", 200, "")
    state = room.state
    match cmd, a:
        case "meeting.invite", InviteArgs():
            if state not in ("idle", "invited"):
                _conflict(cid, cmd, f"busy: the meeting state is {state}")
            inv = invitation_from(a)
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
                          stream=request, muted=a.muted, floor=False, hand_raised=False,
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
            new = replace(room, floor=True, muted=False, hand_raised=False)
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

        case "firmware.update", UpdateArgs():
            # Restarting into a new release ends any meeting: never in the middle of one.
            if not may_restart(state):
                _conflict(cid, cmd, f"busy: the meeting state is {state}; update after it")
            return Outcome(room, (), (StartUpdate(cid, a.manifest),))
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
        # Nobody can hear the room now: a raised hand is taken down, and the centre told.
        new = replace(room, state="error", pending_join=None, last_error=detail,
                      hand_raised=False)
        effects: tuple[Effect, ...] = (StopMedia(), EmitEvent("error", room.meeting_id, detail))
        if room.hand_raised:
            effects += (EmitEvent("hand_lowered", room.meeting_id, "the stream failed"),)
        return Outcome(new, replies, effects)

    if state == "off" and room.state in IN_MEETING:
        # Media ends only when asked to; ending by itself mid-meeting is an error.
        return handle_stream(room, "error", detail or "media stopped unexpectedly", fatal=True)

    if state in ("reconnecting", "error") and room.state in IN_MEETING:
        return Outcome(room, (), (EmitEvent("stream_" + state, room.meeting_id, detail),))
    return Outcome(room)


# ---------------------------------------------------------------- the panel and the clock

def _join_invitation(room: Room, inv: Invitation, why: str) -> Outcome:
    request = inv.stream_request()
    assert request is not None
    new = replace(room, state="joining", meeting_id=inv.meeting_id, invitation=None,
                  stream=request, muted=inv.muted, floor=False, hand_raised=False,
                  pending_join=None, last_error="")
    return Outcome(new, (), (StartMedia(request), EmitEvent("joining", inv.meeting_id, why)))


def handle_press(room: Room, button: ButtonName, kind: PressKind, now: float,
                 join_early_s: float, *, online: bool = True) -> Outcome:
    """What a classified press does in the room's state; ``now`` in Unix seconds.

    The join button: a short press joins an invitation inside its join window
    (or, with nothing pending, asks the centre for a call); live, it raises
    or lowers a hand. A long press leaves a meeting. The mute button's short
    press mutes or unmutes. A ``reset_hold`` is not the room's business.
    Not ``online`` (the centre's broker unreachable), a press that would ask
    the centre for a call asks nothing: the room hears "mất kết nối" instead
    of a request nobody receives. An invitation that carries its stream is
    joined all the same: the media server is not the broker.

    >>> handle_press(Room(), "join", "short_press", 0.0, 900, online=False).effects
    (Say(prompt='link_lost'),)

    >>> out = handle_press(Room(state="live", meeting_id="m1"), "join", "short_press", 0.0, 900)
    >>> out.room.hand_raised, [e.kind for e in out.effects]
    (True, ['hand_raised'])
    """
    state = room.state
    if button == "mute":
        if kind != "short_press" or state not in IN_MEETING:
            return Outcome(room)
        muted = not room.muted
        return Outcome(replace(room, muted=muted),
                       effects=(SetMuted(muted), EmitEvent("muted" if muted else "unmuted",
                                                           room.meeting_id, "button")))
    if kind == "short_press":
        if state == "idle":
            if not online:
                return Outcome(room, effects=(Say("link_lost"),))
            return Outcome(room, effects=(EmitEvent("call_request", None, "button"),))
        if state == "invited" and room.invitation is not None:
            inv = room.invitation
            opens, closes = inv.join_window(join_early_s)
            if inv.publish is None:
                if not online:
                    return Outcome(room, effects=(Say("link_lost"),))
                # Nothing to join with: the centre decides (it sends meeting.join).
                return Outcome(room, effects=(EmitEvent("call_request", inv.meeting_id,
                                                        "join requested by button"),))
            if now < opens:
                return Outcome(room, effects=(EmitEvent("join_too_early", inv.meeting_id,
                                                        f"the join window opens at {opens:.0f}"),))
            if now < closes:
                return _join_invitation(room, inv, "button")
            return Outcome(room)
        if state == "live":
            raised = not room.hand_raised
            return Outcome(replace(room, hand_raised=raised),
                           effects=(EmitEvent("hand_raised" if raised else "hand_lowered",
                                              room.meeting_id),))
        return Outcome(room)
    if kind == "long_press" and state in (*IN_MEETING, "error"):
        replies: tuple[ReplyDraft, ...] = ()
        if room.pending_join:
            jid, jcmd = room.pending_join
            replies = (_reply(jid, jcmd, "failed", 409, "left by the button before the stream "
                                                        "was up"),)
        new = replace(room, state="leaving", pending_join=None, pending_leave=None)
        return Outcome(new, replies, (StopMedia(), EmitEvent("leaving", room.meeting_id,
                                                              "button")))
    return Outcome(room)


def handle_tick(room: Room, now: float) -> Outcome:
    """What the passing of time does to an invitation; ``now`` in Unix seconds.

    Its end clears it; a mandatory meeting that can be joined is joined at its start.

    >>> inv = Invitation("m1", starts_at=100.0, ends_at=200.0, mandatory=True,
    ...                  publish="srt://media.example.vn:9000")
    >>> handle_tick(Room(state="invited", invitation=inv), 100.0).room.state
    'joining'
    >>> handle_tick(Room(state="invited", invitation=inv), 200.0).room.state
    'idle'
    """
    inv = room.invitation
    if room.state != "invited" or inv is None:
        return Outcome(room)
    if inv.ends_at is not None and now >= inv.ends_at:
        return Outcome(replace(room, state="idle", invitation=None),
                       effects=(EmitEvent("invitation_expired", inv.meeting_id),))
    if inv.mandatory and inv.publish is not None and (inv.starts_at is None
                                                      or now >= inv.starts_at):
        return _join_invitation(room, inv, "mandatory meeting: joined at its start")
    return Outcome(room)
