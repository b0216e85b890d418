"""Health probes: what the box measures about itself, from psutil and /sys.

``HealthProbe.measure()`` returns a :class:`Reading` of raw figures. No probe
ever raises: a figure the box cannot measure is ``None``, and a probe that
fails logs once (``diemcau.health``) until it works again. A figure the
platform simply does not have (no Wi-Fi, no Raspberry Pi firmware) is
``None`` without a log line.

``measure()`` reads files and may run ``timedatectl`` for up to a second:
call it from the health timer's thread, not from the supervisor's loop.

    probe = HealthProbe("/var/lib/diemcau", clock_check="timesyncd")
    reading = probe.measure()
    msg = health_message(reading, seq=7, stream=figures, alerts=state.codes)

Every path is read under ``sysfs_root`` so that tests can hand in a fake tree:
the Pi firmware's throttling flags, the thermal zones, ``/proc/net/wireless``
and timesyncd's flag file. psutil's figures (CPU, memory, disk, network
interfaces) come from the real machine.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import psutil

from ..core.alerts import Observation
from ..core.meeting import MeetingState
from ..protocol.messages import Health, Interface, ProgrammeFigures, StreamFigures, now_ts
from .clock import clock_floor
from .platform import read_text_or_empty

log = logging.getLogger("diemcau.health")

MB = 1024 * 1024  # "MB" in the health figures is 2**20 bytes

# The Raspberry Pi firmware's get_throttled bitmask (the value vcgencmd shows).
UNDERVOLTAGE_NOW = 1 << 0
FREQUENCY_CAPPED_NOW = 1 << 1
THROTTLED_NOW = 1 << 2
SOFT_TEMPERATURE_LIMIT_NOW = 1 << 3
# Bits 16-19 say the same four things "has occurred since boot"; alerts use
# the "now" bits only, so that they clear once the supply or the heat is fixed.
SLOWED_NOW = FREQUENCY_CAPPED_NOW | THROTTLED_NOW | SOFT_TEMPERATURE_LIMIT_NOW

# Raspberry Pi OS kernels: the firmware driver's sysfs attribute, printed as
# bare hex ("50005\n"). The well-known path first, then wherever the
# "raspberrypi-firmware" driver has bound its device on other boards.
_THROTTLED_PATHS = ("sys/devices/platform/soc/soc:firmware/get_throttled",)
_THROTTLED_GLOB = "sys/bus/platform/drivers/raspberrypi-firmware/*/get_throttled"
_HWMON_GLOB = "sys/class/hwmon/hwmon*"
_THERMAL_GLOB = "sys/class/thermal/thermal_zone*"
_WIRELESS = "proc/net/wireless"
_TIMESYNCD_FLAG = "run/systemd/timesync/synchronized"  # created by timesyncd once synced
# Zone types of the CPU/SoC sensor (Pi: "cpu-thermal"; x86: "x86_pkg_temp").
_CPU_ZONE_HINTS = ("cpu", "soc", "pkg")

TIMEDATECTL_TIMEOUT_S = 1.0

ClockCheck = Literal["timesyncd", "none"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NetInterface:
    name: str
    up: bool  # administratively up and with a carrier
    addresses: tuple[str, ...]  # "192.0.2.7/24", "2001:db8::7/64"


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement; ``None`` where the figure is unknown.

    ``uptime_s`` is how long the diemcau process has run (a crash loop or a
    watchdog restart shows there); ``boot_uptime_s`` how long the system has.
    Both come from the boot clock, so NTP setting the wall clock does not
    move them. MB are 2**20 bytes; the disk figures are for the filesystem
    holding the state directory.
    """

    ts: float  # Unix seconds when measured
    uptime_s: float | None
    boot_uptime_s: float | None
    cpu_percent: float | None  # all cores, since the previous measure()
    load_1m: float | None
    memory_used_percent: float | None
    memory_available_mb: float | None
    process_rss_mb: float | None
    disk_free_mb: float | None  # available to an unprivileged process
    disk_used_percent: float | None
    interfaces: tuple[NetInterface, ...]
    wifi_signal_dbm: float | None
    cpu_temperature_c: float | None
    throttled_flags: int | None  # the firmware's raw get_throttled bitmask
    undervoltage: bool | None
    throttled: bool | None  # frequency capped, throttled or at the soft limit now
    clock_synced: bool | None


class HealthProbe:
    """Measures the box. ``clock_check="none"`` reports the clock as synchronised.

    ``timedatectl`` is the program asked when timesyncd's flag file is absent
    (a box whose clock is kept by something else); ``None`` never asks.
    """

    def __init__(self, state_dir: str, clock_check: ClockCheck, sysfs_root: str = "/",
                 *, timedatectl: str | None = "timedatectl") -> None:
        self._state_dir = Path(state_dir)
        self._clock_check = clock_check
        self._root = Path(sysfs_root)
        self._timedatectl = timedatectl
        self._failing: set[str] = set()
        self._process: psutil.Process | None = self._probe("process", psutil.Process)
        self._started_mono = time.monotonic()
        self._started_boot_s = self._probe("process_start", _process_start_boot_s)
        # The first CPU figure is measured from here, so it is not 0.0.
        self._cpu_last = self._probe("cpu_percent", _cpu_busy_total)

    # ------------------------------------------------------------ public

    def measure(self) -> Reading:
        """Measure every figure once; never raises."""
        boot_s = self._probe("boot_uptime", _boot_uptime_s)
        memory = self._probe("memory", psutil.virtual_memory)
        disk = self._probe("disk", self._disk_usage)
        flags = self._probe("throttled", self._throttled_flags)
        undervoltage = None if flags is None else bool(flags & UNDERVOLTAGE_NOW)
        if flags is None:
            undervoltage = self._probe("undervoltage", self._hwmon_undervoltage)
        return Reading(
            ts=now_ts(),
            uptime_s=self._uptime_s(boot_s),
            boot_uptime_s=boot_s,
            cpu_percent=self._probe("cpu_percent", self._cpu_percent),
            load_1m=self._probe("load", lambda: psutil.getloadavg()[0]),
            memory_used_percent=None if memory is None else memory.percent,
            memory_available_mb=None if memory is None else memory.available / MB,
            process_rss_mb=self._probe("process_rss", self._rss_mb),
            disk_free_mb=None if disk is None else disk[0],
            disk_used_percent=None if disk is None else disk[1],
            interfaces=self._probe("interfaces", _interfaces) or (),
            wifi_signal_dbm=self._probe("wifi", self._wifi_signal_dbm),
            cpu_temperature_c=self._probe("temperature", self._cpu_temperature_c),
            throttled_flags=flags,
            undervoltage=undervoltage,
            throttled=None if flags is None else bool(flags & SLOWED_NOW),
            clock_synced=self._probe("clock", self._clock_synced),
        )

    # ------------------------------------------------------------ plumbing

    def _probe(self, name: str, fn: Callable[[], T]) -> T | None:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one broken probe must not stop health
            if name not in self._failing:
                self._failing.add(name)
                log.warning("health probe %s failed: %s: %s", name, type(exc).__name__, exc)
            return None
        if name in self._failing:
            self._failing.discard(name)
            log.info("health probe %s works again", name)
        return value

    def _path(self, relative: str) -> Path:
        return self._root / relative

    # ------------------------------------------------------------ probes

    def _uptime_s(self, boot_s: float | None) -> float:
        if boot_s is not None and self._started_boot_s is not None:
            return max(0.0, boot_s - self._started_boot_s)
        # No boot clock or no /proc: count from when the probe was built.
        return time.monotonic() - self._started_mono

    def _cpu_percent(self) -> float:
        # Our own previous sample, not psutil.cpu_percent(interval=None):
        # psutil keeps that one per thread, and measure() may run on another
        # thread than the one that built the probe.
        busy, total = _cpu_busy_total()
        last, self._cpu_last = self._cpu_last, (busy, total)
        if last is None or total <= last[1]:
            return 0.0
        return min(100.0, max(0.0, 100.0 * (busy - last[0]) / (total - last[1])))

    def _rss_mb(self) -> float:
        if self._process is None:
            raise RuntimeError("no handle on this process")
        return self._process.memory_info().rss / MB

    def _disk_usage(self) -> tuple[float, float]:
        """(free MB, used %) of the state directory's filesystem."""
        # Before first start the state directory may not exist yet: measure
        # the filesystem it will be created on.
        path = self._state_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = psutil.disk_usage(str(path))
        return usage.free / MB, usage.percent

    def _throttled_flags(self) -> int | None:
        candidates = [self._path(p) for p in _THROTTLED_PATHS]
        candidates += sorted(self._root.glob(_THROTTLED_GLOB))
        for path in candidates:
            if path.exists():
                return int(path.read_text().strip(), 16)
        return None

    def _hwmon_undervoltage(self) -> bool | None:
        # Kernels without get_throttled still have the firmware's hwmon
        # device; it knows about under-voltage only.
        for hwmon in sorted(self._root.glob(_HWMON_GLOB)):
            name = hwmon / "name"
            alarm = hwmon / "in0_lcrit_alarm"
            if name.exists() and name.read_text().strip() == "rpi_volt" and alarm.exists():
                return int(alarm.read_text().strip()) != 0
        return None

    def _cpu_temperature_c(self) -> float | None:
        zones = sorted(self._root.glob(_THERMAL_GLOB), key=_zone_number)
        typed = [(z, read_text_or_empty(z / "type").lower()) for z in zones]
        ordered = [z for z, t in typed if any(h in t for h in _CPU_ZONE_HINTS)]
        ordered += [z for z, t in typed if z not in ordered]
        for zone in ordered:
            try:
                return int((zone / "temp").read_text().strip()) / 1000.0  # millidegrees
            except (OSError, ValueError):
                continue  # some zones refuse reads while disabled; try the next
        return None

    def _wifi_signal_dbm(self) -> float | None:
        path = self._path(_WIRELESS)
        if not path.exists():
            return None
        return parse_wireless(path.read_text())

    def _clock_synced(self) -> bool:
        if self._clock_check == "none":
            return True
        if time.time() < clock_floor(str(self._root)):
            return False  # before the build time or the last sync: certainly wrong
        if self._path(_TIMESYNCD_FLAG).exists():
            return True
        if self._timedatectl is None:
            return False
        answer = self._probe("timedatectl", self._ask_timedatectl)
        return answer is True

    def _ask_timedatectl(self) -> bool | None:
        assert self._timedatectl is not None
        try:
            done = subprocess.run(
                [self._timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True, text=True, timeout=TIMEDATECTL_TIMEOUT_S, check=False,
            )
        except FileNotFoundError:
            log.info("no %s here: the clock counts as synchronised only once timesyncd"
                     " says so", self._timedatectl)
            self._timedatectl = None
            return None
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[:200]}")
        return done.stdout.strip() == "yes"


# ---------------------------------------------------------------- helpers


def _zone_number(path: Path) -> int:
    digits = path.name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


def _boot_uptime_s() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _process_start_boot_s() -> float:
    # Field 22 of /proc/self/stat is the start in clock ticks after boot. The
    # command name (field 2) may hold spaces and parentheses: split after it.
    stat = Path("/proc/self/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[22 - 3]) / os.sysconf("SC_CLK_TCK")


def _cpu_busy_total() -> tuple[float, float]:
    times = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user and nice already.
    total = sum(times.values()) - times.get("guest", 0.0) - times.get("guest_nice", 0.0)
    idle = times.get("idle", 0.0) + times.get("iowait", 0.0)
    return total - idle, total


def _interfaces() -> tuple[NetInterface, ...]:
    stats = psutil.net_if_stats()
    result = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        stat = stats.get(name)
        if name == "lo" or (stat is not None and "loopback" in getattr(stat, "flags", "")):
            continue
        addresses = tuple(a for a in (_address(x.family, x.address, x.netmask) for x in addrs)
                          if a is not None)
        result.append(NetInterface(name, bool(stat and stat.isup), addresses))
    return tuple(result)


def _address(family: int, address: str, netmask: str | None) -> str | None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None  # link-layer (MAC) entries
    address = address.split("%", 1)[0]  # "fe80::1%eth0": the zone is the interface itself
    if not netmask:
        return address
    try:
        prefix = bin(int(ipaddress.ip_address(netmask.split("/", 1)[0]))).count("1")
    except ValueError:
        return address
    return f"{address}/{prefix}"


def parse_wireless(text: str) -> float | None:
    """The signal level (dBm) of the first Wi-Fi interface in ``/proc/net/wireless``.

    Two header lines, then one line per interface:
    ``wlan0: 0000   70.  -40.  -256  0 0 0 0 0  0`` (status, link, level, noise, ...).
    """
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        fields = line.split(":", 1)[1].split()
        if len(fields) < 3:
            continue
        level = float(fields[2].rstrip("."))
        if level > 0:
            level -= 256  # older drivers print the dBm as an unsigned byte
        if level != 0:
            return level
    return None


# ---------------------------------------------------------------- to the wire


def _figure(value: float | None, digits: int = 1) -> float:
    # Health's core figures are not optional on the wire; -1 says "could not
    # measure" and cannot be mistaken for a real value (the log says why).
    return -1.0 if value is None else round(value, digits)


def health_message(reading: Reading, *, seq: int, stream: StreamFigures,
                   programme: ProgrammeFigures | None = None,
                   alerts: Iterable[str] = ()) -> Health:
    """The ``health`` message for one reading, the stream's and the programme's figures, and the
    active alerts."""
    return Health(
        seq=seq,
        ts=reading.ts,
        uptime_s=_figure(reading.uptime_s, 0),
        cpu_percent=_figure(reading.cpu_percent),
        load_1m=_figure(reading.load_1m, 2),
        memory_used_percent=_figure(reading.memory_used_percent),
        memory_available_mb=_figure(reading.memory_available_mb),
        process_rss_mb=_figure(reading.process_rss_mb),
        disk_free_mb=_figure(reading.disk_free_mb),
        disk_used_percent=_figure(reading.disk_used_percent),
        interfaces=[Interface(name=i.name, up=i.up, addresses=list(i.addresses))
                    for i in reading.interfaces],
        wifi_signal_dbm=reading.wifi_signal_dbm,
        cpu_temperature_c=None if reading.cpu_temperature_c is None
        else round(reading.cpu_temperature_c, 1),
        undervoltage=reading.undervoltage,
        throttled=reading.throttled,
        clock_synced=reading.clock_synced,
        stream=stream,
        programme=programme if programme is not None else ProgrammeFigures(),
        alerts=list(alerts),
    )


def observation_from(reading: Reading, *, meeting_state: MeetingState, muted: bool,
                     stream: StreamFigures, stream_failing_since: float | None,
                     camera_missing: bool, programme: ProgrammeFigures | None = None,
                     programme_lost_since: float | None = None) -> Observation:
    """What the alert rules need from a reading and the room."""
    return Observation(
        cpu_temperature_c=reading.cpu_temperature_c,
        undervoltage=reading.undervoltage,
        throttled=reading.throttled,
        disk_free_mb=reading.disk_free_mb,
        clock_synced=reading.clock_synced,
        meeting_state=meeting_state,
        muted=muted,
        stream_state=stream.state,
        stream_failing_since=stream_failing_since,
        stream_detail=stream.detail,
        camera_missing=camera_missing,
        audio_level_dbfs=stream.audio_level_dbfs,
        programme_state=programme.state if programme is not None else "off",
        programme_lost_since=programme_lost_since,
        programme_detail=programme.detail if programme is not None else "",
    )
