"""What the box and the centre share: a file written whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diemcau.shared import write_atomic


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
