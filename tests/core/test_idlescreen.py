"""What the idle screen says, from the supervisor's facts; the prompt agrees with the button."""

from __future__ import annotations

import pytest

from diemcau.config import SiteConfig
from diemcau.core.idlescreen import CONNECTION_OF_PHASE, IdleScreen, idle_screen
from diemcau.core.light import Phase
from diemcau.core.meeting import Invitation, Room, StartMedia, handle_press

SITE = SiteConfig(name="UBND xã Tân Lập", province="p01", district="d001", commune="c00001",
                  room="Phòng họp tầng 2")
EARLY = 900.0
STARTS, ENDS = 10_000.0, 13_600.0
WITH_STREAM = Invitation("giao-ban", "Giao ban", starts_at=STARTS, ends_at=ENDS,
                         publish="srt://media.example.vn:9000")
WITHOUT_STREAM = Invitation("giao-ban", "Giao ban", starts_at=STARTS, ends_at=ENDS)


def screen(room: Room, phase: Phase = "ready", now: float = 0.0) -> IdleScreen:
    return idle_screen(SITE, "c00001-r1", phase, room, now=now, join_early_s=EARLY)


def test_an_idle_room_shows_the_site_and_no_invitation() -> None:
    s = screen(Room())
    assert (s.site_name, s.room, s.place, s.device_id) == (
        "UBND xã Tân Lập", "Phòng họp tầng 2", "p01 · d001 · c00001", "c00001-r1")
    assert (s.connection, s.state, s.meeting_id, s.invited, s.starts_at) == (
        "online", "idle", "", False, None)


@pytest.mark.parametrize(("phase", "connection"), [
    ("ready", "online"), ("connecting", "connecting"), ("starting", "connecting"),
    ("no_network", "offline")])
def test_the_links_phase_is_the_connection_shown(phase: Phase, connection: str) -> None:
    assert screen(Room(), phase).connection == connection
    assert set(CONNECTION_OF_PHASE) == set(Phase.__args__)


def test_before_the_join_window_the_screen_says_when_it_opens() -> None:
    s = screen(Room(state="invited", invitation=WITH_STREAM), now=STARTS - EARLY - 60)
    assert (s.meeting_id, s.meeting_title, s.starts_at) == ("giao-ban", "Giao ban", STARTS)
    assert s.invited and s.join_opens_at == STARTS - EARLY


def test_inside_the_join_window_a_press_joins_now() -> None:
    s = screen(Room(state="invited", invitation=WITH_STREAM), now=STARTS - 60)
    assert s.invited and s.join_opens_at is None and not s.joins_itself


def test_without_a_stream_a_press_asks_the_centre_only_when_online() -> None:
    room = Room(state="invited", invitation=WITHOUT_STREAM)
    assert screen(room, "ready").invited
    assert not screen(room, "no_network").invited
    assert not screen(room, "connecting").invited


def test_a_mandatory_meeting_is_joined_by_the_box_itself() -> None:
    inv = Invitation("m", starts_at=STARTS, mandatory=True, publish="srt://media.example.vn:9000")
    assert screen(Room(state="invited", invitation=inv)).joins_itself
    no_stream = Invitation("m", starts_at=STARTS, mandatory=True)
    assert not screen(Room(state="invited", invitation=no_stream)).joins_itself


@pytest.mark.parametrize("state", ["joining", "live", "leaving", "error"])
def test_other_states_show_no_invitation(state: str) -> None:
    s = screen(Room(state=state, meeting_id="giao-ban"))  # type: ignore[arg-type]
    assert (s.state, s.meeting_id, s.invited) == (state, "", False)


@pytest.mark.parametrize("phase", ["ready", "no_network"])
@pytest.mark.parametrize("inv", [WITH_STREAM, WITHOUT_STREAM], ids=["stream", "no_stream"])
def test_the_prompt_says_what_the_button_does(inv: Invitation, phase: Phase) -> None:
    # At every moment around the window, "press to join" shows exactly when a press would
    # join (or ask the centre to), whatever the button's own rules are.
    room = Room(state="invited", invitation=inv)
    for now in range(0, int(ENDS) + 600, 60):
        s = screen(room, phase, float(now))
        prompt = s.invited and (s.join_opens_at is None or now >= s.join_opens_at)
        effects = handle_press(room, "join", "short_press", float(now), EARLY,
                               online=phase == "ready").effects
        acts = any(isinstance(e, StartMedia) or getattr(e, "kind", "") == "call_request"
                   for e in effects)
        assert prompt == acts, (now, s, effects)


def test_the_same_facts_give_an_equal_screen() -> None:
    room = Room(state="invited", invitation=WITH_STREAM)
    assert screen(room, now=5.0) == screen(room, now=7.0)
    assert hash(screen(room, now=5.0)) == hash(screen(room, now=7.0))
