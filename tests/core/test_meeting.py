"""The meeting state machine and command policy: pure steps, no threads or sockets.

Each test walks a :class:`Room` through ``handle_command`` and ``handle_stream``
exactly as the supervisor does, and checks the new room, the replies and the
effects. The property tests at the end throw arbitrary commands and stream
events at it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diemcau.core.meeting import (
    HANDLED_COMMANDS,
    EmitEvent,
    Identify,
    Invitation,
    Outcome,
    Policy,
    PublishHealth,
    ReplyDraft,
    Room,
    SetMuted,
    SetVolume,
    StartMedia,
    StopMedia,
    StreamRequest,
    handle_command,
    handle_stream,
)
from diemcau.protocol.messages import COMMAND_NAMES

POLICY = Policy(
    allowed_schemes=frozenset({"srt", "rtsp"}),
    media_hosts=frozenset({"media.hanoi.gov.vn", "127.0.0.1"}),
)
PUBLISH = "srt://media.hanoi.gov.vn:9000?streamid=publish:m1&latency=120000"
PLAY = "srt://media.hanoi.gov.vn:9001?streamid=play:m1"


def command(room: Room, cmd: str, args: Any = None, cid: str = "c1") -> Outcome:
    return handle_command(room, cmd, cid, {} if args is None else args, POLICY)


def join_args(meeting_id: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"meeting_id": meeting_id, "publish": PUBLISH, **extra}


def only_reply(out: Outcome) -> ReplyDraft:
    assert len(out.replies) == 1, out.replies
    return out.replies[0]


def codes(out: Outcome) -> list[tuple[str | None, int]]:
    return [(r.id, r.code) for r in out.replies]


def rejected(out: Outcome, room: Room, code: int, *words: str) -> ReplyDraft:
    """The command was turned down with ``code``, naming ``words``, and changed nothing."""
    reply = only_reply(out)
    assert (reply.status, reply.code) == ("rejected", code), reply
    for word in words:
        assert word in reply.detail, (word, reply.detail)
    assert out.room is room
    assert out.effects == ()
    return reply


# Rooms in each state, reached through the real transitions.


def invited(meeting_id: str = "m1") -> Room:
    return command(Room(), "meeting.invite", {"meeting_id": meeting_id}, "inv").room


def joining(meeting_id: str = "m1", **extra: Any) -> Room:
    return command(Room(), "meeting.join", join_args(meeting_id, **extra), "join").room


def live(meeting_id: str = "m1", **extra: Any) -> Room:
    return handle_stream(joining(meeting_id, **extra), "live").room


def leaving(meeting_id: str = "m1") -> Room:
    return command(live(meeting_id), "meeting.leave", {}, "leave").room


def failed(meeting_id: str = "m1") -> Room:
    return handle_stream(live(meeting_id), "error", "no camera", fatal=True).room


ROOMS = {
    "idle": Room,
    "invited": invited,
    "joining": joining,
    "live": live,
    "leaving": leaving,
    "error": failed,
}


def test_rooms_built_by_the_helpers_are_in_their_state() -> None:
    for state, make in ROOMS.items():
        assert make().state == state


# ---------------------------------------------------------------- the happy path


def test_invite_from_idle() -> None:
    out = command(Room(), "meeting.invite",
                  {"meeting_id": "m1", "title": "Họp giao ban", "starts_at": 100.0,
                   "ends_at": 200.0, "mandatory": True}, "c7")
    assert out.room.state == "invited"
    assert out.room.invitation == Invitation("m1", "Họp giao ban", 100.0, 200.0, True)
    assert out.room.meeting_id is None
    assert out.replies == (ReplyDraft("c7", "meeting.invite", "succeeded", 200, "invited to m1"),)
    assert out.effects == (EmitEvent("invited", "m1", "Họp giao ban"),)


def test_a_second_invitation_replaces_the_first() -> None:
    out = command(invited("m1"), "meeting.invite", {"meeting_id": "m2"})
    assert only_reply(out).code == 200
    assert out.room.state == "invited"
    assert out.room.invitation is not None and out.room.invitation.meeting_id == "m2"


def test_join_is_accepted_then_succeeds_when_the_stream_is_live() -> None:
    out = command(invited("m1"), "meeting.join",
                  join_args("m1", play=PLAY, profile="480p25"), "j1")
    request = StreamRequest("m1", PUBLISH, "480p25", False, PLAY)
    assert out.room.state == "joining"
    assert out.room.meeting_id == "m1"
    assert out.room.invitation is None
    assert out.room.stream == request
    assert out.room.pending_join == ("j1", "meeting.join")
    assert out.replies == (ReplyDraft("j1", "meeting.join", "accepted", 202, "joining m1"),)
    assert out.effects == (StartMedia(request), EmitEvent("joining", "m1"))

    up = handle_stream(out.room, "live")
    assert up.room.state == "live"
    assert up.room.pending_join is None
    assert up.room.stream == request
    assert up.replies == (ReplyDraft("j1", "meeting.join", "succeeded", 200, "live in m1"),)
    assert up.effects == (EmitEvent("joined", "m1"),)


def test_join_without_an_invitation_and_with_defaults() -> None:
    out = command(Room(), "meeting.join", join_args("m9"))
    assert out.room.state == "joining"
    assert out.room.stream == StreamRequest("m9", PUBLISH, "720p30", False, None)


def test_join_muted_starts_muted() -> None:
    room = joining(muted=True)
    assert room.muted
    assert room.stream is not None and room.stream.muted


def test_leave_is_accepted_then_succeeds_when_the_stream_is_off() -> None:
    room = command(live(), "audio.volume", {"percent": 35}).room
    room = command(room, "floor.grant").room
    out = command(room, "meeting.leave", {"meeting_id": "m1"}, "l1")
    assert out.room.state == "leaving"
    assert out.room.meeting_id == "m1"
    assert out.room.pending_leave == ("l1", "meeting.leave")
    assert out.replies == (ReplyDraft("l1", "meeting.leave", "accepted", 202, "leaving m1"),)
    assert out.effects == (StopMedia(),)

    down = handle_stream(out.room, "off")
    assert down.replies == (ReplyDraft("l1", "meeting.leave", "succeeded", 200, "left m1"),)
    assert down.effects == (EmitEvent("left", "m1"),)
    # Back to a clean idle room; only the speaker volume is kept.
    assert down.room == Room(volume_percent=35)


def test_leave_without_a_meeting_id_leaves_the_current_meeting() -> None:
    out = command(live("m1"), "meeting.leave", {})
    assert out.room.state == "leaving"


def test_leave_while_joining_fails_the_pending_join() -> None:
    out = command(joining(), "meeting.leave", {}, "l1")
    assert out.room.state == "leaving"
    assert out.room.pending_join is None
    assert [(r.id, r.status, r.code) for r in out.replies] == [
        ("l1", "accepted", 202),
        ("join", "failed", 409),
    ]
    assert out.replies[1].cmd == "meeting.join"
    assert "left before the stream was up" in out.replies[1].detail
    # The stream coming up now is too late: nothing changes, nothing is replied.
    late = handle_stream(out.room, "live")
    assert late.room is out.room
    assert late.replies == ()


def test_cancel_an_invitation() -> None:
    out = command(invited("m1"), "meeting.cancel", {"meeting_id": "m1"}, "x1")
    assert out.room == Room()
    reply = only_reply(out)
    assert (reply.id, reply.status, reply.code) == ("x1", "succeeded", 200)
    assert out.effects == (EmitEvent("invitation_cancelled", "m1"),)


@pytest.mark.parametrize("make", [live, failed])
def test_cancel_the_current_meeting_leaves_it(make: Any) -> None:
    out = command(make("m1"), "meeting.cancel", {"meeting_id": "m1"}, "x1")
    assert out.room.state == "leaving"
    assert out.room.pending_leave == ("x1", "meeting.cancel")
    assert codes(out) == [("x1", 202)]
    assert out.effects == (StopMedia(),)
    down = handle_stream(out.room, "off")
    assert down.room.state == "idle"
    assert codes(down) == [("x1", 200)]


def test_cancel_while_joining_fails_the_pending_join() -> None:
    out = command(joining("m1"), "meeting.cancel", {"meeting_id": "m1"}, "x1")
    assert out.room.state == "leaving"
    assert [(r.id, r.status, r.code) for r in out.replies] == [
        ("x1", "accepted", 202),
        ("join", "failed", 409),
    ]
    assert out.replies[1].detail == "meeting cancelled"


@pytest.mark.parametrize("make", [Room, lambda: invited("m2"), lambda: live("m2"), leaving])
def test_cancel_of_nothing_to_cancel_is_a_conflict(make: Any) -> None:
    room = make()
    rejected(command(room, "meeting.cancel", {"meeting_id": "m1"}), room, 409, "m1", room.state)


# ---------------------------------------------------------------- errors from the media path


def test_fatal_error_while_live_puts_the_room_in_error() -> None:
    room = live()
    out = handle_stream(room, "error", "no camera", fatal=True)
    assert out.room.state == "error"
    assert out.room.meeting_id == "m1"
    assert out.room.last_error == "no camera"
    assert out.replies == ()
    assert out.effects == (StopMedia(), EmitEvent("error", "m1", "no camera"))


def test_fatal_error_while_joining_fails_the_join() -> None:
    out = handle_stream(joining(), "error", "no encoder", fatal=True)
    assert out.room.state == "error"
    assert out.room.pending_join is None
    assert out.replies == (ReplyDraft("join", "meeting.join", "failed", 500, "no encoder"),)


@pytest.mark.parametrize("state", ["reconnecting", "error"])
def test_passing_trouble_is_reported_but_changes_nothing(state: str) -> None:
    room = live()
    out = handle_stream(room, state, "connection refused", fatal=False)
    assert out.room is room
    assert out.replies == ()
    assert out.effects == (EmitEvent(f"stream_{state}", "m1", "connection refused"),)


def test_leave_from_error_returns_to_idle() -> None:
    out = command(failed(), "meeting.leave", {}, "l1")
    assert out.room.state == "leaving"
    assert codes(out) == [("l1", 202)]
    down = handle_stream(out.room, "off")
    assert down.room.state == "idle"
    assert down.room.last_error == ""
    assert codes(down) == [("l1", 200)]


def test_join_from_error_retries() -> None:
    out = command(failed("m1"), "meeting.join", join_args("m1"), "j2")
    assert out.room.state == "joining"
    assert out.room.last_error == ""
    assert out.room.pending_join == ("j2", "meeting.join")
    assert codes(out) == [("j2", 202)]
    assert isinstance(out.effects[0], StartMedia)
    assert codes(handle_stream(out.room, "live")) == [("j2", 200)]


@pytest.mark.parametrize(("room", "stream_state"), [
    (Room(), "live"), (Room(), "off"), (Room(), "error"),
    (invited(), "live"), (live(), "live"), (live(), "starting"),
    (leaving(), "live"), (leaving(), "error"), (failed(), "off"), (failed(), "live"),
])
def test_stream_changes_that_do_not_apply_change_nothing(room: Room, stream_state: str) -> None:
    assert handle_stream(room, stream_state, "whatever", fatal=True) == Outcome(room)


# ---------------------------------------------------------------- microphone, floor, speaker


def test_mute_and_unmute_in_a_meeting() -> None:
    out = command(live(), "audio.mute")
    assert out.room.muted
    assert only_reply(out).code == 200
    assert out.effects == (SetMuted(True), EmitEvent("muted", "m1"))
    out = command(out.room, "audio.unmute")
    assert not out.room.muted
    assert out.effects == (SetMuted(False), EmitEvent("unmuted", "m1"))


def test_mute_while_joining_is_allowed() -> None:
    assert command(joining(), "audio.mute").room.muted


def test_floor_grant_unmutes_and_revoke_mutes() -> None:
    room = live(muted=True)
    out = command(room, "floor.grant")
    assert (out.room.floor, out.room.muted) == (True, False)
    assert out.effects == (SetMuted(False), EmitEvent("floor_granted", "m1"))
    out = command(out.room, "floor.revoke")
    assert (out.room.floor, out.room.muted) == (False, True)
    assert out.effects == (SetMuted(True), EmitEvent("floor_revoked", "m1"))


def test_join_resets_the_floor() -> None:
    room = command(live(), "floor.grant").room
    room = handle_stream(room, "error", "camera gone", fatal=True).room
    assert command(room, "meeting.join", join_args()).room.floor is False


@pytest.mark.parametrize("percent", [0, 1, 50, 100])
@pytest.mark.parametrize("state", ["idle", "live"])
def test_volume_in_range_in_any_state(percent: int, state: str) -> None:
    out = command(ROOMS[state](), "audio.volume", {"percent": percent})
    assert out.room.volume_percent == percent
    assert only_reply(out).code == 200
    assert out.effects == (SetVolume(percent),)


@pytest.mark.parametrize("percent", [-1, 101, 10**6])
def test_volume_out_of_range(percent: int) -> None:
    room = live()
    rejected(command(room, "audio.volume", {"percent": percent}), room, 400, "args.percent", "0-100")


@pytest.mark.parametrize("percent", ["50", 50.0, True, None])
def test_volume_of_the_wrong_type(percent: Any) -> None:
    room = Room()
    rejected(command(room, "audio.volume", {"percent": percent}), room, 400, "args.percent")


@pytest.mark.parametrize("duration_s", [1, 10, 300])
def test_identify_in_range(duration_s: int) -> None:
    out = command(Room(), "device.identify", {"duration_s": duration_s})
    assert only_reply(out).code == 200
    assert out.room == Room()
    assert out.effects[0] == Identify(duration_s)


def test_identify_defaults_to_ten_seconds() -> None:
    assert command(Room(), "device.identify").effects[0] == Identify(10)


@pytest.mark.parametrize("duration_s", [0, -5, 301])
def test_identify_out_of_range(duration_s: int) -> None:
    room = Room()
    rejected(command(room, "device.identify", {"duration_s": duration_s}), room, 400,
             "args.duration_s", "1-300")


def test_health_report_asks_for_health() -> None:
    out = command(live(), "health.report")
    assert only_reply(out).code == 200
    assert out.effects == (PublishHealth(),)


# ---------------------------------------------------------------- 409: not in this state


@pytest.mark.parametrize(("state", "cmd", "args"), [
    ("idle", "meeting.leave", {}),
    ("invited", "meeting.leave", {}),
    ("leaving", "meeting.leave", {}),
    *[(s, c, {}) for s in ("idle", "invited", "leaving", "error")
      for c in ("audio.mute", "audio.unmute", "floor.grant", "floor.revoke")],
    ("joining", "meeting.invite", {"meeting_id": "m2"}),
    ("live", "meeting.invite", {"meeting_id": "m2"}),
    ("leaving", "meeting.invite", {"meeting_id": "m2"}),
    ("error", "meeting.invite", {"meeting_id": "m2"}),
    ("live", "meeting.join", join_args("m2")),
    ("joining", "meeting.join", join_args("m2")),
    ("leaving", "meeting.join", join_args("m1")),
    ("leaving", "meeting.join", join_args("m2")),
])
def test_a_command_that_does_not_fit_the_state_is_a_conflict_naming_it(
        state: str, cmd: str, args: dict[str, Any]) -> None:
    room = ROOMS[state]()
    rejected(command(room, cmd, args), room, 409, f"the meeting state is {state}")


def test_leave_while_idle_says_there_is_nothing_to_leave() -> None:
    room = Room()
    reply = rejected(command(room, "meeting.leave"), room, 409)
    assert reply.detail == "nothing to leave: the meeting state is idle"


@pytest.mark.parametrize("state", ["joining", "live"])
def test_join_of_the_same_meeting_again_is_a_conflict(state: str) -> None:
    room = ROOMS[state]()
    rejected(command(room, "meeting.join", join_args("m1")), room, 409, f"already {state} in m1")


def test_join_of_another_meeting_while_live_names_the_current_one() -> None:
    room = live("m1")
    rejected(command(room, "meeting.join", join_args("m2")), room, 409, "live", "m1")


def test_leave_of_another_meeting_is_a_conflict() -> None:
    room = live("m1")
    rejected(command(room, "meeting.leave", {"meeting_id": "m2"}), room, 409, "not in m2", "m1")


# ---------------------------------------------------------------- 404 and 400


@pytest.mark.parametrize("cmd", ["meeting.explode", "", "MEETING.JOIN", "meeting.join ",
                                 "device.reboot"])
def test_a_command_the_core_does_not_handle_is_unknown(cmd: str) -> None:
    room = live()
    reply = rejected(command(room, cmd, {"x": 1}, "c9"), room, 404, "unknown command")
    assert (reply.id, reply.cmd) == ("c9", cmd)
    assert repr(cmd) in reply.detail


def test_every_command_the_core_handles_is_a_protocol_command() -> None:
    assert set(HANDLED_COMMANDS) <= set(COMMAND_NAMES)


@pytest.mark.parametrize(("cmd", "args", "field"), [
    ("meeting.invite", {"meeting_id": 5}, "args.meeting_id"),
    ("meeting.invite", {"meeting_id": "m1", "title": ["x"]}, "args.title"),
    ("meeting.invite", {"meeting_id": "m1", "starts_at": "tomorrow"}, "args.starts_at"),
    ("meeting.invite", {"meeting_id": "m1", "mandatory": "yes"}, "args.mandatory"),
    ("meeting.join", join_args(publish=None), "args.publish"),
    ("meeting.join", join_args(muted="false"), "args.muted"),
    ("meeting.join", join_args(profile="1080p60"), "args.profile"),
    ("meeting.join", join_args(play=7), "args.play"),
    ("meeting.leave", {"meeting_id": 1}, "args.meeting_id"),
    ("meeting.cancel", {"meeting_id": None}, "args.meeting_id"),
    ("audio.volume", {"percent": "loud"}, "args.percent"),
    ("device.identify", {"duration_s": 2.5}, "args.duration_s"),
])
def test_a_wrong_type_names_the_field(cmd: str, args: dict[str, Any], field: str) -> None:
    room = Room()
    reply = rejected(command(room, cmd, args), room, 400)
    assert reply.detail.startswith(f"{field}: "), reply.detail


@pytest.mark.parametrize(("cmd", "args"), [
    ("meeting.invite", {"meeting_id": "m1", "colour": "red"}),
    ("meeting.join", join_args(colour="red")),
    ("audio.mute", {"colour": "red"}),
    ("health.report", {"colour": "red"}),
])
def test_an_unknown_argument_is_named(cmd: str, args: dict[str, Any]) -> None:
    room = live()
    rejected(command(room, cmd, args), room, 400, "args", "colour")


@pytest.mark.parametrize(("cmd", "args"), [
    ("meeting.invite", {}),
    ("meeting.join", {"meeting_id": "m1"}),
    ("meeting.cancel", {}),
    ("audio.volume", {}),
])
def test_a_missing_argument_is_named(cmd: str, args: dict[str, Any]) -> None:
    room = Room()
    reply = rejected(command(room, cmd, args), room, 400, "missing")
    missing = {"meeting.join": "publish", "audio.volume": "percent"}.get(cmd, "meeting_id")
    assert missing in reply.detail


@pytest.mark.parametrize("args", [None, [], "meeting", 3, [{"meeting_id": "m1"}]])
def test_arguments_that_are_not_an_object(args: Any) -> None:
    room = Room()
    reply = handle_command(room, "meeting.invite", "c1", args, POLICY)
    assert reply.replies[0].code == 400
    assert reply.replies[0].detail.startswith("args: ")
    assert reply.room is room


BAD_MEETING_IDS = ["", "-m1", ".m1", "m 1", "m/1", "m1\n", "m1\r", "họp", "m" * 65, "m1;rm", "m1$"]


@pytest.mark.parametrize("meeting_id", BAD_MEETING_IDS)
@pytest.mark.parametrize(("cmd", "state"), [
    ("meeting.invite", "idle"), ("meeting.join", "idle"),
    ("meeting.leave", "live"), ("meeting.cancel", "invited"),
])
def test_a_bad_meeting_id_is_refused(cmd: str, state: str, meeting_id: str) -> None:
    room = ROOMS[state]()
    args = join_args(meeting_id) if cmd == "meeting.join" else {"meeting_id": meeting_id}
    rejected(command(room, cmd, args), room, 400, "args.meeting_id")


@pytest.mark.parametrize("meeting_id", ["m", "M1", "2024-05-01.ubnd_xa", "m" * 64])
def test_good_meeting_ids(meeting_id: str) -> None:
    assert command(Room(), "meeting.invite", {"meeting_id": meeting_id}).room.state == "invited"


@pytest.mark.parametrize(("starts_at", "ends_at"), [(200.0, 100.0), (100.0, 100.0), (5, -5)])
def test_an_invitation_ending_before_it_starts(starts_at: float, ends_at: float) -> None:
    room = Room()
    args = {"meeting_id": "m1", "starts_at": starts_at, "ends_at": ends_at}
    rejected(command(room, "meeting.invite", args), room, 400, "args.ends_at", "after")


# ---------------------------------------------------------------- media URLs


@pytest.mark.parametrize(("url", "code", "words"), [
    ("srt://evil.example.com:9000", 403, ["args.publish", "evil.example.com", "allowed media host"]),
    ("srt://media.hanoi.gov.vn.evil.com:9000", 403, ["not an allowed media host"]),
    ("srt://media.hanoi.gov.vn:9000@evil.example.com:9000", 403, ["evil.example.com"]),
    ("srt://10.0.0.1:9000", 403, ["10.0.0.1"]),
    ("http://media.hanoi.gov.vn:9000/live", 400, ["scheme 'http' not allowed", "rtsp, srt"]),
    ("file:///etc/shadow", 400, ["scheme 'file' not allowed"]),
    ("media.hanoi.gov.vn:9000", 400, ["not allowed"]),
    ("srt://media.hanoi.gov.vn", 400, ["no port"]),
    ("srt://:9000", 400, ["no host"]),
    ("srt://media.hanoi.gov.vn:99999", 400, ["not a URL"]),
    ("srt://[::1:9000", 400, ["not a URL"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=a b", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000\n", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000\r\nX: y", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=a\x00", 400, ["spaces or control characters"]),
    # urlsplit drops tabs on its own: the raw text must be checked.
    ("srt://media.hanoi.gov.vn:90\t00", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000/\x1b[2J", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=\x7f", 400, ["spaces or control characters"]),
    ("srt://media.hanoi.gov.vn:9000?mode=listener", 400, ["mode=caller"]),
    ("srt://media.hanoi.gov.vn:9000?mode=rendezvous", 400, ["mode=caller"]),
    ("srt://media.hanoi.gov.vn:9000?mode=caller&mode=listener", 400, ["mode=caller"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=x&mod%65=listener", 400, ["mode=caller"]),
    # FFmpeg reads options up to the end of the text, '#' or not.
    ("srt://media.hanoi.gov.vn:9000#?mode=listener", 400, ["mode=caller"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=x#&mode=listener", 400, ["mode=caller"]),
    ("srt://media.hanoi.gov.vn:9000?streamid=" + "x" * 1024, 400, ["longer than 1024"]),
])
def test_a_bad_publish_url_is_refused(url: str, code: int, words: list[str]) -> None:
    room = invited()
    rejected(command(room, "meeting.join", join_args(publish=url)), room, code,
             "args.publish", *words)


def test_the_play_url_is_checked_too() -> None:
    room = Room()
    rejected(command(room, "meeting.join", join_args(play="srt://evil.example.com:9001")),
             room, 403, "args.play")
    rejected(command(room, "meeting.join", join_args(play="srt://media.hanoi.gov.vn:9001?mode=listener")),
             room, 400, "args.play", "mode=caller")


@pytest.mark.parametrize("url", [
    "srt://media.hanoi.gov.vn:9000",
    "srt://media.hanoi.gov.vn:9000?mode=caller&streamid=publish:m1&passphrase=0123456789",
    "srt://127.0.0.1:9000?streamid=%23!::r=live/m1,m=publish",
    "rtsp://media.hanoi.gov.vn:8554/live/m1",
])
def test_good_publish_urls(url: str) -> None:
    out = command(Room(), "meeting.join", join_args(publish=url))
    assert only_reply(out).code == 202, out.replies
    assert out.room.stream is not None and out.room.stream.publish_url == url


@pytest.mark.parametrize(("url", "normal"), [
    # Schemes and host names are not case sensitive: the media path sees one form.
    ("SRT://media.hanoi.gov.vn:9000", "srt://media.hanoi.gov.vn:9000"),
    ("Srt://MEDIA.Hanoi.gov.vn:9000?streamid=#!::r=Live/M1&passphrase=AbCdEfGhIj",
     "srt://media.hanoi.gov.vn:9000?streamid=#!::r=Live/M1&passphrase=AbCdEfGhIj"),
    ("RTSP://Op:PassWord@Media.Hanoi.gov.vn:8554/Live/M1",
     "rtsp://Op:PassWord@media.hanoi.gov.vn:8554/Live/M1"),
])
def test_media_urls_are_normalised_once_where_they_are_checked(url: str, normal: str) -> None:
    out = command(Room(), "meeting.join", join_args(publish=url, play=url))
    assert only_reply(out).code == 202, out.replies
    assert out.room.stream is not None
    assert (out.room.stream.publish_url, out.room.stream.play_url) == (normal, normal)
    invite = command(Room(), "meeting.invite", {"meeting_id": "m1", "publish": url, "play": url})
    assert invite.room.invitation is not None
    assert (invite.room.invitation.publish, invite.room.invitation.play) == (normal, normal)


def test_only_the_configured_schemes_are_allowed() -> None:
    srt_only = Policy(frozenset({"srt"}), POLICY.media_hosts)
    out = handle_command(Room(), "meeting.join", "c1",
                         join_args(publish="rtsp://media.hanoi.gov.vn:8554/m1"), srt_only)
    assert only_reply(out).code == 400
    assert "scheme 'rtsp' not allowed (allowed: srt)" in out.replies[0].detail


# ---------------------------------------------------------------- properties

MEETING_IDS = st.sampled_from(["m1", "m2"])
URLS = st.sampled_from([PUBLISH, PLAY, "srt://evil.example.com:9000", "http://127.0.0.1:80",
                        "srt://127.0.0.1:9000?mode=listener", "srt://127.0.0.1"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
ARG_KEYS = st.sampled_from(["meeting_id", "publish", "play", "profile", "muted", "title",
                            "starts_at", "ends_at", "mandatory", "percent", "duration_s"])


@st.composite
def plausible_args(draw: st.DrawFn, cmd: str) -> dict[str, Any]:
    """Arguments that are mostly right, so that commands get past the parser."""
    match cmd:
        case "meeting.invite":
            args: dict[str, Any] = {"meeting_id": draw(MEETING_IDS)}
            if draw(st.booleans()):
                args["starts_at"] = draw(st.floats(0, 1e9))
                args["ends_at"] = draw(st.floats(0, 1e9))
        case "meeting.join":
            args = {"meeting_id": draw(MEETING_IDS), "publish": draw(URLS),
                    "muted": draw(st.booleans())}
        case "meeting.leave":
            args = draw(st.sampled_from([{}, {"meeting_id": "m1"}, {"meeting_id": "m2"}]))
        case "meeting.cancel":
            args = {"meeting_id": draw(MEETING_IDS)}
        case "audio.volume":
            args = {"percent": draw(st.integers(-5, 105))}
        case "device.identify":
            args = {"duration_s": draw(st.integers(-1, 301))}
        case _:
            args = {}
    if draw(st.integers(0, 9)) == 0:  # now and then, a wrong or unknown argument
        args[draw(ARG_KEYS | st.text(max_size=5))] = draw(JSON)
    return args


@st.composite
def steps(draw: st.DrawFn) -> tuple[str, ...] | tuple[str, str, dict[str, Any]]:
    """One thing that happens to the room: a command or a change of the stream."""
    if draw(st.booleans()):
        cmd = draw(st.sampled_from(sorted(HANDLED_COMMANDS)))
        return ("command", cmd, draw(plausible_args(cmd)))
    state = draw(st.sampled_from(["starting", "live", "reconnecting", "error", "off"]))
    return ("stream", state, draw(st.booleans()))


def apply(room: Room, step: tuple[Any, ...], cid: str) -> Outcome:
    if step[0] == "command":
        return handle_command(room, step[1], cid, step[2], POLICY)
    return handle_stream(room, step[1], "detail", fatal=step[2])


def room_after(sequence: Iterable[tuple[Any, ...]]) -> Room:
    room = Room()
    for n, step in enumerate(sequence):
        room = apply(room, step, f"s{n}").room
    return room


def check_consistent(room: Room) -> None:
    in_room = room.state in ("joining", "live", "leaving", "error")
    assert (room.meeting_id is None) == (room.state in ("idle", "invited")), room
    assert (room.invitation is not None) == (room.state == "invited"), room
    assert (room.stream is not None) == in_room, room
    if room.stream is not None:
        assert room.stream.meeting_id == room.meeting_id, room
    assert (room.pending_join is not None) == (room.state == "joining"), room
    assert (room.pending_leave is not None) == (room.state == "leaving"), room
    assert 0 <= room.volume_percent <= 100, room
    if not in_room:
        assert not room.muted and not room.floor, room
    if room.last_error:
        assert room.state in ("error", "leaving"), room


@settings(max_examples=300)
@given(sequence=st.lists(steps(), max_size=8),
       cmd=st.sampled_from(sorted(HANDLED_COMMANDS)) | st.text(max_size=20),
       args=JSON | st.dictionaries(ARG_KEYS, JSON, max_size=4))
def test_any_command_gets_exactly_one_reply_and_never_raises(
        sequence: list[tuple[Any, ...]], cmd: str, args: Any) -> None:
    room = room_after(sequence)
    out = handle_command(room, cmd, "any", args, POLICY)
    assert out.replies, "every command gets a reply"
    first, *others = out.replies
    assert (first.id, first.cmd) == ("any", cmd)
    assert first.code in {200, 202, 400, 403, 404, 409}
    assert first.status == {200: "succeeded", 202: "accepted"}.get(first.code, "rejected")
    # Anything more is the final reply owed to a join still waiting for its stream.
    assert [(r.id, r.cmd) for r in others] in ([], [room.pending_join])
    for reply in others:
        assert (reply.status, reply.code) == ("failed", 409)
    if first.status == "rejected":
        assert out.room is room
        assert out.effects == ()
    check_consistent(out.room)


@settings(max_examples=300)
@given(st.lists(steps(), max_size=30))
def test_any_sequence_keeps_the_room_consistent_and_every_202_owes_one_final_reply(
        sequence: list[tuple[Any, ...]]) -> None:
    room = Room()
    owed: set[str] = set()  # commands accepted (202) whose final reply has not gone yet
    for n, step in enumerate(sequence):
        cid = f"s{n}"
        out = apply(room, step, cid)
        for reply in out.replies:
            if reply.id == cid:
                assert reply.code != 202 or reply.status == "accepted"
                if reply.code == 202:
                    owed.add(cid)
            else:  # a final reply to an earlier command
                assert reply.id in owed, (reply, owed)
                assert reply.status in ("succeeded", "failed")
                owed.remove(reply.id)
        if step[0] == "command":
            assert [r.id for r in out.replies].count(cid) == 1
            if out.replies[0].status == "rejected":
                assert out.room is room and out.effects == ()
        starts = [e for e in out.effects if isinstance(e, StartMedia)]
        stops = [e for e in out.effects if isinstance(e, StopMedia)]
        assert bool(starts) == (out.room.state == "joining" and room.state != "joining")
        assert bool(stops) == any(out.room.state == s != room.state for s in ("leaving", "error"))
        room = out.room
        check_consistent(room)
        # The room remembers exactly the commands that still owe a final reply.
        pending = {p[0] for p in (room.pending_join, room.pending_leave) if p is not None}
        assert pending == owed
