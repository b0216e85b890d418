"""The broker killed inside its save window: the box re-sends what it may have lost.

The test broker runs the production lines (``durability_lines``): Mosquitto
saves its database on a timer (``BROKER_SAVE_S``), so a SIGKILL loses what
it acknowledged since its last save. The centre's persistent session is
offline, so the box's events and replies wait for it in the broker's memory
only. The broker is killed right after it acknowledged the box's last
message (an online watcher has them all), well inside its window; started
again from its database, it has lost them. The box saw its link drop and,
once back, sends again what the broker acknowledged within ``RESEND_GRACE_S``:
the centre gets every event (``seq`` without a gap) and every reply.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from diemcau.protocol import Event, Reply, decode, device_topic
from tests.harness.box import CentreKey, start_box
from tests.harness.broker import Broker
from tests.harness.observer import Observer

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
BURST = 20
CENTRE_ID = "centre-offline"


def answered(observer: Observer, sent: list[str]) -> set[str]:
    return {r.id for r in observer.replies(DEV) if r.status == "succeeded"} & set(sent)


def test_a_broker_crash_inside_its_save_window_loses_no_event_or_reply(
        make_box, observer: Observer, broker: Broker, centre: CentreKey,
        tmp_path: Path) -> None:
    # The centre subscribes once, then goes offline: its session queues what boxes say.
    Observer(broker, centre, client_id=CENTRE_ID).close()
    box = start_box(make_box, observer, tmp_path)
    broker.wait_for_save()  # the centre's session, and what came before, are on disk

    broker.wait_for_save()  # just after a save: the whole burst falls inside the next window
    started = time.monotonic()
    sent = [observer.command(DEV, "device.identify", {"duration_s": 1}) for _ in range(BURST)]
    deadline = time.monotonic() + 10
    while answered(observer, sent) != set(sent) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answered(observer, sent) == set(sent), "the box did not answer the burst"
    inside_s = time.monotonic() - started
    saves = broker.saves()
    broker.crash()  # the broker acknowledged every reply and event the watcher has
    broker.start()

    later = Observer(broker, centre, client_id=CENTRE_ID)  # the centre, back
    try:
        deadline = time.monotonic() + 20
        while answered(later, sent) != set(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # and whatever else the box sends again
        replies = {r.id for r in later.replies(DEV)}
        events = [decode(m.payload, Event) for m in later.on(device_topic(DEV, "event"))]
        seqs = sorted({e.seq for e in events})
        box_replies = {decode(m.payload, Reply).id for m in observer.on(device_topic(DEV, "reply"))}
    finally:
        later.close()
    gaps = [n for n in range(1, seqs[-1] + 1) if n not in seqs] if seqs else ["none"]
    print(f"\nburst of {BURST} answered in {inside_s:.2f} s, broker killed with {saves} saves "
          f"logged; the centre got {len(replies & set(sent))}/{BURST} replies, events seq "
          f"1..{seqs[-1] if seqs else 0} with {len(gaps)} gaps, {len(events) - len(seqs)} repeats")
    assert inside_s < 1.0, "the burst took longer than the save window: the test proves nothing"
    assert replies >= set(sent), f"replies lost: {sorted(set(sent) - replies)}"
    assert not gaps, f"events lost: {gaps}"
    assert {"identify", "link_lost"} <= {e.kind for e in events}
    assert box_replies >= set(sent)
    assert box.running
