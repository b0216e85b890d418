"""Small state files: counters that only grow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diemcau.adapters.statefile import Counters


def test_counters_start_at_zero_and_grow(tmp_path: Path) -> None:
    counters = Counters(tmp_path / "counters.json")
    assert counters.get("session") == 0
    assert [counters.bump("session") for _ in range(3)] == [1, 2, 3]
    assert counters.bump("event_seq") == 1
    assert counters.get("session") == 3


def test_counters_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "counters.json"
    first = Counters(path)
    first.bump("session")
    first.bump("session")
    first.bump("event_seq")
    again = Counters(path)
    assert again.get("session") == 2
    assert again.bump("session") == 3
    assert Counters(path).get("event_seq") == 1
    assert json.loads(path.read_text()) == {"session": 3, "event_seq": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["counters.json"]


@pytest.mark.parametrize("garbage", [
    b"", b"{", b"not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"null", b"42",
    b'{"session": "seven"}',
])
def test_a_garbled_file_starts_from_zero(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "counters.json"
    path.write_bytes(garbage)
    counters = Counters(path)
    assert counters.get("session") == 0
    assert counters.bump("session") == 1
    assert Counters(path).get("session") == 1


def test_a_partly_garbled_file_keeps_the_good_numbers(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    path.write_text('{"session": 41, "event_seq": "x", "other": [1]}')
    counters = Counters(path)
    assert counters.get("session") == 41
    assert counters.get("event_seq") == 0
    assert counters.bump("session") == 42
