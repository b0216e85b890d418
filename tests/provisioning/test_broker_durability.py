"""Nothing is dropped: Mosquitto running what ``broker-config`` writes for a fleet of
2,000 boxes queues every box's answers for the centre, and keeps a box's commands
across a crash (SIGKILL, so no save on the way out) once its timed save has them.

The fleet is a manifest of 2,000 boxes; four of them connect, with their own
certificates, over the production listener (mutual TLS, the ACL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from diemcau.protocol import BROKER_SAVE_S, Event, Reply, device_topic, encode
from diemcau_centre.broker_config import durability
from diemcau_centre.ca import init_ca, issue_client_cert, issue_server_cert
from diemcau_centre.manifest import import_sites
from tests.harness.broker import Broker

from .conftest import A2, HEADER, SERVICE, SITES, A, B, C, box_identity, start_fleet_broker
from .mtls import MtlsClient

pytestmark = pytest.mark.e2e

FLEET = 2000
SESSION_S = 3600


def fleet_sites(boxes: int) -> str:
    """The four boxes of the other provisioning tests, then communes up to ``boxes`` rooms."""
    rows = [f"01,Thành phố Hà Nội,002,Quận Hoàn Kiếm,{10000 + i:05d},Phường số {i},1,\n"
            for i in range(boxes - 4)]
    return SITES + "".join(rows)


@pytest.fixture(scope="module")
def big_centre(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("centre")
    ca = init_ca(directory)
    issue_server_cert(ca, ["127.0.0.1", "localhost"])
    issue_client_cert(ca, "centre")
    assert HEADER in fleet_sites(FLEET)
    import_sites(directory, fleet_sites(FLEET), "sites.csv", service=SERVICE)
    return directory


@pytest.fixture
def broker(big_centre: Path, tmp_path: Path) -> Iterator[Broker]:
    b = start_fleet_broker(big_centre, tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def identity(big_centre: Path, tmp_path: Path):  # noqa: ANN201
    ids = {dev: box_identity(big_centre, dev, tmp_path / "ids") for dev in (A, A2, B, C)}
    ids["centre"] = (big_centre / "clients/centre.pem", big_centre / "clients/centre.key")
    return ids


def client(broker: Broker, big_centre: Path, identity: dict, name: str, *,
           session: bool = False) -> MtlsClient:
    cert, key = identity[name]
    c = MtlsClient(broker, big_centre / "ca.pem", cert, key, client_id=name,
                   session_expiry_s=SESSION_S if session else 0)
    assert c.connect(), f"{name} could not connect: {c.disconnects} {c.error}"
    return c


def test_the_configuration_is_sized_for_the_manifest(broker: Broker) -> None:
    conf = (broker.workdir / "mosquitto.conf").read_text()
    sizes = durability(FLEET)
    assert f"max_queued_messages {sizes.max_queued_messages}" in conf
    assert sizes.max_queued_messages >= FLEET * 2  # at least two answers from every box
    assert "autosave_on_changes false" in conf
    assert f"autosave_interval {BROKER_SAVE_S}\n" in conf


def test_the_centre_offline_gets_every_answer_queued_for_it(broker: Broker, big_centre: Path,
                                                            identity: dict) -> None:
    """The centre's persistent session, offline while four boxes say 2,400 things."""
    centre = client(broker, big_centre, identity, "centre", session=True)
    centre.subscribe(device_topic("+", "reply"), device_topic("+", "event"))
    centre.close()

    per_box = 600  # 2,400 in all: more than Mosquitto's default queue of 1,000
    sent: set[tuple[str, str]] = set()
    for dev in (A, A2, B, C):
        box = client(broker, big_centre, identity, dev)
        messages = []
        for i in range(per_box):
            if i % 2:
                reply = Reply(id=f"{dev}-{i}", cmd="audio.mute", status="succeeded", code=200,
                              detail="muted", ts=1.0)
                messages.append((device_topic(dev, "reply"), encode(reply)))
            else:
                messages.append((device_topic(dev, "event"),
                                 encode(Event(seq=i, ts=1.0, kind="button"))))
            sent.add((dev, str(i)))
        assert set(box.publish_all(messages)) == {0}
        box.close()

    centre = client(broker, big_centre, identity, "centre", session=True)
    got = centre.wait_count("diemcau/v1/dev/#", len(sent), timeout_s=30)
    received: set[tuple[str, str]] = set()
    for m in centre.messages:
        body = msgspec.json.decode(m.payload)
        dev = m.topic.split("/")[3]
        received.add((dev, str(body["seq"]) if "seq" in body else body["id"].rsplit("-", 1)[1]))
    centre.close()
    print(f"sent {len(sent)} answers and events to the offline centre; it received {got}")
    assert received == sent
    assert "Outgoing messages are being dropped" not in broker.log_text()


def test_commands_queued_for_an_offline_box_survive_a_broker_crash_after_its_save(
        broker: Broker, big_centre: Path, identity: dict) -> None:
    """SIGKILL once the broker saved the centre's commands: the box still gets each one.

    Mosquitto saves on a timer (BROKER_SAVE_S): what it acknowledged inside its
    window is the centre's to send again (tests/e2e/test_broker_save_window.py
    and the roll-call's resend); what it saved survives the crash, which is this.
    """
    box = client(broker, big_centre, identity, A, session=True)
    box.subscribe(device_topic(A, "cmd"))
    box.close()

    centre = client(broker, big_centre, identity, "centre")
    commands = [f"command-{i}".encode() for i in range(50)]
    for payload in commands:  # one at a time, as `diemcau-centre send` does
        assert centre.publish(device_topic(A, "cmd"), payload) == 0
    centre.close()
    broker.wait_for_save()

    broker.crash()
    broker.start()

    box = client(broker, big_centre, identity, A, session=True)
    got = box.wait_count(device_topic(A, "cmd"), len(commands), timeout_s=10)
    payloads = [m.payload for m in box.messages if m.topic == device_topic(A, "cmd")]
    box.close()
    print(f"{len(commands)} commands saved before the SIGKILL; the box got {got}")
    assert sorted(set(payloads)) == sorted(commands)
