"""The real box and the centre's own MQTT session on a three-node ejabberd cluster.

The box lists the three nodes (A first), the centre talks through node B, a
second watcher reads retained state through node C. What the cluster keeps and
what it loses when a node dies is asserted as ejabberd 23.01 really does it
(docs/broker-cluster.md says the same, with the figures this prints).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from diemcau.config import Mqtt, Tls
from diemcau.protocol import Reply, State, decode, device_filter, device_topic
from diemcau_centre.mqtt import Received, Session
from tests.harness import ejabberd
from tests.harness.alsa import make_microphone
from tests.harness.box import Box, CentreKey, box_config
from tests.harness.ejabberd import EjabberdCluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ejabberd.available(), reason="ejabberd is not installed (make setup)"),
]

DEV = "c00001-r1"
BOX_PASSWORD = "box-secret-1"
CENTRE_PASSWORD = "centre-secret-1"
WILL_DELAY_S = 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EjabberdCluster]:
    c = EjabberdCluster(tmp_path / "ejabberd",
                        users={DEV: BOX_PASSWORD, "centre": CENTRE_PASSWORD})
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Centre:
    """The console's own MQTT session (diemcau_centre.mqtt.Session) on one node."""

    def __init__(self, node: ejabberd.EjabberdNode, key: CentreKey, name: str) -> None:
        cfg = Mqtt(host=node.host, port=node.port, username="centre", password=CENTRE_PASSWORD,
                   tls=Tls(enabled=False))
        self.key = key
        self.session = Session(cfg, name)
        self.session.open()
        self.seen: list[Received] = []

    def pump(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            got = self.session.receive(left)
            if isinstance(got, Received):
                self.seen.append(got)

    def wait(self, wanted, timeout_s: float = 20.0) -> Received:  # noqa: ANN001
        end = time.monotonic() + timeout_s
        while True:
            for m in self.seen:
                if wanted(m):
                    return m
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not seen in {timeout_s} s; seen: "
                                   f"{[(m.topic, m.payload[:60]) for m in self.seen[-10:]]}")
            got = self.session.receive(min(left, 0.5))
            if isinstance(got, Received):
                self.seen.append(got)

    def states(self) -> list[State]:
        return [decode(m.payload, State) for m in self.seen
                if m.topic == device_topic(DEV, "state") and m.payload]

    def wait_state(self, state: str, session: int | None = None, *, after: int = 0,
                   **kw: float) -> Received:
        """The first ``state`` of that session, or of any session past ``after``."""
        def match(m: Received) -> bool:
            if m.topic != device_topic(DEV, "state"):
                return False
            s = decode(m.payload, State)
            return s.state == state and (s.session == session if session else s.session > after)
        return self.wait(match, **kw)

    def command(self, cmd: str = "health.report") -> str:
        jti = uuid.uuid4().hex
        token = self.key.sign(DEV, cmd, None, jti=jti)
        self.session.publish(device_topic(DEV, "cmd"), token, expiry_s=300)
        return jti

    def replies(self, jti: str) -> list[Reply]:
        return [r for m in self.seen if m.topic == device_topic(DEV, "reply")
                for r in [decode(m.payload, Reply)] if r.id == jti]

    def wait_reply(self, jti: str, **kw: float) -> Reply:
        def match(m: Received) -> bool:
            return (m.topic == device_topic(DEV, "reply")
                    and decode(m.payload, Reply).id == jti
                    and decode(m.payload, Reply).status == "succeeded")
        return decode(self.wait(match, **kw).payload, Reply)

    def close(self) -> None:
        self.session.close()


def make_box(tmp_path: Path, cluster: EjabberdCluster, key: CentreKey,
             order: tuple[str, ...] = ("a", "b", "c")) -> Box:
    mic = make_microphone(tmp_path / "mic", seconds=60)
    first, *rest = (cluster.node(n) for n in order)
    box = Box(tmp_path / "box", first, key, device_id=DEV, env=mic.env,  # type: ignore[arg-type]
              microphone=mic.pcm, will_delay_s=WILL_DELAY_S, mqtt_password=BOX_PASSWORD,
              fallback_hosts=tuple(n.address for n in rest))
    return box


def point_box_at(box: Box, cluster: EjabberdCluster, key: CentreKey,
                 order: tuple[str, ...]) -> None:
    """Rewrite the (stopped) box's broker list: as if its path to a node were cut."""
    first, *rest = (cluster.node(n) for n in order)
    text = box.config_file.read_text()
    mic_line = next(line for line in text.splitlines() if line.startswith("microphone = "))
    box.config_file.write_text(box_config(
        device_id=DEV, broker=first, state_dir=box.state_dir,  # type: ignore[arg-type]
        keys={key.kid: key.public_text}, microphone=mic_line.split('"')[1],
        will_delay_s=WILL_DELAY_S, mqtt_password=BOX_PASSWORD,
        fallback_hosts=tuple(n.address for n in rest)))


def connect_lines(box: Box) -> list[str]:
    return [line for line in box.log_text().splitlines() if "connected to 127.0.0.1:" in line]


def test_box_moves_to_another_node_when_its_node_dies(cluster, tmp_path, centre):  # noqa: ANN001
    node_a, node_b, node_c = cluster.nodes
    console = Centre(node_b, centre, "console-b")
    console.session.subscribe([device_filter()])
    box = make_box(tmp_path, cluster, centre)
    box.start()
    try:
        born = decode(console.wait_state("ready").payload, State)
        assert f"connected to {node_a.address}" in connect_lines(box)[-1]

        # Retained state, meta and status: ejabberd keeps them in Mnesia on every
        # node, but each node's index of retained topics is its own, filled at its
        # start and by what is published through it. Node C, running before the
        # box published, sends none of them; node A, the box's, sends them all.
        watcher_c = Centre(node_c, centre, "watcher-c")
        watcher_c.session.subscribe([device_filter(DEV)])
        watcher_c.pump(1.5)
        retained_via_c = [m.topic for m in watcher_c.seen if m.retain and m.payload]
        watcher_c.close()
        watcher_a = Centre(node_a, centre, "watcher-a")
        watcher_a.session.subscribe([device_filter(DEV)])
        for kind in ("state", "meta", "status"):
            m = watcher_a.wait(lambda m, k=kind: m.topic == device_topic(DEV, k))
            assert m.retain, f"{kind} read through node A is not the retained copy"
        assert decode(watcher_a.wait(lambda m: m.topic == device_topic(DEV, "state")).payload,
                      State) == born
        watcher_a.close()
        print(f"\nretained messages of the box read through node C: {len(retained_via_c)}")
        assert retained_via_c == [], "node C now shares retained topics: update the docs"

        # A command from B reaches the box on A; its reply comes back to B.
        jti = console.command()
        console.wait_reply(jti)

        # Node A dies under the box.
        killed_at = time.monotonic()
        cluster.kill("a")
        reborn = console.wait_state("ready", after=born.session, timeout_s=30)
        failover_s = reborn.at_mono - killed_at
        new_node = connect_lines(box)[-1]
        assert "broker kept it: False" in new_node, new_node
        # The will of the dead node's session lived in that node's memory: it is
        # never published. Wait past the will delay to be sure.
        console.pump(WILL_DELAY_S + 4)
        lost = [s for s in console.states() if s.state == "lost"]
        print(f"\nnode A killed -> birth of session {decode(reborn.payload, State).session} through "
              f"{new_node.split('connected to ')[1].split(',')[0]}: {failover_s:.2f} s; "
              f"wills seen: {len(lost)}")
        assert lost == [], "ejabberd published a will for a session on a dead node"
        assert f"connected to {node_b.address}" in new_node  # the next address in its list

        # The box works on its new node: commands in, replies out.
        jti = console.command()
        console.wait_reply(jti)
        assert len(console.replies(jti)) >= 1
    finally:
        box.stop()
        console.close()


def test_commands_queued_for_an_offline_box(cluster, tmp_path, centre):  # noqa: ANN001
    node_a, node_b, node_c = cluster.nodes
    console = Centre(node_b, centre, "console-b")
    console.session.subscribe([device_filter()])
    box = make_box(tmp_path, cluster, centre)
    box.start()
    try:
        first = decode(console.wait_state("ready").payload, State)

        # Offline with its session on node A: the will comes once, from A, after its delay.
        box.kill()
        console.wait_state("lost", first.session)
        queued = console.command()

        # Back through node C while A still runs: ejabberd moves the session across nodes.
        point_box_at(box, cluster, centre, ("c", "a", "b"))
        box.start()
        second = decode(console.wait_state("ready", after=first.session).payload, State)
        line = connect_lines(box)[-1]
        assert f"connected to {node_c.address}" in line and "broker kept it: True" in line, line
        console.wait_reply(queued)
        console.pump(WILL_DELAY_S + 2)
        wills = [s.session for s in console.states() if s.state == "lost"]
        assert wills == [first.session], f"wills seen: {wills}"

        # Offline again, its session now on C; C dies with the queued command in it.
        box.kill()
        console.wait_state("lost", second.session)
        lost_with_node = console.command()
        cluster.kill("c")
        point_box_at(box, cluster, centre, ("a", "b", "c"))
        box.start()
        console.wait_state("ready", after=second.session)
        line = connect_lines(box)[-1]
        console.pump(5.0)
        delivered = console.replies(lost_with_node)
        print(f"\nqueued on a live node, box back through another: delivered; "
              f"queued on a node that died: {'delivered' if delivered else 'lost'} "
              f"(session kept: {'True' if 'kept it: True' in line else 'False'})")
        assert "broker kept it: False" in line, line
        assert delivered == [], "ejabberd kept a session whose node died"
        wills = [s.session for s in console.states() if s.state == "lost"]
        assert wills == [first.session, second.session], f"wills seen: {wills}"
    finally:
        box.stop()
        console.close()


def test_what_the_cluster_refuses(cluster):  # noqa: ANN001
    """Shared subscriptions are refused (the connection is closed); session expiry is capped."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    node = cluster.node("b")
    got: dict[str, object] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("centre", CENTRE_PASSWORD)
    client.on_connect = lambda c, u, f, rc, props: got.update(connack=props)
    client.on_subscribe = lambda c, u, mid, codes, props: got.update(answer=codes)
    client.on_disconnect = lambda c, u, flags, rc, props: got.update(answer=[rc])
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 30 * 24 * 3600
    client.connect(node.host, node.port, clean_start=True, properties=props)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while "connack" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        connack = msgspec.to_builtins(got["connack"].json())  # type: ignore[attr-defined]
        assert connack["SharedSubscriptionAvailable"] == 0
        assert connack["SessionExpiryInterval"] == 604800  # capped to mod_mqtt's session_expiry
        client.subscribe("$share/centre/diemcau/v1/dev/+/reply", qos=1)
        while "answer" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        # Not a refusal in the SUBACK: the broker ends the whole connection.
        codes = got["answer"]  # a DISCONNECT reason, not SUBACK codes
        print(f"\n$share/ subscription answered with: {codes}")
        assert [c.getName() for c in codes] == ["Shared subscription not supported"]  # type: ignore[attr-defined]
    finally:
        client.loop_stop()
        client.disconnect()
