"""Small state files: written atomically, counters that only grow."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from diemcau.adapters.statefile import Counters, write_atomic


def test_write_atomic_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "identity.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json"]


def test_write_atomic_makes_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "var" / "lib" / "diemcau" / "counters.json"
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_write_atomic_sets_the_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "key.pem"
    write_atomic(target, b"secret", mode=mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    write_atomic(target, b"secret 2", mode=mode)  # and again over an existing file
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_write_atomic_defaults_to_0644(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "counters.json"
    write_atomic(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counters.json"]


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
