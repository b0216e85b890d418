"""The console's MQTT connection: short-lived, clean session, MQTT 5, one queue.

paho's thread only posts what happens (connected, acks, messages) to one
queue; the console's main thread reads it. Nothing is decided in a callback.

    session = Session(cfg.mqtt, cfg.client_id)
    session.open()
    session.subscribe([device_topic("c00001-r1", "reply")])
    sent_at = session.publish(device_topic("c00001-r1", "cmd"), token, expiry_s=120)
    got = session.receive(timeout_s=1.0)   # Received | Connected | Disconnected | None
    session.close()
"""

from __future__ import annotations

import collections
import logging
import queue
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from diemcau.config import Mqtt
from diemcau.shared import guarded, no_delay, tls_context

log = logging.getLogger("diemcau_centre.mqtt")

# A burst of messages (a group's replies: 20,000 at 10,000 boxes) wakes the reading
# thread once a burst, not once a message: after a wait ends, the burst gathers this
# long behind the first message. Waking per message cost more CPU than the roll-call's
# own work (tests/bench/ingest.py); arrival times are taken on paho's thread, unchanged.
GATHER_S = 0.001


class MqttError(Exception):
    """The broker cannot be reached, refused us, or dropped us."""


@dataclass(frozen=True, slots=True)
class Connected:
    reason: str
    failed: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class SubAck:
    mid: int
    refused: tuple[str, ...]  # one reason per refused filter, empty if all granted


@dataclass(frozen=True, slots=True)
class PubAck:
    mid: int
    reason: str
    failed: bool


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.time() on arrival: what ages are measured from
    at_mono: float  # time.monotonic() on arrival: what latencies are measured from


Happening = Connected | Disconnected | SubAck | PubAck | Received


def make_client(cfg: Mqtt, client_id: str) -> paho.Client:
    """A paho client (MQTT 5, callback API 2) with the TLS and login of ``cfg``."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    # paho reconnects by itself (watch relies on it), in whole seconds.
    client.reconnect_delay_set(max(1, round(cfg.reconnect_min_s)),
                               max(1, round(cfg.reconnect_min_s), round(cfg.reconnect_max_s)))
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    context = tls_context(cfg.tls)
    if context is not None:
        client.tls_set_context(context)
    return client


_guarded = guarded(log)


class Session:
    """One MQTT 5 connection with a clean session; see the module docstring."""

    def __init__(self, cfg: Mqtt, client_id: str) -> None:
        self._cfg = cfg
        self.client_id = client_id
        # SimpleQueue: C, no Python-level lock and condition per put and get.
        self._queue: queue.SimpleQueue[Happening] = queue.SimpleQueue()
        self._inbox: collections.deque[Happening] = collections.deque()
        self._client = make_client(cfg, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._started = False
        self._where = f"{cfg.host}:{cfg.port}"

    @property
    def where(self) -> str:
        """The broker connected to (or tried last)."""
        return self._where

    # ------------------------------------------------------------ paho's thread

    @_guarded
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        no_delay(sock)

    @_guarded
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._queue.put(Connected(str(reason), bool(reason.is_failure)))

    @_guarded
    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self._queue.put(Disconnected(str(reason)))

    @_guarded
    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        refused = tuple(str(r) for r in reasons if r.is_failure)
        self._queue.put(SubAck(mid, refused))

    @_guarded
    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._queue.put(PubAck(mid, str(reason), bool(reason.is_failure)))

    @_guarded
    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._queue.put(Received(message.topic, bytes(message.payload), bool(message.retain),
                                 time.time(), time.monotonic()))

    # ------------------------------------------------------------ the console's thread

    def open(self, timeout_s: float = 10.0) -> None:
        """Connect (clean start, no session kept) and wait for the broker's answer.

        With ``mqtt.fallback_hosts``, the first broker that takes the TCP
        connection is used (paho's own reconnects stay on it).
        """
        self._client.connect_timeout = min(timeout_s, 10.0)
        failures = []
        for host, port in self._cfg.addresses():
            self._where = f"{host}:{port}"
            log.debug("connecting to %s as %s", self.where, self.client_id)
            try:
                self._client.connect(host, port, keepalive=self._cfg.keepalive_s,
                                     clean_start=True)
                break
            except (OSError, ssl.SSLError, ValueError) as exc:
                failures.append(f"{self.where}: {exc}")
        else:
            raise MqttError(f"cannot reach the broker at {'; '.join(failures)}")
        self._client.loop_start()
        self._started = True
        got = self._wait_for(lambda h: isinstance(h, Connected | Disconnected), timeout_s)
        if got is None:
            raise MqttError(f"the broker at {self.where} did not answer within {timeout_s:g} s")
        if isinstance(got, Disconnected) or (isinstance(got, Connected) and got.failed):
            raise MqttError(f"the broker at {self.where} refused the connection: {got.reason}")

    def subscribe(self, filters: list[str], timeout_s: float = 10.0, qos: int = 1) -> None:
        """Subscribe (QoS 1 unless told) and wait for the broker to grant every filter."""
        log.debug("subscribing to %s", ", ".join(filters))
        rc, mid = self._client.subscribe([(f, SubscribeOptions(qos=qos)) for f in filters])
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"cannot subscribe: {paho.error_string(rc)}")
        got = self._wait_for(lambda h: isinstance(h, SubAck) and h.mid == mid, timeout_s)
        if not isinstance(got, SubAck):
            raise MqttError(f"no answer to our subscription within {timeout_s:g} s")
        if got.refused:
            raise MqttError(f"the broker refused the subscription to {', '.join(filters)}: "
                            f"{', '.join(got.refused)} (check the broker's ACL for "
                            f"{self.client_id})")

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, expiry_s: int = 0,
                timeout_s: float = 10.0) -> float:
        """Publish and wait for the broker's acknowledgement; return time.monotonic() at send.

        ``expiry_s`` sets MQTT 5's message expiry: the broker drops the message
        if it cannot deliver it in time, whatever the receiver's clock says.
        """
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s:
            props.MessageExpiryInterval = int(expiry_s)
        log.debug("publishing %d bytes to %s (QoS %d, expiry %d s)", len(payload), topic, qos,
                  expiry_s)
        sent_at = time.monotonic()
        info = self._client.publish(topic, payload, qos=qos, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"cannot publish to {topic}: {paho.error_string(info.rc)}")
        if qos == 0:
            return sent_at
        got = self._wait_for(lambda h: isinstance(h, PubAck) and h.mid == info.mid, timeout_s)
        if not isinstance(got, PubAck):
            raise MqttError(f"the broker did not acknowledge {topic} within {timeout_s:g} s")
        if got.failed:
            raise MqttError(f"the broker refused {topic}: {got.reason} (check the broker's ACL "
                            f"for {self.client_id})")
        return sent_at

    def publish_many(self, messages: list[tuple[str, bytes | str]], *, qos: int = 1,
                     expiry_s: int = 0, timeout_s: float = 30.0) -> None:
        """Publish every message, then wait until the broker has acknowledged them all.

        One after another, each waited for, costs a round trip (and on a broker
        that saves after every change, a save) each: hundreds of resends at once
        must not take minutes.
        """
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s:
            props.MessageExpiryInterval = int(expiry_s)
        waiting: set[int] = set()
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos=qos, properties=props)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise MqttError(f"cannot publish to {topic}: {paho.error_string(info.rc)}")
            waiting.add(info.mid)
        if qos == 0:
            return
        deadline = time.monotonic() + timeout_s
        while waiting:
            got = self._wait_for(lambda h: isinstance(h, PubAck) and h.mid in waiting,
                                 deadline - time.monotonic())
            if not isinstance(got, PubAck):
                raise MqttError(f"the broker did not acknowledge {len(waiting)} of "
                                f"{len(messages)} message(s) within {timeout_s:g} s")
            if got.failed:
                raise MqttError(f"the broker refused a message: {got.reason} (check the "
                                f"broker's ACL for {self.client_id})")
            waiting.discard(got.mid)

    def receive(self, timeout_s: float) -> Received | Connected | Disconnected | None:
        """The next message or change of connection, or None after ``timeout_s``."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if self._inbox:
                got = self._inbox.popleft()
            else:
                try:
                    got = self._queue.get_nowait()
                except queue.Empty:
                    try:
                        got = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                    except queue.Empty:
                        return None
                    time.sleep(GATHER_S)
            if isinstance(got, Received | Connected | Disconnected):
                return got
            # Acks nobody waits for any more (a timed-out wait) are dropped.

    @property
    def connected(self) -> bool:
        """paho holds a connection the broker has accepted, now."""
        return self._client.is_connected()

    def wait_connected(self, timeout_s: float) -> bool:
        """For a connection that only publishes: wait (up to ``timeout_s``) until paho has
        connected again by itself, and forget the drops, reconnects and stale acknowledgements
        seen meanwhile, so a publish does not stop at a drop that is over. True if connected."""
        deadline = time.monotonic() + timeout_s
        while not self.connected:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        # Messages are kept for receive(); acknowledgements nobody waits for are dropped.
        kept = [h for h in self._inbox if isinstance(h, Received)]
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(got, Received):
                kept.append(got)
        self._inbox = collections.deque(kept)
        # A drop after the check above is still seen by the next publish (is_connected says so).
        return self.connected

    def _wait_for(self, wanted: Callable[[Happening], bool], timeout_s: float) -> Happening | None:
        """Wait for one happening; keep the others, in order, for :meth:`receive`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                got = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if wanted(got):
                return got
            if isinstance(got, Disconnected):
                raise MqttError(f"lost the connection to the broker at {self.where}: "
                                f"{got.reason}")
            self._inbox.append(got)

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
