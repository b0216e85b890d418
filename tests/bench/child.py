"""One MediaSession in a process of its own, for the media benchmarks (tests/bench/media.py).

    python -m tests.bench.child '{"url": ..., "media": {...}, "warmup_s": 3, "window_s": 12}'

Kept apart from the benchmark module so that this process imports only what
the box's media path does (no numpy, no test harness): its CPU and resident
memory are the media path's, not the benchmark's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psutil

from diemcau.config import Media
from diemcau.media import camera
from diemcau.media.session import MediaSession

DEV = "c00001-r1"
PROFILE = "720p30"


def main(spec: dict[str, Any]) -> int:
    """Run one MediaSession in this (child) process; print what it measured as JSON.

    Capture times: MediaSession has no hook for them, so this process wraps
    the camera's ``read``. The pump reads one camera frame per frame number,
    from 0, in order (a frame read too late is dropped but keeps its number),
    so the k-th read is frame k, the number its stamp carries. The time noted
    is when the frame is in the box's hands: after lavfi has drawn it, as a
    real camera hands over a frame already exposed. The wrapper costs one
    ``time.time()`` and an append per frame.
    """
    import queue

    from diemcau.adapters.process import settle
    from diemcau.core.events import StreamChanged, StreamFiguresUpdated
    from diemcau.core.meeting import StreamRequest

    captured: list[float] = []
    read = camera.TestPattern.read

    def timed_read(camera: Any) -> Any:
        frame = read(camera)
        captured.append(time.time())
        return frame

    camera.TestPattern.read = timed_read  # type: ignore[method-assign]
    settle()  # as `diemcau run` does at start
    events: queue.Queue[object] = queue.Queue()
    request = StreamRequest("bench-child", spec["url"], PROFILE, False)
    session = MediaSession(Media(**spec["media"]), request, events.put_nowait,
                                 device_id=DEV)
    figures: dict[str, Any] = {}

    def drain(wait_live: bool) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                event = events.get(timeout=0.1 if wait_live else 0)
            except queue.Empty:
                if not wait_live:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("the session did not go live in 20 s") from None
                continue
            if isinstance(event, StreamFiguresUpdated):
                figures.update(event.figures)
            elif isinstance(event, StreamChanged) and event.state == "error":
                raise RuntimeError(f"media error: {event.detail}")
            elif wait_live and isinstance(event, StreamChanged) and event.state == "live":
                return

    session.start()
    try:
        drain(wait_live=True)
        time.sleep(spec["warmup_s"])
        drain(wait_live=False)
        cpu0, frames0, wall0 = os.times(), len(captured), time.time()
        dropped0 = figures.get("frames_dropped", 0)
        time.sleep(spec["window_s"])
        cpu1, frames1, wall1 = os.times(), len(captured), time.time()
        drain(wait_live=False)
        rss = psutil.Process().memory_info().rss / 1e6
    finally:
        session.stop()
        session.join(10)
    print(json.dumps({
        "window": [wall0, wall1],
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "frames": frames1 - frames0, "dropped": figures.get("frames_dropped", 0) - dropped0,
        "rss_mb": rss, "captured": captured,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
