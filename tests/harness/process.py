"""Stopping a child process the tests started: ask it first, then make sure."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout_s: float = 10.0) -> None:
    """Send ``sig`` (if it still runs), wait ``timeout_s`` for it to finish, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
