"""``make bench``: the box's figures on this machine, printed beside their budgets.

Nothing here passes or fails: it measures and prints. Each figure is taken on
real parts (Mosquitto, the real ``diemcau run`` process, an ffmpeg SRT
listener) on loopback, and shown next to a reference measured in the same run
where one makes sense (a bare paho round trip for command → reply).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

from diemcau.protocol import Reply, Status, decode, device_topic
from diemcau.shared import no_delay
from tests.bench import before, echo, media
from tests.bench import broker as broker_bench
from tests.bench import console as console_bench
from tests.bench import fleet as fleet_bench
from tests.bench import ingest as ingest_bench
from tests.bench import screen as screen_bench
from tests.harness.alsa import make_microphone, make_speaker
from tests.harness.box import Box, CentreKey
from tests.harness.broker import Broker
from tests.harness.observer import Observer
from tests.harness.programme import ProgrammeFeed
from tests.harness.srt_listener import SrtListener

DEV = "c00001-r1"
COMMANDS = 1000
SETTLE_S = 3.0  # after birth: the box starts its spare media process 2 s after its start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def row(what: str, figure: str, budget: str = "", reference: str = "") -> None:
    """One figure: what, measured now, before the architecture step (if recorded), budget,
    and the reference measured in this run."""
    print(f"  {what:<44} {figure:<30} {before.FIGURES.get(what.strip(), ''):<30} {budget:<14} "
          f"{reference}")


def header() -> None:
    print(f"  {'what':<44} {'measured (now)':<30} {'before the step':<30} {'budget':<14} "
          "reference (same run)")
    print(f"  {'':<44} {'':<30} {before.LABEL:<30}")


class Pinger:
    """Sends commands one at a time and times each reply (publish → reply arrival)."""

    def __init__(self, broker: Broker, centre: CentreKey) -> None:
        self.centre = centre
        self._got = threading.Event()
        self._want = ""
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                   client_id=f"bench-{uuid.uuid4().hex[:6]}")
        self._client.on_message = self._on_message
        self._client.on_socket_open = lambda c, u, s: no_delay(s)
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(device_topic(DEV, "reply"), qos=1)
        self._client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        if decode(msg.payload, Reply).id == self._want:
            self._got.set()

    def round_trip_ms(self, topic: str, token: str, jti: str) -> float:
        self._want = jti
        self._got.clear()
        start = time.perf_counter()
        self._client.publish(topic, token, qos=1)
        if not self._got.wait(5):
            raise TimeoutError(f"no reply to {jti}")
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def echo_reference(broker: Broker, pinger: Pinger) -> list[float]:
    """The floor: a bare paho client that echoes each message back, no verification."""
    echo = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                       client_id="bench-echo")
    echo.on_socket_open = lambda c, u, s: no_delay(s)
    reply_topic = device_topic(DEV, "reply")

    def bounce(client, userdata, msg) -> None:  # noqa: ANN001
        jti = msg.payload.decode().split(":", 1)[0]
        client.publish(reply_topic, f'{{"id":"{jti}","cmd":"x","status":"succeeded","code":200,'
                                    f'"detail":"","ts":0}}', qos=1)

    echo.on_message = bounce
    echo.connect(broker.host, broker.port)
    echo.subscribe("bench/echo", qos=1)
    echo.loop_start()
    time.sleep(0.3)
    times = []
    for _ in range(COMMANDS):
        jti = uuid.uuid4().hex
        times.append(pinger.round_trip_ms("bench/echo", f"{jti}:ping", jti))
    echo.loop_stop()
    echo.disconnect()
    return times


def ledger_step_ms(directory: Path, synchronous: str, steps: int = 500) -> list[float]:
    """One command's durable step as the supervisor makes it: the id seen, its reply in the
    replay cache and in the outbox, committed; with the given SQLite ``synchronous``."""
    from diemcau.adapters.ledger import Ledger
    from diemcau.adapters.outbox import Outbox
    from diemcau.protocol import ReplayCache

    directory.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(directory / "ledger.sqlite")
    ledger.db.execute(f"PRAGMA synchronous={synchronous}")
    outbox, replay = Outbox(ledger.db, 2000), ReplayCache(ledger.db)
    times = []
    for n in range(steps):
        reply = Reply(id=f"c{n}", cmd="audio.volume", status="succeeded", code=200,
                      detail="volume 50%", ts=0.0)
        start = time.perf_counter()
        with ledger.transaction():
            replay.remember(reply.id or "", 4e9)
            replay.remember(reply.id or "", 4e9, reply)
            outbox.add(device_topic(DEV, "reply"), b"x" * 160)
        times.append((time.perf_counter() - start) * 1000)
    ledger.close()
    return times


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def box_processes(pid: int) -> list[psutil.Process]:
    """The box's processes: the control plane and its children (the media process)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def box_memory(pid: int) -> tuple[list[float], list[float]]:
    """RSS and PSS of each of the box's processes (control plane first), MB.

    A sum of RSS counts the pages the processes share (the interpreter, libc)
    once per process: the conservative reading, which the budget is held
    against. PSS splits a shared page between the processes that map it, so
    its sum counts each page once.
    """
    rss, pss = [], []
    for process in box_processes(pid):
        with contextlib.suppress(psutil.Error):
            full = process.memory_full_info()
            rss.append(full.rss / 1e6)
            pss.append(full.pss / 1e6)
    return rss, pss


def box_rss(pid: int) -> tuple[float, str]:
    """Summed RSS of all the box's processes, MB; and how it splits, with the PSS, as text."""
    rss, pss = box_memory(pid)
    split = " + ".join(f"{mb:.1f}" for mb in rss)
    return sum(rss), ((f"processes: {split} MB" if len(rss) > 1 else "one process")
                      + f"; PSS {sum(pss):.1f} MB")


def box_cpu_percent(pid: int, seconds: float) -> float:
    """CPU of all the box's processes over ``seconds`` (one core = 100)."""
    processes = box_processes(pid)

    def used() -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total

    before = used()
    time.sleep(seconds)
    return (used() - before) / seconds * 100


def both_directions(work: Path, broker: Broker, centre: CentreKey, observer: Observer,
                    seconds: float = 8.0) -> None:
    """The whole box live both ways: the room sent at 720p30 while the programme (720p25,
    H.264 + AAC from ``srt-live-transmit``) plays on its TV and speaker."""
    mic = make_microphone(work / "both-mic", seconds=60)
    speaker = make_speaker(work / "both-speaker", also=mic)
    screen = f'[screen]\nenabled = true\nvo = "null"\nspeaker = "{speaker.pcm}"\n'
    box = Box(work / "both", broker, centre, device_id=DEV, env=speaker.env, microphone=mic.pcm,
              extra=screen, health_interval_s=1.0)  # status each second: both seen flowing
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                      and b"ready" in m.payload, after=box.started_at, timeout=15)
    try:
        time.sleep(SETTLE_S)
        assert box.pid is not None
        idle_mb, split = box_rss(box.pid)
        row("idle with the TV on (idle screen): memory", f"{idle_mb:.1f} MB", "", split)
        with SrtListener(work / "both-media") as listener, \
                ProgrammeFeed(work / "both-programme", shape=screen_bench.SHAPE) as feed:
            listener.start()
            jti = observer.command(DEV, "meeting.join", {
                "meeting_id": "bench-both", "publish": listener.url, "play": feed.url,
                "profile": "720p30"})
            observer.wait_reply(DEV, jti, status="succeeded", timeout=20)
            time.sleep(5.0)
            assert box.pid is not None
            first = _last_status(observer)
            cpu = box_cpu_percent(box.pid, seconds)
            last = _last_status(observer)
            live_mb, split = box_rss(box.pid)
            sent = last.stream.frames_sent - first.stream.frames_sent
            shown = last.programme.frames_shown - first.programme.frames_shown
            row("live both ways: CPU (one core = 100%)", f"{cpu:.0f} %", "",
                f"720p30 up, 720p25 programme; in {seconds:.0f} s {sent} frames sent, "
                f"{shown} programme pictures shown")
            row("live both ways: resident memory, all", f"{live_mb:.1f} MB", "", split)
            leave = observer.command(DEV, "meeting.leave")
            observer.wait_reply(DEV, leave, status="succeeded", timeout=20)
    finally:
        box.stop()


def _last_status(observer: Observer) -> Status:
    return decode([m for m in observer.on(device_topic(DEV, "status")) if m.payload][-1].payload,
                  Status)


def command_round_trips(pinger: Pinger, centre: CentreKey, count: int) -> list[float]:
    topic = device_topic(DEV, "cmd")
    times = []
    for _ in range(count):
        jti = uuid.uuid4().hex
        token = centre.sign(DEV, "audio.volume", {"percent": 50}, jti=jti)
        times.append(pinger.round_trip_ms(topic, token, jti))
    return times


def main(argv: list[str] | None = None) -> int:
    options = media.parse_args(argv)  # --soak-minutes, for the media benchmarks
    work = Path(tempfile.mkdtemp(prefix="diemcau-bench-"))
    centre = CentreKey()
    print(f"diemcau benchmarks on {psutil.cpu_count()} cores; loopback; work files in {work}")
    print(f"Memory: the sum of RSS over all the box's processes (the budget's reading), PSS beside"
          f" it.\n{before.ABOUT}\n")
    header()
    with Broker(work / "broker") as broker:
        observer = Observer(broker, centre)
        mic = make_microphone(work / "mic", seconds=120)

        # Start → birth, a few times (each a fresh process).
        births = []
        for i in range(5):
            box = Box(work / f"start-{i}", broker, centre, device_id=DEV, env=mic.env,
                      microphone=mic.pcm)
            box.start()
            seen = observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                                     and b"ready" in m.payload, after=box.started_at, timeout=15)
            births.append(seen.at - box.started_at)
            box.stop()
        row("process start → birth published", f"median {statistics.median(births):.2f} s, "
            f"max {max(births):.2f} s", "≤ 1 s")

        box = Box(work / "box", broker, centre, device_id=DEV, env=mic.env, microphone=mic.pcm,
                  health_interval_s=30)
        box.start()
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                          and b"ready" in m.payload, after=box.started_at, timeout=15)
        time.sleep(SETTLE_S)
        assert box.pid is not None
        idle_mb, split = box_rss(box.pid)
        row("resident memory, idle before a meeting", f"{idle_mb:.1f} MB", "≤ 60 MB", split)

        full = ledger_step_ms(work / "ledger-full", "FULL")
        normal = ledger_step_ms(work / "ledger-normal", "NORMAL")
        row("a command's durable step (synchronous=FULL)",
            f"p50 {pct(full, 50):.2f} ms, p99 {pct(full, 99):.2f} ms", "",
            f"NORMAL (not power-cut safe): p50 {pct(normal, 50):.2f} ms, "
            f"p99 {pct(normal, 99):.2f} ms")

        pinger = Pinger(broker, centre)
        times = command_round_trips(pinger, centre, COMMANDS)
        reference = echo_reference(broker, pinger)
        row(f"command → reply ({COMMANDS} commands)",
            f"p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms", "≤ 25 ms p99",
            f"bare echo: p50 {pct(reference, 50):.2f} ms, p99 {pct(reference, 99):.2f} ms")

        with SrtListener(work / "media") as listener:
            listener.start()
            for profile in ("360p15", "720p30"):
                jti = observer.command(DEV, "meeting.join", {
                    "meeting_id": f"bench-{profile}", "publish": listener.url,
                    "profile": profile})
                sent = time.time()
                observer.wait_reply(DEV, jti, status="succeeded", timeout=20)
                joined_s = time.time() - sent
                time.sleep(5.0)
                cpu = box_cpu_percent(box.pid, 3.0)
                live_mb, split = box_rss(box.pid)
                row(f"live at {profile}: join → live reply", f"{joined_s:.2f} s")
                row(f"live at {profile}: resident memory, all", f"{live_mb:.1f} MB",
                    "≤ 120 MB" if profile == "720p30" else "", split)
                row(f"live at {profile}: CPU (one core = 100%)", f"{cpu:.0f} %")
                if profile == "720p30":
                    live = command_round_trips(pinger, centre, COMMANDS)
                    row(f"  command → reply while live ({COMMANDS})",
                        f"p50 {pct(live, 50):.2f} ms, p99 {pct(live, 99):.2f} ms", "≤ 25 ms p99")
                leave = observer.command(DEV, "meeting.leave")
                observer.wait_reply(DEV, leave, status="succeeded", timeout=20)
                listener.restart()
        time.sleep(1.0)
        after_mb, split = box_rss(box.pid)
        row("resident memory, idle after leaving", f"{after_mb:.1f} MB", "≤ 60 MB",
            f"{split}; before the meetings {idle_mb:.1f} MB")
        pinger.close()
        box.stop()
        both_directions(work, broker, centre, observer)
        observer.close()
    media.run(work / "media", options, row)
    screen_bench.run(work / "screen", row)  # the far end: playback beside mpv
    echo.bench(row)
    broker_bench.main([])
    # The centre at fleet scale: a broadcast's roll-call, reconnect storms, the web console.
    fleet_bench.main([])
    ingest_bench.main([])  # the centre's share of a broadcast, the boxes out of the way
    console_bench.main([])
    print(f"\nFigures only: nothing here is asserted. Memory soak: {options.soak_minutes:g} min"
          " live at 720p30 (--soak-minutes N for longer).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
