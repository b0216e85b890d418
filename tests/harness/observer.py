"""Watches the broker like the centre does, and sends signed commands.

Subscribes to everything under ``diemcau/v1`` and keeps every message, so a
test can wait for one that matches (``wait_for``) and count what arrived.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from diemcau.protocol import Reply, decode, device_topic, group_cmd_topic, parse_topic
from diemcau.shared import no_delay

from .box import CentreKey
from .broker import Broker


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.time() when it arrived

    @property
    def kind(self) -> str | None:
        parsed = parse_topic(self.topic)
        return parsed.kind if parsed else None

    def json(self) -> object:
        return msgspec.json.decode(self.payload)


class Observer:
    def __init__(self, broker: Broker, centre: CentreKey | None = None, *,
                 client_id: str | None = None) -> None:
        """``client_id``: to take up the session a closed observer left at the broker."""
        self.centre = centre
        self._cond = threading.Condition()
        self.messages: list[Seen] = []
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"observer-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        if broker.tls:
            self._client.tls_set(ca_certs=str(broker.ca_file))
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        # As the box and the centre do: with Nagle on, each publish after the PUBACK of an
        # echoed message waited ~40 ms for the broker's delayed ACK.
        self._client.on_socket_open = lambda client, userdata, sock: no_delay(sock)
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        # A persistent session, so that what is published while the observer
        # reconnects (after a broker restart) still reaches it.
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self._client.reconnect_delay_set(1, 2)
        self._client.connect(broker.host, broker.port, keepalive=10, clean_start=False,
                             properties=props)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("observer could not subscribe")

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # noqa: ANN001
        client.subscribe("diemcau/v1/#", qos=1)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        with self._cond:
            self.messages.append(Seen(msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))
            self._cond.notify_all()

    def close(self) -> None:
        # Disconnect first: it wakes paho's loop, which then ends at once. Stopped first, the
        # loop finished its select() timeout (up to 1 s, in every test's teardown).
        self._client.disconnect()
        self._client.loop_stop()

    def go_offline(self) -> None:
        """Disconnect, keeping the session: the broker queues what arrives meanwhile."""
        self._client.disconnect()
        self._client.loop_stop()

    def come_back(self) -> None:
        """Connect again to the session :meth:`go_offline` left."""
        self._subscribed.clear()
        self._client.reconnect()  # first: paho's loop thread ends at once on a client disconnected
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("observer could not subscribe again")

    # ------------------------------------------------------------ waiting

    def wait_for(self, predicate: Callable[[Seen], bool], timeout: float = 10.0,
                 after: float = 0.0) -> Seen:
        """The first message (arrived at or after ``after``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for seen in self.messages:
                    if seen.at >= after and predicate(seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [f"{m.topic} {m.payload[:120]!r}" for m in self.messages[-15:]]
                    raise TimeoutError("no matching message; last ones:\n" + "\n".join(kinds))
                self._cond.wait(left)

    def on(self, topic: str) -> list[Seen]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def replies(self, dev: str, jti: str | None = None) -> list[Reply]:
        out = []
        for m in self.on(device_topic(dev, "reply")):
            reply = decode(m.payload, Reply)
            if jti is None or reply.id == jti:
                out.append(reply)
        return out

    def wait_reply(self, dev: str, jti: str, status: str | None = None,
                   timeout: float = 10.0) -> Reply:
        topic = device_topic(dev, "reply")

        def match(m: Seen) -> bool:
            if m.topic != topic:
                return False
            reply = decode(m.payload, Reply)
            return reply.id == jti and (status is None or reply.status == status)

        return decode(self.wait_for(match, timeout).payload, Reply)

    # ------------------------------------------------------------ sending

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                expiry_s: int | None = None) -> None:
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(5)

    def command(self, dev: str, cmd: str, args: dict | None = None, *, group: str | None = None,
                **sign: object) -> str:
        """Sign and send a command; returns its id."""
        assert self.centre is not None
        jti = str(sign.pop("jti", None) or uuid.uuid4().hex)
        aud = f"group:{group}" if group else dev
        token = self.centre.sign(aud, cmd, args, jti=jti, **sign)
        topic = group_cmd_topic(group) if group else device_topic(dev, "cmd")
        self.publish(topic, token, expiry_s=120)
        return jti
