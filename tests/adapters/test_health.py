"""HealthProbe on this machine, and on a fake /sys and /proc tree shaped like a Pi's."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from diemcau.adapters import health as health_mod
from diemcau.adapters.health import (
    HealthProbe,
    NetInterface,
    Reading,
    health_message,
    observation_from,
    parse_wireless,
)
from diemcau.protocol.messages import Health, StreamFigures, decode, encode

THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
WIRELESS = """\
Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE
 face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22
 wlan0: 0000   58.  -52.  -256        0      0      0      3      0        0
"""


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def probe_on(root: Path, clock_check: str = "none", **kw: object) -> HealthProbe:
    kw.setdefault("timedatectl", None)
    return HealthProbe(str(root / "state"), clock_check, str(root), **kw)  # type: ignore[arg-type]


def health_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "diemcau.health"]


# ---------------------------------------------------------------- this machine


def test_figures_on_this_machine_are_plausible(tmp_path: Path) -> None:
    probe = HealthProbe(str(tmp_path), "none")
    psutil.cpu_times()  # something between the two samples; no timing asserted
    reading = probe.measure()

    assert reading.boot_uptime_s is not None and reading.boot_uptime_s > 0
    assert reading.uptime_s is not None and 0 <= reading.uptime_s <= reading.boot_uptime_s
    assert reading.cpu_percent is not None and 0.0 <= reading.cpu_percent <= 100.0
    assert reading.load_1m is not None and reading.load_1m >= 0
    assert reading.memory_used_percent is not None and 0 < reading.memory_used_percent < 100
    assert reading.memory_available_mb is not None and reading.memory_available_mb > 0
    assert reading.process_rss_mb is not None and 1 < reading.process_rss_mb < 4096
    assert reading.disk_free_mb is not None and reading.disk_free_mb > 0
    assert reading.disk_used_percent is not None and 0 <= reading.disk_used_percent <= 100
    assert reading.clock_synced is True  # clock_check "none"
    assert all(isinstance(i, NetInterface) for i in reading.interfaces)
    assert "lo" not in [i.name for i in reading.interfaces]
    for interface in reading.interfaces:
        for address in interface.addresses:
            assert "/" in address and "%" not in address
    for value in (reading.wifi_signal_dbm, reading.cpu_temperature_c):
        assert value is None or isinstance(value, float)
    for flag in (reading.undervoltage, reading.throttled):
        assert flag is None or isinstance(flag, bool)


def test_a_reading_serialises_as_a_health_message(tmp_path: Path) -> None:
    reading = HealthProbe(str(tmp_path), "none").measure()
    stream = StreamFigures(state="live", profile="720p30", frames_sent=900, bitrate_kbps=2500.0,
                           audio_level_dbfs=-23.5)
    msg = health_message(reading, seq=42, stream=stream, alerts=["disk_low"])

    payload = encode(msg)
    back = decode(payload, Health)
    assert back == msg
    assert back.seq == 42 and back.alerts == ["disk_low"] and back.stream.frames_sent == 900
    assert back.ts == reading.ts
    as_json = msgspec.json.decode(payload)
    assert {i["name"] for i in as_json["interfaces"]} == {i.name for i in reading.interfaces}
    assert isinstance(as_json["uptime_s"], float) and isinstance(as_json["cpu_percent"], float)


def test_a_missing_state_dir_measures_the_filesystem_it_will_live_on(tmp_path: Path) -> None:
    reading = HealthProbe(str(tmp_path / "not" / "yet"), "none").measure()
    assert reading.disk_free_mb is not None and reading.disk_free_mb > 0


def test_cpu_percent_works_from_another_thread(tmp_path: Path) -> None:
    # The supervisor builds the probe; the health timer measures.
    probe = HealthProbe(str(tmp_path), "none")
    readings: list[Reading] = []
    worker = threading.Thread(target=lambda: readings.append(probe.measure()))
    worker.start()
    worker.join()
    assert readings[0].cpu_percent is not None and 0.0 <= readings[0].cpu_percent <= 100.0


def test_a_failing_psutil_call_gives_none_and_logs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    probe = HealthProbe(str(tmp_path), "none")

    def broken() -> None:
        raise OSError("no /proc/meminfo")

    monkeypatch.setattr(health_mod.psutil, "virtual_memory", broken)
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        first, second = probe.measure(), probe.measure()
    assert first.memory_used_percent is None and second.memory_available_mb is None
    assert first.disk_free_mb is not None  # the other probes carry on
    assert len(health_logs(caplog)) == 1
    assert "memory" in health_logs(caplog)[0].getMessage()
    # Sent as -1 on the wire: Health's core figures are not optional.
    msg = health_message(first, seq=1, stream=StreamFigures())
    assert msg.memory_used_percent == -1.0 and msg.memory_available_mb == -1.0

    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        assert probe.measure().memory_used_percent is not None
    assert "works again" in health_logs(caplog)[-1].getMessage()


# ---------------------------------------------------------------- Pi firmware flags


@pytest.mark.parametrize(
    ("text", "undervoltage", "throttled"),
    [
        ("0\n", False, False),
        ("50005\n", True, True),  # under-voltage and throttled now (and since boot)
        ("50000\n", False, False),  # both happened since boot, neither now
        ("1\n", True, False),
        ("2\n", False, True),  # ARM frequency capped
        ("4\n", False, True),  # throttled
        ("80008\n", False, True),  # soft temperature limit
    ],
)
def test_get_throttled_bits(fake_root: Path, text: str, undervoltage: bool,
                            throttled: bool) -> None:
    write(fake_root, THROTTLED, text)
    reading = probe_on(fake_root).measure()
    assert reading.throttled_flags == int(text, 16)
    assert (reading.undervoltage, reading.throttled) == (undervoltage, throttled)


def test_get_throttled_is_found_through_the_firmware_driver(fake_root: Path) -> None:
    # Boards whose firmware device is not at soc:firmware (other device trees).
    write(fake_root, "sys/bus/platform/drivers/raspberrypi-firmware/"
          "soc@107c000000:firmware/get_throttled", "5\n")
    reading = probe_on(fake_root).measure()
    assert (reading.undervoltage, reading.throttled) == (True, True)


def test_without_get_throttled_the_hwmon_alarm_tells_undervoltage(fake_root: Path) -> None:
    write(fake_root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
    write(fake_root, "sys/class/hwmon/hwmon3/name", "rpi_volt\n")
    write(fake_root, "sys/class/hwmon/hwmon3/in0_lcrit_alarm", "1\n")
    reading = probe_on(fake_root).measure()
    assert reading.undervoltage is True
    assert reading.throttled is None and reading.throttled_flags is None


def test_a_machine_without_pi_firmware_reports_none_quietly(
        fake_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        reading = probe_on(fake_root).measure()
    assert reading.undervoltage is None and reading.throttled is None
    assert reading.cpu_temperature_c is None and reading.wifi_signal_dbm is None
    assert health_logs(caplog) == []


def test_an_unreadable_flag_file_logs_once_then_recovers(
        fake_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(fake_root, THROTTLED, "garbage\n")
    probe = probe_on(fake_root)
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        assert probe.measure().throttled is None
        assert probe.measure().throttled is None
        assert len(health_logs(caplog)) == 1
        path.write_text("4\n")
        assert probe.measure().throttled is True
    assert [r.levelname for r in health_logs(caplog)] == ["WARNING", "INFO"]


# ---------------------------------------------------------------- temperature, Wi-Fi


def test_cpu_temperature_prefers_the_cpu_zone(fake_root: Path) -> None:
    write(fake_root, "sys/class/thermal/thermal_zone0/type", "acpitz\n")
    write(fake_root, "sys/class/thermal/thermal_zone0/temp", "27800\n")
    write(fake_root, "sys/class/thermal/thermal_zone1/type", "cpu-thermal\n")
    write(fake_root, "sys/class/thermal/thermal_zone1/temp", "48312\n")
    assert probe_on(fake_root).measure().cpu_temperature_c == pytest.approx(48.312)


def test_cpu_temperature_skips_a_zone_that_cannot_be_read(fake_root: Path) -> None:
    write(fake_root, "sys/class/thermal/thermal_zone2/type", "cpu-thermal\n")
    (fake_root / "sys/class/thermal/thermal_zone2/temp").mkdir()  # reading it fails
    write(fake_root, "sys/class/thermal/thermal_zone10/type", "gpu-thermal\n")
    write(fake_root, "sys/class/thermal/thermal_zone10/temp", "51000\n")
    assert probe_on(fake_root).measure().cpu_temperature_c == 51.0


def test_wifi_signal_from_proc_net_wireless(fake_root: Path) -> None:
    write(fake_root, "proc/net/wireless", WIRELESS)
    reading = probe_on(fake_root).measure()
    assert reading.wifi_signal_dbm == -52.0
    assert health_message(reading, seq=1, stream=StreamFigures()).wifi_signal_dbm == -52.0


def test_parse_wireless_variants() -> None:
    header = "".join(WIRELESS.splitlines(keepends=True)[:2])
    assert parse_wireless(header) is None  # Wi-Fi present, no interface listed
    assert parse_wireless(header + " wlan0: 0000   0.  0.  0  0 0 0 0 0  0\n") is None
    assert parse_wireless(header + " wlan0: 0000   58.  204.  0  0 0 0 0 0  0\n") == -52.0


# ---------------------------------------------------------------- clock


def test_clock_synced_from_timesyncd_flag_file(fake_root: Path) -> None:
    probe = probe_on(fake_root, "timesyncd")
    assert probe.measure().clock_synced is False
    write(fake_root, "run/systemd/timesync/synchronized", "")
    assert probe.measure().clock_synced is True


def test_clock_check_none_is_always_synced(fake_root: Path) -> None:
    assert probe_on(fake_root, "none").measure().clock_synced is True


def test_a_clock_before_the_build_time_is_never_synced(fake_root: Path) -> None:
    # timesyncd's clock file holds the image's build time (or the last sync):
    # a wall clock earlier than that is wrong, whatever the flag file says.
    write(fake_root, "run/systemd/timesync/synchronized", "")
    clock = write(fake_root, "var/lib/systemd/timesync/clock", "")
    probe = probe_on(fake_root, "timesyncd")
    future = time.time() + 86400
    os.utime(clock, (future, future))
    assert probe.measure().clock_synced is False
    past = time.time() - 86400
    os.utime(clock, (past, past))
    assert probe.measure().clock_synced is True


def fake_timedatectl(tmp_path: Path, script: str) -> str:
    path = tmp_path / "timedatectl"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(("script", "synced"), [("echo yes\n", True), ("echo no\n", False)])
def test_timedatectl_answers_when_the_flag_file_is_absent(
        fake_root: Path, tmp_path: Path, script: str, synced: bool) -> None:
    probe = probe_on(fake_root, "timesyncd", timedatectl=fake_timedatectl(tmp_path, script))
    assert probe.measure().clock_synced is synced


def test_a_failing_timedatectl_counts_as_unsynced_and_logs_once(
        fake_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    exe = fake_timedatectl(tmp_path, "echo 'Failed to connect to bus' >&2\nexit 1\n")
    probe = probe_on(fake_root, "timesyncd", timedatectl=exe)
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        assert probe.measure().clock_synced is False
        assert probe.measure().clock_synced is False
    logs = health_logs(caplog)
    assert len(logs) == 1 and "Failed to connect to bus" in logs[0].getMessage()


def test_a_hanging_timedatectl_is_cut_short(
        fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_mod, "TIMEDATECTL_TIMEOUT_S", 0.2)
    probe = probe_on(fake_root, "timesyncd", timedatectl=fake_timedatectl(tmp_path, "exec sleep 30\n"))
    assert probe.measure().clock_synced is False


def test_a_missing_timedatectl_is_looked_for_once(
        fake_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    probe = probe_on(fake_root, "timesyncd", timedatectl=str(tmp_path / "absent"))
    with caplog.at_level(logging.INFO, logger="diemcau.health"):
        assert probe.measure().clock_synced is False
        assert probe.measure().clock_synced is False
    assert len(health_logs(caplog)) == 1


# ---------------------------------------------------------------- to the core


def test_observation_from_a_reading_and_the_room(fake_root: Path) -> None:
    write(fake_root, THROTTLED, "50005\n")
    write(fake_root, "sys/class/thermal/thermal_zone0/temp", "83000\n")
    reading = probe_on(fake_root).measure()
    stream = StreamFigures(state="reconnecting", detail="timeout", audio_level_dbfs=-70.0)
    obs = observation_from(reading, meeting_state="live", muted=False, stream=stream,
                           stream_failing_since=5.0, camera_missing=True)
    assert (obs.cpu_temperature_c, obs.undervoltage, obs.throttled) == (83.0, True, True)
    assert (obs.stream_state, obs.stream_detail, obs.stream_failing_since) == (
        "reconnecting", "timeout", 5.0)
    assert obs.audio_level_dbfs == -70.0 and obs.camera_missing and obs.clock_synced
    assert obs.disk_free_mb == reading.disk_free_mb
