"""The broker's persistence: what each way of saving costs.

Run at the end of ``make bench``, or alone:

    .venv/bin/python -m tests.bench.broker [--boxes 2000 10000]

Nothing is asserted. For each fleet size, Mosquitto runs the production
settings (``durability_lines`` of ``diemcau-centre broker-config``) with the
autosave setting replaced by each of the variants below, on the same disk as
the rest of the bench. Its database first gets what a fleet keeps there:
every box's retained ``state``, ``meta`` and ``status`` (real protocol
messages), and the persistent session of every box. Then, timed:

1. **replies**: one reply from each of 1,000 boxes (20 publishing clients,
   QoS 1) to the centre's subscriber, online: until the last reply is
   received, and until the centre's next publish is acknowledged (Mosquitto
   reads one packet per connection per turn of its loop; saving after each
   turn that changed something puts the centre's acknowledgements of those
   replies behind the saves);
2. **commands to offline boxes**: one signed-size command (QoS 1) to each of
   200 offline boxes with persistent sessions, one after another, each
   waited for (as ``diemcau-centre send`` does); from the first publish to
   the last acknowledgement.

Beside each time: how many times Mosquitto saved (its log), the bytes it
wrote to the disk (``/proc/PID/io``), and the database's size.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from diemcau.protocol import (
    BROKER_SAVE_S,
    Meta,
    Reply,
    Site,
    State,
    Status,
    device_topic,
    encode,
    now_ts,
)
from diemcau_centre.broker_config import durability_lines
from tests.harness.broker import Broker, free_port

BEFORE = "every 300 s (long ago)"
# The autosave lines production runs now (a timer), as broker-config writes them.
PRODUCTION_AUTOSAVE = [line for line in durability_lines(0) if line.startswith("autosave_")]
VARIANTS: dict[str, list[str]] = {
    BEFORE: ["autosave_interval 300"],
    f"every {BROKER_SAVE_S} s (production)": PRODUCTION_AUTOSAVE,
    "every 100 changes": ["autosave_on_changes true", "autosave_interval 100"],
    "every change (until the timer)": ["autosave_on_changes true", "autosave_interval 1"],
}
PUBLISHERS = 20
REPLIES = 1000
OFFLINE_BOXES = 200
COMMAND_BYTES = 1000  # a signed meeting.join is about this size
SAVE_LINE = "Saving in-memory database"


def config(workdir: Path, port: int, boxes: int, autosave: list[str]) -> str:
    """The test broker's configuration, production's durability lines with ``autosave``."""
    lines = [line for line in durability_lines(boxes) if not line.startswith("autosave_")]
    return "\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous true",
        f"persistence_location {workdir}/", *lines, *autosave,
        f"log_dest file {workdir / 'mosquitto.log'}", "log_type error", "log_type warning",
        "log_type notice", "log_type information", "set_tcp_nodelay true",
        f"user {pwd.getpwuid(os.getuid()).pw_name}", "",
    ])


def dev_id(i: int) -> str:
    return f"c{i:05d}-r1"


def retained(i: int) -> list[tuple[str, bytes]]:
    dev, ts = dev_id(i), now_ts()
    site = Site(name=f"UBND xã số {i}, Phòng họp 1", province="p01", district="d001",
                commune=f"c{i:05d}", room="Phòng họp 1")
    meta = Meta(model="Raspberry Pi 4 Model B Rev 1.5", serial=f"10000000{i:08x}",
                firmware="0.1.0", capabilities=["camera", "microphone", "speaker", "gpio"],
                site=site, groups=["p01", "d001", f"c{i:05d}", "all"],
                config_version="3f2a9c0d", ts=ts)
    return [(device_topic(dev, "state"), encode(State(state="ready", session=7, ts=ts))),
            (device_topic(dev, "meta"), encode(meta)),
            (device_topic(dev, "status"), encode(Status(meeting_state="idle", ts=ts)))]


def client(broker: Broker, client_id: str, *, session: bool = False) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    props = None
    if session:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
    c.connect(broker.host, broker.port, clean_start=not session, properties=props)
    c.loop_start()
    return c


def publish_all(c: mqtt.Client, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
    infos = [c.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)


class Disk:
    """Mosquitto's saves (from its log) and bytes written (from /proc), since ``mark``."""

    def __init__(self, broker: Broker, pid: int) -> None:
        self.broker, self.process = broker, psutil.Process(pid)
        self.mark()

    def mark(self) -> None:
        self.saves = self.broker.log_text().count(SAVE_LINE)
        self.written = self.process.io_counters().write_bytes

    def since(self) -> str:
        saves = self.broker.log_text().count(SAVE_LINE) - self.saves
        mb = (self.process.io_counters().write_bytes - self.written) / 1e6
        return f"{saves} saves, {mb:.1f} MB written"


def run(work: Path, boxes: int, name: str, autosave: list[str], row) -> None:  # noqa: ANN001
    port = free_port()
    workdir = work / f"{boxes}-{name.split()[1]}"
    # Fill the database under the cheap setting (filling it under the chosen
    # one takes minutes), save it with a clean stop, then time the variant.
    broker = Broker(workdir, port=port, config_text=config(workdir, port, boxes, VARIANTS[BEFORE]))
    broker.start()
    fleet = client(broker, "fleet")
    publish_all(fleet, [m for i in range(boxes) for m in retained(i)], retain=True)
    offline = [client(broker, dev_id(i), session=True) for i in range(OFFLINE_BOXES)]
    subscribed = [box.subscribe(device_topic(dev_id(i), "cmd"), qos=1)
                  for i, box in enumerate(offline)]
    assert all(rc == mqtt.MQTT_ERR_SUCCESS for rc, _ in subscribed)
    time.sleep(1.0)
    for box in offline:
        box.disconnect()
        box.loop_stop()
    fleet.disconnect()
    fleet.loop_stop()
    broker.stop()
    db = workdir / "mosquitto.db"
    size_mb = db.stat().st_size / 1e6 if db.exists() else 0.0
    broker = Broker(workdir, port=port, config_text=config(workdir, port, boxes, autosave))
    broker.start()
    try:
        pid = broker.pid
        assert pid is not None
        # 1. A reply from each of REPLIES boxes to the centre, online; then how
        # long until the centre's next publish is acknowledged (the broker has
        # taken the centre's acknowledgements of all of them).
        got = threading.Semaphore(0)
        centre = client(broker, "centre")
        centre.on_message = lambda c, u, m: got.release()
        centre.subscribe(device_topic("+", "reply"), qos=1)
        publishers = [client(broker, f"pub-{k}") for k in range(PUBLISHERS)]
        time.sleep(0.5)
        disk = Disk(broker, pid)
        start = time.perf_counter()
        for i in range(REPLIES):
            reply = Reply(id=uuid.uuid4().hex, cmd="audio.mute", status="succeeded", code=200,
                          detail="muted", ts=now_ts())
            publishers[i % PUBLISHERS].publish(device_topic(dev_id(i), "reply"), encode(reply),
                                               qos=1)
        received = sum(got.acquire(timeout=600) for _ in range(REPLIES))
        received_s = time.perf_counter() - start
        centre.publish("bench/after", b"x", qos=1).wait_for_publish(900)
        free_s = time.perf_counter() - start
        row(f"{boxes} boxes, {name}: {REPLIES} replies",
            f"{received} in {received_s:.2f} s; centre free after {free_s:.2f} s",
            disk.since(), f"db {size_mb:.1f} MB")

        # 2. Commands to offline boxes, one at a time (each acknowledged).
        disk.mark()
        start = time.perf_counter()
        payload = b"x" * COMMAND_BYTES
        for i in range(OFFLINE_BOXES):
            centre.publish(device_topic(dev_id(i), "cmd"), payload, qos=1).wait_for_publish(60)
        commands_s = time.perf_counter() - start
        row(f"{boxes} boxes, {name}: {OFFLINE_BOXES} commands queued",
            f"{commands_s / OFFLINE_BOXES * 1000:.1f} ms each ({commands_s:.2f} s)",
            disk.since())
        for c in [centre, *publishers]:
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


def main(argv: list[str] | None = None, row=None) -> int:  # noqa: ANN001
    parser = argparse.ArgumentParser(prog="python -m tests.bench.broker",
                                     description="the broker's persistence, its cost")
    parser.add_argument("--boxes", type=int, nargs="+", default=[2000, 10000])
    options = parser.parse_args(argv)
    if row is None:
        def row(what: str, figure: str, budget: str = "", reference: str = "") -> None:
            print(f"  {what:<52} {figure:<44} {budget:<28} {reference}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="diemcau-bench-broker-"))
    print(f"\nbroker persistence on {psutil.cpu_count()} cores; loopback; files in {work}")
    row("what", "measured", "saves and writes", "database")
    for boxes in options.boxes:
        for name, autosave in VARIANTS.items():
            run(work, boxes, name, autosave, row)
    print("Figures only: nothing here is asserted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
