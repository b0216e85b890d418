"""The far end, as the supervisor drives it: the programme on the room's TV, fast, on stand-ins.

The screen stand-in (tests/harness/standins.py) records what it is asked and
posts ``ProgrammeChanged`` as the screen process would. The real screen
process is tested on real parts in tests/media/test_screen.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.core.events import HealthDue, ProgrammeFiguresUpdated
from diemcau.protocol import Alert, decode
from tests.harness.standins import StandinBox, standin_box

PLAY = "srt://127.0.0.1:9001?streamid=read:m1"
JOIN = {"meeting_id": "m1", "publish": "srt://127.0.0.1:9000?streamid=publish:m1", "play": PLAY}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[StandinBox]:
    made = standin_box(tmp_path, screen=True)
    yield made
    made.close()


def live(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("meeting.join", JOIN, jti="j1"))
    box.media.last.stream("live")
    box.screen.programme("live")
    box.handle()


def test_a_join_with_a_play_url_plays_it_and_leaving_goes_back_to_the_idle_screen(
        box: StandinBox) -> None:
    live(box)
    assert box.screen.called("play") == [("m1", PLAY)]
    assert box.link.statuses()[-1].programme.state == "live"

    box.handle(box.command("meeting.leave", {"meeting_id": "m1"}, jti="l1"))
    assert box.screen.called("stop_playing") == [None]
    assert box.link.statuses()[-1].programme.state == "off"
    assert box.supervisor.room.state == "idle"


def test_a_join_without_a_play_url_leaves_the_tv_alone(box: StandinBox) -> None:
    no_play = {k: v for k, v in JOIN.items() if k != "play"}
    box.handle(box.link.up(), box.command("meeting.join", no_play, jti="j1"))
    box.media.last.stream("live")
    box.handle()
    assert box.screen.called("play") == []
    assert box.link.statuses()[-1].programme.state == "off"


def test_the_volume_goes_to_the_screen_which_owns_the_speaker(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("audio.volume", {"percent": 35}, jti="v1"))
    assert box.screen.called("set_volume") == [35]


def test_figures_reach_status_and_health_and_bad_ones_change_nothing(box: StandinBox) -> None:
    live(box)
    box.handle(ProgrammeFiguresUpdated({"frames_shown": 250, "lag_ms": 180.0,
                                        "decoder": "h264", "width": 1280, "height": 720}))
    box.handle(ProgrammeFiguresUpdated({"frames_shown": "many"}))  # a broken player: logged
    box.handle(HealthDue())
    programme = box.link.statuses()[-1].programme
    assert (programme.frames_shown, programme.lag_ms, programme.width) == (250, 180.0, 1280)
    health = [decode(p.payload, dict) for p in box.link.on("health")][-1]
    assert health["programme"]["frames_shown"] == 250


def test_a_lost_programme_is_told_once_alerted_after_its_delay_and_cleared_when_back(
        box: StandinBox) -> None:
    live(box)
    box.screen.programme("reconnecting", "no data from the feed for 3 s")
    box.handle()
    box.screen.programme("starting")
    box.screen.programme("reconnecting", "connection refused")
    box.handle()
    kinds = [e.kind for e in box.link.events()]
    assert kinds.count("programme_lost") == 1
    lost = [e for e in box.link.events() if e.kind == "programme_lost"][0]
    assert lost.meeting_id == "m1" and lost.detail == "no data from the feed for 3 s"

    def raised() -> list[bytes]:
        return [p.payload for p in box.link.on("alert/programme_lost") if p.payload]

    box.handle(HealthDue())  # 0 s lost: not yet an alert
    assert not raised()
    box.now[0] += box.supervisor.cfg.health.programme_lost_s
    box.handle(HealthDue())
    assert len(raised()) == 1
    alert = decode(raised()[0], Alert)
    assert alert.severity == "critical" and "connection refused" in alert.detail

    box.screen.programme("live")
    box.handle()
    box.handle(HealthDue())
    assert [e.kind for e in box.link.events()].count("programme_back") == 1
    assert box.link.on("alert/programme_lost")[-1].payload == b""  # cleared


def test_a_programme_that_never_came_is_no_lost_event(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("meeting.join", JOIN, jti="j1"))
    box.screen.programme("reconnecting", "connection refused")
    box.handle()
    assert "programme_lost" not in [e.kind for e in box.link.events()]
    assert box.link.statuses()[-1].programme.state == "reconnecting"


def test_the_idle_screen_is_told_what_changed_and_nothing_more(box: StandinBox) -> None:
    box.supervisor._start_screen()  # noqa: SLF001 - the start list's step, without run()
    first = box.screen.called("show_idle")
    assert [v.connection for v in first] == ["connecting"]
    assert first[0].site_name == box.supervisor.cfg.site.name and first[0].device_id == "c00001-r1"

    box.handle(box.link.up())
    for _ in range(3):
        box.handle(HealthDue())  # events that change nothing on the screen send nothing
    box.handle(box.command("meeting.invite", {"meeting_id": "m2", "title": "Giao ban tỉnh",
                                              "publish": JOIN["publish"],
                                              "starts_at": box.now[0] + 60}, jti="i1"))
    views = box.screen.called("show_idle")
    assert [(v.connection, v.state, v.invited) for v in views] == [
        ("connecting", "idle", False), ("online", "idle", False), ("online", "invited", True)]
    assert views[-1].meeting_title == "Giao ban tỉnh"

    box.handle(box.link.down())  # the link is lost: the screen says it is connecting again
    assert box.screen.called("show_idle")[-1].connection == "connecting"
