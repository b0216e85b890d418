"""Telling systemd how the box is: ready once, then "still alive" from the loop.

With ``Type=notify`` and ``WatchdogSec=`` in the unit, systemd restarts the
box when the supervisor's loop stops turning, not only when the process dies.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("diemcau.service")


class ServiceManager:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        # Ping twice per watchdog period, as systemd recommends.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._notify = None
        if self.enabled:
            try:
                from systemd import daemon  # python3-systemd

                self._notify = daemon.notify
            except ImportError:
                log.error("NOTIFY_SOCKET is set but python3-systemd is missing: "
                          "systemd will think the box never started")

    def _send(self, state: str) -> None:
        if self._notify is not None:
            self._notify(state)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def alive(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
