"""The systemd units verify clean: any message from systemd-analyze is a failure.

(systemd-analyze exits 0 on unknown keys and only warns, so stderr is what counts.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMAGE = Path(__file__).parents[2] / "image"
UNITS = sorted((IMAGE / "systemd").glob("*.service"))
# Where the image installs each command the units run -> this checkout's copy.
INSTALLED = {
    "/opt/diemcau/current/bin/diemcau": str(Path(sys.executable).with_name("diemcau")),
    "/opt/diemcau/committed/bin/diemcau": str(Path(sys.executable).with_name("diemcau")),
    "/usr/libexec/diemcau/firstboot": str(IMAGE / "rootfs" / "usr" / "libexec" / "diemcau" / "firstboot"),
}


def verify(unit_text: str, tmp_path: Path, name: str) -> str:
    # The unit names commands where the image installs them; verify checks
    # that they exist, so point them at this checkout's copies for the check.
    for installed, here in INSTALLED.items():
        unit_text = unit_text.replace(installed, here)
    unit = tmp_path / name
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
    unit = IMAGE / "systemd" / "diemcau.service"
    text = unit.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    assert "Unknown key" in verify(text, tmp_path, unit.name)


def test_the_service_is_watched_by_its_loop() -> None:
    text = (Path(__file__).parents[2] / "image" / "systemd" / "diemcau.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
