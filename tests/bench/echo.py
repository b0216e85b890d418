"""The echo cancellers' cost, side by side in one run: CPU per second of 48 kHz audio
(process time, all threads) and the resident memory each adds to a fresh process.

    from tests.bench import echo
    echo.bench(row)      # row(what, figure, budget, reference) prints one line
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

RATE = 48000
SECONDS = 20

_MEMORY = """
import json, psutil
from diemcau.media.echo import open_canceller, ReferenceAligner
before = psutil.Process().memory_info().rss
canceller = open_canceller({name!r}, 48000)
canceller.process(bytes(960), bytes(960))
print(json.dumps((psutil.Process().memory_info().rss - before) / 2**20))
"""


def _memory_mb(name: str) -> float:
    out = subprocess.run([sys.executable, "-c", _MEMORY.format(name=name)], check=True,
                         capture_output=True, text=True).stdout
    return float(json.loads(out))


def bench(row: Callable[..., None]) -> None:
    from diemcau.media.echo import ReferenceAligner, SpeexCanceller, open_canceller
    from tests.harness.room import cancel, make_room

    room = make_room(RATE, SECONDS, near_from_s=SECONDS / 2)
    print(f"\nEcho canceller, {SECONDS} s of 48 kHz mono in a simulated room "
          f"(CPU per second of audio; memory added to a fresh process)")
    for name in ("speex", "webrtc", "speex-linear"):
        canceller = SpeexCanceller(RATE, suppress=False) if name == "speex-linear" \
            else open_canceller(name, RATE)
        start = time.process_time()
        cancel(canceller, room)
        cpu = (time.process_time() - start) / SECONDS
        canceller.close()
        memory = "" if name == "speex-linear" else f"+{_memory_mb(name):.0f} MB resident"
        row(f"echo canceller {name}", f"{cpu * 1000:.1f} ms CPU / s of audio", memory)
    # The clock tracking's own cost: the aligner alone, a 10 ms far period per pull, each
    # stamped as the box stamps them.
    aligner = ReferenceAligner(RATE)
    period, frame = bytes(960), 480
    aligner.push(bytes(2 * 4096), 0.0)  # ahead, as the speaker's buffer is
    start = time.process_time()
    for k in range(SECONDS * 100):
        aligner.push(period, k / 100)
        aligner.pull(k / 100 + 0.001)
    cpu = (time.process_time() - start) / SECONDS
    aligner.close()
    row("far end onto the mic's clock (aligner)", f"{cpu * 1000:.1f} ms CPU / s of audio",
        f"{frame} samples a pull")

if __name__ == "__main__":
    def _row(what: str, figure: str, budget: str = "", reference: str = "") -> None:
        print(f"  {what:<44} {figure:<30} {budget:<14} {reference}")

    bench(_row)
