"""`make image-test`: the built image boots in QEMU and is a working box.

The image's own kernel and initramfs (taken from its boot partition) start
its root filesystem on QEMU's ``virt`` machine under software emulation
(TCG). Its only way out is QEMU's user-mode network with ``restrict=on``
and one forwarded port: 10.0.2.100:1883 inside is a real Mosquitto on the
host's loopback. The test sees the box's birth, gets a reply to a signed
command, and sees systemd's watchdog restart the service after the
supervisor loop is made to stall (tests/image/stall/, put into this test's
copy of the image only).

Skipped unless DIEMCAU_IMAGE names the image (``make image-test`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.protocol import Health, State, decode, device_topic
from tests.harness.box import CentreKey, box_config
from tests.harness.broker import Broker
from tests.harness.observer import Observer
from tests.harness.process import stop_process

IMAGE = os.environ.get("DIEMCAU_IMAGE", "")
pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(not IMAGE, reason="no image given (DIEMCAU_IMAGE); run make image-test"),
    pytest.mark.timeout(3600),
]

DEV = "c00001-r1"
GUEST_BROKER = ("10.0.2.100", 1883)
STALL = Path(__file__).parent / "stall" / "sitecustomize.py"
# Software emulation is slow, and slower still on a busy machine.
BOOT_TIMEOUT_S = float(os.environ.get("DIEMCAU_BOOT_TIMEOUT_S", "900"))


def partitions(image: Path) -> list[dict]:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(image)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    return [{"start": p["start"] * 512, "size": p["size"] * 512} for p in table["partitions"]]


def prepare(image: Path, work: Path, config: str) -> tuple[Path, Path, Path]:
    """This test's copy of the image: configured on its boot partition, as an
    operator would, and with the loop-stalling hook in its root filesystem."""
    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    boot, root = partitions(disk)
    fat = f"{disk}@@{boot['start']}"
    (work / "endpoint.toml").write_text(config)
    subprocess.run(["mmd", "-i", fat, "::diemcau"], check=True)
    subprocess.run(["mcopy", "-i", fat, str(work / "endpoint.toml"), "::diemcau/endpoint.toml"],
                   check=True)
    # raspi-firmware's hook put the kernel and initramfs there, by version.
    names = subprocess.run(["mdir", "-b", "-i", fat, "::"], check=True, capture_output=True,
                           text=True).stdout.split()
    for kind in ("vmlinuz", "initrd.img"):
        found = sorted(n.lstrip(":/") for n in names if n.lstrip(":/").startswith(kind + "-"))
        assert found, f"no {kind}-VERSION on the boot partition: {names}"
        subprocess.run(["mcopy", "-n", "-i", fat, f"::{found[-1]}", str(work / kind)], check=True)

    (work / "stall.conf").write_text("[Service]\nEnvironment=PYTHONPATH=/opt/diemcau-test\n")
    commands = "\n".join([
        "mkdir /opt/diemcau-test",
        f"write {STALL} /opt/diemcau-test/sitecustomize.py",
        "mkdir /etc/systemd/system/diemcau.service.d",
        f"write {work / 'stall.conf'} /etc/systemd/system/diemcau.service.d/test-stall.conf",
    ])
    (work / "debugfs.cmd").write_text(commands + "\n")
    done = subprocess.run(["debugfs", "-w", "-f", str(work / "debugfs.cmd"),
                           f"{disk}?offset={root['start']}"], capture_output=True, text=True)
    assert done.returncode == 0 and "rror" not in done.stderr, done.stderr
    return disk, work / "vmlinuz", work / "initrd.img"


class Guest:
    def __init__(self, disk: Path, kernel: Path, initrd: Path, broker_port: int,
                 console: Path) -> None:
        self.console = console
        host, port = GUEST_BROKER
        self._proc = subprocess.Popen([
            "qemu-system-aarch64", "-machine", "virt", "-accel", "tcg", "-cpu", "cortex-a72",
            "-smp", "2", "-m", "1024", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            # No NTP behind restrict=on: do not wait for it (the image waits
            # up to two minutes, then starts anyway). The journal goes to the
            # serial console so that the test can read systemd's words.
            "-append", "root=LABEL=RASPIROOT rw console=ttyAMA0 "
                       "systemd.mask=systemd-time-wait-sync.service "
                       "systemd.journald.forward_to_console=1",
            "-drive", f"if=none,id=disk,format=raw,file={disk}",
            "-device", "virtio-blk-pci,drive=disk",
            # One socat per connection the guest opens ("tcp:" would be one
            # connection, made once, when QEMU starts).
            "-netdev", f"user,id=net,restrict=on,guestfwd=tcp:{host}:{port}-"
                       f"cmd:socat STDIO TCP:127.0.0.1:{broker_port}",
            "-device", "virtio-net-pci,netdev=net,romfile=",  # no network boot ROM needed
            "-no-reboot",
        ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(console.with_suffix(".qemu.log"), "wb"))  # noqa: SIM115

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def check_alive(self) -> None:
        """Fail at once, with QEMU's own words, if the machine has gone."""
        if self._proc.poll() is not None:
            log = self.console.with_suffix(".qemu.log").read_text(errors="replace")
            raise AssertionError(f"QEMU exited with {self._proc.returncode}: {log[-2000:]}")

    def stop(self) -> None:
        stop_process(self._proc, timeout_s=30)


def wait(guest: Guest, observer: Observer, predicate, timeout: float):  # noqa: ANN001, ANN201
    """observer.wait_for, but failing as soon as QEMU is gone."""
    deadline = time.monotonic() + timeout
    while True:
        guest.check_alive()
        try:
            return observer.wait_for(predicate, min(10.0, max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


@pytest.fixture
def booted(tmp_path: Path) -> Iterator[tuple[Guest, Observer, Broker]]:
    for tool in ("qemu-system-aarch64", "debugfs", "mcopy", "sfdisk"):
        assert shutil.which(tool), f"{tool} is missing (make image-test installs it)"
    centre = CentreKey()
    with Broker(tmp_path / "broker") as broker:
        config = box_config(device_id=DEV, broker=broker, state_dir=Path("/var/lib/diemcau"),
                            keys={centre.kid: centre.public_text}, microphone="default",
                            health_interval_s=10.0, mqtt_address=GUEST_BROKER)
        config = config.replace('clock_check = "none"', 'clock_check = "timesyncd"')
        disk, kernel, initrd = prepare(Path(IMAGE), tmp_path, config)
        observer = Observer(broker, centre)
        started = time.monotonic()
        guest = Guest(disk, kernel, initrd, broker.port, tmp_path / "console.log")
        time.sleep(2.0)
        guest.check_alive()
        try:
            yield guest, observer, broker
        finally:
            print(f"guest ran {time.monotonic() - started:.0f} s")
            guest.stop()
            observer.close()
            text = guest.text()
            print("----- serial console (last 12000 characters) -----\n" + text[-12000:])


def test_the_image_boots_into_a_box_that_answers_and_is_watched(booted) -> None:  # noqa: ANN001
    guest, observer, _broker = booted
    state = device_topic(DEV, "state")
    t0 = time.monotonic()

    birth_seen = wait(guest, observer, lambda m: m.topic == state and b'"ready"' in m.payload,
                      BOOT_TIMEOUT_S)
    birth = decode(birth_seen.payload, State)
    print(f"birth after {time.monotonic() - t0:.0f} s (session {birth.session})")
    guest.check_alive()

    jti = observer.command(DEV, "health.report")
    reply = observer.wait_reply(DEV, jti, timeout=300)
    assert reply.status == "succeeded", reply
    health = decode(observer.wait_for(lambda m: m.topic == device_topic(DEV, "health"),
                                      300).payload, Health)
    print(f"reply after {time.monotonic() - t0:.0f} s; box uptime {health.uptime_s} s")

    # The hook stalled the loop after that command: the process lives on but
    # stops telling systemd, whose watchdog (WatchdogSec=30) kills it; the
    # broker publishes its will, and systemd starts it again.
    stalled = time.monotonic()
    lost = wait(guest, observer, lambda m: m.topic == state and b'"lost"' in m.payload, 300)
    assert decode(lost.payload, State).session == birth.session
    again = wait(
        guest, observer, lambda m: m.topic == state and b'"ready"' in m.payload
        and decode(m.payload, State).session > birth.session, BOOT_TIMEOUT_S)
    print(f"lost {lost.at - birth_seen.at:.0f} s after birth; born again "
          f"{time.monotonic() - stalled:.0f} s after the stall")
    console = guest.text()
    assert "test: stalling the supervisor loop" in console
    assert "Watchdog timeout" in console, "systemd did not say it was its watchdog"
    assert decode(again.payload, State).state == "ready"

    # And the restarted box answers as before (the hook stalls only once).
    jti = observer.command(DEV, "health.report")
    assert observer.wait_reply(DEV, jti, timeout=300).status == "succeeded"
