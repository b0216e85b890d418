"""A broker killed inside its save window: what it acknowledged but had not saved.

The production broker lines save every ``BROKER_SAVE_S`` (a timer), so a
SIGKILL right after a PUBACK loses that message unless its sender sends it
again. Each test waits for one of Mosquitto's saves, makes the messages and
kills the broker well before the next save can begin (saves come at least a
second apart), then starts it again from its persistence file.

- The box: its replies and events, PUBACKed to it and queued for a centre that
  is offline, are lost with the broker; the box sends them again when its link
  comes back, and the centre sees every reply and a ``seq`` without a gap.
- The centre: a group command queued for a box that is offline is lost with
  the broker; the roll-call sees its connection drop and come back, and sends
  the command again, same id, to the box that has not answered.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from diemcau.config import Mqtt, Tls
from diemcau.protocol import Event, Reply, decode, device_topic
from diemcau_centre.mqtt import Session
from diemcau_centre.send import parse_target, send_to_group
from tests.harness.box import start_box
from tests.harness.broker import Broker
from tests.harness.observer import Observer

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
BURST = 8
# Saves come at least a second apart: the crash must come before the next one begins.
CRASH_WITHIN_S = 0.8


def test_replies_and_events_the_broker_lost_unsaved_come_again(
        make_box, observer: Observer, broker: Broker, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    broker.wait_for_save()  # the observer's session and subscription are on disk
    observer.go_offline()  # the centre's subscriber: what the box says now is queued for it
    sender = Observer(broker, observer.centre)  # sends, and sees the replies as they pass
    try:
        for _ in range(5):
            broker.wait_for_save()
            saved_at = time.monotonic()
            sent = [sender.command(DEV, "device.identify", {"duration_s": 1})
                    if n % 2 else sender.command(DEV, "audio.volume", {"percent": 10 + n})
                    for n in range(BURST)]
            for jti in sent:
                sender.wait_reply(DEV, jti, timeout=5)
            time.sleep(0.1)  # the box takes the broker's PUBACKs in
            if time.monotonic() - saved_at < CRASH_WITHIN_S:
                break
        else:
            pytest.fail("the box never answered within the broker's save window")
        broker.crash()  # before the next save: the queued replies and events are not on disk
        crashed_after = time.monotonic() - saved_at
    finally:
        sender.close()
    broker.start()
    observer.come_back()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answered = {r.id for r in observer.replies(DEV)}
        if set(sent) <= answered:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # anything else the box sends again
    answered = {r.id for r in observer.replies(DEV)}
    events = [decode(m.payload, Event) for m in observer.on(device_topic(DEV, "event"))]
    seqs = sorted({e.seq for e in events})
    gaps = [n for n in range(1, seqs[-1] + 1) if n not in seqs]
    kinds = [e.kind for e in sorted({e.seq: e for e in events}.values(), key=lambda e: e.seq)]
    print(f"\nbroker killed {crashed_after:.2f} s after a save: "
          f"{len(set(sent) & answered)} of {len(sent)} replies seen by the centre; events "
          f"seq 1..{seqs[-1]}, {len(gaps)} gaps, {len(events) - len(seqs)} repeats dropped")
    assert set(sent) <= answered, f"replies lost: {sorted(set(sent) - answered)}"
    assert not gaps, f"events lost: {gaps}"
    assert kinds.count("identify") >= BURST // 2
    assert "link_lost" in kinds
    assert box.running


def test_a_group_command_the_broker_lost_unsaved_is_sent_again_by_the_roll_call(
        make_box, observer: Observer, broker: Broker, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    box.stop()  # offline, its session kept: the broker queues the group's command for it
    broker.wait_for_save()  # the box's session, without the command, is on disk

    cfg = Mqtt(host=broker.host, port=broker.port, tls=Tls(enabled=False), keepalive_s=5,
               reconnect_min_s=0.5, reconnect_max_s=1.0)
    err, out = io.StringIO(), io.StringIO()
    result: list[int] = []
    with Session(cfg, "centre-rollcall") as session:
        session.open()
        broker.wait_for_save()
        saved_at = time.monotonic()
        assert observer.centre is not None
        run = threading.Thread(target=lambda: result.append(send_to_group(
            session, observer.centre.private, observer.centre.kid, parse_target("group:p01"),
            "audio.volume", {"percent": 42}, expected={DEV: "p01"}, timeout_s=30,
            out=out, err=err)))
        run.start()
        crashed_after = broker.crash_once(  # once the broker has acknowledged it
            lambda: "sent audio.volume" in err.getvalue(), saved_at, CRASH_WITHIN_S)
        box.start()
        run.join(40)
    assert not run.is_alive()
    replies = [r for r in observer.replies(DEV) if r.status != "accepted"]
    print(f"\nbroker killed {crashed_after:.2f} s after a save, right after the centre's "
          f"PUBACK; the box answered: {[(r.status, r.code) for r in replies]}\n{err.getvalue()}")
    assert "sent audio.volume again, same id" in err.getvalue()
    assert result == [0], out.getvalue() + err.getvalue()
    assert any(r.status == "succeeded" for r in replies)
    assert all(isinstance(r, Reply) for r in replies)
