"""The figures before the architecture step, printed by ``make bench`` beside today's.

The step (media in a child process, the media package, the wire format in
``protocol/``, the supervisor in parts) cannot be measured in the same run:
it is another tree. These figures were measured once, on the development
machine (x86-64, 2 cores shared with other work, Debian 12), on commit
``6436f9e``, the last one before the media process landed (the uplink still
in the box's own process), with this benchmark's own code copied into that
tree (one import moved: ``no_delay`` was in ``adapters.mqtt`` then; the
broker rows left out, as they are not about the step):

    git worktree add ../prestep 6436f9e && cd ../prestep && make setup
    cp <this tree>/tests/bench/{__main__,media,child}.py tests/bench/
    .venv/bin/python -m tests.bench --soak-minutes 0.25

Noise: the cores were shared with other test runs; compare with the
references of each run (the ffmpeg CLI, the bare echo), not only the figures.
Keys are the rows' ``what``, stripped.
"""

from __future__ import annotations

COMMIT = "6436f9e"
MEASURED = "2026-12-05"
LABEL = f"(commit {COMMIT}, {MEASURED})"
ABOUT = (f"'before the step': commit {COMMIT} (the uplink in the box's own process), measured "
         f"{MEASURED} on this machine with this bench's code; see tests/bench/before.py.")

FIGURES: dict[str, str] = {
    "process start → birth published": "median 0.16 s, max 0.19 s",
    "resident memory, idle before a meeting": "42.4 MB (one process); PSS 32.1",
    "command → reply (1000 commands)": "p50 1.20, p99 1.65 ms (echo p99 0.80)",
    "live at 360p15: resident memory, all": "111.6 MB; PSS 74.7",
    "live at 720p30: resident memory, all": "129.0 MB; PSS 90.6",
    "live at 720p30: CPU (one core = 100%)": "21 %",
    "command → reply while live (1000)": "p50 1.20 ms, p99 4.09 ms",
    "resident memory, idle after leaving": "112.2 MB; PSS 82.2",
    "CPU per 1,000 frames, 720p30": "9.00 s = 1.23 × ffmpeg (7.34)",
    "capture → picture received − SRT latency": "p95 42.9 ms (ffmpeg p95 47.3)",
    "meeting.join → first keyframe, cold": "median 0.31 s, max 0.33 s",
    "meeting.join → first keyframe, warm": "median 0.22 s, max 0.24 s",
    "resident memory, live 720p30, 3 s in": "127.8 MB; PSS 93.5",
}
