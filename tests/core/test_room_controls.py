"""Presses, the invitation schedule, hands and the floor: pure steps of the meeting core.

``handle_press`` and ``handle_tick`` take ``now`` as an argument; these tests
walk a :class:`Room` through them as the supervisor does.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.meeting import (
    START_GRACE_S,
    EmitEvent,
    Invitation,
    Room,
    Say,
    SetMuted,
    StartMedia,
    StopMedia,
    StreamRequest,
    handle_command,
    handle_press,
    handle_stream,
    handle_tick,
)
from tests.core.test_meeting import PLAY, POLICY, PUBLISH

NOW = 1_795_140_000.0
EARLY = 900.0


def invite(room: Room, now: float | None = NOW, **args: Any):  # noqa: ANN201
    return handle_command(room, "meeting.invite", "c1", {"meeting_id": "m1", **args}, POLICY,
                          now)


def invited(**args: Any) -> Room:
    out = invite(Room(), **args)
    assert out.replies[0].code == 200, out.replies
    return out.room


def kinds(out) -> list[str]:  # noqa: ANN001
    return [e.kind for e in out.effects if isinstance(e, EmitEvent)]


def live(**kw: Any) -> Room:
    return Room(state="live", meeting_id="m1",
                stream=StreamRequest("m1", PUBLISH, "720p30", False), **kw)


# ---------------------------------------------------------------- invitations


def test_an_invitation_carries_what_a_join_needs() -> None:
    room = invited(publish=PUBLISH, play=PLAY, profile="480p25", muted=True,
                   starts_at=NOW + 600, ends_at=NOW + 3600, mandatory=True)
    assert room.invitation == Invitation("m1", "", NOW + 600, NOW + 3600, True, PUBLISH, PLAY,
                                         "480p25", True)


def test_a_press_in_the_join_window_joins_the_invitation() -> None:
    room = invited(publish=PUBLISH, play=PLAY, profile="360p15", muted=True,
                   starts_at=NOW + 600, ends_at=NOW + 3600)
    out = handle_press(room, "join", "short_press", NOW, EARLY)
    assert out.room.state == "joining" and out.room.invitation is None
    assert out.room.muted is True and out.room.pending_join is None
    assert out.effects == (StartMedia(StreamRequest("m1", PUBLISH, "360p15", True, PLAY)),
                           EmitEvent("joining", "m1", "button"))
    assert out.replies == ()
    # The stream comes up as for a command, with no reply owed.
    up = handle_stream(out.room, "live")
    assert up.room.state == "live" and up.replies == () and kinds(up) == ["joined"]


def test_a_press_before_the_window_or_after_the_end_does_not_join() -> None:
    room = invited(publish=PUBLISH, starts_at=NOW + EARLY + 60, ends_at=NOW + 7200)
    early = handle_press(room, "join", "short_press", NOW, EARLY)
    assert early.room == room and kinds(early) == ["join_too_early"]
    opens = handle_press(room, "join", "short_press", NOW + 60, EARLY)
    assert opens.room.state == "joining"
    late = handle_press(room, "join", "short_press", NOW + 7200, EARLY)
    assert late.room == room and late.effects == ()


def test_a_press_on_an_invitation_without_publish_asks_the_centre() -> None:
    room = invited()
    out = handle_press(room, "join", "short_press", NOW, EARLY)
    assert out.room == room
    assert out.effects == (EmitEvent("call_request", "m1", "join requested by button"),)


def test_a_press_with_nothing_pending_is_a_call_request() -> None:
    out = handle_press(Room(), "join", "short_press", NOW, EARLY)
    assert out.room == Room() and kinds(out) == ["call_request"]


def test_offline_a_press_asks_nothing_of_the_centre_and_says_so() -> None:
    # Nobody would receive the request: the room hears "mất kết nối", no call_request.
    for room in (Room(), invited()):
        out = handle_press(room, "join", "short_press", NOW, EARLY, online=False)
        assert (out.room, out.effects, out.replies) == (room, (Say("link_lost"),), ())


def test_offline_an_invitation_with_its_stream_is_still_joined_by_the_button() -> None:
    # The media server is not the broker: what the invitation carries is enough.
    room = invited(publish=PUBLISH, starts_at=NOW + 60, ends_at=NOW + 3600)
    out = handle_press(room, "join", "short_press", NOW, EARLY, online=False)
    assert out.room.state == "joining" and kinds(out) == ["joining"]
    assert any(isinstance(e, StartMedia) for e in out.effects)


@given(st.sampled_from(["idle", "invited", "joining", "live", "leaving", "error"]),
       st.sampled_from(["join", "mute"]), st.sampled_from(["short_press", "long_press",
                                                           "reset_hold"]))
def test_offline_or_not_a_press_differs_only_in_the_call_request(
        state: str, button: str, kind: str) -> None:
    room = invited() if state == "invited" else Room(state=state)  # type: ignore[arg-type]
    online = handle_press(room, button, kind, NOW, EARLY)  # type: ignore[arg-type]
    offline = handle_press(room, button, kind, NOW, EARLY, online=False)  # type: ignore[arg-type]
    if "call_request" in kinds(online):
        assert offline.effects == (Say("link_lost"),) and offline.room == room
    else:
        assert offline == online


def test_a_mandatory_meeting_is_joined_at_its_start_and_not_before() -> None:
    room = invited(publish=PUBLISH, starts_at=NOW + 60, ends_at=NOW + 3600, mandatory=True)
    assert handle_tick(room, NOW + 59.9).room == room
    out = handle_tick(room, NOW + 60)
    assert out.room.state == "joining"
    assert isinstance(out.effects[0], StartMedia)


def test_a_mandatory_invitation_without_publish_waits_for_the_centre() -> None:
    room = invited(starts_at=NOW + 60, ends_at=NOW + 3600, mandatory=True)
    assert handle_tick(room, NOW + 120).room == room


def test_the_end_time_clears_an_invitation() -> None:
    room = invited(publish=PUBLISH, starts_at=NOW + 60, ends_at=NOW + 3600)
    assert handle_tick(room, NOW + 3599).room == room
    out = handle_tick(room, NOW + 3600)
    assert out.room == Room() and out.effects == (EmitEvent("invitation_expired", "m1"),)


def test_cancel_clears_a_scheduled_invitation() -> None:
    room = invited(publish=PUBLISH, starts_at=NOW + 60, mandatory=True)
    out = handle_command(room, "meeting.cancel", "c2", {"meeting_id": "m1"}, POLICY, NOW)
    assert out.room == Room()
    assert handle_tick(out.room, NOW + 120).room == Room()


def test_a_tick_outside_an_invitation_changes_nothing() -> None:
    for room in (Room(), live(), Room(state="error", meeting_id="m1")):
        assert handle_tick(room, NOW) == handle_tick(room, NOW)
        assert handle_tick(room, NOW).room == room


# ---------------------------------------------------------------- bad invitations


def test_bad_invitations_are_refused_and_change_nothing() -> None:
    room = invited(title="old")
    cases = [
        ({"starts_at": NOW + 3600, "ends_at": NOW + 60}, 400, "args.ends_at: must be after"),
        ({"starts_at": NOW - 7200, "ends_at": NOW - 3600}, 400, "args.ends_at: already past"),
        ({"starts_at": NOW - START_GRACE_S - 1}, 400, "args.starts_at: in the past"),
        ({"publish": "rtmp://media.hanoi.gov.vn:1935/x"}, 400, "args.publish: scheme 'rtmp'"),
        ({"publish": "srt://evil.example:9000"}, 403, "args.publish: host 'evil.example'"),
        ({"play": "srt://media.hanoi.gov.vn"}, 400, "args.play: no port"),
        ({"profile": "1080p60"}, 400, "args.profile"),
    ]
    for args, code, detail in cases:
        out = invite(room, **args)
        assert out.room is room, args
        assert (out.replies[0].status, out.replies[0].code) == ("rejected", code), out.replies
        assert out.replies[0].detail.startswith(detail), out.replies[0].detail
        assert out.effects == ()


def test_a_meeting_already_under_way_may_be_invited_to() -> None:
    room = invited(starts_at=NOW - 1800, ends_at=NOW + 1800)
    assert room.state == "invited"
    assert invited(starts_at=NOW - 60).state == "invited"  # sent at its start, arrived late


def test_without_a_synchronised_clock_times_are_not_judged() -> None:
    out = invite(Room(), now=None, starts_at=NOW - 7200, ends_at=NOW - 3600)
    assert out.replies[0].code == 200


@given(st.dictionaries(
    st.sampled_from(["meeting_id", "title", "starts_at", "ends_at", "mandatory", "publish",
                     "play", "profile", "muted", "extra"]),
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=40),
              st.sampled_from([PUBLISH, "m1", "720p30", NOW + 100, NOW - 100]))))
def test_any_invitation_is_either_taken_whole_or_refused_with_nothing_changed(
        args: dict[str, Any]) -> None:
    room = invited(title="before")
    out = handle_command(room, "meeting.invite", "c9", args, POLICY, NOW)
    (reply,) = out.replies
    if reply.status == "rejected":
        assert out.room is room and out.effects == ()
        assert reply.code in (400, 403) and reply.detail.startswith("args")
    else:
        inv = out.room.invitation
        assert reply.code == 200 and inv is not None and inv.meeting_id == args["meeting_id"]
        assert inv.ends_at is None or inv.ends_at > NOW
        assert inv.starts_at is None or inv.ends_at is None or inv.starts_at < inv.ends_at


# ---------------------------------------------------------------- live: hands, leaving, mute


def test_a_short_press_live_raises_then_lowers_a_hand() -> None:
    up = handle_press(live(), "join", "short_press", NOW, EARLY)
    assert up.room.hand_raised and kinds(up) == ["hand_raised"]
    down = handle_press(up.room, "join", "short_press", NOW, EARLY)
    assert not down.room.hand_raised and kinds(down) == ["hand_lowered"]


def test_the_floor_clears_a_raised_hand_and_unmutes_revoke_mutes() -> None:
    room = live(hand_raised=True, muted=True)
    grant = handle_command(room, "floor.grant", "c3", {}, POLICY, NOW)
    assert grant.room.floor and not grant.room.hand_raised and not grant.room.muted
    assert SetMuted(False) in grant.effects
    revoke = handle_command(grant.room, "floor.revoke", "c4", {}, POLICY, NOW)
    assert not revoke.room.floor and revoke.room.muted and SetMuted(True) in revoke.effects


def test_a_long_press_leaves_and_a_pending_join_is_answered() -> None:
    joining = handle_command(Room(), "meeting.join", "j1", {"meeting_id": "m1",
                                                            "publish": PUBLISH}, POLICY, NOW)
    out = handle_press(joining.room, "join", "long_press", NOW, EARLY)
    assert out.room.state == "leaving" and out.room.pending_leave is None
    assert [(r.id, r.status, r.code) for r in out.replies] == [("j1", "failed", 409)]
    assert StopMedia() in out.effects and kinds(out) == ["leaving"]
    gone = handle_stream(out.room, "off")
    assert gone.room == Room() and gone.replies == () and kinds(gone) == ["left"]


def test_a_long_press_outside_a_meeting_does_nothing() -> None:
    for room in (Room(), invited(publish=PUBLISH)):
        assert handle_press(room, "join", "long_press", NOW, EARLY).room == room


def test_the_mute_button_toggles_the_microphone_only_in_a_meeting() -> None:
    out = handle_press(live(), "mute", "short_press", NOW, EARLY)
    assert out.room.muted and out.effects[0] == SetMuted(True)
    back = handle_press(out.room, "mute", "short_press", NOW, EARLY)
    assert not back.room.muted and back.effects[0] == SetMuted(False)
    assert handle_press(Room(), "mute", "short_press", NOW, EARLY).effects == ()


def test_a_reset_hold_is_not_the_rooms_business() -> None:
    for room in (Room(), live(), invited(publish=PUBLISH)):
        out = handle_press(room, "join", "reset_hold", NOW, EARLY)
        assert out.room == room and out.effects == ()


def test_leaving_forgets_a_raised_hand() -> None:
    up = handle_press(live(), "join", "short_press", NOW, EARLY).room
    leave = handle_command(up, "meeting.leave", "c5", {}, POLICY, NOW)
    assert handle_stream(leave.room, "off").room.hand_raised is False


def test_a_stream_that_fails_takes_a_raised_hand_down_and_tells_the_centre() -> None:
    # Found by the property test below: media stopping by itself left the hand up.
    up = handle_press(live(), "join", "short_press", NOW, EARLY).room
    for failure in (handle_stream(up, "off"), handle_stream(up, "error", "no camera", True)):
        assert failure.room.state == "error" and not failure.room.hand_raised
        assert kinds(failure) == ["error", "hand_lowered"]
    # Without a hand up there is nothing to take down.
    assert kinds(handle_stream(live(), "off")) == ["error"]


# ---------------------------------------------------------------- any sequence

STEPS = st.one_of(
    st.tuples(st.just("press"), st.sampled_from(["join", "mute"]),
              st.sampled_from(["short_press", "long_press", "reset_hold"])),
    st.tuples(st.just("tick"), st.floats(min_value=-100, max_value=8000)),
    st.tuples(st.just("stream"), st.sampled_from(["live", "off", "error", "reconnecting"]),
              st.booleans()),
    st.tuples(st.just("cmd"), st.sampled_from([
        ("meeting.invite", {"meeting_id": "m1", "publish": PUBLISH, "starts_at": NOW + 600,
                            "ends_at": NOW + 3600, "mandatory": True}),
        ("meeting.invite", {"meeting_id": "m2", "ends_at": NOW + 60}),
        ("meeting.cancel", {"meeting_id": "m1"}),
        ("meeting.join", {"meeting_id": "m3", "publish": PUBLISH}),
        ("meeting.leave", {}),
        ("floor.grant", {}), ("floor.revoke", {}), ("audio.mute", {}), ("audio.unmute", {}),
    ])),
)


@given(st.lists(STEPS, max_size=30))
def test_any_sequence_of_presses_ticks_commands_and_stream_events_keeps_the_room_sound(
        steps: list[tuple[Any, ...]]) -> None:
    room = Room()
    for step in steps:
        if step[0] == "press":
            out = handle_press(room, step[1], step[2], NOW, EARLY)
        elif step[0] == "tick":
            out = handle_tick(room, NOW + step[1])
        elif step[0] == "stream":
            out = handle_stream(room, step[1], "", step[2])
        else:
            out = handle_command(room, step[1][0], "c", step[1][1], POLICY, NOW)
        room = out.room
        assert (room.state == "invited") == (room.invitation is not None), room
        assert not room.hand_raised or room.state in ("live", "leaving"), room
        assert not room.floor or room.state in ("joining", "live", "leaving", "error"), room
        if room.state in ("joining", "live"):
            assert room.stream is not None and room.meeting_id is not None
        # A press never owes the centre a reply of its own.
        if step[0] == "press":
            assert all(r.id == "c" for r in out.replies)
