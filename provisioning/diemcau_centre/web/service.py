"""The centre service: listens to the fleet, keeps its state in the database, sends commands.

One thread reads the broker (a :class:`~diemcau_centre.mqtt.Session` subscribed to
what the boxes publish) and writes in batches (up to ``batch_s`` or ``batch_max``
messages per transaction), then tells its listeners what changed (the web
console pushes that to the browsers). Commands go out on a second connection, so
that waiting for the broker's acknowledgement never holds up the reading.

    service = CentreService(db, cfg.mqtt, cfg.client_id, key=key, kid=kid)
    service.start()
    jti = service.broadcast(operator, "meeting.join", {...}, BoxFilter(province="p01"))
    service.stop()

The broker saves on a timer, so one that goes away may take with it a command it
acknowledged but had not saved (the copies queued for boxes that are offline);
and the service's connections are clean sessions, so answers the boxes gave
while it was away never reach it. The service keeps each command it sent (its
signed tokens) until it expires; when the reading connection comes back after
a drop, each goes again, same token, to its boxes without a final answer
(:func:`~diemcau_centre.rollcall.send_again_to`): a box that had it answers
``duplicate`` with its latest result, one that had not runs it. The audit log
says so.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from diemcau.config import Mqtt
from diemcau.protocol import alert_topic, device_topic
from diemcau.protocol.messages import DEFAULT_TTL_S

from ..mqtt import Connected, Disconnected, MqttError, Received, Session
from ..rollcall import send_again_to
from ..send import UsageError, build_args, check_command, command_token, parse_target
from .store import BoxFilter, Changes, FleetDb, Message, Operator, Scope

log = logging.getLogger("diemcau_centre.web.service")

# What the boxes publish; not `cmd` (the centre's own).
FLEET_FILTERS = [device_topic("+", kind) for kind in ("state", "meta", "status", "health",
                                                      "event", "reply")] + [
    alert_topic("+", "+")]
# The commands the console offers; the rest stay with `diemcau-centre send`.
BROADCAST_COMMANDS = ("meeting.invite", "meeting.join", "meeting.leave", "firmware.update")


# How often the service looks for boxes gone silent, and prunes the timeline.
SWEEP_S = 10.0
PRUNE_EVERY_S = 3600.0


# How long a command waits for the sending connection to be back before it is refused.
SEND_WAIT_S = 5.0
# Who the audit log names for what the console does by itself (not a user name: 1-64
# printable characters a login could take, but nobody is made with these brackets).
CONSOLE_ACTOR = "(console)"


class CommandRefused(Exception):
    """A command the operator may not or cannot send: nothing was sent."""


@dataclass(slots=True)
class SentCommand:
    """A command the console sent, kept until it expires: what goes again after a drop."""

    jti: str  # its roll-call's id
    cmd: str
    tokens: dict[str, str]  # device -> the signed command it was sent (a group: one token)
    exp: float  # time.time() when it expires
    published: bool = False  # every message acknowledged by the broker once


class CentreService:
    def __init__(self, db: FleetDb, mqtt: Mqtt, client_id: str, *,
                 key: Ed25519PrivateKey | None = None, kid: str = "",
                 batch_s: float = 0.2, batch_max: int = 2000,
                 sweep_s: float = SWEEP_S) -> None:
        self.db = db
        self.sweep_s = sweep_s
        self._swept_at = time.time()
        self._pruned_at: float | None = None  # None: at the first sweep
        self.pruned = 0
        self._mqtt = mqtt
        self._client_id = client_id
        self._key, self._kid = key, kid
        self.batch_s, self.batch_max = batch_s, batch_max
        self._listen: Session | None = None
        self._send: Session | None = None
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listeners: list[Callable[[Changes], None]] = []
        self.connected = False
        self.ingested = 0
        # The commands sent and not expired: what goes again after a drop.
        self._open: dict[str, SentCommand] = {}
        self._open_lock = threading.Lock()
        self._resending = threading.Lock()  # one thread sending again at a time
        self._resend_wanted = threading.Event()
        self._resend_all = False  # after a drop: every command; else only those cut short
        self.sent_again = 0  # messages sent again after the broker came back

    @property
    def can_send(self) -> bool:
        return self._key is not None

    def add_listener(self, listener: Callable[[Changes], None]) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------ reading the fleet

    def start(self) -> None:
        self._listen = Session(self._mqtt, self._client_id)
        self._listen.open()
        self._listen.subscribe(FLEET_FILTERS)
        self.connected = True
        if self._key is not None:
            self._send = Session(self._mqtt, f"{self._client_id}-send"[:128])
            self._send.open()
        self._thread = threading.Thread(target=self._run, name="centre-ingest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._listen is not None
        next_sweep = time.monotonic() + self.sweep_s
        while not self._stop.is_set():
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self.sweep_s
            batch: list[Message] = []
            deadline = None
            while len(batch) < self.batch_max:
                wait = 0.5 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    break
                got = self._listen.receive(wait)
                if got is None:
                    if deadline is None and self._stop.is_set():
                        return
                    if deadline is None:
                        if time.monotonic() >= next_sweep:
                            break  # a quiet fleet: time alone may have changed something
                        continue
                    break
                if isinstance(got, Disconnected):
                    log.warning("lost the broker (%s); paho reconnects", got.reason)
                    self.connected = False
                elif isinstance(got, Connected):
                    self._resubscribe()
                    if self.connected:
                        self._start_sending_again(everything=True)
                elif isinstance(got, Received):
                    batch.append(Message(got.topic, got.payload, got.at, got.retain))
                    if deadline is None:
                        deadline = time.monotonic() + self.batch_s
            if batch:
                self._ingest(batch)

    def _resubscribe(self) -> None:
        # A clean session: after a reconnect the broker has forgotten our subscriptions.
        try:
            assert self._listen is not None
            self._listen.subscribe(FLEET_FILTERS)
            self.connected = True
        except MqttError as exc:
            log.warning("cannot subscribe again after reconnecting: %s", exc)

    def _ingest(self, batch: list[Message]) -> None:
        try:
            changes = self.db.ingest(batch)
        except Exception:  # noqa: BLE001 - the database away a moment must not end the service
            log.exception("could not store %d message(s)", len(batch))
            return
        self.ingested += len(batch)
        self._tell(changes)

    def _tell(self, changes: Changes) -> None:
        for listener in self._listeners:
            try:
                listener(changes)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the others
                log.exception("a listener failed")

    def sweep(self, now: float | None = None) -> Changes:
        """What time alone changes: boxes that went silent too long since the last sweep
        (nothing arrives to say so; the browsers are told); and, once an hour, the
        timeline older than the database's ``history_days`` is deleted."""
        now = time.time() if now is None else now
        if self._forget_expired(now) and self.connected:
            # Sends cut short while only the sending connection was down.
            self._start_sending_again(everything=False)
        changes = Changes()
        try:
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
                gone = self.db.prune_history(now)
                self.pruned += gone
                self._pruned_at = now
                if gone:
                    log.info("pruned %d timeline row(s) older than %g days", gone,
                             self.db.history_days)
            changes.devices.update(self.db.newly_gone(self._swept_at, now))
        except Exception:  # noqa: BLE001 - the database away a moment must not end the service
            log.exception("could not sweep the database")
            return changes
        self._swept_at = now
        if changes:
            log.info("%d box(es) silent for more than %.0f s: gone", len(changes.devices),
                     self.db.silence_s)
            self._tell(changes)
        return changes

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for session in (self._listen, self._send):
            if session is not None:
                session.close()

    # ------------------------------------------------------------ commands

    def broadcast(self, operator: Operator, cmd: str, raw_args: dict[str, Any],
                  flt: BoxFilter, *, ttl_s: int = DEFAULT_TTL_S) -> str:
        """Send ``cmd`` to the boxes of ``flt`` that ``operator`` may command; return its id.

        A filter that is exactly one group (a province, district or commune) is sent as
        one group command, expected from that group's boxes; any other filter, as one
        command per box. Raises :class:`CommandRefused` (nothing sent) for a command
        not offered, bad arguments, a filter outside the operator's provinces, or no box.
        """
        if self._key is None or self._send is None:
            raise CommandRefused("this console has no signing key: it can watch, not send")
        if cmd not in BROADCAST_COMMANDS:
            raise CommandRefused(f"the console does not send {cmd!r}")
        try:
            check_command(cmd)
            args = build_args(cmd, json_text=None, pairs=[f"{k}={v}" for k, v in
                                                          raw_args.items() if v != ""])
        except UsageError as exc:  # what `send` prints for a bad command line
            raise CommandRefused(str(exc)) from None
        scope = operator.scope
        if flt.province and not scope.allows(flt.province):
            raise CommandRefused(f"province {flt.province} is not yours")
        devices = self.db.devices(scope, flt)
        if not devices:
            raise CommandRefused("no box matches the filter")
        group = flt.group
        if group is not None and scope.provinces is not None and \
                len(self.db.devices(Scope.everything(), flt)) != len(devices):
            # A group command reaches the whole group: a district of another province too.
            raise CommandRefused(f"group {group} has boxes outside your provinces")
        if group is None and scope.provinces is None and not flt.province and not any(
                (flt.state, flt.alert, flt.firmware, flt.search)):
            group = "all"
        jti = uuid.uuid4().hex
        with self._send_lock:
            self._ready_to_send()
            if group is not None:
                target = parse_target(f"group:{group}")
                # Expected: the group's boxes in the manifest (and any seen since).
                self.db.record_command(jti=jti, operator=operator.username, cmd=cmd, args=args,
                                       target=target.aud, expected=devices,
                                       sent_at=time.time())
                token = command_token(self._key, self._kid, target, cmd, args, ttl_s=ttl_s,
                                      jti=jti)
                sent = SentCommand(jti, cmd, dict.fromkeys(devices, token),
                                   exp=time.time() + ttl_s)
                self._publish(sent, [(target.cmd_topic, token)], ttl_s)
            else:
                tokens = {d: uuid.uuid4().hex for d in devices}
                self.db.record_command(jti=jti, operator=operator.username, cmd=cmd, args=args,
                                       target=_describe(flt), expected=devices,
                                       sent_at=time.time(), tokens=tokens)
                self._send_each(jti, cmd, args, tokens, ttl_s)
        log.info("%s sent %s to %d box(es) (id %s)", operator.username, cmd, len(devices), jti)
        return jti

    def resend_silent(self, operator: Operator, jti: str, *, ttl_s: int = DEFAULT_TTL_S) -> str:
        """The same command again, one per box, to the boxes that have not answered it."""
        roll = self.db.rollcall(operator.scope, jti)
        if roll is None:
            raise CommandRefused("no such command")
        silent = list(roll.report.buckets["silent"])
        if not silent:
            raise CommandRefused("every box has answered")
        args = self.db.command_args(jti)
        if self._key is None or self._send is None:
            raise CommandRefused("this console has no signing key: it can watch, not send")
        new = uuid.uuid4().hex
        tokens = {d: uuid.uuid4().hex for d in silent}
        with self._send_lock:
            self._ready_to_send()
            self.db.record_command(jti=new, operator=operator.username, cmd=roll.cmd, args=args,
                                   target=f"silent of {jti[:8]}", expected=silent,
                                   sent_at=time.time(), tokens=tokens)
            self._send_each(new, roll.cmd, args, tokens, ttl_s)
        return new

    # ------------------------------------------------------------ what the broker may lose

    def _ready_to_send(self) -> None:
        """The sending connection is up (paho reconnects it by itself), or refuse."""
        assert self._send is not None
        if not self._send.wait_connected(SEND_WAIT_S):
            raise CommandRefused(f"the broker at {self._send.where} cannot be reached now: "
                                 f"nothing was sent; try again")

    def _send_each(self, jti: str, cmd: str, args: dict[str, Any], tokens: dict[str, str],
                   ttl_s: int) -> None:
        """One command per box (``tokens``: device -> its id), kept as one :class:`SentCommand`."""
        assert self._key is not None
        signed = {dev: command_token(self._key, self._kid, parse_target(dev), cmd, args,
                                     ttl_s=ttl_s, jti=token_id)
                  for dev, token_id in tokens.items()}
        sent = SentCommand(jti, cmd, signed, exp=time.time() + ttl_s)
        self._publish(sent, [(device_topic(dev, "cmd"), token) for dev, token in signed.items()],
                      ttl_s)

    def _publish(self, sent: SentCommand, messages: list[tuple[str, str]], ttl_s: int) -> None:
        """Publish every (topic, token) and wait for the broker's acknowledgements.

        The command is kept from before the first publish: a broker gone meanwhile
        gets it (for every box without a final answer) when it is back. A refusal, not
        a lost connection, is the operator's to see.
        """
        assert self._send is not None
        with self._open_lock:
            self._open[sent.jti] = sent
        try:
            self._send.publish_many(messages, qos=1, expiry_s=ttl_s)
        except MqttError:
            if self._send.connected:  # refused: nothing to send again
                with self._open_lock:
                    self._open.pop(sent.jti, None)
                raise
            log.warning("the broker went away while %s (id %s) was being sent; it goes again "
                        "when the connection is back", sent.cmd, sent.jti)
            return
        sent.published = True

    def _forget_expired(self, now: float) -> bool:
        """Forget the commands that expired; True if some were not wholly published."""
        with self._open_lock:
            for jti in [j for j, sent in self._open.items() if sent.exp <= now]:
                del self._open[jti]
            return not all(sent.published for sent in self._open.values())

    def open_commands(self) -> list[str]:
        """The ids of the commands sent and not expired, oldest first: what goes again (to the
        boxes without a final answer) when the connection to the broker comes back."""
        with self._open_lock:
            return list(self._open)

    def _start_sending_again(self, *, everything: bool) -> None:
        """``everything``: the reading connection came back after a drop, so every command
        goes again; else only those the broker went away in the middle of."""
        if self._key is None or self._send is None:
            return
        if everything:
            self._resend_all = True
        self._resend_wanted.set()
        if not self._resending.locked():
            threading.Thread(target=self._send_again, name="centre-resend",
                             daemon=True).start()

    def _send_again(self) -> None:
        """Each command still valid goes again, same token, to each of its boxes without a
        final answer; on the sending connection once it is back. One thread at a time; a
        request made while it runs makes it go round once more."""
        while not self._stop.is_set() and self._resending.acquire(blocking=False):
            try:
                while self._resend_wanted.is_set() and not self._stop.is_set():
                    self._resend_wanted.clear()
                    self._send_again_now()
            except Exception:  # noqa: BLE001 - a thread of its own: say why; a drop retries
                log.exception("could not send the commands again")
            finally:
                self._resending.release()
            if not self._resend_wanted.is_set():  # else: asked after our last look
                return

    def _send_again_now(self) -> None:
        assert self._send is not None
        with self._send_lock:
            while not self._send.wait_connected(SEND_WAIT_S):
                if self._stop.is_set():
                    return
                log.warning("the sending connection is not back yet; the commands to send "
                            "again wait for it")
            everything, self._resend_all = self._resend_all, False
            self._forget_expired(time.time())
            with self._open_lock:
                commands = [sent for sent in self._open.values()
                            if everything or not sent.published]
            for sent in commands:
                self._send_again_one(sent)

    def _send_again_one(self, sent: SentCommand) -> None:
        assert self._send is not None
        now = time.time()
        roll = self.db.rollcall(Scope.everything(), sent.jti, now)
        boxes = () if roll is None else send_again_to(roll.report, sent.exp, now)
        # A group command goes to each box on its own topic (what `resend` does).
        messages = [(device_topic(dev, "cmd"), sent.tokens[dev]) for dev in boxes
                    if dev in sent.tokens]
        if messages:
            try:
                self._send.publish_many(messages, qos=1, expiry_s=max(int(sent.exp - now), 1))
            except MqttError as exc:
                log.warning("could not send %s (id %s) again: %s", sent.cmd, sent.jti, exc)
                return
        sent.published = True
        if not messages:
            return
        self.sent_again += len(messages)
        text = (f"{sent.cmd} (id {sent.jti}) sent again by the console, same id, to "
                f"{len(messages)} box(es) without a final answer: the connection to the broker "
                f"came back (a broker gone may have lost the command unsaved, and answers made "
                f"while the console was away did not reach it)")
        log.info("%s", text)
        self.db.note(CONSOLE_ACTOR, "resend", text)


def _describe(flt: BoxFilter) -> str:
    parts = [f"{k}={v}" for k, v in (("province", flt.province), ("district", flt.district),
                                     ("commune", flt.commune), ("state", flt.state),
                                     ("alert", flt.alert), ("firmware", flt.firmware),
                                     ("search", flt.search)) if v]
    return "filter " + (" ".join(parts) if parts else "(all)")
