"""The broker configuration: its text, and Mosquitto running it with real certificates.

What a client may do is judged by what arrives at another client, not by the
broker's answers alone: Mosquitto 2.0 grants every subscription and filters
each message on delivery.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from diemcau.protocol import alert_topic, device_filter, device_topic, group_cmd_topic
from diemcau_centre.broker_config import (
    BOX_WRITES,
    BrokerSettings,
    acl_text,
    conf_text,
    durability,
    durability_lines,
    write_broker_config,
)
from diemcau_centre.ca import CaError, load_ca, write_crl
from diemcau_centre.manifest import FleetStore, import_sites
from tests.harness.broker import Broker
from tests.provisioning.conftest import (
    A2,
    HEADER,
    A,
    B,
    C,
    box_identity,
    start_fleet_broker,
)
from tests.provisioning.mtls import MtlsClient

NOT_AUTHORIZED = 0x87
# PUBACK reason codes below 0x80 are successes (0x10: nobody is subscribed).
ACCEPTED = (0x00, 0x10)


# Everything a box writes about itself, for one device id.
def own_topics(dev: str) -> list[str]:
    return [device_topic(dev, kind) for kind in BOX_WRITES] + [alert_topic(dev, "disk_low")]


# ---------------------------------------------------------------- the text


def test_the_acl_gives_boxes_patterns_and_each_box_its_groups(centre_dir: Path) -> None:
    manifest = FleetStore(centre_dir).load()
    text = acl_text(manifest.devices.values(), ["centre", "centre-wall"])
    lines = text.splitlines()
    assert "pattern write diemcau/v1/dev/%u/state" in lines
    assert "pattern write diemcau/v1/dev/%u/alert/+" in lines
    assert "pattern read diemcau/v1/dev/%u/cmd" in lines
    # No pattern lets a box write a command or read anything but its own.
    patterns = [line for line in lines if line.startswith("pattern")]
    assert not [p for p in patterns if p.startswith("pattern write") and p.endswith("/cmd")]
    assert all("%u" in p for p in patterns)
    block = lines[lines.index(f"user {C}") + 1: lines.index(f"user {C}") + 5]
    assert block == [f"topic read {group_cmd_topic(g)}" for g in ("p02", "d024", "c00688", "all")]
    for name in ("centre", "centre-wall"):
        i = lines.index(f"user {name}")
        assert lines[i + 1: i + 4] == ["topic read diemcau/v1/dev/+/#",
                                      "topic write diemcau/v1/dev/+/cmd",
                                      "topic write diemcau/v1/group/+/cmd"]


def test_the_listener_forces_identity_and_client_id() -> None:
    lines = conf_text(BrokerSettings(port=8883), Path("/etc/mosquitto/diemcau"), 4).splitlines()
    for line in ("listener 8883", "require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true", "allow_anonymous false", "persistence true",
                 "crlfile /etc/mosquitto/diemcau/crl.pem",
                 "acl_file /etc/mosquitto/diemcau/acl", "user mosquitto"):
        assert line in lines
    # One listener only: a second one without these settings would undo them.
    assert sum(1 for line in lines if line.startswith("listener")) == 1


def test_queues_are_sized_for_the_fleet_and_the_broker_saves_on_a_timer() -> None:
    """The centre can hold 21 messages from every box (its retained state, meta, status and
    10 alerts, and what a group join makes it say); never below Mosquitto's 1,000."""
    assert durability(0).max_queued_messages == 1000
    assert durability(2000).max_queued_messages == 42_000
    assert durability(10_000).max_queued_messages == 210_000
    assert durability(10_000).max_queued_bytes == 210_000 * 1024
    lines = conf_text(BrokerSettings(), Path("/etc/mosquitto/diemcau"), 10_000).splitlines()
    for line in ("max_queued_messages 210000", "max_queued_bytes 215040000",
                 "max_inflight_messages 100", "autosave_on_changes false", "autosave_interval 1",
                 "persistence true"):
        assert line in lines
    # The test broker runs the same lines (tests/harness/broker.py).
    assert set(durability_lines(10_000)) <= set(lines)


def test_broker_config_needs_a_server_certificate_and_a_centre_identity(tmp_path: Path,
                                                                         centre_dir: Path) -> None:
    (centre_dir / "broker.pem").unlink()
    with pytest.raises(CaError, match="ca server-cert"):
        write_broker_config(centre_dir, tmp_path / "out", BrokerSettings())
    assert not (tmp_path / "out").exists()


def test_the_broker_directory_never_gets_the_ca_key(tmp_path: Path, centre_dir: Path) -> None:
    files = write_broker_config(centre_dir, tmp_path / "out", BrokerSettings())
    names = sorted(p.name for p in files.conf.parent.iterdir())
    assert names == ["acl", "broker.key", "broker.pem", "ca.pem", "crl.pem", "mosquitto.conf"]
    assert (files.conf.parent / "broker.key").stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- Mosquitto running it


@pytest.fixture
def ids(centre_dir: Path, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Certificates for four boxes, each from a key the box made."""
    return {dev: box_identity(centre_dir, dev, tmp_path / "ids") for dev in (A, A2, B, C)}


@pytest.fixture
def connect(fleet_broker: Broker, centre_dir: Path,
            ids: dict[str, tuple[Path, Path]]) -> Iterator:
    """connect(identity, client_id=...) -> a connected MtlsClient; all closed afterwards."""
    clients: list[MtlsClient] = []

    def make(identity: str, *, client_id: str | None = None, username: str | None = None,
             must_connect: bool = True) -> MtlsClient:
        if identity == "centre":
            cert, key = centre_dir / "clients/centre.pem", centre_dir / "clients/centre.key"
        else:
            cert, key = ids[identity]
        client = MtlsClient(fleet_broker, centre_dir / "ca.pem", cert, key,
                            client_id=identity if client_id is None else client_id,
                            username=username)
        clients.append(client)
        if must_connect:
            assert client.connect(), f"{identity} could not connect: {client.disconnects}"
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.e2e
def test_a_box_cannot_publish_on_another_box_topics(connect) -> None:  # noqa: ANN001
    centre = connect("centre")
    centre.subscribe(device_filter("+"), group_cmd_topic("+"), device_topic("+", "cmd"))
    box_a, box_b = connect(A), connect(B)
    box_b.subscribe(device_topic(B, "cmd"), *(group_cmd_topic(g) for g in ("p01", "d001",
                                                                           "c00004", "all")))

    for topic in own_topics(B):
        assert box_a.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    for topic in (device_topic(B, "cmd"), device_topic(A, "cmd"), group_cmd_topic("p01"),
                  group_cmd_topic("all")):
        assert box_a.publish(topic, b"forged command") == NOT_AUTHORIZED, topic
    # Its own topics, last: once they arrive, anything sent before would have too.
    for topic in own_topics(A):
        assert box_a.publish(topic, b"mine") in ACCEPTED, topic
    centre.wait_for(own_topics(A)[-1])
    time.sleep(0.2)

    assert sorted(set(centre.topics())) == sorted(own_topics(A))
    assert all(m.payload == b"mine" for m in centre.messages)
    assert box_b.messages == []


@pytest.mark.e2e
def test_a_box_cannot_receive_another_box_commands_or_state(connect) -> None:  # noqa: ANN001
    box_b = connect(B)
    box_b.publish(device_topic(B, "state"), b"b-retained", retain=True)
    box_a = connect(A)
    # Mosquitto grants these subscriptions, then delivers nothing they should not see.
    box_a.subscribe(device_topic(B, "cmd"), device_topic(B, "state"), device_topic("+", "cmd"),
                    group_cmd_topic("c00004"), "diemcau/v1/#", "#")
    centre = connect("centre")
    assert centre.publish(device_topic(B, "cmd"), b"for B") in ACCEPTED
    assert centre.publish(group_cmd_topic("c00004"), b"for B's commune") in ACCEPTED
    assert centre.publish(device_topic(A, "cmd"), b"for A") in ACCEPTED

    box_a.wait_for(device_topic(A, "cmd"))
    time.sleep(0.2)
    # One copy per overlapping subscription, all of them A's own command.
    assert {(m.topic, m.payload) for m in box_a.messages} == {(device_topic(A, "cmd"), b"for A")}


@pytest.mark.e2e
def test_a_box_receives_the_commands_of_its_groups_only(connect) -> None:  # noqa: ANN001
    groups = ("p01", "d001", "c00001", "c00004", "p02", "d024", "c00688", "all")
    box_a, box_c = connect(A), connect(C)
    for box in (box_a, box_c):
        box.subscribe(*(group_cmd_topic(g) for g in groups))
    centre = connect("centre")
    for group in groups:
        assert centre.publish(group_cmd_topic(group), group.encode()) in ACCEPTED

    for box in (box_a, box_c):
        box.wait_for(group_cmd_topic("all"))
    time.sleep(0.2)
    assert [m.payload.decode() for m in box_a.messages] == ["p01", "d001", "c00001", "all"]
    assert [m.payload.decode() for m in box_c.messages] == ["p02", "d024", "c00688", "all"]


@pytest.mark.e2e
def test_a_claimed_client_id_becomes_the_certificate_identity(connect,  # noqa: ANN001
                                                              fleet_broker: Broker) -> None:
    box_a, box_b = connect(A), connect(B)
    box_b.subscribe(device_topic(B, "cmd"))
    centre = connect("centre")
    centre.subscribe(device_filter("+"))

    # A's certificate, B's client id and username: the broker makes it A.
    spoof = connect(A, client_id=B, username=B)
    spoof.subscribe(device_topic(B, "cmd"), device_topic(A, "cmd"))
    assert box_a.wait_disconnected(), "the real A should have been replaced by the same identity"
    assert f"Client {A} already connected, closing old connection" in fleet_broker.log_text()
    assert not box_b.wait_disconnected(1.0), f"B was thrown off: {box_b.disconnects}"
    assert box_b.connected

    # B's session is undisturbed: its commands still reach it, and only it.
    assert centre.publish(device_topic(B, "cmd"), b"for B, after the claim") in ACCEPTED
    assert centre.publish(device_topic(A, "cmd"), b"for A") in ACCEPTED
    assert box_b.wait_for(device_topic(B, "cmd")).payload == b"for B, after the claim"
    spoof.wait_for(device_topic(A, "cmd"))
    time.sleep(0.2)
    assert [(m.topic, m.payload) for m in box_b.messages] == [
        (device_topic(B, "cmd"), b"for B, after the claim")]
    assert [(m.topic, m.payload) for m in spoof.messages] == [(device_topic(A, "cmd"), b"for A")]

    assert spoof.publish(device_topic(B, "state"), b"as B?") == NOT_AUTHORIZED
    assert spoof.publish(device_topic(A, "state"), b"as A") in ACCEPTED
    centre.wait_for(device_topic(A, "state"))
    time.sleep(0.2)
    # (the two commands above, and A's state; nothing as B)
    assert [t for t in centre.topics() if not t.endswith("/cmd")] == [device_topic(A, "state")]
    assert f"as {A} " in fleet_broker.log_text()
    assert f"as {B} " in fleet_broker.log_text()  # the real B, once


@pytest.mark.e2e
def test_a_client_without_a_good_certificate_is_refused(fleet_broker: Broker, centre_dir: Path,
                                                        tmp_path: Path) -> None:
    ca_file = centre_dir / "ca.pem"
    no_cert = MtlsClient(fleet_broker, ca_file, client_id="nobody")
    assert not no_cert.connect()
    no_cert.close()

    plain = MtlsClient(fleet_broker, None, client_id="plain", tls=False)
    assert not plain.connect(2.0)
    plain.close()

    # A certificate for CN=centre from a CA of one's own.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "centre")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "forged.pem", tmp_path / "forged.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    forged = MtlsClient(fleet_broker, ca_file, cert_file, key_file, client_id="centre")
    assert not forged.connect()
    forged.close()
    assert "peer did not return a certificate" in fleet_broker.log_text()
    assert "New client connected" not in fleet_broker.log_text()


@pytest.mark.e2e
def test_the_centre_reads_everything_and_commands_boxes_and_groups(connect) -> None:  # noqa: ANN001
    box_a, box_c = connect(A), connect(C)
    for box, dev, groups in ((box_a, A, ("p01", "all")), (box_c, C, ("p02", "all"))):
        box.subscribe(device_topic(dev, "cmd"), *(group_cmd_topic(g) for g in groups))
        for topic in own_topics(dev):
            assert box.publish(topic, dev.encode(),
                               retain=topic.endswith("/state")) in ACCEPTED, topic

    centre = connect("centre")
    centre.subscribe(device_filter("+"))
    centre.wait_for(device_topic(C, "state"))
    assert {m.topic for m in centre.messages if m.retain} == {device_topic(A, "state"),
                                                             device_topic(C, "state")}
    assert centre.publish(device_topic(A, "cmd"), b"to A") in ACCEPTED
    assert centre.publish(group_cmd_topic("p02"), b"to p02") in ACCEPTED
    assert centre.publish(group_cmd_topic("all"), b"to all") in ACCEPTED
    box_a.wait_for(group_cmd_topic("all"))
    box_c.wait_for(group_cmd_topic("all"))
    time.sleep(0.2)
    assert [m.payload for m in box_a.messages] == [b"to A", b"to all"]
    assert [m.payload for m in box_c.messages] == [b"to p02", b"to all"]
    # The centre's identity is not a box: it cannot speak for one.
    assert centre.publish(device_topic(A, "state"), b"forged") == NOT_AUTHORIZED


@pytest.mark.e2e
def test_the_console_watches_the_fleet_over_mutual_tls(connect, centre_dir: Path,  # noqa: ANN001
                                                       fleet_broker: Broker,
                                                       tmp_path: Path) -> None:
    box_a = connect(A)
    box_a.publish(device_topic(A, "state"), b'{"state":"ready","session":4,"ts":1.0}',
                  retain=True)
    config = tmp_path / "centre.toml"
    config.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {fleet_broker.port}\n[mqtt.tls]\n'
        f'ca_file = "{centre_dir / "ca.pem"}"\ncert_file = "{centre_dir / "clients/centre.pem"}"\n'
        f'key_file = "{centre_dir / "clients/centre.key"}"\n')
    result = subprocess.run([sys.executable, "-m", "diemcau_centre", "devices", "--json",
                             "--max-wait", "5", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"device": "c00001-r1"' in result.stdout and '"state": "ready"' in result.stdout
    # Whatever client id the console asked for, the broker calls it by its certificate.
    assert "as centre " in fleet_broker.log_text()


@pytest.mark.e2e
def test_a_certificate_on_the_crl_is_refused(centre_dir: Path, tmp_path: Path,
                                             ids: dict[str, tuple[Path, Path]]) -> None:
    revoked = x509.load_pem_x509_certificate(ids[A][0].read_bytes())
    write_crl(load_ca(centre_dir), [(revoked.serial_number, dt.datetime.now(dt.UTC))])
    broker = start_fleet_broker(centre_dir, tmp_path / "broker")
    try:
        with MtlsClient(broker, centre_dir / "ca.pem", *ids[A], client_id=A) as box_a:
            assert not box_a.connect()
        with MtlsClient(broker, centre_dir / "ca.pem", *ids[C], client_id=C) as box_c:
            assert box_c.connect()
    finally:
        broker.stop()
    # OpenSSL says no more than this; C, from the same CA, got in.
    assert "certificate verify failed" in broker.log_text()



@pytest.mark.e2e
def test_after_an_import_a_reload_gives_the_new_box_its_groups(centre_dir: Path,
                                                               fleet_broker: Broker,
                                                               tmp_path: Path) -> None:
    new = "c00005-r1"
    import_sites(centre_dir, HEADER + "01,Thành phố Hà Nội,001,Quận Ba Đình,00005,"
                 "Phường Điện Biên,1,\n", "more.csv")
    cert, key = box_identity(centre_dir, new, tmp_path / "ids")
    centre_id = (centre_dir / "clients/centre.pem", centre_dir / "clients/centre.key")

    def commands_seen() -> list[bytes]:
        with MtlsClient(fleet_broker, centre_dir / "ca.pem", cert, key, client_id=new) as box, \
                MtlsClient(fleet_broker, centre_dir / "ca.pem", *centre_id) as centre:
            assert box.connect() and centre.connect()
            box.subscribe(device_topic(new, "cmd"), group_cmd_topic("c00005"))
            centre.publish(group_cmd_topic("c00005"), b"group")
            centre.publish(device_topic(new, "cmd"), b"own")
            box.wait_for(device_topic(new, "cmd"))
            time.sleep(0.2)
            return [m.payload for m in box.messages]

    # Its own topics come from the patterns at once; its groups with the next ACL.
    assert commands_seen() == [b"own"]
    conf_dir = fleet_broker.workdir / "conf"
    write_broker_config(centre_dir, conf_dir, BrokerSettings(
        port=fleet_broker.port, bind="127.0.0.1", run_as=pwd.getpwuid(os.getuid()).pw_name,
        persistence_dir=str(fleet_broker.workdir / "data"),
        log_file=str(fleet_broker.log_file)))
    assert f"user {new}" in (conf_dir / "acl").read_text()
    os.kill(fleet_broker._proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while "Reloading config" not in fleet_broker.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert commands_seen() == [b"group", b"own"]
