"""The ledger: one SQLite file, one transaction per step, and what older releases left."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.adapters.ledger import FILE_NAME, Ledger
from diemcau.adapters.outbox import Outbox
from diemcau.protocol import ReplayCache, Reply
from diemcau.shared import remove_stray_temp_files, write_atomic


def open_ledger(path: Path) -> tuple[Ledger, Outbox, ReplayCache]:
    ledger = Ledger(path)
    return ledger, Outbox(ledger.db, max_messages=100), ReplayCache(ledger.db)


def test_a_step_that_fails_leaves_neither_its_seq_nor_its_message(tmp_path: Path) -> None:
    ledger, outbox, _ = open_ledger(tmp_path / FILE_NAME)
    with ledger.transaction():
        seq = ledger.bump("event_seq")
        outbox.add("e", json.dumps({"seq": seq}).encode())
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.bump("event_seq")
        outbox.add("e", b'{"seq": 2}')
        raise RuntimeError("killed here")
    assert ledger.get("event_seq") == 1
    assert [p.payload for p in outbox.pending()] == [b'{"seq": 1}']
    with ledger.transaction():
        assert ledger.bump("event_seq") == 2  # the next event takes the number, no gap


def test_what_is_committed_is_there_for_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    ledger, outbox, replay = open_ledger(path)
    reply = Reply(id="c1", cmd="audio.volume", status="succeeded", code=200, detail="", ts=1.0)
    with ledger.transaction():
        replay.remember("c1", 100.0, reply)
        outbox.add("reply", b"r")
        ledger.put_setting("volume_percent", 77)
    # A second connection, as after kill -9: it sees the commit, not an open transaction.
    with ledger.transaction():
        outbox.add("never", b"x")
        other = sqlite3.connect(path)
        assert other.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
        other.close()
    ledger.close()
    ledger, outbox, replay = open_ledger(path)
    assert replay.first_result("c1") == reply
    assert ledger.get_setting("volume_percent") == 77
    assert len(outbox) == 2


def test_nested_steps_are_one(tmp_path: Path) -> None:
    ledger, outbox, _ = open_ledger(tmp_path / FILE_NAME)
    with pytest.raises(ValueError), ledger.transaction():
        with ledger.transaction():
            outbox.add("inner", b"1")
        raise ValueError
    assert len(outbox) == 0


def test_settings_round_trip_and_delete(tmp_path: Path) -> None:
    ledger, _, _ = open_ledger(tmp_path / FILE_NAME)
    ledger.put_setting("invitation", {"meeting_id": "m1", "title": "Họp giao ban"})
    assert ledger.get_setting("invitation") == {"meeting_id": "m1", "title": "Họp giao ban"}
    ledger.put_setting("invitation", None)
    assert ledger.get_setting("invitation") is None


def test_unfinished_commands_are_the_ones_that_promised_more(tmp_path: Path) -> None:
    _, _, replay = open_ledger(tmp_path / FILE_NAME)

    def reply(jti: str, status: str) -> Reply:
        return Reply(id=jti, cmd="meeting.join", status=status, code=202, detail="", ts=1.0)

    replay.remember("a", 10.0, reply("a", "accepted"))
    replay.remember("b", 20.0, reply("b", "succeeded"))
    replay.remember("c", 30.0, reply("c", "in_progress"))
    replay.remember("d", 40.0)  # seen, never answered (an older release's row)
    assert [(jti, exp) for jti, exp, _ in replay.unfinished()] == [
        ("a", 10.0), ("c", 30.0), ("d", 40.0)]


def test_an_older_releases_files_are_adopted_once(tmp_path: Path) -> None:
    old_outbox = Outbox(tmp_path / "outbox.sqlite", max_messages=10)
    old_outbox.add("t/1", b"one")
    old_outbox.add("t/2", b"two", retain=True)
    old_outbox.close()
    old_replay = ReplayCache(tmp_path / "replay.sqlite")
    old_replay.remember("seen", 99.0)
    old_replay.close()
    (tmp_path / "invitation.json").write_text(json.dumps({"meeting_id": "m1"}))
    (tmp_path / "counters.json").write_text(json.dumps({"session": 4, "event_seq": 41}))

    ledger, outbox, replay = open_ledger(tmp_path / FILE_NAME)
    ledger.adopt(tmp_path)
    assert [(p.topic, p.payload, p.retain) for p in outbox.pending()] == [
        ("t/1", b"one", False), ("t/2", b"two", True)]
    assert replay.first_result("seen") is not None
    assert ledger.get_setting("invitation") == {"meeting_id": "m1"}
    with ledger.transaction():
        assert ledger.bump("event_seq") == 42
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["counters.json", FILE_NAME, f"{FILE_NAME}-shm", f"{FILE_NAME}-wal"]
    ledger.adopt(tmp_path)  # nothing more to take
    assert len(outbox) == 2


def test_a_garbled_old_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "outbox.sqlite").write_bytes(b"not a database at all")
    (tmp_path / "counters.json").write_text("{garbled")
    ledger, outbox, _ = open_ledger(tmp_path / FILE_NAME)
    ledger.adopt(tmp_path)
    assert len(outbox) == 0
    assert ledger.get("event_seq") == 0


@given(st.lists(st.sampled_from(["counters.json", "identity/box.key", "invitation.json"]),
                max_size=6))
def test_only_write_atomics_leftovers_are_removed(tmp_path_factory: pytest.TempPathFactory,
                                                  names: list[str]) -> None:
    state = tmp_path_factory.mktemp("state")
    keep = [state / "counters.json", state / ".hidden", state / "ledger.sqlite-wal"]
    for path in keep:
        path.write_text("x")
    strays = []
    for name in names:
        target = state / name
        write_atomic(target, b"{}")
        # What a kill between mkstemp and rename leaves: ".<name>.<8 characters>".
        stray = target.parent / f".{target.name}.ab_3k9zq"
        stray.write_text("half")
        strays.append(stray)
    assert remove_stray_temp_files(state) == len(set(strays))
    assert not any(s.exists() for s in strays)
    assert all(p.exists() for p in keep)
