"""The operations web console in a real browser: Debian's chromium, headless, via chromedriver.

``diemcau-centre console-web`` runs as the operator starts it (its own process, a
configuration file, the fleet manifest, the centre's signing key), on a real
Mosquitto with boxes that speak the protocol: four in province p01 (one of them
fails to join, with a reason), one of p01 that never comes (silent), one in p02.

The province operator logs in, filters the fleet to p01, sends a join to it and
watches the roll-call fill in without reloading the page; opens a box, sees an
alert arrive and acknowledges it. The operator of p02 then sees neither p01's
boxes nor its command. The fleet page's screenshot goes to
``$DIEMCAU_CONSOLE_SCREENSHOT`` (else the test's directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from diemcau_centre.manifest import FleetStore
from tests.harness.box import CentreKey
from tests.harness.broker import Broker, free_port, wait_for_port
from tests.harness.console import (
    TalkingBox,
    headless_chromium,
    log_in,
    manifest_of,
    write_centre_config,
)
from tests.harness.process import stop_process

pytestmark = pytest.mark.e2e

PASSWORD = "mat-khau-thu-nghiem"
FLEET = {"c00001-r1": "p01", "c00002-r1": "p01", "c00003-r1": "p01", "c00004-r1": "p01",
         "c00005-r1": "p01", "c00201-r1": "p02"}
SILENT = "c00005-r1"  # in the manifest, never connects
FAILING = "c00004-r1"
WAIT_S = 15


def centre_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diemcau_centre", *args], input=stdin,
                          text=True, capture_output=True, timeout=60, env=env, check=True)


@dataclass
class RunningConsole:
    url: str
    boxes: dict[str, TalkingBox]


@pytest.fixture
def console(tmp_path: Path, broker: Broker, centre: CentreKey) -> Iterator[RunningConsole]:
    manifest = manifest_of(FLEET)
    FleetStore(tmp_path).save(manifest)
    key_file = centre.save(tmp_path / "centre-signing.key")
    config = write_centre_config(tmp_path / "centre.toml", broker.port, key_file=key_file,
                                 fleet_dir=tmp_path, host=broker.host)
    env = {**os.environ, "DIEMCAU_CONSOLE_DATABASE": f"sqlite:///{tmp_path / 'console.db'}",
           "DIEMCAU_CENTRE_CONFIG": str(config)}
    centre_cli("operator", "add", "hanoi", "--role", "province", "--province", "p01",
               "--password-stdin", stdin=PASSWORD + "\n", env=env)
    centre_cli("operator", "add", "hagiang", "--role", "province", "--province", "p02",
               "--password-stdin", stdin=PASSWORD + "\n", env=env)
    boxes = [TalkingBox(broker, centre, dev, d.site,
                        fail_with="không kết nối được máy chủ hình" if dev == FAILING else "")
             for dev, d in manifest.devices.items() if dev != SILENT]
    port = free_port()
    log = (tmp_path / "console.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "diemcau_centre", "console-web", "--listen",
                             f"127.0.0.1:{port}"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout_s=20)
        yield RunningConsole(f"http://127.0.0.1:{port}", {b.device_id: b for b in boxes})
    finally:
        stop_process(proc)
        log.close()
        for box in boxes:
            box.close()
        print((tmp_path / "console.log").read_text()[-3000:])


@pytest.fixture
def browser() -> Iterator[object]:
    with headless_chromium() as driver:
        yield driver


def test_an_operator_convenes_a_province_and_handles_an_alert(
        console: RunningConsole, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    console_url = console.url
    wait = WebDriverWait(driver, WAIT_S)  # type: ignore[arg-type]

    def text_is(element_id: str, value: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.ID, element_id), value))

    def login(user: str) -> None:
        log_in(driver, console_url, user, PASSWORD)
        wait.until(ec.presence_of_element_located((By.ID, "fleet-table")))
        text_is("live-status", "trực tiếp")

    # The province operator filters the fleet to p01: the table changes in place.
    login("hanoi")
    text_is("fleet-count", "5 điểm cầu")
    wait.until(lambda d: "Trực tuyến" in d.find_element(By.ID, "fleet-table").text)
    Select(driver.find_element(By.ID, "filter-province")).select_by_value("p01")  # type: ignore[attr-defined]
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("ready")  # type: ignore[attr-defined]
    text_is("fleet-count", "4 điểm cầu")
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("")  # type: ignore[attr-defined]
    text_is("fleet-count", "5 điểm cầu")
    shot = Path(os.environ.get("DIEMCAU_CONSOLE_SCREENSHOT", tmp_path / "console-fleet.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(shot)), shot  # type: ignore[attr-defined]
    print(f"screenshot of the fleet page: {shot}")

    # A join to the province; the roll-call fills in live, on the same page.
    driver.find_element(By.ID, "broadcast-link").click()  # type: ignore[attr-defined]
    text_is("broadcast-count", "5")
    driver.find_element(By.ID, "cmd-meeting.join").click()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "arg-meeting.join-meeting_id").send_keys("hop-bao-so-3")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "arg-meeting.join-publish").send_keys(  # type: ignore[attr-defined]
        "srt://127.0.0.1:9000?streamid=publish:x")
    driver.find_element(By.ID, "send-button").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "rollcall-counts")))
    roll_url = driver.current_url  # type: ignore[attr-defined]
    driver.execute_script("window.notReloaded = true")  # type: ignore[attr-defined]
    text_is("rc-expected", "5")
    text_is("rc-succeeded", "3")
    text_is("rc-failed", "1")
    text_is("rc-silent", "1")
    text_is("rc-acknowledged", "4")
    page = driver.find_element(By.ID, "rollcall").text  # type: ignore[attr-defined]
    assert "không kết nối được máy chủ hình" in page and FAILING in page and SILENT in page
    assert "Chưa từng thấy" in page  # why the silent box is silent: it never came
    assert driver.execute_script("return window.notReloaded") is True  # type: ignore[attr-defined]

    # A box: its page shows an alert as it comes; the operator acknowledges it.
    driver.get(f"{console_url}/fleet?province=p01")  # type: ignore[attr-defined]
    driver.find_element(By.LINK_TEXT, "c00001-r1").click()  # type: ignore[attr-defined]
    text_is("box-meeting", "Đang họp hop-bao-so-3")
    text_is("live-status", "trực tiếp")
    console.boxes["c00001-r1"].raise_alert("temperature_high", "CPU 84 °C")
    text_is("box", "CPU 84 °C")
    driver.find_element(By.CSS_SELECTOR, "button.ack").click()  # type: ignore[attr-defined]
    text_is("box", "Đã xác nhận bởi hanoi")
    driver.get(f"{console_url}/commands")  # type: ignore[attr-defined]
    assert roll_url.rsplit("/", 1)[1] in driver.page_source  # type: ignore[attr-defined]

    # The other province's operator sees neither p01's boxes nor its command.
    driver.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()  # type: ignore[attr-defined]
    login("hagiang")
    text_is("fleet-count", "1 điểm cầu")
    table = driver.find_element(By.ID, "fleet-table").text  # type: ignore[attr-defined]
    assert "c00201-r1" in table and "c00001-r1" not in table
    for url in [f"{console_url}/boxes/c00001-r1", roll_url,
                f"{console_url}/broadcast?province=p01"]:
        driver.get(url)  # type: ignore[attr-defined]
        assert "Lỗi 404" in driver.find_element(By.TAG_NAME, "h1").text, url  # type: ignore[attr-defined]
