"""What board this is: model and serial from the device tree, else the OS."""

from __future__ import annotations

import platform
from pathlib import Path


def read_text_or_empty(path: str | Path) -> str:
    """A small /proc or /sys file as text (device-tree NULs stripped); "" if unreadable."""
    try:
        return Path(path).read_bytes().rstrip(b"\x00\n").decode(errors="replace").strip()
    except OSError:
        return ""


def board_model(configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    return read_text_or_empty("/proc/device-tree/model") or f"generic {platform.machine()}"


def board_serial(configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    return (read_text_or_empty("/proc/device-tree/serial-number") or read_text_or_empty("/etc/machine-id") or "unknown")[:32]
