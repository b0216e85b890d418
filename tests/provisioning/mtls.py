"""A paho client (MQTT 5) with a certificate, that records what happens to it.

    with MtlsClient(broker, ca_file, cert, key, client_id="c00001-r1") as box:
        assert box.connect()
        box.subscribe(device_topic("c00001-r1", "cmd"))
        box.wait_for(device_topic("c00001-r1", "cmd"))
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness.broker import Broker


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool


class MtlsClient:
    """One connection; never reconnects by itself, so a takeover stays visible."""

    def __init__(self, broker: Broker, ca_file: Path | None, cert: Path | None = None,
                 key: Path | None = None, *, client_id: str = "", username: str | None = None,
                 tls: bool = True, session_expiry_s: int = 0) -> None:
        self.broker = broker
        self.session_expiry_s = session_expiry_s  # > 0: a persistent session, kept that long
        self._cond = threading.Condition()
        self.messages: list[Got] = []
        self.connack: Any = None
        self.disconnects: list[str] = []
        self.suback: dict[int, list[int]] = {}
        self.puback: dict[int, int] = {}
        self.error: str | None = None
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=paho.MQTTv5, reconnect_on_failure=False)
        if username is not None:
            self._client.username_pw_set(username)
        if tls:
            self._client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                                 certfile=str(cert) if cert else None,
                                 keyfile=str(key) if key else None,
                                 cert_reqs=ssl.CERT_REQUIRED)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish

    # ------------------------------------------------------------ paho's thread

    def _notify(self, change: Any) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._notify(lambda: setattr(self, "connack", reason))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self._notify(lambda: self.disconnects.append(str(reason)))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        got = Got(msg.topic, bytes(msg.payload), bool(msg.retain))
        self._notify(lambda: self.messages.append(got))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._notify(lambda: self.suback.__setitem__(mid, [c.value for c in codes]))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._notify(lambda: self.puback.__setitem__(mid, reason.value))

    # ------------------------------------------------------------ the test's thread

    def _wait(self, ready: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def connect(self, timeout_s: float = 5.0) -> bool:
        """True when the broker accepted us (CONNACK success) within ``timeout_s``."""
        props = None
        if self.session_expiry_s:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=30,
                                 clean_start=not self.session_expiry_s, properties=props)
        except (OSError, ssl.SSLError) as exc:
            self.error = str(exc)
            return False
        self._client.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnects, timeout_s)
        return self.connected

    @property
    def connected(self) -> bool:
        with self._cond:
            return (self.connack is not None and not self.connack.is_failure
                    and not self.disconnects)

    def subscribe(self, *filters: str, timeout_s: float = 5.0) -> list[int]:
        """Subscribe (QoS 1); the reason code the broker gave each filter."""
        _, mid = self._client.subscribe([(f, 1) for f in filters])
        assert self._wait(lambda: mid in self.suback, timeout_s), "no SUBACK"
        return self.suback[mid]

    def publish(self, topic: str, payload: bytes | str = b"x", *, retain: bool = False,
                timeout_s: float = 5.0) -> int:
        """Publish (QoS 1) and wait for the broker's PUBACK; its reason code."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        assert self._wait(lambda: info.mid in self.puback, timeout_s), f"no PUBACK for {topic}"
        return self.puback[info.mid]

    def publish_all(self, messages: list[tuple[str, bytes]], timeout_s: float = 30.0
                    ) -> list[int]:
        """Publish each (QoS 1) at once, then wait for every PUBACK; their reason codes."""
        mids = [self._client.publish(topic, payload, qos=1).mid for topic, payload in messages]
        assert self._wait(lambda: all(mid in self.puback for mid in mids), timeout_s), (
            f"{sum(mid not in self.puback for mid in mids)} PUBACK(s) missing")
        return [self.puback[mid] for mid in mids]

    def wait_count(self, topic_filter: str, count: int, timeout_s: float = 10.0) -> int:
        """Wait until ``count`` messages on topics matching ``topic_filter`` came; how many did."""
        def matching() -> int:
            return sum(paho.topic_matches_sub(topic_filter, m.topic) for m in self.messages)

        self._wait(lambda: matching() >= count, timeout_s)
        with self._cond:
            return matching()

    def wait_for(self, topic: str, timeout_s: float = 5.0) -> Got:
        def found() -> bool:
            return any(m.topic == topic for m in self.messages)

        assert self._wait(found, timeout_s), (
            f"nothing on {topic}; got: {[m.topic for m in self.messages]}")
        return next(m for m in self.messages if m.topic == topic)

    def wait_disconnected(self, timeout_s: float = 5.0) -> bool:
        return self._wait(lambda: bool(self.disconnects), timeout_s)

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MtlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
