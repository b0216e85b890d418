"""What the web console's tests share: a manifest made in memory, and small talking boxes.

:class:`TalkingBox` is a handful of lines of the real protocol on a real broker: it
announces itself (retained state, meta, status; its will is ``lost``), checks every
command's signature with ``diemcau.protocol.verify_command`` and answers
``accepted`` then ``succeeded`` (or ``failed`` with a reason, if told to), and can
raise an alert. It stands in for a box where a test needs several and does not
look at media; the box itself is ``diemcau run`` (tests/harness/box.py).

:func:`headless_chromium` is Debian's chromium driven by selenium through chromedriver,
as the browser test and ``make demo`` use it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from diemcau.protocol import (
    Alert,
    CommandRejected,
    Health,
    Meta,
    Reply,
    Site,
    State,
    Status,
    alert_topic,
    device_topic,
    encode,
    group_cmd_topic,
    now_ts,
    public_key_from_text,
    verify_command,
)
from diemcau_centre.manifest import Device, Manifest, Place, SiteRecord

from .box import CentreKey
from .broker import Broker

PROVINCE_NAMES = {"p01": "Hà Nội", "p02": "Hà Giang", "p79": "TP Hồ Chí Minh"}


def place_of(index: int, province: str) -> tuple[str, str]:
    """A district and commune code for the index-th box of a province (distinct per province)."""
    number = int(province[1:])
    return f"d{number:03d}", f"c{number:03d}{index // 2:02d}"


def manifest_of(devices: dict[str, str]) -> Manifest:
    """A fleet manifest: device id -> province code; districts and communes made up."""
    records = {}
    for index, (dev, province) in enumerate(sorted(devices.items())):
        district, commune = place_of(index, province)
        site = SiteRecord(province=Place(province, PROVINCE_NAMES.get(province, province)),
                          district=Place(district, f"Huyện {district}"),
                          commune=Place(commune, f"Xã {commune}"), room=1,
                          room_name="Phòng họp 1")
        records[dev] = Device(id=dev, site=site, added_at=1.0)
    return Manifest(devices=records)


class TalkingBox:
    """One box speaking protocol v1 through paho; see the module docstring."""

    def __init__(self, broker: Broker, centre: CentreKey, device_id: str, site: SiteRecord, *,
                 firmware: str = "0.1.0", fail_with: str = "") -> None:
        self.device_id = device_id
        self.site = site
        self.firmware = firmware
        self.fail_with = fail_with
        self.commands: list[str] = []
        self._keys = {centre.kid: public_key_from_text(centre.public_text)}
        self._groups = [site.province.code, site.district.code, site.commune.code, "all"]
        self._session = int(time.time() * 1000) % 1_000_000
        self._ready = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                   protocol=mqtt.MQTTv5)
        self._client.will_set(device_topic(device_id, "state"),
                              encode(State(state="lost", session=self._session, ts=now_ts())),
                              qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port, clean_start=True)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{device_id} could not connect to the broker")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    props: object) -> None:
        dev = self.device_id
        client.subscribe([(device_topic(dev, "cmd"), 1)]
                         + [(group_cmd_topic(g), 1) for g in self._groups])
        site = Site(name=f"UBND {self.site.commune.name}", province=self.site.province.code,
                    district=self.site.district.code, commune=self.site.commune.code,
                    room=self.site.room_name)
        meta = Meta(model="test", serial=dev, firmware=self.firmware, capabilities=[],
                    site=site, groups=self._groups, config_version="test", ts=now_ts())
        self._publish("meta", meta, retain=True)
        self._publish("status", Status(meeting_state="idle", ts=now_ts()), retain=True)
        self._publish("state", State(state="ready", session=self._session, ts=now_ts()),
                      retain=True)
        self._ready.set()

    def _publish(self, kind: str, msg: object, retain: bool = False) -> None:
        self._client.publish(device_topic(self.device_id, kind), encode(msg),  # type: ignore[arg-type]
                             qos=1, retain=retain)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
                    ) -> None:
        audiences = {self.device_id} | {f"group:{g}" for g in self._groups}
        try:
            cmd = verify_command(bytes(message.payload), self._keys, audiences, now=time.time())
        except CommandRejected as exc:
            self._reply(exc.id, exc.cmd, exc.status, exc.code, exc.detail)
            return
        self.commands.append(cmd.cmd)
        self._reply(cmd.id, cmd.cmd, "accepted", 202, "working on it")
        if self.fail_with:
            self._reply(cmd.id, cmd.cmd, "failed", 502, self.fail_with)
            return
        if cmd.cmd == "meeting.join":
            meeting = str(cmd.args.get("meeting_id"))
            self._publish("status", Status(meeting_state="live", meeting_id=meeting,
                                           ts=now_ts()), retain=True)
            self._reply(cmd.id, cmd.cmd, "succeeded", 200, f"live in {meeting}")
        else:
            self._reply(cmd.id, cmd.cmd, "succeeded", 200, "done")

    def _reply(self, jti: str | None, cmd: str | None, status: str, code: int, detail: str
               ) -> None:
        self._publish("reply", Reply(id=jti, cmd=cmd, status=status, code=code,  # type: ignore[arg-type]
                                     detail=detail, ts=now_ts()))

    def raise_alert(self, code: str, detail: str, severity: str = "critical") -> None:
        self._client.publish(alert_topic(self.device_id, code),
                             encode(Alert(code=code, severity=severity,  # type: ignore[arg-type]
                                          detail=detail, since=now_ts())),
                             qos=1, retain=True)

    def report_health(self) -> None:
        """One health report, as a box sends every ``health.interval_s``."""
        self._publish("health", Health(seq=1, ts=now_ts(), uptime_s=60.0, cpu_percent=5.0,
                                       load_1m=0.1, memory_used_percent=20.0,
                                       memory_available_mb=3000.0, process_rss_mb=50.0,
                                       disk_free_mb=9000.0, disk_used_percent=10.0,
                                       interfaces=[]))

    def go_quiet(self) -> None:
        """Stop speaking but keep the connection: no will comes (as on a broker cluster that
        publishes none), the centre only stops hearing it."""
        self._client.loop_stop()

    def vanish(self) -> None:
        """Drop the connection without a word: the broker sends the will (``lost``)."""
        props = Properties(PacketTypes.DISCONNECT)
        self._client.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"),
                                properties=props)
        self._client.loop_stop()

    def close(self) -> None:
        # Clear what we retained, so a later test on the same broker starts clean.
        self._client.disconnect()
        self._client.loop_stop()


def write_centre_config(path: Path, port: int, *, key_file: Path | str | None = None,
                        fleet_dir: Path | None = None, extra: str = "",
                        tls: str = "enabled = false", host: str = "127.0.0.1") -> Path:
    """The centre's configuration file (docs/centre.md) for a local broker without TLS:
    ``key_file`` to sign commands (relative: beside the file), ``fleet_dir`` for a manifest,
    ``extra`` top-level lines."""
    top = f'{extra}\n' + (f'fleet_dir = "{fleet_dir}"\n' if fleet_dir is not None else "")
    signing = f'[signing]\nkey_file = "{key_file}"\n' if key_file is not None else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{top}[mqtt]\nhost = "{host}"\nport = {port}\n[mqtt.tls]\n{tls}\n'
                    f"{signing}")
    return path


def new_client_id() -> str:
    return f"centre-test-{uuid.uuid4().hex[:6]}"


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A selenium WebDriver on a headless chromium with a throwaway profile (Vietnamese)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="diemcau-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "--lang=vi"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def log_in(driver: object, url: str, user: str, password: str) -> None:
    """Fill the console's login form and submit it (the caller waits for what follows)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "username").send_keys(user)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "password").send_keys(password)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-button").click()  # type: ignore[attr-defined]
