"""The box's link to the centre: one paho-mqtt client (MQTT 5) on its own thread.

The link keeps the connection and nothing else. What arrives is posted to the
supervisor's queue; what the supervisor wants sent goes out through
:meth:`MqttLink.publish`. It owns exactly one piece of state, the session
number, because the will must carry it before each connection attempt.

- persistent session (``clean_start=False`` and a session expiry), so
  commands sent while the box is offline arrive when it is back;
- the will sets ``state`` to ``lost`` (retained) with this session's number,
  after a short will delay, so a quick reconnect never shows as lost;
- on every connect: subscribe again, then publish the birth (``ready``);
- a command is acknowledged (PUBACK) only when the supervisor says it is on
  disk (:meth:`MqttLink.ack`), never when it merely arrived: a box that dies
  before that gets it again from the broker after its restart;
- several brokers of one cluster (``mqtt.host``, then ``mqtt.fallback_hosts``):
  after a failed attempt or a dropped connection the next one is tried, with
  the same client id, session and backoff;
- reconnect with exponential backoff and jitter (paho's own has no jitter); the
  first attempt after a connection that was up is lost comes anywhere in
  ``mqtt.reconnect_spread_s``, so a fleet that loses its broker at once does
  not come back at once;
- callbacks never block and never let an exception escape.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..config import Mqtt
from ..core.backoff import backoff_delay, spread_delay
from ..core.events import CommandArrived, Delivered, LinkDown, LinkUp, OwnStateSeen
from ..protocol import State, device_topic, encode, group_cmd_topic, now_ts
from ..shared import guarded, no_delay, tls_context
from .clock import check_clock, clock_floor
from .statefile import Counters

log = logging.getLogger("diemcau.link")


_guarded = guarded(log)


def _loop_thread_writes(client: Any, userdata: Any, sock: Any) -> None:
    """paho's "socket wants writing" hook: nothing to do, the loop thread writes."""


class AckToken(NamedTuple):
    """What :meth:`MqttLink.ack` needs: the message's id on the connection it came on."""

    mid: int
    qos: int
    connection: int


class MqttLink:
    def __init__(
        self,
        cfg: Mqtt,
        device_id: str,
        groups: list[str],
        counters: Counters,
        post: Callable[[object], None],
        *,
        rng: random.Random | None = None,
        clock_floor: Callable[[], float] = clock_floor,
    ) -> None:
        self._cfg = cfg
        self._clock_floor = clock_floor
        self._dev = device_id
        self._groups = groups
        self._counters = counters
        self._post = post
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._had_connack = False  # this connection attempt got a successful CONNACK
        self._connection = 0  # bumped on each CONNACK: a PUBACK belongs to one connection
        self.session = counters.get("session")
        self._addresses = cfg.addresses()
        self._address = 0  # index into _addresses: the broker tried now
        self._state_topic = device_topic(device_id, "state")
        self._client = self._make_client()

    # ------------------------------------------------------------ set-up

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self._dev,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # we reconnect ourselves, with jitter
            manual_ack=True,  # a command is acknowledged once it is on disk (ack())
        )
        client.username_pw_set(self._cfg.username or self._dev, self._cfg.password or None)
        context = self._tls = tls_context(self._cfg.tls)
        if context is not None:
            if self._cfg.tls.insecure_skip_verify:
                log.warning("TLS certificate checks are off (mqtt.tls.insecure_skip_verify)")
            client.tls_set_context(context)
        client.max_queued_messages_set(0)  # bounded by our outbox instead
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        # Only the link's thread may touch the socket. Without this hook, paho
        # writes a publish at once from the caller's thread (the supervisor's),
        # while this thread reads: harmless on plain TCP, but two threads in one
        # TLS session corrupt it ("bad record mac"). With it, a publish is
        # queued and the loop thread, woken through paho's socket pair, writes.
        client.on_socket_register_write = _loop_thread_writes
        return client

    def _set_will(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = self._cfg.will_delay_s
        will = encode(State(state="lost", session=self.session, ts=now_ts()))
        self._client.will_set(self._state_topic, will, qos=1, retain=True, properties=props)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, final_state: str = "disconnected", timeout_s: float = 3.0) -> None:
        """Publish the final state, disconnect cleanly (no will), stop the thread."""
        if self.connected:
            payload = encode(State(state=final_state, session=self.session, ts=now_ts()))  # type: ignore[arg-type]
            info = self._client.publish(self._state_topic, payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("final state not confirmed: %s", exc)
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout_s + 2)
        # The loop thread has ended: only now may this thread write (DISCONNECT, so no will).
        self._client.disconnect()
        self._client.loop_write()

    def _run(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        attempt = 0
        lost = False  # a connection that was up has just been lost
        while not self._stopping.is_set():
            self.session = self._counters.bump("session")
            self._set_will()
            self._had_connack = False  # set by _on_connect for this attempt only
            host, port = self._addresses[self._address]
            try:
                if self._cfg.tls.enabled:
                    # Certificates cannot be judged on a clock known to be wrong.
                    check_clock(self._clock_floor())
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._cfg.session_expiry_s
                self._client.connect(host, port, keepalive=self._cfg.keepalive_s,
                                     clean_start=False, properties=props)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("cannot reach broker %s:%d: %s", host, port, exc)
            else:
                while not self._stopping.is_set():
                    rc = self._client.loop(timeout=0.2)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                if self._connected.is_set():
                    self._connected.clear()
                    self._post(LinkDown("connection lost"))
                # A session that got as far as CONNACK resets the backoff.
                if self._had_connack:
                    attempt = 0
                    lost = True
                elif not self._stopping.is_set():
                    # With TLS 1.3 a refused client certificate shows only here.
                    log.warning("broker %s:%d closed the connection before accepting us (%s): "
                                "our certificate refused (revoked?), or the broker is busy",
                                host, port, mqtt.error_string(rc))
            if self._stopping.is_set():
                break
            # Failed or dropped: the next broker of the cluster (the same one if it is alone).
            self._address = (self._address + 1) % len(self._addresses)
            if lost:
                delay = spread_delay(self._cfg.reconnect_spread_s, self._rng.random)
                lost = False
            else:
                delay = backoff_delay(attempt, self._cfg.reconnect_min_s,
                                      self._cfg.reconnect_max_s, self._rng.random)
            attempt += 1
            log.info("reconnecting in %.1f s (attempt %d)", delay, attempt)
            self._stopping.wait(delay)
        self._connected.clear()

    # ------------------------------------------------------------ paho callbacks

    @_guarded
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._had_connack = False
            return
        self._had_connack = True
        self._connection += 1
        from paho.mqtt.subscribeoptions import SubscribeOptions

        opts = SubscribeOptions(qos=1)
        topics = [(device_topic(self._dev, "cmd"), opts), (self._state_topic, opts)]
        topics += [(group_cmd_topic(g), opts) for g in self._groups]
        client.subscribe(topics)
        self.publish_birth()
        self._connected.set()
        host, port = self._addresses[self._address]
        log.info("connected to %s:%d, session %d (broker kept it: %s)", host, port,
                 self.session, flags.session_present)
        self._post(LinkUp(self.session, bool(flags.session_present)))

    @_guarded
    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            log.warning("disconnected: %s", reason)
            self._post(LinkDown(str(reason)))

    @_guarded
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        no_delay(sock)  # commands and replies are small: never hold one back

    @_guarded
    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic == self._state_topic:
            if message.qos:
                client.ack(message.mid, message.qos)  # nothing to keep: a birth overwrites it
            self._post(OwnStateSeen(bytes(message.payload)))
        else:
            token = AckToken(message.mid, message.qos, self._connection) if message.qos else None
            self._post(CommandArrived(message.topic, bytes(message.payload), token))

    @_guarded
    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._post(Delivered(mid))

    def reload_certificate(self) -> None:
        """Use the (renewed) certificate files from the next connection on.

        The connection up now stays: the broker checked the old certificate
        when it began, and it is still valid for months.
        """
        if self._tls is not None and self._cfg.tls.cert_file:
            self._tls.load_cert_chain(self._cfg.tls.cert_file, self._cfg.tls.key_file or None)
            log.info("client certificate reloaded for the next connection")

    # ------------------------------------------------------------ sending

    def ack(self, token: AckToken) -> None:
        """Acknowledge a command to the broker (from any thread; the loop thread writes).

        Only on the connection it came on: after a reconnect the broker sends
        every unacknowledged command again, and that copy is acknowledged instead.
        """
        if token.connection == self._connection and self._connected.is_set():
            self._client.ack(token.mid, token.qos)

    def publish_birth(self) -> None:
        payload = encode(State(state="ready", session=self.session, ts=now_ts()))
        self._client.publish(self._state_topic, payload, qos=1, retain=True)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue a message with paho; returns its message id (for :class:`Delivered`)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return int(info.mid)
