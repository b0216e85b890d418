"""The box's presence on a real Mosquitto: birth, will, sessions, outbox."""

from __future__ import annotations

import time

import pytest

from diemcau.protocol import Event, State, decode, device_topic, encode
from tests.harness.broker import Broker
from tests.harness.observer import Observer

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATE = device_topic(DEV, "state")


def state_of(seen) -> State:  # noqa: ANN001
    return decode(seen.payload, State)


def retained(broker: Broker, topic: str, timeout: float = 5.0) -> bytes:
    """What a newcomer subscribing now gets as the retained message of ``topic``."""
    fresh = Observer(broker)
    try:
        return fresh.wait_for(lambda m: m.topic == topic and m.retain, timeout).payload
    finally:
        fresh.close()


def test_birth_meta_status_are_retained(make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    birth = state_of(observer.wait_for(lambda m: m.topic == STATE))
    assert birth.state == "ready" and birth.session >= 1
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "status"))
    meta = retained(broker, device_topic(DEV, "meta"))
    assert b'"commune":"c00001"' in meta and b'"groups":["p01","d001","c00001","all"]' in meta
    assert decode(retained(broker, STATE), State).state == "ready"
    status = retained(broker, device_topic(DEV, "status"))
    assert b'"meeting_state":"idle"' in status


def test_kill_9_leaves_lost_with_the_session(make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    birth = state_of(observer.wait_for(lambda m: m.topic == STATE))
    box.kill()
    will = state_of(observer.wait_for(lambda m: m.topic == STATE and b"lost" in m.payload))
    assert will.session == birth.session
    assert decode(retained(broker, STATE), State) == will


def test_clean_stop_says_disconnected_not_lost(make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    observer.wait_for(lambda m: m.topic == STATE)
    assert box.stop() == 0
    final = state_of(observer.wait_for(lambda m: m.topic == STATE and b"disconnected" in m.payload))
    time.sleep(2.0)  # longer than the will delay: a will would have come by now
    assert decode(retained(broker, STATE), State) == final


def test_session_grows_across_restarts(make_box, observer) -> None:
    box = make_box()
    sessions = []
    for _ in range(3):
        started = time.time()
        box.start()
        seen = observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload,
                                 after=started)
        sessions.append(state_of(seen).session)
        box.stop()
    assert sessions == sorted(sessions) and len(set(sessions)) == 3


def test_a_late_will_does_not_override_a_newer_birth(make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    birth = state_of(observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload))
    # A will from an older connection lands after the birth (as after a
    # network flap the broker noticed late): the box must put itself back.
    stale = State(state="lost", session=birth.session - 1, ts=birth.ts - 5)
    sent = time.time()
    observer.publish(STATE, encode(stale), retain=True)
    again = state_of(observer.wait_for(
        lambda m: m.topic == STATE and b"ready" in m.payload, after=sent))
    assert again.session == birth.session
    assert decode(retained(broker, STATE), State).state == "ready"


def test_quick_restart_after_crash_never_shows_lost(make_box, observer, broker) -> None:
    """Within the will delay, a reconnect on the same session cancels the will."""
    box = make_box(will_delay_s=3)
    box.start()
    observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload)
    box.kill()
    restarted = time.time()
    box.start()
    second = state_of(observer.wait_for(
        lambda m: m.topic == STATE and b"ready" in m.payload, after=restarted))
    time.sleep(4.0)
    states = [state_of(m) for m in observer.on(STATE) if m.at >= restarted]
    assert all(s.state == "ready" for s in states), states
    assert decode(retained(broker, STATE), State).session == second.session


def test_commands_sent_while_the_box_was_away_run_once(make_box, observer) -> None:
    box = make_box()
    box.start()
    observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload)
    box.stop()  # the broker keeps the box's session and queues for it
    ids = [observer.command(DEV, "audio.volume", {"percent": p}) for p in (10, 20, 30)]
    box.start()
    for jti in ids:
        assert observer.wait_reply(DEV, jti, timeout=15).status == "succeeded"
    time.sleep(1.0)
    for jti in ids:
        assert [r.status for r in observer.replies(DEV, jti)] == ["succeeded"]


def test_broker_restart_reconnects_and_delivers_what_was_made_offline(
        make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    first = state_of(observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload))
    down_at = time.time()
    broker.stop()
    time.sleep(1.5)  # the box notices, and records a link_lost event while offline
    broker.start()
    # (The observer also gets the old retained birth again when it resubscribes.)
    back = state_of(observer.wait_for(
        lambda m: m.topic == STATE and m.at > down_at and state_of(m).state == "ready"
        and state_of(m).session > first.session, timeout=20))
    assert back.session > first.session
    event_topic = device_topic(DEV, "event")
    seen = observer.wait_for(lambda m: m.topic == event_topic and b"link_lost" in m.payload,
                             timeout=10)
    lost = decode(seen.payload, Event)
    assert lost.ts < seen.at  # made before it could be sent
    # And the box takes commands again.
    jti = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, jti).status == "succeeded"


def test_outbox_survives_a_restart_of_the_box_while_offline(make_box, observer, broker) -> None:
    box = make_box()
    box.start()
    observer.wait_for(lambda m: m.topic == STATE and b"ready" in m.payload)
    down_at = time.time()
    broker.stop()
    time.sleep(1.5)  # link_lost goes into the outbox on disk
    assert box.stop() == 0  # offline: nothing could be sent
    broker.start()
    box.start()
    event_topic = device_topic(DEV, "event")
    seen = observer.wait_for(lambda m: m.topic == event_topic and b"link_lost" in m.payload
                             and m.at > down_at, timeout=20)
    assert decode(seen.payload, Event).ts < seen.at


def test_tls_listener_with_the_configured_ca(tmp_path, centre) -> None:
    from tests.harness.box import Box

    with Broker(tmp_path / "tls-broker", tls=True) as tls_broker:
        obs = Observer(tls_broker, centre)
        box = Box(tmp_path / "box", tls_broker, centre, device_id=DEV)
        try:
            box.start()
            birth = state_of(obs.wait_for(lambda m: m.topic == STATE))
            assert birth.state == "ready"
            jti = obs.command(DEV, "health.report")
            assert obs.wait_reply(DEV, jti).code == 200
        finally:
            box.stop()
            obs.close()
