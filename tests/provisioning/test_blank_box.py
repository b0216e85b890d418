"""From a blank box to a meeting over mutual TLS, all real: the ``diemcau run`` process with
only its enrollment file, ``diemcau-centre enroll-service``, Mosquitto with the configuration
``broker-config`` wrote, an ffmpeg SRT listener as the media server. Then the centre rotates
its command keys, and revokes the box."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from cryptography import x509

from diemcau.config import Mqtt
from diemcau.protocol import Alert, Reply, State, alert_topic, device_filter, device_topic
from diemcau.protocol.enrollment import Broker as BrokerAddress
from tests.harness.alsa import make_microphone
from tests.harness.box import Box, CentreKey
from tests.harness.broker import Broker, wait_for_port
from tests.harness.process import stop_process
from tests.harness.srt_listener import SrtListener, read_recording

from .conftest import A, start_fleet_broker
from .enrollment import Centre, make_centre
from .mtls import MtlsClient
from .test_enrollment import blank_config

pytestmark = pytest.mark.e2e

WAIT_S = 30.0


@dataclass
class Fleet:
    centre: Centre
    broker: Broker
    console: MtlsClient  # the centre's own identity, watching every box
    service: subprocess.Popen[bytes]
    service_log: Path

    def reply(self, jti: str, status: str, timeout_s: float = WAIT_S) -> Reply:
        topic = device_topic(A, "reply")

        def match() -> Reply | None:
            for m in list(self.console.messages):
                if m.topic == topic:
                    reply = msgspec.json.decode(m.payload, type=Reply)
                    if reply.id == jti and reply.status == status:
                        return reply
            return None

        deadline = time.monotonic() + timeout_s
        while (found := match()) is None:
            assert time.monotonic() < deadline, (
                f"no {status} reply to {jti}; replies: "
                f"{[m.payload for m in self.console.messages if m.topic == topic]}")
            time.sleep(0.05)
        return found

    def command(self, key: CentreKey, cmd: str, args: dict | None = None) -> str:
        token = key.sign(A, cmd, args)
        jti = json.loads(_claims(token))["jti"]
        assert self.console.publish(device_topic(A, "cmd"), token) == 0
        return jti

    def states(self) -> list[State]:
        return [msgspec.json.decode(m.payload, type=State) for m in list(self.console.messages)
                if m.topic == device_topic(A, "state") and m.payload]

    def wait_ready(self, after_session: int = 0) -> State:
        deadline = time.monotonic() + WAIT_S
        while True:
            ready = [s for s in self.states() if s.state == "ready" and s.session > after_session]
            if ready:
                return ready[-1]
            assert time.monotonic() < deadline, f"box never ready; states {self.states()}"
            time.sleep(0.05)


def _claims(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def start_service(centre: Centre, broker: Broker, log_file: Path,
                  *extra: str) -> subprocess.Popen[bytes]:
    """The service as operators run it: the console script, in its own process."""
    with log_file.open("ab") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "diemcau_centre", "enroll-service", "--dir",
             str(centre.directory), "--broker", f"127.0.0.1:{broker.port}", "--centre-key",
             str(centre.directory / "centre-signing.pub"), "--bind", "127.0.0.1", "--port",
             str(centre.service_port), "-v", *extra],
            stdout=log, stderr=log)
    try:
        wait_for_port(centre.service_port, timeout_s=WAIT_S)
    except TimeoutError:
        stop_service(service)
        raise
    return service


def stop_service(service: subprocess.Popen[bytes]) -> None:
    stop_process(service)


def centre_console(centre: Centre, broker: Broker) -> MtlsClient:
    """The centre's own identity, subscribed to everything box A says (retained included)."""
    console = MtlsClient(broker, centre.directory / "ca.pem",
                         centre.directory / "clients/centre.pem",
                         centre.directory / "clients/centre.key")
    assert console.connect()
    console.subscribe(device_filter(A))
    return console


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    centre = make_centre(tmp_path / "centre")
    broker = start_fleet_broker(centre.directory, tmp_path / "broker")
    centre.settings = type(centre.settings)(centre.directory,
                                            BrokerAddress(host="127.0.0.1", port=broker.port),
                                            centre.settings.centre_keys)
    service_log = tmp_path / "service.log"
    service = start_service(centre, broker, service_log,
                            *getattr(request, "param", {}).get("service_args", ()))
    fleet = Fleet(centre, broker, centre_console(centre, broker), service, service_log)
    try:
        yield fleet
    finally:
        fleet.console.close()
        stop_service(fleet.service)
        broker.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"----- service log -----\n{service_log.read_text()[-6000:]}")
            print(f"----- broker log -----\n{broker.log_text()[-4000:]}")


@pytest.fixture
def blank_box(fleet: Fleet, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Box]:
    """A box with the image's configuration and its enrollment file, nothing else."""
    mic = make_microphone(tmp_path / "mic", seconds=90)
    box = Box(tmp_path / "box", fleet.broker, fleet.centre.signing, device_id=A, env=mic.env)
    boot = tmp_path / "box" / "boot"
    boot.mkdir()
    enroll_file = boot / "diemcau-enroll.toml"
    enroll_file.write_bytes(fleet.centre.enrollment_file(A).read_bytes())
    box.config_file.write_text(blank_config(box.state_dir, enroll_file).replace(
        "[media]\n", f'[media]\nmicrophone = "{mic.pcm}"\n'))
    assert "c00001" not in box.config_file.read_text()  # nothing about this box
    yield box
    box.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"----- box log -----\n{box.log_text()[-6000:]}")


def test_a_blank_box_enrolls_joins_rotates_keys_and_is_revoked(fleet: Fleet, blank_box: Box,
                                                               tmp_path: Path) -> None:
    old = fleet.centre.signing
    blank_box.start()
    first = fleet.wait_ready()
    identity = blank_box.state_dir / "identity"
    assert (identity / "key.pem").stat().st_mode & 0o777 == 0o600
    # The broker knows it by its certificate, over mutual TLS.
    assert f"as {A} " in fleet.broker.log_text()

    # A meeting, commanded by the centre, media to a real SRT listener.
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        join = fleet.command(old, "meeting.join", {"meeting_id": "m1", "publish": listener.url,
                                                   "profile": "360p15"})
        assert fleet.reply(join, "accepted").code == 202
        assert fleet.reply(join, "succeeded").code == 200
        time.sleep(2.0)
        leave = fleet.command(old, "meeting.leave")
        assert fleet.reply(leave, "succeeded").code == 200
        assert listener.wait(15), "the stream did not end after leave"
        recording = read_recording(listener.stop())
    finally:
        listener.stop()
    assert len(recording.stamped) >= 10, f"only {len(recording.stamped)} frames arrived"

    # Rotation: a new key set, signed with the key the box trusts now. A bad one first.
    new, stranger = CentreKey(), CentreKey()
    bad = fleet.command(old, "keys.update", {"keys": {new.kid: "not-a-key"}})
    assert "not an Ed25519 public key" in fleet.reply(bad, "rejected").detail
    assert fleet.reply(fleet.command(old, "health.report"), "succeeded").code == 200
    update = fleet.command(old, "keys.update", {"keys": {new.kid: new.public_text}})
    assert fleet.reply(update, "succeeded").code == 200
    stored = json.loads((identity / "centre-keys.json").read_text())
    assert stored == {new.kid: new.public_text}
    retired = fleet.command(old, "audio.mute")
    assert fleet.reply(retired, "rejected").code == 401
    unknown = fleet.command(stranger, "audio.mute")
    assert fleet.reply(unknown, "rejected").code == 401
    assert fleet.reply(fleet.command(new, "health.report"), "succeeded").code == 200

    # The new set survives a restart; the retired key stays out.
    blank_box.stop()
    blank_box.start()
    second = fleet.wait_ready(after_session=first.session)
    assert fleet.reply(fleet.command(new, "health.report"), "succeeded").code == 200
    assert fleet.reply(fleet.command(old, "audio.unmute"), "rejected").code == 401
    assert "enrolling" not in blank_box.log_text().split("starting as")[-1]

    # Revocation: the CRL goes to the broker; a reload refuses new connections.
    revoke = subprocess.run([sys.executable, "-m", "diemcau_centre", "revoke", A, "--dir",
                             str(fleet.centre.directory), "--broker-dir",
                             str(fleet.broker.workdir / "conf")],
                            capture_output=True, text=True, timeout=60)
    assert revoke.returncode == 0, revoke.stderr
    assert "revoked 1 certificate(s)" in revoke.stdout
    before_reload = len(blank_box.log_text())
    os.kill(fleet.broker._proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "Reloading config" not in fleet.broker.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with MtlsClient(fleet.broker, identity / "ca.pem", identity / "cert.pem",
                    identity / "key.pem", client_id=A) as stolen:
        assert not stolen.connect()
    # A reload does not cut the box connected at that moment (docs/provisioning.md says so).
    assert "link down" not in blank_box.log_text()[before_reload:]
    # The running box is cut off by a restart, and cannot come back.
    fleet.broker.restart()
    console = MtlsClient(fleet.broker, fleet.centre.directory / "ca.pem",
                         fleet.centre.directory / "clients/centre.pem",
                         fleet.centre.directory / "clients/centre.key")
    try:
        assert console.connect()
        console.subscribe(device_topic(A, "state"))
        # The box's first try comes anywhere in its reconnect spread (the image's
        # default, full jitter); the second a few seconds after.
        deadline = time.monotonic() + Mqtt(host="broker").reconnect_spread_s + 8
        while blank_box.log_text().count("closed the connection before accepting us") + \
                blank_box.log_text().count("cannot reach broker") < 2:
            assert time.monotonic() < deadline, blank_box.log_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)
        # What the broker holds for the box: its last word before the cut, never a new ready.
        states = [msgspec.json.decode(m.payload, type=State) for m in console.messages
                  if m.payload]
        assert all(s.session <= second.session for s in states), states
    finally:
        console.close()
    assert blank_box.running, "a refused box keeps running and keeps trying"


# ---------------------------------------------------------------- renewal in a running box

# Short, as the whole test waits on it (about 1.45 lifetimes): the renewal is due at 2/3 (with
# the backdating, about 19 s in), the first certificate ends at 30 s, the second one's alert
# (5/6) comes at about 44 s, and a sixth of its 33 s validity, 5.5 s, is left for the centre
# to come back and the box to renew before it ends (that takes about 1 s).
LIFETIME_S = 30


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _wait(what: str, until: float, check: Callable[[], object]) -> object:
    while not (found := check()):
        assert time.time() < until, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def _alert_messages(console: MtlsClient) -> list[bytes]:
    topic = alert_topic(A, "certificate_expiring")
    return [bytes(m.payload) for m in list(console.messages) if m.topic == topic]


@pytest.mark.parametrize("fleet", [{"service_args": ("--cert-lifetime", f"{LIFETIME_S}s")}],
                         indirect=True)
def test_a_running_box_renews_keeps_its_session_and_warns_while_the_centre_is_away(
        fleet: Fleet, blank_box: Box, tmp_path: Path) -> None:
    blank_box.config_file.write_text(blank_box.config_file.read_text().replace(
        "[health]\n", "[health]\ninterval_s = 1\n"))
    blank_box.start()
    first = fleet.wait_ready()
    cert_file = blank_box.state_dir / "identity" / "cert.pem"
    old = _cert(cert_file)
    lifetime = old.not_valid_after_utc - old.not_valid_before_utc
    assert lifetime.total_seconds() == LIFETIME_S + LIFETIME_S / 10  # backdated a tenth, not 1 h

    # At two thirds the box renews over mutual TLS; the connection up now stays.
    _wait("the first renewal", old.not_valid_after_utc.timestamp(),
          lambda: _cert(cert_file).serial_number != old.serial_number)
    renewed = _cert(cert_file)
    assert renewed.subject == old.subject and renewed.public_key() != old.public_key()
    service_log = fleet.service_log.read_text()
    assert f"renewed {A}: certificate {renewed.serial_number:x}" in service_log
    assert fleet.reply(fleet.command(fleet.centre.signing, "health.report"), "succeeded")
    assert [s.session for s in fleet.states() if s.state == "ready"] == [first.session]
    assert not [p for p in _alert_messages(fleet.console) if p]  # (a start clears stale ones)

    # The centre goes away. Once the first certificate has expired, a broker restart makes
    # the box connect again: it gets in, so it uses the renewed certificate.
    stop_service(fleet.service)
    _wait("the first certificate to expire", old.not_valid_after_utc.timestamp() + 10,
          lambda: time.time() > old.not_valid_after_utc.timestamp() + 1)
    fleet.console.close()
    fleet.broker.restart()
    fleet.console = centre_console(fleet.centre, fleet.broker)
    second = fleet.wait_ready(after_session=first.session)
    assert fleet.reply(fleet.command(fleet.centre.signing, "health.report"), "succeeded")
    assert "certificate expired" not in fleet.broker.log_text()

    # Renewal now fails (nobody answers): at five sixths the box raises certificate_expiring.
    raised = _wait("certificate_expiring", renewed.not_valid_after_utc.timestamp(),
                   lambda: [p for p in _alert_messages(fleet.console) if p])
    alert = msgspec.json.decode(raised[0], type=Alert)  # type: ignore[index]
    assert alert.severity == "warning"
    assert "renewal keeps failing" in alert.detail and "reach" in alert.detail, alert.detail
    assert "certificate renewal failed" in blank_box.log_text()

    # The centre is back: the next try renews, and the alert is taken down (empty, retained).
    fleet.service = start_service(fleet.centre, fleet.broker, fleet.service_log,
                                  "--cert-lifetime", f"{LIFETIME_S}s")
    _wait("the alert to clear", renewed.not_valid_after_utc.timestamp(),
          lambda: _alert_messages(fleet.console)[-1:] == [b""])
    third = _cert(cert_file)
    assert third.serial_number not in (old.serial_number, renewed.serial_number)
    assert fleet.reply(fleet.command(fleet.centre.signing, "health.report"), "succeeded")
    # All along one box process, one session since the restart, no traceback.
    assert max(s.session for s in fleet.states() if s.state == "ready") == second.session
    assert blank_box.running and "Traceback" not in blank_box.log_text()


# ---------------------------------------------------------------- keys.update that cannot be kept


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` on a read-only mount, as an SD card the kernel found failing leaves it.

    (Root ignores file modes, so a chmod would not stop the box's writes.)
    """
    bind = subprocess.run(["mount", "--bind", str(directory), str(directory)],
                          capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {bind.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True,
                       capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True, capture_output=True)


def test_a_key_set_that_cannot_be_stored_is_refused_and_the_old_keys_still_work(
        fleet: Fleet, blank_box: Box) -> None:
    old, new = fleet.centre.signing, CentreKey()
    blank_box.start()
    fleet.wait_ready()
    identity = blank_box.state_dir / "identity"
    before = {f.name: f.read_bytes() for f in identity.iterdir()}

    with read_only(identity):
        update = fleet.command(old, "keys.update", {"keys": {new.kid: new.public_text}})
        failed = fleet.reply(update, "failed")
        assert failed.code == 500 and "cannot store the keys" in failed.detail, failed
        assert "Read-only file system" in failed.detail
        # Nothing changed: the old key still commands the box, the new one does not.
        assert fleet.reply(fleet.command(old, "health.report"), "succeeded").code == 200
        assert fleet.reply(fleet.command(new, "health.report"), "rejected").code == 401
    assert {f.name: f.read_bytes() for f in identity.iterdir()} == before

    # The same set once the card can be written again: applied (so the refusal was the disk).
    update = fleet.command(old, "keys.update", {"keys": {new.kid: new.public_text}})
    assert fleet.reply(update, "succeeded").code == 200
    assert fleet.reply(fleet.command(new, "health.report"), "succeeded").code == 200
    assert blank_box.running
