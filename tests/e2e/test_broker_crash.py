"""The broker killed (SIGKILL) and started again in the middle of a meeting.

The test broker runs the production broker configuration's queue and
persistence lines (``durability_lines``, as ``diemcau-centre broker-config``
writes them). The real box is live at an ffmpeg SRT listener; the centre
sends a burst of commands and the broker is killed right after it has
acknowledged the last one, inside its save window (it saves on a timer);
once the broker is back, the centre sends again, same id, what is not
answered, as a roll-call does. Afterwards: every command answered, no gap in
the events' ``seq``, and no frame missing at the media server (media does
not go through the broker, and must not notice).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from diemcau.protocol import BROKER_LOSS_WINDOW_S, Event, decode, device_topic
from tests.harness.box import start_box
from tests.harness.broker import Broker
from tests.harness.observer import Observer
from tests.harness.srt_listener import SrtListener, read_recording

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
BURST = 40


def test_a_broker_crash_mid_meeting_loses_no_command_event_or_frame(
        make_box, observer: Observer, broker: Broker, tmp_path: Path) -> None:
    box = start_box(make_box, observer, tmp_path)
    with SrtListener(tmp_path / "media") as listener:
        listener.start()
        join = observer.command(DEV, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                      "profile": "360p15"})
        observer.wait_reply(DEV, join, status="succeeded", timeout=20)
        time.sleep(1.0)  # frames before the crash
        # The sessions (the box's, the centre's subscriptions) on disk, as on any broker
        # that has been up more than a save or two: a broker started under a second
        # before its crash restores no session, and what is published before the
        # centre subscribes again has no one to go to.
        broker.wait_for_save()

        what = {observer.command(DEV, "audio.volume", {"percent": n % 101}): (
            "audio.volume", {"percent": n % 101}) for n in range(BURST)}
        what[observer.command(DEV, "health.report")] = ("health.report", {})
        sent = list(what)
        broker.crash()  # right after the broker acknowledged the last command to the centre
        time.sleep(1.0)  # the box notices, and keeps streaming
        broker.start()
        # The broker saves on a timer: what it acknowledged since its last save may be
        # gone. The centre saw it go, so it sends again, same id, what is not answered
        # (as a roll-call does); the box answers a repeat from its replay cache.
        time.sleep(BROKER_LOSS_WINDOW_S)  # the observer is back, and the box has answered
        answered = {r.id for r in observer.replies(DEV)}
        again = [jti for jti in sent if jti not in answered]
        for jti in again:
            observer.command(DEV, *what[jti], jti=jti)

        deadline = time.monotonic() + 60
        missing = sent
        while missing and time.monotonic() < deadline:
            answered = {r.id for r in observer.replies(DEV)}
            missing = [jti for jti in sent if jti not in answered]
            time.sleep(0.3)
        time.sleep(2.0)  # frames after the crash
        leave = observer.command(DEV, "meeting.leave")
        observer.wait_reply(DEV, leave, status="succeeded", timeout=20)
        recording = read_recording(listener.stop())

    seqs = sorted({decode(m.payload, Event).seq for m in observer.on(device_topic(DEV, "event"))})
    gaps = [n for n in range(1, seqs[-1] + 1) if n not in seqs]
    frames = recording.stamped
    skipped = [b for a, b in zip(frames, frames[1:], strict=False) if b != a + 1]
    kinds = {decode(m.payload, Event).kind for m in observer.on(device_topic(DEV, "event"))}
    events = sorted({(e.seq, e.kind) for e in (decode(m.payload, Event)
                                               for m in observer.on(device_topic(DEV, "event")))})
    print(f"\nevents (seq, kind) at the centre: {events}")
    print(f"\nbroker killed mid-meeting: {len(sent)} commands sent, {len(again)} sent again, "
          f"{len(sent) - len(missing)} "
          f"answered; events seq 1..{seqs[-1]}, {len(gaps)} gaps; frames {frames[0]}..{frames[-1]} "
          f"received, {len(skipped)} gaps")
    assert not missing, f"{len(missing)} commands never answered"
    assert not gaps, f"events missing: {gaps}"
    assert "link_lost" in kinds  # the box saw the broker go, and said so afterwards
    assert len(frames) > 15 * 3, "too few frames to judge"
    assert not skipped, f"frames missing after {skipped[:5]}"
    assert box.running
