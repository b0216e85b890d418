"""The web console over HTTP (Starlette's test client), its service on a real Mosquitto.

Three boxes that speak the protocol (two in province p01, one in p02); operators
``admin``, ``hanoi`` (p01) and ``hagiang`` (p02). A province login can neither see
nor command another province: each way in is tried.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from diemcau.config import Mqtt, Tls
from diemcau_centre.web.app import LoginGuard, make_app
from diemcau_centre.web.service import CentreService
from diemcau_centre.web.store import FleetDb, Scope
from tests.harness.box import CentreKey
from tests.harness.broker import Broker
from tests.harness.console import TalkingBox, manifest_of, new_client_id
from tests.harness.observer import Observer
from tests.harness.waiting import wait_until

FLEET = {"c00001-r1": "p01", "c00002-r1": "p01", "c00003-r1": "p02"}
PASSWORD = "mat-khau-thu-nghiem"




class Console:
    def __init__(self, tmp_path: Path, broker: Broker, centre: CentreKey, *,
                 silence_s: float = 90.0) -> None:
        manifest = manifest_of(FLEET)
        self.db = FleetDb(f"sqlite:///{tmp_path / 'console.db'}", silence_s=silence_s)
        self.db.load_manifest(manifest)
        for name, role, provinces in [("admin", "admin", []), ("hanoi", "province", ["p01"]),
                                      ("hagiang", "province", ["p02"])]:
            self.db.add_operator(name, PASSWORD, role, provinces)
        self.boxes = [TalkingBox(broker, centre, dev, d.site, fail_with="")
                      for dev, d in manifest.devices.items()]
        self.service = CentreService(self.db, Mqtt(host=broker.host, port=broker.port, tls=Tls(enabled=False)),
                                     new_client_id(), key=centre.private, kid=centre.kid,
                                     batch_s=0.05, sweep_s=0.2)
        self.service.start()
        self.app = make_app(self.db, self.service, secret_key="test-secret")
        wait_until(lambda: self.db.boxes_page(Scope.everything(), _ready()).total == 3)

    def client(self, username: str | None = None) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        client.__enter__()
        if username:
            r = client.post("/login", data={"username": username, "password": PASSWORD})
            assert r.status_code == 303, r.text
        return client

    def close(self) -> None:
        self.service.stop()
        for box in self.boxes:
            box.close()
        self.db.close()


def _ready():  # noqa: ANN202
    from diemcau_centre.web.store import BoxFilter
    return BoxFilter(state="ready")


@pytest.fixture
def console(tmp_path: Path, broker: Broker, centre: CentreKey) -> Iterator[Console]:
    c = Console(tmp_path, broker, centre)
    yield c
    c.close()


def csrf(client: TestClient) -> str:
    page = client.get("/fleet").text
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def test_every_page_needs_a_login(console: Console) -> None:
    client = console.client()
    for path in ["/fleet", "/boxes/c00001-r1", "/alerts", "/commands", "/audit", "/places/p01"]:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    assert client.get("/events").status_code == 401
    assert client.get("/fleet?fragment=1").status_code == 401
    r = client.post("/login", data={"username": "hanoi", "password": "sai-mat-khau"})
    assert r.status_code == 401 and "Sai tên hoặc mật khẩu" in r.text
    # A login form cannot send the operator to another site.
    r = client.post("/login?next=//evil.example/", data={"username": "hanoi",
                                                          "password": PASSWORD})
    assert r.headers["location"] == "/fleet"


def test_a_province_login_sees_only_its_province(console: Console) -> None:
    console.boxes[2].raise_alert("disk_low", "còn 100 MB")  # c00003-r1, p02
    wait_until(lambda: console.db.alerts_list(Scope.everything()))
    hanoi = console.client("hanoi")
    fleet = hanoi.get("/fleet").text
    assert "c00001-r1" in fleet and "c00002-r1" in fleet and "c00003-r1" not in fleet
    assert "Hà Nội" in fleet and "Hà Giang" not in fleet
    assert "c00003-r1" not in hanoi.get("/fleet?search=c00003&fragment=1").text
    for path in ["/fleet?province=p02", "/boxes/c00003-r1", "/places/p02", "/places/d002",
                 "/broadcast?province=p02"]:
        assert hanoi.get(path).status_code == 404, path
    assert "disk_low" not in hanoi.get("/alerts").text
    r = hanoi.post("/alerts/ack", data={"device": "c00003-r1", "code": "disk_low",
                                        "csrf": csrf(hanoi)})
    assert r.status_code == 404
    assert console.db.alerts_list(Scope.everything())[0]["acked_by"] is None
    assert hanoi.get("/audit").status_code == 403
    # The province's own operator sees it and acknowledges it.
    hagiang = console.client("hagiang")
    assert "disk_low" in hagiang.get("/alerts").text
    r = hagiang.post("/alerts/ack", data={"device": "c00003-r1", "code": "disk_low",
                                          "csrf": csrf(hagiang), "next": "/alerts"})
    assert r.status_code == 303
    assert "Đã xác nhận bởi hagiang" in hagiang.get("/alerts").text


def test_a_province_login_cannot_command_another_province(console: Console,
                                                           broker: Broker) -> None:
    observer = Observer(broker)
    try:
        hanoi = console.client("hanoi")
        token = csrf(hanoi)
        join = {"cmd": "meeting.join", "meeting.join:meeting_id": "hop-bao",
                "meeting.join:publish": "srt://127.0.0.1:9000?streamid=publish:x",
                "csrf": token}
        for target in [{"province": "p02"}, {"district": "d002"}, {"commune": "c00200"},
                       {"search": "c00003"}]:
            r = hanoi.post("/broadcast", data={**join, **target})
            assert r.status_code in (400, 404), (target, r.status_code)
        assert hanoi.post("/broadcast", data={**join, "province": "p01", "csrf": "forged"}
                          ).status_code == 403
        # Bad arguments are refused as `send` refuses them, before anything is sent.
        r = hanoi.post("/broadcast", data={**join, "province": "p01",
                                           "meeting.join:publish": ""})
        assert r.status_code == 400 and "publish" in r.text
        assert console.db.commands_list(Scope.everything()) == []
        # An admin's group of the whole country is not a province operator's either.
        assert hanoi.post("/broadcast", data=join).status_code == 303  # their p01 boxes only
        time.sleep(0.5)
        sent = [m.topic for m in observer.messages if m.topic.endswith("/cmd")]
        assert sent and all("c00003-r1" not in t and "group" not in t for t in sent), sent
        assert console.boxes[2].commands == []
    finally:
        observer.close()


def test_a_join_to_a_province_fills_its_roll_call(console: Console) -> None:
    hanoi = console.client("hanoi")
    r = hanoi.post("/broadcast", data={
        "cmd": "meeting.join", "province": "p01", "csrf": csrf(hanoi),
        "meeting.join:meeting_id": "hop-bao",
        "meeting.join:publish": "srt://127.0.0.1:9000?streamid=publish:x"})
    assert r.status_code == 303, r.text
    jti = r.headers["location"].rsplit("/", 1)[1]
    roll = wait_until(lambda: (lambda rc: rc if rc and rc.complete else None)(
        console.db.rollcall(Scope.everything(), jti)))
    c = roll.report.counts  # type: ignore[attr-defined]
    assert (roll.target, c.expected, c.succeeded, c.failed, c.silent) == (  # type: ignore[attr-defined]
        "group:p01", 2, 2, 0, 0)
    page = hanoi.get(f"/commands/{jti}").text
    assert re.search(r'id="rc-succeeded">2<', page) and "Mọi điểm cầu đã trả lời" in page
    assert console.boxes[2].commands == []
    # The boxes' new status came back through the service.
    wait_until(lambda: console.db.summary(Scope.everything())[0]["live"] == 2)
    # Who sent it is recorded; the other province sees neither the command nor its roll-call.
    admin = console.client("admin")
    assert "hanoi" in admin.get("/audit").text and "group:p01" in admin.get("/audit").text
    hagiang = console.client("hagiang")
    assert hagiang.get(f"/commands/{jti}").status_code == 404
    assert jti not in hagiang.get("/commands").text


def test_a_box_page_shows_its_alerts_and_timeline(console: Console) -> None:
    console.boxes[0].raise_alert("temperature_high", "83 °C")
    wait_until(lambda: console.db.alerts_list(Scope.everything()))
    admin = console.client("admin")
    page = admin.get("/boxes/c00001-r1").text
    assert "Trực tuyến" in page and "temperature_high" in page and "83 °C" in page
    assert "Xác nhận" in page
    assert admin.get("/boxes/c09999-r1").status_code == 404
    place = admin.get("/places/p01").text
    assert "Huyện" in place and "c00001-r1" in place


def test_a_box_that_stops_speaking_without_a_will_is_shown_gone(tmp_path: Path, broker: Broker,
                                                                centre: CentreKey) -> None:
    console = Console(tmp_path, broker, centre, silence_s=1.5)
    told: list[set[str]] = []
    console.service.add_listener(lambda changes: told.append(set(changes.devices)))
    try:
        quiet, talking = console.boxes[0], console.boxes[1]  # c00001-r1, c00002-r1 (p01)
        quiet.go_quiet()
        admin = console.client("admin")

        def ready_devices() -> list[str]:
            return [r["device"] for r in console.db.boxes_page(Scope.everything(), _ready()).rows]

        def gone_shown() -> bool:
            talking.report_health()
            page = admin.get("/fleet?province=p01&fragment=1").text
            # Both: on a slow machine the first look may come before the talking box's first
            # report is stored, when it too has been quiet past the bound.
            return "Mất liên lạc, nghe lần cuối lúc" in page and "c00002-r1" in ready_devices()

        wait_until(gone_shown)
        assert "c00001-r1" not in ready_devices()
        # Nothing came from it: the service's sweep tells the browsers.
        wait_until(lambda: any("c00001-r1" in devices for devices in told), 3.0)
        assert 'class="gone-count warn">1<' in admin.get("/summary").text
        assert "Mất liên lạc: nghe lần cuối lúc" in admin.get("/boxes/c00001-r1").text
    finally:
        console.close()


def test_failed_logins_are_limited_per_name_and_per_address(console: Console) -> None:
    app = make_app(console.db, None, secret_key="test-secret",
                   login_guard=LoginGuard(per_user="3 per 15 minutes",
                                          per_address="5 per 15 minutes"))

    def attempt(username: str, password: str, address: str) -> Any:  # noqa: ANN401
        with TestClient(app, follow_redirects=False, client=(address, 40000)) as client:
            return client.post("/login", data={"username": username, "password": password})

    # A success clears its name's failures: two wrong, one right, two wrong still pass.
    for password in ["sai-1", "sai-2", PASSWORD, "sai-3", "sai-4"]:
        assert attempt("hanoi", password, "10.0.0.1").status_code in (303, 401)
    assert attempt("hanoi", "sai-5", "10.0.0.1").status_code == 401  # the 3rd in a row
    # Locked: even the right password is not tried, from any address.
    r = attempt("hanoi", PASSWORD, "10.0.0.2")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 60
    assert "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau 15 phút." in r.text
    # Another name may, from an address with no failures; not from one with five.
    assert attempt("admin", PASSWORD, "10.0.0.2").status_code == 303
    assert attempt("admin", PASSWORD, "10.0.0.1").status_code == 429  # the address is locked
    # Trying many names from one address: locked after five.
    for n in range(5):
        assert attempt(f"ai-do-{n}", "sai", "10.0.0.3").status_code == 401
    assert attempt("hagiang", PASSWORD, "10.0.0.3").status_code == 429
    assert attempt("hagiang", PASSWORD, "10.0.0.4").status_code == 303
    locked = [(a["operator"], a["detail"]) for a in console.db.audit_list()
              if a["action"] == "login_locked"]
    assert ("hanoi", "too many failed logins (from 10.0.0.1)") in locked
    assert ("ai-do-4", "too many failed logins (from 10.0.0.3)") in locked


def test_a_broadcast_after_the_broker_restarted_goes_out(console: Console, broker: Broker
                                                         ) -> None:
    """The sending connection saw the drop and came back by itself: the next command goes
    out (it does not stop at the drop that is over)."""
    broker.restart()
    wait_until(lambda: console.service.connected
               and all(box._client.is_connected() for box in console.boxes), timeout_s=15)
    hanoi = console.client("hanoi")
    r = hanoi.post("/broadcast", data={
        "cmd": "meeting.invite", "province": "p01", "csrf": csrf(hanoi),
        "meeting.invite:meeting_id": "hop-sau-khi-khoi-dong-lai"})
    assert r.status_code == 303, r.text
    jti = r.headers["location"].rsplit("/", 1)[1]
    roll = wait_until(lambda: (lambda rc: rc if rc and rc.complete else None)(
        console.db.rollcall(Scope.everything(), jti)))
    assert roll.report.counts.succeeded == 2  # type: ignore[attr-defined]
