"""The earliest the wall clock can be: the image's build time, or the last NTP sync.

A Raspberry Pi has no real-time clock. At boot its clock starts from
systemd-timesyncd's clock file, whose modification time the image sets to
its build time and timesyncd moves forward at each synchronisation. A wall
clock earlier than that is certainly wrong, and with it every judgement of
time: a TLS certificate looks "not yet valid", a command "not yet issued".
So the box makes no TLS connection and judges no command expiry while its
clock is before this floor (MQTT's own message expiry still holds).

Off the box (no such file) the floor is 0: any clock is believed.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

TIMESYNCD_CLOCK_FILE = "var/lib/systemd/timesync/clock"


def clock_floor(root: str = "/") -> float:
    """Unix seconds the clock cannot be earlier than; 0.0 when unknown."""
    try:
        return os.stat(Path(root) / TIMESYNCD_CLOCK_FILE).st_mtime
    except OSError:
        return 0.0


class ClockTooEarly(OSError):
    """The wall clock is before :func:`clock_floor`: no TLS until the time is set."""


def check_clock(floor: float, now: float | None = None) -> None:
    """Raise :class:`ClockTooEarly` when ``now`` (default: the wall clock) is before ``floor``."""
    now = time.time() if now is None else now
    if now < floor:
        raise ClockTooEarly(
            f"the clock says {_utc(now)}, earlier than this box's build or last time "
            f"synchronisation ({_utc(floor)}): waiting for the time to be set")


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
