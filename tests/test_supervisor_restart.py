"""What a restart owes the centre: the final reply a 202 promised, the room as it was set.

The box is composed as ``diemcau run`` composes it (``diemcau.app.build``) on
a state directory that a killed box left behind; its loop runs against a
broker that is not there (port 1) and is stopped at once, so what it wrote
is read back from the ledger.
"""

from __future__ import annotations

import threading
from pathlib import Path

from diemcau.adapters.ledger import FILE_NAME, Ledger
from diemcau.adapters.outbox import Outbox
from diemcau.app import build
from diemcau.config import parse_config
from diemcau.core.events import StopRequested
from diemcau.protocol import ReplayCache, Reply, decode
from tests.harness.box import CentreKey, offline_config


def left_by_a_killed_box(state: Path) -> None:
    ledger = Ledger(state / FILE_NAME)
    replay = ReplayCache(ledger.db)
    Outbox(ledger.db, max_messages=100)

    def accepted(jti: str, cmd: str, detail: str) -> Reply:
        return Reply(id=jti, cmd=cmd, status="accepted", code=202, detail=detail, ts=1.0)

    replay.remember("join-1", 4e9, accepted("join-1", "meeting.join", "joining m1"))
    replay.remember("leave-1", 4e9, accepted("leave-1", "meeting.leave", "leaving m0"))
    replay.remember("update-1", 4e9, accepted("update-1", "firmware.update", "updating"))
    replay.remember("done-1", 4e9, Reply(id="done-1", cmd="audio.volume", status="succeeded",
                                         code=200, detail="volume 55%", ts=1.0))
    replay.remember("seen-1", 4e9)  # recorded by an older release, never answered
    ledger.put_setting("volume_percent", 55)
    ledger.close()


def run_once(state: Path) -> int:
    supervisor = build(parse_config(offline_config(state, CentreKey())))
    volume = supervisor.room.volume_percent
    loop = threading.Thread(target=supervisor.run)
    loop.start()
    supervisor.post(StopRequested("test"))
    loop.join(10)
    assert not loop.is_alive()
    return volume


def replies_waiting(state: Path) -> dict[str, Reply]:
    ledger = Ledger(state / FILE_NAME)
    try:
        outbox = Outbox(ledger.db, max_messages=100)
        return {r.id: r for r in (decode(p.payload, Reply) for p in outbox.pending()
                                  if p.topic.endswith("/reply"))}
    finally:
        ledger.close()


def test_a_restart_gives_the_final_reply_that_each_202_promised(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    left_by_a_killed_box(state)
    assert run_once(state) == 55  # the volume the centre set, not the configured default
    finals = replies_waiting(state)
    assert finals["join-1"].status == "failed" and finals["join-1"].code == 500
    assert "restarted" in finals["join-1"].detail and "joining m1" in finals["join-1"].detail
    assert finals["leave-1"].status == "succeeded" and finals["leave-1"].code == 200
    assert finals["seen-1"].status == "failed"
    # Its own record answers for an update; a finished command needs nothing more.
    assert "update-1" not in finals and "done-1" not in finals

    # Answered once: the next restart owes nothing, and a redelivery is a duplicate.
    ledger = Ledger(state / FILE_NAME)
    replay = ReplayCache(ledger.db)
    assert replay.first_result("join-1").status == "failed"  # type: ignore[union-attr]
    assert [jti for jti, _, _ in replay.unfinished()] == ["update-1"]
    ledger.db.execute("DELETE FROM outbox")  # as if the broker had taken them
    ledger.close()
    run_once(state)
    assert replies_waiting(state) == {}
