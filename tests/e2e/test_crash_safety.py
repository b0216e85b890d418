"""Nothing the box acknowledged is lost when it is killed (kill -9) at any moment.

The real ``diemcau run`` box on a real Mosquitto, killed with SIGKILL again
and again at random moments while signed commands and button presses
arrive, then once 0.3 s after a burst of 300 commands. Afterwards, from what
the centre saw on the broker and what is on the box's disk:

- every command the centre sent was answered (the broker sends an
  unacknowledged command again, and the box acknowledges only what it
  recorded with its reply);
- every ``accepted`` (202) has a final reply, after a restart too;
- the events' ``seq`` has no gap, and one ``seq`` never names two events;
- no temporary file is left behind, and the state files always parse;
- the volume the centre set survives the restarts.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from diemcau.adapters.ledger import FILE_NAME as LEDGER_FILE
from diemcau.protocol import Event, Reply, Status, decode, device_topic
from tests.harness.box import MOCK_RGB_PANEL, Box
from tests.harness.observer import Observer

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
KILLS = 50
BURST = 300
FINAL = ("succeeded", "failed", "rejected", "expired")
TEMP_FILE_PATTERN = ".*.????????"  # write_atomic's "." + name + "." + 8 random characters
# Nothing listens here: a join stays "joining" until a leave (or a restart) ends it.
UNREACHABLE_SRT = "srt://127.0.0.1:9?streamid=publish:m"


def is_final(reply: Reply) -> bool:
    return reply.status in FINAL or (reply.status == "duplicate" and reply.first_status in FINAL)


class Centre:
    """Sends a stream of commands from its own thread while the box lives and dies."""

    def __init__(self, observer: Observer, rng: random.Random) -> None:
        self.observer = observer
        self.rng = rng
        self.sent: list[str] = []
        self.what: dict[str, str] = {}  # id -> the command and when it was sent, for failures
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, cmd: str, args: dict) -> str:
        jti = self.observer.command(DEV, cmd, args, ttl_s=3600)
        self.sent.append(jti)
        self.what[jti] = f"{cmd} {args} at {time.time():.3f}"
        return jti

    def one(self) -> None:
        pick = self.rng.random()
        if pick < 0.35:
            self.send("audio.volume", {"percent": self.rng.randrange(0, 101)})
        elif pick < 0.6:
            self.send("meeting.invite", {"meeting_id": f"m{self.rng.randrange(5)}",
                                         "title": "Họp trực tuyến"})
        elif pick < 0.8:
            self.send("meeting.join", {"meeting_id": "m9", "publish": UNREACHABLE_SRT,
                                       "profile": "audio"})
        else:
            self.send("meeting.leave", {})

    def start(self) -> None:
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(self.rng.uniform(0.01, 0.08)):
                self.one()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def check_state_files(state: Path) -> None:
    """What a restart reads: the counters parse, the ledger is a sound database."""
    counters = state / "counters.json"
    if counters.exists():
        assert isinstance(json.loads(counters.read_text()), dict)
    db = sqlite3.connect(state / LEDGER_FILE)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def born(observer: Observer, after: float, timeout: float = 20.0) -> None:
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload,
                      timeout=timeout, after=after)


@pytest.mark.timeout(900)
def test_kill_9_at_random_moments_loses_nothing(make_box, observer: Observer,
                                                tmp_path: Path) -> None:
    rng = random.Random(11)
    box: Box = make_box(extra=MOCK_RGB_PANEL)
    centre = Centre(observer, rng)
    strays_seen = 0
    # Once, so that the broker holds the box's session (and queues its commands) from now on.
    started = time.time()
    box.start()
    born(observer, started)
    box.stop()

    # Rounds of life and sudden death, commands and presses arriving all the while.
    for _ in range(KILLS):
        started = time.time()
        box.start()
        centre.start()
        try:
            born(observer, started)
            deadline = time.monotonic() + rng.uniform(0.0, 1.2)
            while time.monotonic() < deadline:
                if rng.random() < 0.3:
                    box.press()
                time.sleep(rng.uniform(0.02, 0.15))
        finally:
            box.kill()
            centre.stop()
        check_state_files(box.state_dir)
        strays_seen += len(list(box.state_dir.glob(TEMP_FILE_PATTERN)))

    # The burst: 300 commands and a volume, the box killed 0.3 s later.
    started = time.time()
    box.start()
    born(observer, started)
    for n in range(BURST):
        centre.send("meeting.invite", {"meeting_id": f"burst{n}", "title": "Họp"})
    volume = centre.send("audio.volume", {"percent": 77})
    time.sleep(0.3)
    box.kill()
    check_state_files(box.state_dir)

    # Back for good: everything must come through now.
    started = time.time()
    box.start()
    born(observer, started)
    replies: dict[str, list[Reply]] = defaultdict(list)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replies.clear()
        for reply in observer.replies(DEV):
            replies[reply.id].append(reply)
        unanswered = [jti for jti in centre.sent if not replies[jti]]
        unfinished = [jti for jti in centre.sent
                      if any(r.status == "accepted" for r in replies[jti])
                      and not any(is_final(r) for r in replies[jti])]
        if not unanswered and not unfinished:
            break
        time.sleep(0.5)

    events: dict[int, set[bytes]] = defaultdict(set)
    for seen in observer.on(device_topic(DEV, "event")):
        event = decode(seen.payload, Event)
        events[event.seq].add(seen.payload)
    top = max(events)
    gaps = [seq for seq in range(1, top + 1) if seq not in events]
    reused = [seq for seq, payloads in events.items() if len(payloads) > 1]
    strays_left = list(box.state_dir.rglob(TEMP_FILE_PATTERN))
    time.sleep(0.5)  # the status that follows the last reply
    status = decode(observer.on(device_topic(DEV, "status"))[-1].payload, Status)

    print(f"\n{KILLS} kills at random moments and a burst of {BURST + 1} commands: "
          f"{len(centre.sent)} commands sent, {len(centre.sent) - len(unanswered)} answered, "
          f"{len(unanswered)} never answered; "
          f"{sum(1 for j in centre.sent if any(r.status == 'accepted' for r in replies[j]))} "
          f"accepted, {len(unfinished)} without a final reply; "
          f"events seq 1..{top}: {len(gaps)} gaps, {len(reused)} seq used twice; "
          f"temporary files: {strays_seen} left by kills, {len(strays_left)} after the last "
          f"start; volume after the restarts {status.volume_percent}%")
    assert not unanswered, "never answered: " + "; ".join(
        f"{jti} {centre.what[jti]}" for jti in unanswered[:10])
    assert not unfinished, f"{len(unfinished)} accepted without a final reply: {unfinished[:5]}"
    assert replies[volume][0].status in ("succeeded", "duplicate")
    assert not gaps, f"events missing: seq {gaps[:20]}"
    assert not reused, f"one seq names two different events: {reused[:20]}"
    assert not strays_left
    assert status.volume_percent == 77
    check_state_files(box.state_dir)
