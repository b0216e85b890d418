"""The centre's own share of a broadcast: how fast it takes in the fleet's replies.

Run at the end of ``make bench`` (after the fleet's figures), or alone:

    .venv/bin/python -m tests.bench.ingest [--boxes 10000] [--profile DIR]

Nothing is asserted. A broadcast's roll-call is timed in ``tests/bench/fleet.py``
with the simulated boxes on the same two cores as the centre; here the boxes
are out of the way, so the centre is measured alone. One Mosquitto with
production's lines; the receiver (the centre's ``Session``, its roll-call
subscriptions and ``RollCall.apply``, in a process of its own) connects and
subscribes, then is stopped (SIGSTOP) while a publisher puts one ``accepted``
and one ``succeeded`` reply per box (QoS 1) into the broker, which queues them
for it. Timed from its SIGCONT to its last message: the broker's delivery at
its in-flight window and the receiver's work, nothing else. Beside it, in the
same run, the same 2 replies a box into a bare paho subscriber (it counts and
does nothing else).

``--profile DIR`` writes cProfile statistics of the centre's two threads
(paho's network thread and the one that applies) there.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil

from diemcau.protocol import Reply, device_topic, encode, now_ts
from tests.bench.broker import PRODUCTION_AUTOSAVE
from tests.bench.broker import config as broker_config
from tests.harness.broker import Broker, free_port
from tests.harness.simulator import devices

PUBLISHERS = 4


def _replies(boxes: list[str], command_id: str) -> list[tuple[str, bytes]]:
    """What a meeting.join makes each box answer: accepted, then succeeded."""
    out = []
    for status, code in (("accepted", 202), ("succeeded", 200)):
        for dev in boxes:
            out.append((device_topic(dev, "reply"), encode(Reply(
                id=command_id, cmd="meeting.join", status=status, code=code,
                detail=f"{status} bao-so-3", ts=now_ts()))))
    return out


def _profiled_threads(directory: str) -> None:
    """Profile every thread started from now on (paho's), each into its own file."""
    import cProfile
    import threading

    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()
            profile.dump_stats(os.path.join(directory, f"centre-{self.name}.prof"))

    threading.Thread.run = profiled  # type: ignore[method-assign]


def _centre(host: str, port: int, boxes: list[str], command_id: str, pipe: Any,
            profile_dir: str) -> None:
    """The console's receive path, as in ``send``: Session, roll-call topics, RollCall."""
    from diemcau.config import Mqtt, Tls
    from diemcau_centre.mqtt import Received, Session
    from diemcau_centre.rollcall import RollCall
    from diemcau_centre.send import subscribe_roll_call

    profile = None
    if profile_dir:
        import cProfile

        _profiled_threads(profile_dir)
        profile = cProfile.Profile()
    session = Session(Mqtt(host=host, port=port, tls=Tls(enabled=False)),
                      f"centre-ingest-{uuid.uuid4().hex[:6]}")
    session.open()
    subscribe_roll_call(session)
    call = RollCall(command_id, "meeting.join", {dev: "p01" for dev in boxes})
    pipe.send("ready")
    first = last = 0.0
    messages = 0
    if profile:
        profile.enable()
    while not call.finished:
        got = session.receive(60)
        if got is None:
            break
        if isinstance(got, Received):
            messages += 1
            first = first or got.at
            last = got.at
            call.apply(got.topic, got.payload, got.at)
    if profile:
        profile.disable()
        profile.dump_stats(os.path.join(profile_dir, "centre-main.prof"))
    session.close()
    usage = os.times()
    pipe.send((messages, first, last, usage.user + usage.system,
               call.counts().succeeded))


def _bare(host: str, port: int, total: int, pipe: Any) -> None:
    """A bare paho subscriber: counts what comes, does nothing with it."""
    import threading

    done = threading.Event()
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        seen["n"] += 1
        seen["first"] = seen["first"] or now
        seen["last"] = now
        if seen["n"] >= total:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bare-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    client.subscribe(device_topic("+", "reply"), qos=1)
    time.sleep(0.5)
    pipe.send("ready")
    done.wait(120)
    client.disconnect()
    client.loop_stop()
    usage = os.times()
    pipe.send((seen["n"], seen["first"], seen["last"], usage.user + usage.system, None))


def _publish(host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    """Every message at QoS 1 from a few clients; returns when the broker has acknowledged all."""
    clients = []
    infos = []
    for k in range(PUBLISHERS):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{k}-{uuid.uuid4().hex[:4]}",
                        protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(0)
        c.connect(host, port)
        c.loop_start()
        clients.append(c)
    for n, (topic, payload) in enumerate(messages):
        infos.append(clients[n % PUBLISHERS].publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    for c in clients:
        c.disconnect()
        c.loop_stop()


def ingest(work: Path, boxes: int, receiver: str, profile_dir: str = "") -> tuple[float, float, float, int]:
    """(seconds from SIGCONT to last message, receiver CPU s, broker CPU s, messages)."""
    port = free_port()
    workdir = work / f"broker-{receiver}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    broker = Broker(workdir, port=port, config_text=broker_config(workdir, port, boxes,
                                                                    PRODUCTION_AUTOSAVE))
    broker.start()
    ctx = mp.get_context("spawn")
    ids = [dev for dev, _ in devices(boxes)]
    command_id = uuid.uuid4().hex
    messages = _replies(ids, command_id)
    parent, child = ctx.Pipe()
    if receiver == "centre":
        proc = ctx.Process(target=_centre, args=(broker.host, port, ids, command_id, child,
                                                  profile_dir), daemon=True)
    else:
        proc = ctx.Process(target=_bare, args=(broker.host, port, len(messages), child),
                           daemon=True)
    try:
        proc.start()
        if not parent.poll(60):
            raise TimeoutError(f"{receiver}: not ready in 60 s")
        parent.recv()
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGSTOP)
        _publish(broker.host, port, messages)
        time.sleep(0.5)  # the broker has queued the rest behind its in-flight window
        assert broker.pid is not None
        broker_process = psutil.Process(broker.pid)
        broker_before = sum(broker_process.cpu_times()[:2])
        resumed = time.time()
        os.kill(proc.pid, signal.SIGCONT)
        if not parent.poll(120):
            raise TimeoutError(f"{receiver}: not done in 120 s")
        got, _first, last, cpu, _succeeded = parent.recv()
        broker_cpu = sum(broker_process.cpu_times()[:2]) - broker_before
        proc.join(10)
        return last - resumed, cpu, broker_cpu, got
    finally:
        if proc.is_alive():
            proc.kill()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ingest",
                                     description="the centre's ingest of a fleet's replies, alone")
    parser.add_argument("--boxes", type=int, nargs="+", default=[10000])
    parser.add_argument("--profile", default="", help="write cProfile stats of the centre here")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="diemcau-bench-ingest-"))
    print(f"\nthe centre's ingest alone (2 replies a box, queued at the broker) on "
          f"{psutil.cpu_count()} cores; loadavg {os.getloadavg()[0]:.2f}", flush=True)
    for boxes in options.boxes:
        bare = ingest(work, boxes, "bare")
        centre = ingest(work, boxes, "centre", options.profile)
        print(f"  {2 * boxes} replies ({boxes} boxes): centre (Session + RollCall) "
              f"{centre[0]:.2f} s, its CPU {centre[1]:.1f} s, broker's {centre[2]:.1f} s "
              f"({centre[3]} messages)    bare paho subscriber {bare[0]:.2f} s, its CPU "
              f"{bare[1]:.1f} s, broker's {bare[2]:.1f} s", flush=True)
    print("Figures only: nothing here is asserted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
