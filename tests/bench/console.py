"""The operations web console at 10,000 boxes: ingest, first page, one update, CPU and memory.

Run at the end of ``make bench``, or alone:

    .venv/bin/python -m tests.bench.console [--boxes 10000]

Nothing is asserted. ``diemcau-centre console-web`` runs as an operator starts it
(its own process, SQLite by default), on a real Mosquitto without persistence (the
cost of the broker's own saving is tests/bench/broker.py's). Its database is filled
through the service's own path: every box's retained ``state``, ``meta`` and
``status`` (real protocol messages) published to the broker, read by the
service, written in batches. Beside it, in the same run, a bare paho subscriber
counts the same messages: what the broker and the client library alone take.

Then, measured from an HTTP client as the browser does it: the first page (the
fleet table of 10,000 boxes, paged on the server, with the summary by province), a
filtered page and a search; one update (a box changes its meeting status: from
the publish until the browser's event stream says so, and until the fragment it
fetches again is back; the console gathers changes for 0.5 s on purpose, shown
beside); the service's CPU while the whole fleet reports its health at the real
rate (every 30 s), and its memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx2 as httpx  # the package Starlette's TestClient uses (httpx2, not httpx)
import paho.mqtt.client as mqtt
import psutil
import sqlalchemy as sa

from diemcau.protocol import (
    Health,
    Meta,
    Site,
    State,
    Status,
    device_topic,
    encode,
    now_ts,
)
from diemcau_centre.manifest import Device, FleetStore, Manifest, Place, SiteRecord
from diemcau_centre.web.app import COALESCE_S
from diemcau_centre.web.store import FleetDb, Message, boxes
from tests.harness.box import CentreKey
from tests.harness.broker import Broker, free_port, wait_for_port
from tests.harness.console import write_centre_config
from tests.harness.process import stop_process

PASSWORD = "mat-khau-bench"
REPEATS = 20
HEALTH_INTERVAL_S = 30.0  # a box's default
HEALTH_WINDOW_S = 10.0


def row(what: str, figure: str, reference: str = "") -> None:
    print(f"  {what:<52} {figure:<34} {reference}")


def synthetic_fleet(count: int) -> Manifest:
    """``count`` boxes over 63 provinces, 10 districts each, 20 boxes per commune."""
    devices = {}
    for i in range(count):
        p, d, c = i % 63 + 1, (i // 63) % 10, i // 20
        dev = f"c{c:05d}-r{i % 20 + 1}"
        site = SiteRecord(province=Place(f"p{p:02d}", f"Tỉnh {p:02d}"),
                          district=Place(f"d{p * 10 + d:03d}", f"Huyện {p * 10 + d:03d}"),
                          commune=Place(f"c{c:05d}", f"Xã {c:05d}"), room=i % 20 + 1)
        devices[dev] = Device(id=dev, site=site, added_at=1.0)
    return Manifest(devices=devices)


def retained_messages(manifest: Manifest) -> list[tuple[str, bytes]]:
    out = []
    for dev, d in manifest.devices.items():
        s = d.site
        site = Site(name=f"UBND {s.commune.name}", province=s.province.code,
                    district=s.district.code, commune=s.commune.code, room=str(s.room))
        out.append((device_topic(dev, "meta"), encode(Meta(
            model="pi5", serial=dev, firmware="0.1.0", capabilities=[], site=site,
            groups=[*s.groups], config_version="1", ts=now_ts()))))
        out.append((device_topic(dev, "status"), encode(Status(meeting_state="idle",
                                                               ts=now_ts()))))
        out.append((device_topic(dev, "state"), encode(State(state="ready", session=1,
                                                             ts=now_ts()))))
    return out


def health(seq: int) -> bytes:
    return encode(Health(seq=seq, ts=now_ts(), uptime_s=3600, cpu_percent=20.0, load_1m=0.3,
                         memory_used_percent=30.0, memory_available_mb=3000.0,
                         process_rss_mb=90.0, disk_free_mb=9000.0, disk_used_percent=20.0,
                         interfaces=[], cpu_temperature_c=55.0))


def client(name: str, broker: Broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def publish_all(pub: mqtt.Client, messages: list[tuple[str, bytes]], retain: bool,
                qos: int = 1) -> None:
    infos = [pub.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)


def bare_subscriber_s(broker: Broker, messages: list[tuple[str, bytes]]) -> float:
    """The reference: a paho subscriber that only counts, for the same messages (not retained)."""
    got = threading.Event()
    count = [0]

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == len(messages):
            got.set()
    sub = client("bench-bare", broker)
    sub.on_message = on_message
    sub.subscribe("bench/bare/#", qos=1)
    time.sleep(0.3)
    pub = client("bench-pub", broker)
    start = time.monotonic()
    publish_all(pub, [(f"bench/bare/{t}", p) for t, p in messages], retain=False)
    got.wait(120)
    took = time.monotonic() - start
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return took


def wait_ready(url: str, count: int, timeout_s: float = 300) -> float:
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                n = conn.execute(sa.select(sa.func.count()).select_from(boxes)
                                 .where(boxes.c.state == "ready")).scalar_one()
            if n >= count:
                return time.monotonic()
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise TimeoutError(f"the service stored fewer than {count} ready boxes in {timeout_s} s")


def timed(http: httpx.Client, path: str) -> list[float]:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        r = http.get(path)
        r.raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"median {statistics.median(ordered):.0f} ms, "
            f"max {ordered[-1]:.0f} ms")


def ingest_alone(manifest: Manifest, messages: list[tuple[str, bytes]], work: Path
                 ) -> tuple[float, float]:
    """The service's ingest path without the broker: seconds for the retained messages, then
    for one health report from each box (batches as the service makes them)."""
    db = FleetDb(f"sqlite:///{work / 'alone.db'}")
    db.load_manifest(manifest)
    batch = 2000  # CentreService.batch_max
    times = []
    for msgs in (messages, [(device_topic(dev, "health"), health(1)) for dev in manifest.devices]):
        start = time.perf_counter()
        for i in range(0, len(msgs), batch):
            db.ingest([Message(t, p, time.time()) for t, p in msgs[i:i + batch]])
        times.append(time.perf_counter() - start)
    db.close()
    return times[0], times[1]


def run(boxes_count: int, work: Path) -> None:
    print(f"\nweb console (console-web, SQLite) at {boxes_count} boxes")
    manifest = synthetic_fleet(boxes_count)
    FleetStore(work).save(manifest)
    centre = CentreKey()
    key_file = centre.save(work / "centre-signing.key")
    url = f"sqlite:///{work / 'console.db'}"
    FleetDb(url).add_operator("bench", PASSWORD, "admin")
    messages = retained_messages(manifest)
    retained_s, health_s = ingest_alone(manifest, messages, work)
    row(f"store alone: {len(messages)} retained messages", f"{retained_s:.2f} s "
        f"({len(messages) / retained_s:.0f} msg/s)")
    row(f"store alone: {boxes_count} health reports", f"{health_s:.2f} s "
        f"({boxes_count / health_s:.0f} msg/s)")

    # A plain Mosquitto: production's saving after every change rewrites the whole
    # database each time (tests/bench/broker.py measures that); here it would hide the
    # console behind the broker's disk.
    broker_port = free_port()
    plain = f"listener {broker_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
    with Broker(work / "broker", port=broker_port, config_text=plain) as broker:
        config = write_centre_config(work / "centre.toml", broker.port, key_file=key_file,
                                     fleet_dir=work, host=broker.host)
        port = free_port()
        env = {**os.environ, "DIEMCAU_CONSOLE_DATABASE": url, "DIEMCAU_CENTRE_CONFIG": str(config)}
        proc = subprocess.Popen([sys.executable, "-m", "diemcau_centre", "console-web",
                                 "--listen", f"127.0.0.1:{port}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, timeout_s=60)
            service = psutil.Process(proc.pid)
            rss_idle = service.memory_info().rss
            cpu0 = service.cpu_times()
            pub = client("bench-fleet", broker)
            start = time.monotonic()
            publish_all(pub, messages, retain=True)
            done = wait_ready(url, boxes_count)
            cpu1 = service.cpu_times()
            ingest_s = done - start
            reference_s = bare_subscriber_s(broker, messages)
            row(f"through Mosquitto: {len(messages)} retained messages", f"{ingest_s:.2f} s "
                f"({len(messages) / ingest_s:.0f} msg/s)",
                f"bare paho subscriber: {reference_s:.2f} s")
            row("  service CPU for it", f"{(cpu1.user + cpu1.system - cpu0.user - cpu0.system):.2f}"
                " s")

            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            http.post("/login", data={"username": "bench", "password": PASSWORD})
            first = time.perf_counter()
            http.get("/fleet").raise_for_status()
            row(f"first page after login (/fleet, {boxes_count} rows paged)",
                f"{(time.perf_counter() - first) * 1000:.0f} ms")
            row("fleet page", ms(timed(http, "/fleet")))
            row("filtered page (province, ready, page 2)",
                ms(timed(http, "/fleet?province=p07&state=ready&page=2&fragment=1")))
            row("search (part of a site name)", ms(timed(http, "/fleet?search=00042&fragment=1")))
            row("summary by province", ms(timed(http, "/summary")))
            row("a box's page", ms(timed(http, f"/boxes/{next(iter(manifest.devices))}")))

            update_ms, fragment_ms = per_update(http, pub, list(manifest.devices)[:REPEATS])
            row("one update: publish -> browser told", ms(update_ms),
                f"of which gathering on purpose: {COALESCE_S * 1000:.0f} ms")
            row("  then the fleet fragment fetched again", ms(fragment_ms))

            rate = boxes_count / HEALTH_INTERVAL_S
            cpu_pct, sent = health_load(service, pub, list(manifest.devices), rate)
            row(f"service CPU, whole fleet reporting health ({rate:.0f}/s)",
                f"{cpu_pct:.0f} % of one core ({sent} reports)")
            row("service memory (RSS)", f"{service.memory_info().rss / 2**20:.0f} MiB",
                f"at start: {rss_idle / 2**20:.0f} MiB")
            db_size = sum(p.stat().st_size for p in work.glob("console.db*"))
            row("database on disk", f"{db_size / 2**20:.1f} MiB")
            pub.loop_stop()
            pub.disconnect()
            http.close()
        finally:
            stop_process(proc)


def per_update(http: httpx.Client, pub: mqtt.Client, devices: list[str]
               ) -> tuple[list[float], list[float]]:
    """Publish a status change, wait for the event stream to name the box; then refetch."""
    events: list[tuple[float, str]] = []
    seen = threading.Condition()
    stop = threading.Event()

    def listen() -> None:
        with http.stream("GET", "/events", timeout=None) as stream:
            for line in stream.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("data:"):
                    with seen:
                        events.append((time.perf_counter(), line))
                        seen.notify_all()
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(1.0)
    update, fragment = [], []
    for n, dev in enumerate(devices):
        status = encode(Status(meeting_state="live", meeting_id=f"hop-{n}", ts=now_ts()))
        start = time.perf_counter()
        pub.publish(device_topic(dev, "status"), status, qos=1, retain=True)
        with seen:
            ok = seen.wait_for(lambda d=dev, s=start: any(d in text for at, text in events
                                                          if at > s),
                               timeout=10)
        if not ok:
            continue
        arrived = next(at for at, text in events if at > start and dev in text)
        update.append((arrived - start) * 1000)
        f0 = time.perf_counter()
        http.get("/fleet?fragment=1").raise_for_status()
        fragment.append((time.perf_counter() - f0) * 1000)
        time.sleep(0.1)
    stop.set()
    return update, fragment


def health_load(service: psutil.Process, pub: mqtt.Client, devices: list[str], rate: float
                ) -> tuple[float, int]:
    """Health reports at ``rate`` per second for HEALTH_WINDOW_S; the service's CPU %."""
    cpu0, t0 = service.cpu_times(), time.monotonic()
    sent = 0
    while time.monotonic() - t0 < HEALTH_WINDOW_S:
        due = int((time.monotonic() - t0) * rate)
        while sent < due:
            dev = devices[sent % len(devices)]
            pub.publish(device_topic(dev, "health"), health(sent), qos=0)
            sent += 1
        time.sleep(0.01)
    time.sleep(1.0)  # what was sent is read and stored
    cpu1, t1 = service.cpu_times(), time.monotonic()
    used = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return used / (t1 - t0) * 100, sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[10_000])
    options = parser.parse_args(argv)
    for count in options.boxes:
        with tempfile.TemporaryDirectory(prefix="diemcau-console-bench-") as work:
            run(count, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
