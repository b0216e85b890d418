"""``media.keyframe`` and ``media.profile`` in the meeting core: pure steps."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.meeting import (
    Outcome,
    Policy,
    RequestKeyframe,
    Room,
    SetProfile,
    handle_command,
    handle_stream,
)

POLICY = Policy(frozenset({"srt", "rtsp"}), frozenset({"media.example.vn"}))
JOIN = {"meeting_id": "m1", "publish": "srt://media.example.vn:9000", "profile": "720p30"}


def command(room: Room, cmd: str, args: Any = None) -> Outcome:
    return handle_command(room, cmd, "c1", {} if args is None else args, POLICY)


def live_room() -> Room:
    room = command(Room(), "meeting.join", JOIN).room
    return handle_stream(room, "live").room


@pytest.mark.parametrize("room", [Room(), Room(state="invited"), Room(state="leaving")],
                         ids=lambda r: r.state)
@pytest.mark.parametrize("cmd, args", [("media.keyframe", {}),
                                       ("media.profile", {"profile": "360p15"})])
def test_outside_a_meeting_they_are_refused_and_change_nothing(
        room: Room, cmd: str, args: dict[str, Any]) -> None:
    out = command(room, cmd, args)
    assert out.room == room and out.effects == ()
    assert (out.replies[0].status, out.replies[0].code) == ("rejected", 409)
    assert "not in a meeting" in out.replies[0].detail


def test_a_keyframe_is_asked_of_the_media_path() -> None:
    room = live_room()
    out = command(room, "media.keyframe")
    assert out.room == room
    assert out.effects == (RequestKeyframe(),)
    assert (out.replies[0].status, out.replies[0].detail) == ("succeeded", "keyframe requested")


@pytest.mark.parametrize("profile", ["480p25", "360p15", "audio", "720p30"])
def test_a_profile_goes_to_the_media_path_and_into_the_room(profile: str) -> None:
    room = live_room()
    out = command(room, "media.profile", {"profile": profile})
    assert out.effects == (SetProfile(profile),)  # type: ignore[arg-type]
    assert out.room.stream is not None and out.room.stream.profile == profile
    assert out.room.state == "live"
    assert (out.replies[0].code, out.replies[0].detail) == (200, f"profile {profile}")


@given(args=st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers(),
                                                            st.none()), max_size=3))
def test_bad_profile_arguments_are_a_400_naming_the_field(args: dict[str, Any]) -> None:
    if set(args) == {"profile"} and args["profile"] in ("720p30", "480p25", "360p15", "audio"):
        return
    room = live_room()
    out = command(room, "media.profile", args)
    assert out.room == room and out.effects == ()
    reply = out.replies[0]
    assert (reply.status, reply.code) == ("rejected", 400)
    assert reply.detail.startswith("args")
