"""The centre at fleet scale: a broadcast's roll-call, and reconnect storms.

Run at the end of ``make bench``, or alone:

    .venv/bin/python -m tests.bench.fleet [--boxes 2000 10000] [--tls]

Nothing is asserted. Every figure is taken on one Mosquitto with production's
persistence and queue lines (``durability_lines`` for the fleet's size), with
simulated boxes (``tests/harness/simulator.py``) in a few processes on the same
two cores as the broker and the centre, so the boxes' own work (answering,
and checking the signature: see below) is in the figures too.

1. **broadcast**: the centre (the console's own ``Session`` and ``RollCall``)
   sends one signed ``meeting.join`` to ``group:all``; timed from its publish to
   the last box's first answer (``accepted``) and to the last final answer.
   Beside them: the CPU seconds of the broker, the centre and the boxes over the
   broadcast, and its timeline from the centre's publish: when the first and
   the last box got the command, when the last ``accepted`` and the last final
   answer left a box. Twice: with the signature of the group command checked
   once a simulated process (each box still checks the audience), and with
   every box checking it, as a real box does on its own CPU; on a real fleet
   that work is spread over 10,000 CPUs, here it is on the same two cores as
   the rest. Beside them, in the same run, Mosquitto's own fan-out: the same
   publish to as many bare subscribers (no checking, no answer), timed to the
   last delivery. The centre's own share, measured with the boxes out of the
   way, is in ``tests/bench/ingest.py``.
2. **reconnect storm**: the broker restarts (a clean stop, then a start); timed
   from the stop to the last box back, with ``reconnect_spread_s`` 0 and with a
   window; the busiest second's connections beside it.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from diemcau.config import Mqtt, Tls
from diemcau.protocol import (
    generate_signing_key,
    group_cmd_topic,
    key_id,
    public_key_to_text,
    sign_command,
)
from diemcau_centre.mqtt import Received, Session
from diemcau_centre.rollcall import RollCall
from diemcau_centre.send import subscribe_roll_call
from tests.bench.broker import PRODUCTION_AUTOSAVE
from tests.bench.broker import config as broker_config
from tests.harness.broker import Broker, free_port
from tests.harness.simulator import Fleet, FleetSettings, devices

PROCESSES = 4  # the storm's
# The broadcast's boxes: one process a core. With 4 on 2 cores the same broadcast took
# 0.5 s longer and more CPU (more wake-ups, fewer ready sockets a turn of each loop).
BROADCAST_PROCESSES = psutil.cpu_count() or 2
PRODUCTION = "production broker lines"
AUTOSAVE = {
    PRODUCTION: PRODUCTION_AUTOSAVE,  # a save every BROKER_SAVE_S
    "save after every change (before)": ["autosave_on_changes true", "autosave_interval 1"],
}


# Each box checks the command's signature, as a real box does, on its own CPU; the
# simulated boxes share two cores, so the default checks a group command once a process
# (the audience is still checked per box), and the other row keeps the full cost in.
VERIFY = {"signature checked once a process": True, "every box checks the signature": False}


def _row(what: str, figure: str, reference: str = "") -> None:
    print(f"  {what:<58} {figure:<70} {reference}", flush=True)


def _broker(work: Path, boxes: int, autosave: list[str], tls: bool = False) -> Broker:
    port = free_port()
    workdir = work / f"broker-{boxes}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    text = broker_config(workdir, port, boxes, autosave)
    if tls:
        from tests.harness.broker import make_test_ca

        ca, cert, key = make_test_ca(workdir / "tls")
        text += f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        (workdir / "ca").write_text(str(ca))
    return Broker(workdir, port=port, config_text=text)


def _cpu(processes: list[psutil.Process]) -> float:
    """CPU seconds (user and system) the processes have used so far."""
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def broadcast(work: Path, boxes: int, autosave_name: str, *, verify_once: bool = True,
              processes: int = BROADCAST_PROCESSES) -> tuple[str, str]:
    """The centre's roll-call of one meeting.join to ``boxes``; then the bare fan-out."""
    key = generate_signing_key()
    kid = key_id(key.public_key())
    fleet_boxes = devices(boxes)
    broker = _broker(work, boxes, AUTOSAVE[autosave_name])
    broker.start()
    try:
        settings = FleetSettings(broker.host, broker.port, fleet_boxes,
                                 {kid: public_key_to_text(key.public_key())}, join_s=0.2,
                                 verify_once=verify_once)
        with Fleet(settings, processes=processes) as fleet:
            session = Session(Mqtt(host=broker.host, port=broker.port, tls=Tls(enabled=False)),
                              f"centre-bench-{uuid.uuid4().hex[:6]}")
            session.open()
            subscribe_roll_call(session)
            expected = {dev: groups[0] for dev, groups in fleet_boxes}
            jti = uuid.uuid4().hex
            token = sign_command(key, kid, aud="group:all", cmd="meeting.join",
                                 args={"meeting_id": "bao-so-3",
                                       "publish": "srt://127.0.0.1:9000"}, jti=jti)
            call = RollCall(jti, "meeting.join", expected)
            watched = {"broker": [psutil.Process(broker.pid)] if broker.pid else [],
                       "centre": [psutil.Process()],
                       "boxes": [psutil.Process(pid) for pid in fleet.pids]}
            before = {name: _cpu(ps) for name, ps in watched.items()}
            sent_wall = time.time()
            sent = session.publish(group_cmd_topic("all"), token, qos=1, expiry_s=120)
            all_acked = None
            deadline = sent + 600
            while not call.finished and time.monotonic() < deadline:
                got = session.receive(deadline - time.monotonic())
                if isinstance(got, Received):
                    call.apply(got.topic, got.payload, got.at)
                    if all_acked is None and call.counts().answered == boxes:
                        all_acked = got.at_mono - sent
            final = time.monotonic() - sent
            counts = call.counts()
            used = ", ".join(f"{name} {_cpu(ps) - before[name]:.1f}"
                             for name, ps in watched.items())
            session.close()
            stats = fleet.stats()
        figure = (f"all acked {all_acked:.2f} s, all final {final:.2f} s" if all_acked
                  else f"{counts.answered} of {boxes} acked in {final:.0f} s")
        figure += f"; CPU s: {used}"
        # Where the time went, from the centre's publish (one clock: one machine).
        figure += (f"; boxes got it {stats.first_message_at - sent_wall:.2f}-"
                   f"{stats.last_message_at - sent_wall:.2f} s, last accepted out "
                   f"{stats.last_accepted_at - sent_wall:.2f} s, last final out "
                   f"{stats.last_final_at - sent_wall:.2f} s")
    finally:
        broker.stop()

    # Mosquitto's own fan-out: the same publish, as many bare subscribers.
    broker = _broker(work, boxes, AUTOSAVE[autosave_name])
    broker.start()
    try:
        settings = FleetSettings(broker.host, broker.port, fleet_boxes, {}, bare=True)
        with Fleet(settings, processes=processes) as bare:
            time.sleep(0.5)
            session = Session(Mqtt(host=broker.host, port=broker.port, tls=Tls(enabled=False)),
                              f"centre-bench-{uuid.uuid4().hex[:6]}")
            session.open()
            at = time.time()
            session.publish(group_cmd_topic("all"), token, qos=1, expiry_s=120)
            stats = bare.wait(lambda s: s.received >= boxes, 600, "all delivered", 0.02)
            reference = f"Mosquitto bare fan-out: last delivery {stats.last_message_at - at:.2f} s"
            session.close()
    finally:
        broker.stop()
    return figure, reference


def storm(work: Path, boxes: int, spread_s: float, tls: bool) -> str:
    """Every box's connection lost at once (the broker restarts): until all are back."""
    broker = _broker(work, boxes, AUTOSAVE[PRODUCTION], tls=tls)
    broker.start()
    try:
        ca = (broker.workdir / "ca").read_text() if tls else ""
        settings = FleetSettings(broker.host, broker.port, devices(boxes), {},
                                 reconnect_spread_s=spread_s, reconnect_min_s=1.0,
                                 reconnect_max_s=120.0, ca_file=ca, will_delay_s=10)
        with Fleet(settings, processes=PROCESSES) as fleet:
            fleet.mark_reconnect()
            start = time.time()
            broker.restart()
            restarted = time.time() - start
            assert broker.pid is not None
            process = psutil.Process(broker.pid)
            stats = fleet.wait(lambda s: s.connected >= boxes and len(s.connect_times) >= boxes,
                               900, "all back", 0.2)
            # The broker's CPU per connection taken back (its restart's own work included).
            broker_ms = _cpu([process]) / boxes * 1000
            back = max(stats.connect_times) - start
            per_second = collections.Counter(int(t - start) for t in stats.connect_times)
            busiest = max(per_second.values())
        return (f"all back {back:.1f} s (broker down {restarted:.1f} s); busiest second "
                f"{busiest} connections; broker CPU {broker_ms:.2f} ms a connection")
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet",
                                     description="the centre at fleet scale")
    parser.add_argument("--boxes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--spread", type=float, default=10.0,
                        help="the reconnect window to compare with none (default 10 s)")
    parser.add_argument("--tls", action="store_true", help="the storm over TLS")
    parser.add_argument("--skip", nargs="*", default=[], choices=["broadcast", "storm"])
    parser.add_argument("--autosave", nargs="+", default=list(AUTOSAVE), choices=list(AUTOSAVE),
                        help="the broker's save settings to broadcast with (default: all)")
    parser.add_argument("--processes", type=int, default=BROADCAST_PROCESSES,
                        help="processes of simulated boxes for the broadcast (default: one a "
                             f"core, {BROADCAST_PROCESSES}; the storm's are {PROCESSES})")
    parser.add_argument("--verify", nargs="+", default=list(VERIFY), choices=list(VERIFY),
                        help="who checks the command's signature (default: both, with the "
                             "production lines)")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="diemcau-bench-fleet-"))
    print(f"\nthe centre at fleet scale on {psutil.cpu_count()} cores; simulated boxes in "
          f"{options.processes} processes (broadcast), {PROCESSES} (storm); loopback; "
          f"files in {work}; "
          f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    if "broadcast" not in options.skip:
        for boxes in options.boxes:
            for name in options.autosave:
                for verify in options.verify if name == PRODUCTION else options.verify[:1]:
                    figure, reference = broadcast(work, boxes, name,
                                                  verify_once=VERIFY[verify],
                                                  processes=options.processes)
                    _row(f"broadcast meeting.join to {boxes}, {name}, {verify}", figure,
                         reference)
    if "storm" not in options.skip:
        for boxes in options.boxes:
            for spread in (0.0, options.spread):
                figure = storm(work, boxes, spread, options.tls)
                _row(f"broker restart, {boxes} boxes, spread {spread:g} s"
                     f"{' (TLS)' if options.tls else ''}", figure)
    print("Figures only: nothing here is asserted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
