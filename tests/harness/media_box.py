"""One MediaSession in a process of its own (to run it inside a network namespace).

    ip netns exec NS python -m tests.harness.media_box '{"url": ..., "profile": ..., "media": {...}}'

Prints every event the session posts as one JSON line on stdout:
``{"type": "StreamChanged", ...fields}``; stops when stdin closes (or on
SIGTERM) and prints ``{"type": "exit"}`` once the session has ended.
:class:`MediaBox` runs it and collects the lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _child(spec: dict[str, Any]) -> int:
    import logging

    from diemcau.config import Media
    from diemcau.core.meeting import StreamRequest
    from diemcau.media.session import MediaSession

    logging.basicConfig(level=spec.get("log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lines: queue.Queue[object] = queue.Queue()
    request = StreamRequest("m-netns", spec["url"], spec["profile"], False)
    session = MediaSession(Media(**spec["media"]), request, lines.put_nowait,
                           device_id="c00001-r1")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    session.start()
    while True:
        try:
            event = lines.get(timeout=0.1)
        except queue.Empty:
            if done.is_set():
                session.stop()
                if session.join(10):
                    while not lines.empty():
                        _print(lines.get())
                    break
            continue
        _print(event)
    print(json.dumps({"type": "exit"}), flush=True)
    return 0


def _print(event: object) -> None:
    fields = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else {}
    print(json.dumps({"type": type(event).__name__, **fields}), flush=True)


class MediaBox:
    """The child above, run with ``prefix`` (``ip netns exec NS``); its events as dicts."""

    def __init__(self, prefix: list[str], url: str, profile: str, media: dict[str, Any],
                 env: dict[str, str]) -> None:
        spec = json.dumps({"url": url, "profile": profile, "media": media})
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self._process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.harness.media_box", spec],
            cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._lock:
                self.events.append(json.loads(line))
                self._lock.notify_all()

    def _read_errors(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.stderr = (self.stderr + line)[-20000:]

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout_s: float,
                 start: int = 0) -> dict[str, Any]:
        """The first event from index ``start`` on that matches; AssertionError after the time."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for event in self.events[start:]:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._process.poll() is not None and not self._reader.is_alive():
                    states = [e.get("state") for e in self.events if e["type"] == "StreamChanged"]
                    raise AssertionError(f"not seen within {timeout_s} s; states {states}; "
                                         f"stderr:\n{self.stderr[-3000:]}")
                self._lock.wait(min(left, 0.5))

    def figures(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e["figures"] for e in self.events if e["type"] == "StreamFiguresUpdated"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["type"] == kind]

    def stop(self, timeout_s: float = 20.0) -> None:
        """Close stdin: the session stops; wait for the process."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                assert self._process.stdin is not None
                self._process.stdin.close()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(5)


if __name__ == "__main__":
    raise SystemExit(_child(json.loads(sys.argv[1])))
