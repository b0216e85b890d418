"""The systemd units verify clean: any message from systemd-analyze is a failure.

(systemd-analyze exits 0 on unknown keys and only warns, so stderr is what counts.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).parents[2] / "image" / "systemd").glob("*.service"))
INSTALLED_COMMANDS = ("/opt/diemcau/current/bin/diemcau", "/opt/diemcau/committed/bin/diemcau")


def verify(unit_text: str, tmp_path: Path, name: str) -> str:
    # The unit names the command where the image installs it; verify checks
    # that it exists, so point it at this checkout's command for the check.
    here = str(Path(sys.executable).with_name("diemcau"))
    unit = tmp_path / name
    for command in INSTALLED_COMMANDS:
        unit_text = unit_text.replace(command, here)
    unit.write_text(unit_text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    return (proc.stderr + proc.stdout).strip()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies_without_a_word(unit: Path, tmp_path: Path) -> None:
    assert verify(unit.read_text(), tmp_path, unit.name) == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_the_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    text = UNITS[0].read_text().replace("WatchdogSec=", "WatchdogSecs=")
    assert "Unknown key" in verify(text, tmp_path, UNITS[0].name)


def test_the_service_is_watched_by_its_loop() -> None:
    text = (Path(__file__).parents[2] / "image" / "systemd" / "diemcau.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
