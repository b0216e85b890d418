"""The far end's figures: playback latency, CPU and memory of the box's player beside mpv's.

The feed is the tests' (:mod:`tests.harness.programme`): stamped 720p25 pictures and a tone,
encoded by ffmpeg and served by ``srt-live-transmit``. Measured on loopback:

- **latency**: capture at the sender → picture handed to the output, minus SRT's latency,
  read from the frame stamps of the pictures shown (``screen.record_dir``), after the
  lag rule has had its say (the first ``SETTLE_S``). The reference is libmpv with only
  mpv's ``--profile=low-latency`` (and ``vo=null``, ``ao=null``), watched the same way.
- **CPU and memory**: the box's screen process (player, mixer, speaker; no recording)
  and the ``mpv`` command line with ``--profile=low-latency --vo=null --ao=null`` on
  the same feed, in turn, ``ROUNDS`` times each.

    from tests.bench import screen
    screen.run(work / "screen", row)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from diemcau.config import Screen
from diemcau.core.events import ProgrammeFiguresUpdated
from diemcau.media.screen import ScreenProcess
from diemcau.media.screen_child import Recorder
from tests.harness.alsa import make_speaker
from tests.harness.process import stop_process
from tests.harness.programme import FeedShape, ProgrammeFeed
from tests.harness.screen import shown

Row = Callable[..., None]
SRT_LATENCY_MS = 120
SETTLE_S = 8.0
WINDOW_S = 8.0
ROUNDS = 3
SHAPE = FeedShape(width=1280, height=720, fps=25, bitrate_kbps=2500, gop=25)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _summary(latencies: list[float]) -> str:
    if not latencies:
        return "no pictures"
    return f"p50 {percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms"


def _latencies(record: Path, feed: ProgrammeFeed, since: float) -> list[float]:
    return [(s.at - feed.captured[s.number]) * 1000 - SRT_LATENCY_MS
            for s in shown(record) if s.at >= since and s.number in feed.captured]


def box_latency(feed: ProgrammeFeed, work: Path, speaker_pcm: str, **screen: Any,
                ) -> tuple[list[float], dict[str, Any]]:
    """The latencies over the window, and the box's last figures (its lag, catch-ups)."""
    record = work / f"box-record-{time.monotonic_ns()}"
    cfg = Screen(enabled=True, vo="null", speaker=speaker_pcm, record_dir=str(record),
                 srt_latency_ms=SRT_LATENCY_MS, **screen)
    figures: list[dict[str, Any]] = []
    screen = ScreenProcess(cfg, lambda event: figures.append(event.figures)
                           if isinstance(event, ProgrammeFiguresUpdated) else None,
                           speaker=speaker_pcm, log_level="error")
    screen.start()
    try:
        screen.play("bench", feed.url)
        time.sleep(SETTLE_S)
        since = time.time()
        time.sleep(WINDOW_S)
    finally:
        screen.close()
    return _latencies(record, feed, since), (figures[-1] if figures else {})


def reference_latency(feed: ProgrammeFeed, work: Path) -> list[float]:
    import mpv

    record = work / "mpv-record"
    player = mpv.MPV(profile="low-latency", vo="null", ao="null")
    recorder = Recorder(record)
    recorder.start(player)
    try:
        player.command("loadfile", feed.url, "replace")
        time.sleep(SETTLE_S)
        since = time.time()
        time.sleep(WINDOW_S)
    finally:
        recorder.stop()
        player.terminate()
    return _latencies(record, feed, since)


def _window(process: psutil.Process) -> tuple[float, float]:
    """(CPU seconds over WINDOW_S after SETTLE_S, resident MB at its end)."""
    time.sleep(SETTLE_S)
    before = process.cpu_times()
    time.sleep(WINDOW_S)
    after = process.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return cpu, process.memory_info().rss / 2**20


def box_cpu(feed: ProgrammeFeed, speaker_pcm: str) -> tuple[float, float]:
    cfg = Screen(enabled=True, vo="null", speaker=speaker_pcm, srt_latency_ms=SRT_LATENCY_MS)
    screen = ScreenProcess(cfg, lambda event: None, speaker=speaker_pcm, log_level="error")
    screen.start()
    try:
        screen.play("bench", feed.url)
        deadline = time.monotonic() + 5
        while screen.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert screen.pid is not None, "the screen process did not start"
        return _window(psutil.Process(screen.pid))
    finally:
        screen.close()


def mpv_cpu(feed: ProgrammeFeed, work: Path) -> tuple[float, float]:
    url = feed.url  # carries SRT's latency, as the box's is given
    with (work / "mpv-cli.log").open("ab") as log:
        process = subprocess.Popen(["mpv", "--no-config", "--profile=low-latency", "--vo=null",
                                    "--ao=null", "--msg-level=all=warn", "--term-status-msg=", url],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        return _window(psutil.Process(process.pid))
    finally:
        stop_process(process, timeout_s=5)


def run(work: Path, row: Row) -> None:
    """The far end's figures, printed with ``row`` (what, figure, budget, reference)."""
    work.mkdir(parents=True, exist_ok=True)
    speaker = make_speaker(work / "alsa")
    os.environ["ALSA_CONFIG_PATH"] = speaker.env["ALSA_CONFIG_PATH"]  # the screen process's
    with ProgrammeFeed(work / "feed", shape=SHAPE, srt_latency_ms=SRT_LATENCY_MS) as feed:
        time.sleep(1.0)
        mine, figures = box_latency(feed, work, speaker.pcm)
        theirs = reference_latency(feed, work)
        row("playback: capture → picture, 720p25", _summary(mine), "≤ 300 ms p95",
            f"libmpv, low-latency profile only: {_summary(theirs)}")
        row("  the box's lag rule at the end", f"lag {figures.get('lag_ms')} ms, "
            f"{figures.get('catchups')} catch-ups", "",
            f"speaker delay {figures.get('speaker_delay_ms')} ms")
        box_runs, mpv_runs = [], []
        for i in range(ROUNDS):
            for who in ("box", "mpv")[:: 1 if i % 2 == 0 else -1]:
                speaker.clear()
                if who == "box":
                    box_runs.append(box_cpu(feed, speaker.pcm))
                else:
                    mpv_runs.append(mpv_cpu(feed, work))
    box_s = sum(c for c, _ in box_runs)
    mpv_s = sum(c for c, _ in mpv_runs)
    seconds = WINDOW_S * ROUNDS
    row("playback CPU, 720p25 (one core = 100 %)",
        f"{box_s / seconds * 100:.1f} % = {box_s / mpv_s:.2f} × mpv", "≤ 1.05×mpv",
        f"mpv CLI, same feed: {mpv_s / seconds * 100:.1f} %")
    row("  each round (box / mpv)",
        " / ".join(f"{c / WINDOW_S * 100:.1f} %" for c, _ in box_runs),
        "", " / ".join(f"{c / WINDOW_S * 100:.1f} %" for c, _ in mpv_runs))
    row("playback resident memory",
        f"{max(m for _, m in box_runs):.0f} MB", "",
        f"mpv CLI: {max(m for _, m in mpv_runs):.0f} MB")


if __name__ == "__main__":
    import tempfile

    def _row(what: str, figure: str, budget: str = "", reference: str = "") -> None:
        print(f"  {what:<44} {figure:<30} {budget:<14} {reference}")

    import sys

    if len(sys.argv) > 1:
        run(Path(sys.argv[1]), _row)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), _row)
