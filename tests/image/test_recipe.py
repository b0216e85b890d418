"""The image recipes, checked without building: what `make image` and the
Raspberry Pi OS stage install must agree with the units and with each other.

(The build itself is `make image`; booting it is `make image-test`.)
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
IMAGE = REPO / "image"
ROOTFS = IMAGE / "rootfs"
STAGE = IMAGE / "pi-gen" / "stage-diemcau"
SCRIPTS = [IMAGE / "build.sh", IMAGE / "customize.sh", IMAGE / "assemble.sh",
           IMAGE / "install-release.sh", ROOTFS / "usr/libexec/diemcau/firstboot",
           STAGE / "prerun.sh", STAGE / "00-diemcau/01-run.sh"]


def ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(path.read_text())
    return parser


def build_packages() -> set[str]:
    text = (IMAGE / "build.sh").read_text()
    block = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M)
    assert block, "build.sh has no PACKAGES=( ... ) list"
    return set(block.group(1).split())


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(IMAGE)))
def test_scripts_are_executable_and_parse(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
    subprocess.run([shell, "-n", str(script)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    # pi-gen's scripts use functions (copy_previous, on_chroot) it defines itself.
    done = subprocess.run(["shellcheck", "-e", "SC2154,SC1091,SC2034", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_the_image_has_what_a_pi_boots_and_the_box_runs() -> None:
    packages = build_packages()
    # Debian's own Raspberry Pi images: raspi-firmware's kernel hook fills /boot/firmware.
    assert {"raspi-firmware", "linux-image-arm64", "firmware-brcm80211"} <= packages
    assert {"python3-venv", "python3-av", "python3-numpy", "python3-systemd"} <= packages
    assert {"systemd-timesyncd", "cloud-guest-utils"} <= packages


def test_partitions_are_found_by_the_labels_the_build_gives_them() -> None:
    fstab = [line.split() for line in (ROOTFS / "etc/fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    mounts = {fields[1]: fields for fields in fstab}
    assemble = (IMAGE / "assemble.sh").read_text()
    assert mounts["/"][0] == "LABEL=RASPIROOT" and "-L RASPIROOT" in assemble
    assert mounts["/boot/firmware"][0] == "LABEL=RASPIFIRM" and "-n RASPIFIRM" in assemble
    assert "ROOTPART=LABEL=RASPIROOT" in (IMAGE / "customize.sh").read_text()
    # Fewer writes to the SD card.
    assert "noatime" in mounts["/"][3] and "noatime" in mounts["/boot/firmware"][3]
    assert mounts["/tmp"][2] == "tmpfs"


def test_the_journal_stays_in_memory_and_small() -> None:
    journal = ini(ROOTFS / "etc/systemd/journald.conf.d/diemcau.conf")["Journal"]
    assert journal["Storage"] == "volatile"
    assert re.fullmatch(r"\d+M", journal["RuntimeMaxUse"])


def test_the_service_user_is_in_video_audio_gpio() -> None:
    lines = [line.split() for line in (ROOTFS / "usr/lib/sysusers.d/diemcau.conf").read_text()
             .splitlines() if line.strip() and not line.startswith("#")]
    assert any(ln[:2] == ["u", "diemcau"] and ln[-1] == "/usr/sbin/nologin" for ln in lines)
    groups = {ln[2] for ln in lines if ln[:2] == ["m", "diemcau"]}
    assert groups == {"video", "audio", "gpio"}
    assert ["g", "gpio", "-"] in lines  # Debian has no gpio group of its own
    unit = ini(IMAGE / "systemd/diemcau.service")["Service"]
    assert unit["User"] == "diemcau" and set(unit["SupplementaryGroups"].split()) == groups


def test_the_box_waits_for_the_time_but_not_for_ever() -> None:
    unit = ini(IMAGE / "systemd/diemcau.service")["Unit"]
    assert "time-sync.target" in unit["After"] and "time-sync.target" in unit["Wants"]
    wait = ini(ROOTFS / "etc/systemd/system/systemd-time-wait-sync.service.d/diemcau.conf")
    assert wait["Service"]["TimeoutStartSec"].endswith("s")
    customize = (IMAGE / "customize.sh").read_text()
    # Enabled: without it, time-sync.target does not wait for NTP at all.
    assert re.search(r"systemctl --root=\S+ enable[^\n]*(\\\n[^\n]*)*systemd-time-wait-sync", customize)
    assert 'touch -d "@$SOURCE_DATE_EPOCH" "$root/var/lib/systemd/timesync/clock"' in customize


def test_ssh_is_off_unless_the_operator_gives_a_key() -> None:
    customize = (IMAGE / "customize.sh").read_text()
    assert 'systemctl --root="$root" disable ssh.service' in customize
    assert "ssh_host_" in customize  # no host keys shared by every card
    firstboot = (ROOTFS / "usr/libexec/diemcau/firstboot").read_text()
    assert "authorized_keys" in firstboot and "systemctl enable ssh.service" in firstboot


def test_the_pi_gen_stage_follows_pi_gens_layout() -> None:
    assert "copy_previous" in (STAGE / "prerun.sh").read_text()
    assert (STAGE / "EXPORT_IMAGE").is_file()
    run = (STAGE / "00-diemcau/01-run.sh").read_text()
    assert "on_chroot" in run and "${ROOTFS_DIR}" in run
    # Raspberry Pi OS has picamera2; the rest as in the Debian image.
    packages = set((STAGE / "00-diemcau/00-packages").read_text().split())
    assert "python3-picamera2" in packages
    assert {"python3-venv", "python3-av", "python3-numpy", "python3-systemd"} <= packages
    assert {"python3-venv", "python3-av", "python3-numpy", "python3-systemd"} <= build_packages()


def test_the_pi_gen_stage_installs_files_that_exist() -> None:
    run = (STAGE / "00-diemcau/01-run.sh").read_text()
    named = re.findall(r'"\$\{IMAGE\}/([^"]+)"', run)
    assert "install-release.sh" in named and "systemd/diemcau.service" in named
    for relative in named:
        assert (IMAGE / relative).is_file(), relative
    # Same first release and same units as `make image`.
    assert "install-release.sh" in (IMAGE / "customize.sh").read_text()
    assert re.search(r"systemctl enable diemcau\.service diemcau-firstboot\.service", run)
    # The stage finds the repository from where pi-gen runs it.
    assert (STAGE / "../../.." / "firmware/diemcau/__init__.py").resolve().is_file()


def test_the_loop_stalling_hook_never_gets_into_an_image() -> None:
    # tests/image/stall/ is put into the boot test's own copy of the image only.
    for path in [*IMAGE.rglob("*"), REPO / "Makefile"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "sitecustomize" not in text and "diemcau-test" not in text, path
    assert "PYTHONPATH" not in (IMAGE / "systemd/diemcau.service").read_text()
