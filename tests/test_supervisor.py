"""The supervisor's behaviour, fast: its loop and parts on stand-ins for its ports.

No threads and no sockets: the link, media, voice, light, buttons, service
manager and releases are ``tests/harness/standins.py``'s, the ledger is the
real SQLite file. Each test hands events to ``supervisor.handle`` as the loop
would, and looks at what the stand-ins were asked to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.core.events import Delivered, StopRequested
from diemcau.core.update import Outcome as UpdateOutcome
from diemcau.protocol import RESEND_GRACE_S, Event, decode, device_topic
from diemcau.supervisor import EXIT_RESTART
from tests.harness.box import CentreKey
from tests.harness.standins import DEV, StandinBox, standin_box
from tests.harness.waiting import wait_until

JOIN = {"meeting_id": "m1", "publish": "srt://127.0.0.1:9000?streamid=publish:m1"}


@pytest.fixture
def box(tmp_path: Path) -> Iterator[StandinBox]:
    made = standin_box(tmp_path)
    yield made
    made.close()


def reliable(published: list) -> list:
    """The replies and events among ``published`` (what goes through the outbox)."""
    return [p for p in published if p.topic in (device_topic(DEV, "reply"),
                                                 device_topic(DEV, "event"))]


def reliable_events(published: list) -> list[Event]:
    return [decode(p.payload, Event) for p in published if p.topic == device_topic(DEV, "event")]


def statuses_of(box: StandinBox) -> list[tuple[str, int]]:
    return [(r.status, r.code) for r in box.link.replies()]


def test_a_join_is_answered_after_its_step_is_committed_then_acked_and_media_starts(
        box: StandinBox) -> None:
    box.handle(box.link.up())
    box.link.watch = lambda: box.ledger.db.in_transaction
    box.handle(box.command("meeting.join", JOIN, jti="j1"))

    assert statuses_of(box) == [("accepted", 202)]
    assert box.link.acked == ["ack-j1"]
    # The reply, the event and the PUBACK went out after the commit, the PUBACK last
    # (status is retained and not in the outbox: it goes at once).
    reliable = [(what.rsplit("/", 1)[-1], open_) for what, open_ in box.link.moments
                if not what.endswith("/status")]
    assert reliable == [("reply", False), ("event", False), ("ack ack-j1", False)]
    assert [call for call, _ in box.media.last.calls] == ["start"]
    assert box.media.last.request.meeting_id == "m1"
    assert [e.kind for e in box.link.events()] == ["joining"]
    assert box.supervisor.room.state == "joining"
    assert box.light.shown is not None and box.light.shown.state == "joining"


def test_the_stream_going_live_answers_the_join_and_tells_the_centre(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("meeting.join", JOIN, jti="j1"))
    box.media.last.stream("live")
    box.handle()

    replies = box.link.replies()
    assert [(r.id, r.status, r.code) for r in replies] == [
        ("j1", "accepted", 202), ("j1", "succeeded", 200)]
    assert [e.kind for e in box.link.events()] == ["joining", "joined"]
    assert [e.seq for e in box.link.events()] == [1, 2]
    assert box.link.statuses()[-1].meeting_state == "live"
    assert box.link.statuses()[-1].stream.state == "live"


def test_a_leave_stops_the_media_and_the_stream_ending_answers_it(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("meeting.join", JOIN, jti="j1"))
    box.media.last.stream("live")
    box.handle()
    box.handle(box.command("meeting.leave", jti="l1"))  # the stand-in posts "off" once stopped

    assert [call for call, _ in box.media.last.calls] == ["start", "stop"]
    assert [(r.id, r.status) for r in box.link.replies()][-2:] == [
        ("l1", "accepted"), ("l1", "succeeded")]
    assert box.supervisor.room.state == "idle"
    assert box.link.statuses()[-1].stream.state == "off"


def test_offline_replies_wait_in_the_outbox_and_go_in_order_once_the_link_is_up(
        box: StandinBox) -> None:
    box.handle(box.command("meeting.join", JOIN, jti="j1"))
    box.media.last.stream("live")
    box.handle()
    box.handle(box.command("meeting.leave", jti="l1"))
    assert box.link.published == []
    assert box.link.acked == ["ack-j1", "ack-l1"]  # recorded with their replies: the broker may forget them
    waiting = box.supervisor.a.outbox.pending()
    assert len(waiting) == 7  # 4 replies, 3 events

    box.handle(box.link.up())
    sent = [p for p in box.link.published if p.topic in (
        device_topic(DEV, "reply"), device_topic(DEV, "event"))]
    assert [(p.topic, p.payload) for p in sent] == [(w.topic, w.payload) for w in waiting]
    assert [(r.id, r.status) for r in box.link.replies()] == [
        ("j1", "accepted"), ("j1", "succeeded"), ("l1", "accepted"), ("l1", "succeeded")]
    assert [e.kind for e in box.link.events()] == ["joining", "joined", "left"]

    box.handle(*(Delivered(p.mid) for p in sent))  # the broker's PUBACKs
    assert box.supervisor.a.outbox.pending() == []


def test_what_the_broker_acknowledged_within_the_grace_goes_again_after_a_drop(
        box: StandinBox) -> None:
    """The broker saves on a timer: what it acknowledged just before it went away may be
    lost, so the box sends it again, unchanged; what it acknowledged a grace ago is gone."""
    box.handle(box.link.up())
    box.handle(box.command("device.identify", {"duration_s": 5}, jti="old"))
    box.handle(*(Delivered(p.mid) for p in box.link.published))
    box.now[0] += RESEND_GRACE_S + 1
    mark = len(box.link.published)
    box.handle(box.command("device.identify", {"duration_s": 5}, jti="new"))
    recent = reliable(box.link.published[mark:])
    assert recent  # its reply and its event
    box.handle(*(Delivered(p.mid) for p in box.link.published))  # prunes "old"'s rows
    assert box.supervisor.a.outbox.pending() == []
    before = len(box.link.published)

    box.handle(box.link.down())
    box.handle(box.link.up())
    again = reliable(box.link.published[before:])
    assert [(r.id, r.status) for r in box.link.replies()[-1:]] == [("new", "succeeded")]
    resent = {(p.topic, p.payload) for p in again}
    assert {(p.topic, p.payload) for p in recent} <= resent  # byte for byte: same seq, same id
    assert not any(b'"old"' in p.payload for p in again)
    assert [e.kind for e in reliable_events(again)] == ["identify", "link_lost"]  # in order

    box.handle(*(Delivered(p.mid) for p in again))
    box.now[0] += RESEND_GRACE_S + 1
    box.handle(Delivered(box.link.publish("t", b"later PUBACK")))  # the broker alive a grace on
    box.handle(box.link.down())
    box.handle(box.link.up())
    assert not any(b'"new"' in p.payload for p in box.link.published[before + len(again):])


def test_a_reply_made_while_the_link_is_down_goes_after_it_comes_back(box: StandinBox) -> None:
    box.handle(box.link.up(), box.link.down())
    assert [e.kind for e in box.link.events()] == []  # link_lost waits in the outbox
    box.handle(box.command("device.identify", {"duration_s": 5}, jti="i1"))
    assert box.link.replies() == []

    box.handle(box.link.up())
    assert [e.kind for e in box.link.events()] == ["link_lost", "identify"]
    assert [(r.id, r.status) for r in box.link.replies()] == [("i1", "succeeded")]
    assert box.voice.keys == ["connected", "link_lost", "identify", "connected"]


def test_a_forged_command_gets_401_and_changes_nothing(box: StandinBox) -> None:
    forger = CentreKey()  # a key the box does not know
    token = forger.sign(DEV, "meeting.join", JOIN, jti="f1", now=box.now[0])
    event = box.command("meeting.join", JOIN, jti="f1")
    box.handle(box.link.up(), type(event)(event.topic, token.encode(), "ack-f1"))

    [reply] = box.link.replies()
    assert (reply.status, reply.code) == ("rejected", 401)
    assert box.media.made == []
    assert box.supervisor.room.state == "idle"
    assert box.link.events() == []
    assert box.link.acked == ["ack-f1"]  # answered, so the broker may forget it


def test_a_second_delivery_gets_the_first_result_and_runs_nothing(box: StandinBox) -> None:
    join = box.command("meeting.join", JOIN, jti="j1")
    box.handle(box.link.up(), join, join)

    assert [(r.status, r.code, r.first_status) for r in box.link.replies()] == [
        ("accepted", 202, None), ("duplicate", 202, "accepted")]
    assert len(box.media.made) == 1
    assert box.link.acked == ["ack-j1", "ack-j1"]


def test_the_volume_is_kept_with_the_reply_and_given_to_the_voice(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("audio.volume", {"percent": 35}, jti="v1"))
    assert statuses_of(box) == [("succeeded", 200)]
    assert box.voice.volumes == [35]
    assert box.ledger.get_setting("volume_percent") == 35
    assert box.link.statuses()[-1].volume_percent == 35


def test_an_update_is_refused_when_the_box_has_no_release_keys(box: StandinBox) -> None:
    box.handle(box.link.up(), box.command("firmware.update", {"manifest": "x.y.z"}, jti="u1"))
    [reply] = box.link.replies()
    assert (reply.status, reply.code) == ("rejected", 403)
    assert "no release keys" in reply.detail
    assert box.releases.accepted == []
    assert box.supervisor.updates.under_way is None


def test_online_again_the_last_update_is_reported_once(box: StandinBox) -> None:
    box.releases.unreported = UpdateOutcome(command_id="u1", command_exp=box.now[0] + 600,
                                            version="9.9.9", result="committed",
                                            detail="running 9.9.9")
    box.handle(box.link.up())
    assert [(r.id, r.status, r.code) for r in box.link.replies()] == [("u1", "succeeded", 200)]
    assert [e.kind for e in box.link.events()] == ["update_committed"]
    assert box.releases.unreported is None
    box.handle(box.link.down(), box.link.up())
    assert len(box.link.replies()) == 1


def test_a_press_joins_the_invited_meeting(box: StandinBox) -> None:
    invite = {"meeting_id": "m2", "publish": "srt://127.0.0.1:9000?streamid=publish:m2",
              "starts_at": box.now[0] - 60, "ends_at": box.now[0] + 3600}
    box.handle(box.link.up(), box.command("meeting.invite", invite, jti="n1"))
    assert box.supervisor.room.state == "invited"
    [button] = box.supervisor.a.make_buttons(box.supervisor.post)  # type: ignore[misc]
    box.handle(button.press("short_press"))

    assert box.supervisor.room.state == "joining"
    assert box.media.last.request.meeting_id == "m2"
    assert [e.kind for e in box.link.events()][-2:] == ["button", "joining"]


def test_a_reset_hold_confirms_then_stops_and_run_erases_the_state(box: StandinBox) -> None:
    [button] = box.supervisor.a.make_buttons(box.supervisor.post)  # type: ignore[misc]
    box.handle(box.link.up(), button.press("reset_hold", 12.0))
    assert box.light.shown is not None and box.light.shown.state == "resetting"
    assert box.voice.keys[-1] == "factory_reset"
    assert [e.kind for e in box.link.events()][-2:] == ["button", "factory_reset"]

    box.handle(button.press("short_press"))  # nothing changes the room now
    assert box.supervisor.room.state == "idle"
    box.supervisor.handle(box.voice.spoken("factory_reset"))
    assert box.supervisor.handle_queued() == [StopRequested("factory reset")]

    state = Path(box.supervisor.cfg.device.state_dir)
    assert any(state.iterdir())
    box.supervisor.post(StopRequested("factory reset"))
    box.supervisor.run()
    assert box.supervisor.factory_reset
    assert list(state.iterdir()) == []


def test_run_starts_its_list_in_order_and_stops_it_in_reverse(box: StandinBox) -> None:
    box.supervisor.post(StopRequested("test"))  # the loop stops at its first event
    box.supervisor.run()

    assert box.link.started and box.link.stopped_as == "disconnected"
    assert box.service.told == ["ready", "stopping"]
    assert not box.voice.running and box.buttons and not box.buttons[0].running
    assert box.light.closed
    assert [p.state for p in box.light.patterns][:2] == ["starting", "connecting"]
    assert box.supervisor.exit_code == 0


def test_an_installed_update_waits_for_the_meeting_to_end(tmp_path: Path) -> None:
    from diemcau.core.events import UpdateInstalled

    box = standin_box(tmp_path)
    try:
        box.handle(box.link.up(), box.command("meeting.join", JOIN, jti="j1"))
        updates = box.supervisor.updates
        # An update accepted earlier, as the update part records it (its start is tested e2e).
        updates._update = ("u1", "9.9.9")  # noqa: SLF001
        box.handle(UpdateInstalled("u1", "9.9.9"))
        assert box.releases.trials == []
        assert box.link.replies()[-1].detail.endswith("restarting into it when the meeting ends")

        stops = box.handle(box.command("meeting.leave", jti="l1"))
        assert box.releases.trials == ["9.9.9"]
        assert box.supervisor.exit_code == EXIT_RESTART
        assert stops == [StopRequested("restarting into release 9.9.9")]
    finally:
        box.close()


def test_a_quiet_box_forgets_what_the_broker_acknowledged_at_its_next_health_report(
        box: StandinBox) -> None:
    """Health is QoS 0 (no PUBACK): the status goes again while acknowledged rows are kept,
    and its PUBACK prunes them, so a reconnect much later sends nothing old again."""
    from diemcau.core.events import HealthDue

    outbox = box.supervisor.a.outbox
    box.handle(box.link.up())
    box.handle(box.command("device.identify", {"duration_s": 5}, jti="i1"))
    box.handle(*(Delivered(p.mid) for p in box.link.published))
    assert outbox.kept() > 0 and outbox.pending() == []
    status = device_topic(DEV, "status")

    box.now[0] += RESEND_GRACE_S + 1
    mark = len(box.link.published)
    box.handle(HealthDue())
    again = [p for p in box.link.published[mark:] if p.topic == status]
    assert len(again) == 1 and again[0].qos == 1 and again[0].retain
    box.handle(Delivered(again[0].mid))
    assert outbox.kept() == 0

    mark = len(box.link.published)
    box.handle(HealthDue())  # nothing kept: no status again (it has not changed)
    assert [p.topic for p in box.link.published[mark:]] == [device_topic(DEV, "health")]
    box.handle(box.link.down())
    mark = len(box.link.published)
    box.handle(box.link.up())
    assert not any(b'"i1"' in p.payload for p in box.link.published[mark:])


def test_a_stop_from_a_signal_handler_arrives_while_the_loop_holds_the_queue(
        box: StandinBox) -> None:
    # A SIGTERM's handler runs on the main thread, maybe inside the loop's get() with the
    # queue's lock held (a box once ignored SIGTERM so): it must not wait for that lock.
    queue = box.supervisor._queue
    with queue.mutex:  # the same thread holds it, as the interrupted get() would
        box.supervisor.post_from_signal_handler(StopRequested("SIGTERM"))  # returns at once
    wait_until(lambda: not queue.empty(), timeout_s=5)
    assert box.supervisor.handle_queued() == [StopRequested("SIGTERM")]
