"""The far end's figures: playback latency, CPU and memory of the box's player beside mpv's.

The feed is the tests' (:mod:`tests.harness.programme`): stamped 720p25 pictures and a tone,
encoded by ffmpeg and served by ``srt-live-transmit``. Measured on loopback:

- **latency**: capture at the sender → picture handed to the output, minus SRT's latency,
  read from the frame stamps of the pictures shown (``screen.record_dir``), after the
  lag rule has had its say (the first ``SETTLE_S``). The reference is libmpv with only
  mpv's ``--profile=low-latency`` (and ``vo=null``, ``ao=null``), watched the same way.
- **CPU and memory**: the box's screen process (player, mixer, speaker; no recording)
  and the ``mpv`` command line with ``--profile=low-latency --vo=null``, its sound to a
  speaker like the box's (``--ao=alsa``) and, a second reference, to none (``--ao=null``),
  all three playing the same packets at the same time (an SRT listener each, fed alike),
  their CPU read over the same ``ROUNDS`` windows. Measured in turn instead, they saw
  different moments of a shared machine: rounds of one player varied by 10-25 %, more
  than the gap measured.

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
from tests.harness.alsa import SimulatedSpeaker, make_speaker
from tests.harness.process import stop_process
from tests.harness.programme import FeedShape, ProgrammeFeed
from tests.harness.screen import shown

Row = Callable[..., None]
SRT_LATENCY_MS = 120
SETTLE_S = 8.0
WINDOW_S = 8.0
ROUNDS = 6
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


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# The mpv command line beside the box: with its sound to a speaker like the box's (the same
# ALSA plugin, S16 as the box writes it), and with no sound output at all.
REFERENCES = {
    "speaker": ["--ao=alsa", "--audio-format=s16"],
    "no sound": ["--ao=null"],
}


def side_by_side_cpu(feed: ProgrammeFeed, work: Path, speaker: SimulatedSpeaker,
                     ) -> tuple[list[dict[str, float]], dict[str, float]]:
    """CPU seconds of the box and of each reference in each window; resident MB at the end.

    The box and the ``REFERENCES`` play ``feed``'s listeners at the same time, each its own.
    """
    cfg = Screen(enabled=True, vo="null", speaker=speaker.pcm, srt_latency_ms=SRT_LATENCY_MS)
    screen = ScreenProcess(cfg, lambda event: None, speaker=speaker.pcm, log_level="error")
    screen.start()
    log = (work / "mpv-cli.log").open("ab")
    cli_speaker = make_speaker(work / "alsa-cli", pcm="bench_cli_speaker")
    clis = {name: subprocess.Popen(
        ["mpv", "--no-config", "--profile=low-latency", "--vo=null", *options,
         f"--audio-device=alsa/{cli_speaker.pcm}", "--msg-level=all=warn", "--term-status-msg=",
         feed.url_of(listener)],  # carries SRT's latency, as the box's is given
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **cli_speaker.env})
        for listener, (name, options) in enumerate(REFERENCES.items(), start=1)}
    try:
        screen.play("bench", feed.url_of(0))
        deadline = time.monotonic() + 5
        while screen.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert screen.pid is not None, "the screen process did not start"
        players = {"box": psutil.Process(screen.pid)}
        players.update((name, psutil.Process(cli.pid)) for name, cli in clis.items())
        time.sleep(SETTLE_S)
        windows = []
        for _ in range(ROUNDS):
            before = {name: _cpu_s(player) for name, player in players.items()}
            time.sleep(WINDOW_S)
            windows.append({name: _cpu_s(player) - before[name]
                            for name, player in players.items()})
        return windows, {name: player.memory_info().rss / 2**20
                         for name, player in players.items()}
    finally:
        screen.close()
        for cli in clis.values():
            stop_process(cli, timeout_s=5)
        log.close()
        cli_speaker.clear()


def run(work: Path, row: Row) -> None:
    """The far end's figures, printed with ``row`` (what, figure, budget, reference)."""
    work.mkdir(parents=True, exist_ok=True)
    speaker = make_speaker(work / "alsa")
    os.environ["ALSA_CONFIG_PATH"] = speaker.env["ALSA_CONFIG_PATH"]  # the screen process's
    with ProgrammeFeed(work / "feed", shape=SHAPE, srt_latency_ms=SRT_LATENCY_MS,
                       listeners=1 + len(REFERENCES)) as feed:
        time.sleep(1.0)
        mine, figures = box_latency(feed, work, speaker.pcm)
        theirs = reference_latency(feed, work)
        row("playback: capture → picture, 720p25", _summary(mine), "≤ 300 ms p95",
            f"libmpv, low-latency profile only: {_summary(theirs)}")
        row("  the box's lag rule at the end", f"lag {figures.get('lag_ms')} ms, "
            f"{figures.get('catchups')} catch-ups", "",
            f"speaker delay {figures.get('speaker_delay_ms')} ms")
        speaker.clear()
        windows, memory = side_by_side_cpu(feed, work, speaker)
    seconds = WINDOW_S * ROUNDS
    total = {name: sum(window[name] for window in windows) for name in windows[0]}
    for name in REFERENCES:
        row(f"playback CPU, 720p25, beside mpv ({name})",
            f"{total['box'] / seconds * 100:.1f} % = {total['box'] / total[name]:.2f} × mpv",
            "≤ 1.05×mpv", f"mpv CLI, {name}, same packets, same time: "
            f"{total[name] / seconds * 100:.1f} %")
        row(f"  each {WINDOW_S:.0f} s window, box / mpv ({name})",
            " ".join(f"{window['box'] / window[name]:.2f}" for window in windows))
    row("playback resident memory", f"{memory['box']:.0f} MB", "",
        "mpv CLI: " + ", ".join(f"{memory[name]:.0f} MB ({name})" for name in REFERENCES))

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
