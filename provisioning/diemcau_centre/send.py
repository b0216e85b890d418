"""Send one signed command to a box or a group, and report what comes back.

The pure parts (target, arguments, matching replies, the exit code) are apart
from :func:`send`, which does the I/O through a :class:`~diemcau_centre.mqtt.Session`.

    target = parse_target("group:p01")
    args = build_args("audio.volume", ["percent=30"])
    code = send(session, key, kid, target, "audio.volume", args, out=sys.stdout, err=sys.stderr)

Exit codes: 0 when the (last) answer is ``succeeded`` or ``accepted`` (for a
group: at least one answer, and all of them so; and, when the manifest says
who is in the group, an answer from every one of them), else 1.
"""

from __future__ import annotations

import difflib
import json
import time
import types
import typing
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from diemcau.protocol import (
    COMMAND_NAMES,
    FINAL_STATUSES,
    Reply,
    State,
    check_name,
    decode,
    device_topic,
    group_cmd_topic,
    parse_topic,
    sign_command,
)
from diemcau.protocol.arguments import ARGS

from .fleet import GONE_STATES, clean
from .mqtt import Connected, Disconnected, MqttError, Received, Session
from .rollcall import (
    RollCall,
    effective,
    progress_line,
    render_report,
    report_record,
    resend_keeps_id,
)
from .runs import Answered, RunRecord, RunStore

OK_STATUSES = frozenset({"succeeded", "accepted"})


class UsageError(Exception):
    """The command line asks for something that cannot be sent (exit code 2)."""


# ---------------------------------------------------------------- pure parts


@dataclass(frozen=True, slots=True)
class Target:
    aud: str  # the command's audience claim: a device id or group:{group}
    cmd_topic: str
    reply_filter: str
    device: str | None  # None for a group

    @property
    def is_group(self) -> bool:
        return self.device is None


def parse_target(text: str) -> Target:
    """``c00001-r1`` (one box) or ``group:p01`` (every box of a group)."""
    try:
        if text.startswith("group:"):
            group = check_name(text.removeprefix("group:"), "group")
            return Target(text, group_cmd_topic(group), device_topic("+", "reply"), None)
        dev = check_name(text, "device id")
        return Target(dev, device_topic(dev, "cmd"), device_topic(dev, "reply"), dev)
    except ValueError as exc:
        raise UsageError(f"TARGET: {exc}") from None


def check_command(name: str) -> str:
    if name not in COMMAND_NAMES:
        close = difflib.get_close_matches(name, COMMAND_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"CMD: unknown command {name!r}{hint}; known: {', '.join(COMMAND_NAMES)}")
    return name


def _takes_text(typ: Any) -> bool:
    if typ is str:
        return True
    origin = typing.get_origin(typ)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(typ))
    if origin in (typing.Union, types.UnionType):
        return any(_takes_text(a) for a in typing.get_args(typ) if a is not type(None))
    return False


def build_args(cmd: str, pairs: list[str] | None = None, json_text: str | None = None
               ) -> dict[str, Any]:
    """Arguments from ``--json '{...}'`` then ``--arg k=v`` pairs, checked against the command.

    A value is read as JSON when it parses (``true``, ``30``, ``[1]``), else as
    text; an argument that is text for the command (a meeting id, a URL) is
    always text, so ``--arg meeting_id=2024`` stays ``"2024"``.
    """
    args: dict[str, Any] = {}
    if json_text is not None:
        try:
            loaded = json.loads(json_text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"--json: not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise UsageError("--json: must be a JSON object, like '{\"percent\": 30}'")
        args.update(loaded)
    schema = ARGS.get(cmd)
    text_fields = {f.name for f in msgspec.structs.fields(schema) if _takes_text(f.type)
                   } if schema else set()
    seen: set[str] = set()
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg {pair!r}: expected KEY=VALUE")
        if key in seen:
            raise UsageError(f"--arg {key}: given twice")
        seen.add(key)
        if key in text_fields:
            args[key] = raw
            continue
        try:
            args[key] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            args[key] = raw
    if schema is not None:
        # The box checks again; this catches a typo before it reaches a thousand boxes.
        try:
            msgspec.convert(args, schema)
        except msgspec.ValidationError as exc:
            text, _, where = str(exc).partition(" - at `$")
            text = text.replace("`", "")
            raise UsageError(f"args{where.rstrip('`')}: {text[:1].lower()}{text[1:]} "
                             f"(for {cmd})") from None
    if cmd == "keys.update":
        _check_key_update(args)
    return args


def _check_key_update(args: dict[str, Any]) -> None:
    """The box's own rule for a new key set: a box left with no usable key is lost."""
    from diemcau.protocol import public_key_from_text
    from diemcau.protocol.arguments import BadKeyUpdate, key_update

    try:
        for kid, text in key_update(args).items():
            try:
                public_key_from_text(text)
            except ValueError as exc:
                raise BadKeyUpdate(f"keys.{kid}: not an Ed25519 public key ({exc})") from None
    except BadKeyUpdate as exc:
        raise UsageError(f"args: {exc} (for keys.update)") from None


@dataclass(frozen=True, slots=True)
class ReplyLine:
    device: str
    reply: Reply
    latency_ms: float

    def text(self) -> str:
        r = self.reply
        detail = clean(r.detail, 200)
        if r.status == "duplicate" and r.first_status:
            detail = f"{detail} [first: {r.first_status}]".strip()
        return f"{self.device}  {r.status:<11} {r.code:>3}  {detail or '-'}  ({self.latency_ms:.0f} ms)"


def answer_status(reply: Reply) -> str:
    """What a reply says about the command: a ``duplicate`` (the command came again) stands
    for its first result, as the roll-call counts it (:func:`~.rollcall.effective`)."""
    return effective(reply, 0.0).status


def group_members(devices: Iterable[tuple[str, Iterable[str]]], group: str) -> set[str]:
    """The device ids of ``group`` (``all``, ``p01``, ...), from (id, groups) pairs."""
    return {dev for dev, groups in devices if group in groups}


def missing_text(missing: set[str], limit: int = 10) -> str:
    """``c00002-r1, c00007-r1 and 975 more``: who is missing, without flooding the screen."""
    shown = sorted(missing)[:limit]
    more = len(missing) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


class Replies:
    """The replies to one command (matched by id), and what they add up to.

    ``expected``: the boxes that should answer (for a group, from the
    manifest), or None when the console cannot know.
    """

    def __init__(self, jti: str, target: Target, sent_at: float,
                 expected: set[str] | None = None) -> None:
        self.jti = jti
        self.target = target
        self.sent_at = sent_at  # time.monotonic() at publish
        self.expected = expected
        self.last: dict[str, Reply] = {}  # device -> its latest reply

    def take(self, topic: str, payload: bytes, at_mono: float) -> ReplyLine | None:
        """A reply to this command, or None for anything else (other commands, garbage)."""
        parsed = parse_topic(topic)
        if parsed is None or parsed.kind != "reply" or parsed.dev is None:
            return None
        if self.target.device is not None and parsed.dev != self.target.device:
            return None
        try:
            reply = decode(payload, Reply)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        if reply.id != self.jti:
            return None
        old = self.last.get(parsed.dev)
        if not (reply.status == "duplicate" and old is not None
                and answer_status(old) in FINAL_STATUSES):
            self.last[parsed.dev] = reply  # a repeat's answer never hides the final one
        return ReplyLine(parsed.dev, reply, (at_mono - self.sent_at) * 1000.0)

    @property
    def finished(self) -> bool:
        """Every box that should answer gave a final answer (a group without a manifest: never)."""
        dev = self.target.device
        if dev is not None:
            return dev in self.last and answer_status(self.last[dev]) in FINAL_STATUSES
        return bool(self.expected) and all(
            d in self.last and answer_status(self.last[d]) in FINAL_STATUSES
            for d in self.expected)

    @property
    def missing(self) -> set[str]:
        """The expected boxes that have not answered at all."""
        return set() if self.expected is None else self.expected - self.last.keys()

    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.last.values())

    def exit_code(self) -> int:
        if not self.last or self.missing:
            return 1
        return 0 if all(answer_status(r) in OK_STATUSES for r in self.last.values()) else 1

    def summary(self) -> str:
        counts = self.counts()
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        if self.expected is None:
            return f"{self.target.aud}: {len(self.last)} box(es) answered: {parts or 'none'}"
        answered = len(self.expected & self.last.keys())
        text = (f"{self.target.aud}: {answered} of {len(self.expected)} box(es) in the manifest "
                f"answered: {parts or 'none'}")
        if self.missing:
            text += f"; {len(self.missing)} did not answer"
        others = len(self.last.keys() - self.expected)
        return text + (f" ({others} answer(s) from boxes not in the group's manifest)"
                       if others else "")


def no_reply_message(target: Target, timeout_s: float, ttl_s: int, state: State | None) -> str:
    """Why a box may not have answered, from what the broker retained about it."""
    text = f"no reply from {target.aud} within {timeout_s:g} s"
    if state is None:
        return text + (f": no box {target.aud} has ever announced itself on this broker "
                       "(check the device id)")
    if state.state in GONE_STATES:
        return text + (f": the box is {state.state} (session {state.session}); the broker keeps"
                       f" the command for it for {ttl_s} s in case it comes back")
    return text + (f": the box is {state.state} (session {state.session}) but did not answer; "
                   f"it may be overloaded or its link down")


# ---------------------------------------------------------------- I/O


class Published(typing.NamedTuple):
    jti: str
    token: str  # the signed command: what is sent again, unchanged, after a lost broker
    sent_at: float  # time.monotonic() at publish


def publish_command(session: Session, key: Ed25519PrivateKey, kid: str, target: Target, cmd: str,
                    args: dict[str, Any], *, ttl_s: int = 120, jti: str | None = None
                    ) -> Published:
    """Sign one command and publish it (QoS 1, expiring with it), acknowledged by the broker.

    The one place a command is signed and sent: ``send`` and the web console use it.
    """
    jti = jti or uuid.uuid4().hex
    token = command_token(key, kid, target, cmd, args, ttl_s=ttl_s, jti=jti)
    return Published(jti, token, session.publish(target.cmd_topic, token, qos=1, expiry_s=ttl_s))


def command_token(key: Ed25519PrivateKey, kid: str, target: Target, cmd: str,
                  args: dict[str, Any], *, ttl_s: int, jti: str) -> str:
    """The signed command for ``target``, valid ``ttl_s`` from now."""
    return sign_command(key, kid, aud=target.aud, cmd=cmd, args=args, ttl_s=ttl_s, jti=jti)


def send(session: Session, key: Ed25519PrivateKey, kid: str, target: Target, cmd: str,
         args: dict[str, Any], *, ttl_s: int = 120, timeout_s: float = 10.0,
         expected: set[str] | None = None, out: TextIO, err: TextIO) -> int:
    """Sign, publish and wait for the replies, printing each; return the exit code.

    ``expected``: for a group, the boxes the manifest puts in it; the console
    then stops once each has given a final answer, and names those that did not.
    """
    state_topic = device_topic(target.device, "state") if target.device else None
    filters = [target.reply_filter] + ([state_topic] if state_topic else [])
    # Subscribe first: a box on loopback answers faster than a late subscription.
    session.subscribe(filters)
    jti, token, sent_at = publish_command(session, key, kid, target, cmd, args, ttl_s=ttl_s)
    replies = Replies(jti, target, sent_at, expected if target.is_group else None)
    print(f"sent {cmd} to {target.aud} (id {jti}, expires in {ttl_s} s); waiting up to "
          f"{timeout_s:g} s for replies", file=err, flush=True)

    state: State | None = None
    deadline = sent_at + timeout_s
    down: str | None = None  # why the connection is down, while it is
    while not replies.finished:
        got = session.receive(deadline - time.monotonic())
        if got is None:
            break
        if isinstance(got, Disconnected):
            # The broker saves on a timer: gone, it may have lost the command it
            # acknowledged (queued for a box that is offline). paho connects again by itself.
            down = got.reason
            print(f"lost the connection to the broker ({down}); waiting for it", file=err,
                  flush=True)
            continue
        if isinstance(got, Connected):
            if down is not None and not got.failed:
                try:
                    _send_again(session, filters, target, token, replies, ttl_s, err)
                    down = None
                except MqttError as exc:  # gone again: the next Connected tries again
                    down = str(exc)
            continue
        if isinstance(got, Received) and got.topic == state_topic:
            try:
                state = decode(got.payload, State)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                state = None
            continue
        line = replies.take(got.topic, got.payload, got.at_mono)
        if line is not None:
            print(line.text(), file=out, flush=True)
    if down is not None and not replies.finished:
        raise MqttError(f"lost the connection to the broker while waiting for replies ({down}) "
                        f"and it did not come back within {timeout_s:g} s; the command was "
                        f"sent (id {jti}) and may still run")

    if target.is_group:
        print(replies.summary(), file=out, flush=True)
        if replies.missing:
            print(f"no reply within {timeout_s:g} s from {len(replies.missing)} of the "
                  f"{len(replies.expected or ())} box(es) of {target.aud} in the manifest: "
                  f"{missing_text(replies.missing)}", file=err)
        elif not replies.last:
            print(f"no replies from {target.aud} within {timeout_s:g} s", file=err)
        return replies.exit_code()
    if not replies.last:
        print(no_reply_message(target, timeout_s, ttl_s, state), file=err)
        return 1
    last = replies.last[target.aud]
    if answer_status(last) not in FINAL_STATUSES:
        print(f"no final result within {timeout_s:g} s; the last answer was "
              f"{answer_status(last)}", file=err)
    return replies.exit_code()


def _send_again(session: Session, filters: list[str], target: Target, token: str,
                replies: Replies, ttl_s: int, err: TextIO) -> None:
    """The connection is back: subscribe again (a clean session forgot our subscriptions)
    and, unless the answer is in, publish the same token again; a box that had it answers
    ``duplicate`` with its result, one that did not runs it."""
    session.subscribe(filters)
    if replies.finished:
        return
    left = max(int(ttl_s - (time.monotonic() - replies.sent_at)), 1)
    session.publish(target.cmd_topic, token, qos=1, expiry_s=left)
    print(f"connected again: sent the command again, same id, to {target.aud}", file=err,
          flush=True)


# ---------------------------------------------------------------- roll-call (a group, a manifest)

PROGRESS_EVERY_S = 1.0  # on a terminal the line is redrawn in place; elsewhere a line each 5 s
PROGRESS_EVERY_PIPED_S = 5.0
SETTLE_CHECK_S = 0.5


def _meeting_id(cmd: str, args: dict[str, Any]) -> str | None:
    value = args.get("meeting_id") if cmd.startswith("meeting.") else None
    return value if isinstance(value, str) else None


def _roll_call(record: RunRecord) -> RollCall:
    """A roll-call for a run, with the answers it has recorded so far."""
    call = RollCall(record.id, record.cmd, record.expected, sent_at=record.sent_at,
                    meeting_id=_meeting_id(record.cmd, record.args),
                    other_ids={r["id"] for r in record.resends if r["id"] != record.id})
    for dev, answers in record.answers.items():
        for answered in answers:
            call.take_reply(dev, answered.reply, answered.at)
    return call


def _wait(session: Session, call: RollCall, record: RunRecord, deadline: float, err: TextIO,
          *, tty: bool, skip_offline: bool = False,
          token: tuple[str, int] | None = None) -> None:
    """Feed replies and presence into the roll-call until all are final or the deadline
    (with ``skip_offline``: or the only ones left are offline); the progress line on
    ``err``; every reply kept in ``record``.

    ``token``: the signed command and its expiry (s). The broker saves on a timer
    (``BROKER_LOSS_WINDOW_S``), so a broker that goes away may have lost the
    command it acknowledged, with the copies it queued for offline boxes; and
    our clean session missed what the boxes said meanwhile. Once the connection
    is back, the command goes again, same id, to each box without a final answer
    (a box that had it answers ``duplicate`` with its latest result).
    """
    every = PROGRESS_EVERY_S if tty else PROGRESS_EVERY_PIPED_S
    next_line = time.monotonic() + every
    next_settle = time.monotonic() + SETTLE_CHECK_S

    def line() -> None:
        text = progress_line(call.counts(), call.cmd, time.time() - call.sent_at)
        print("\r" + text + "\x1b[K" if tty else text, end="" if tty else "\n", file=err,
              flush=True)

    down: str | None = None  # why the connection is down, while it is
    while not call.finished:
        now = time.monotonic()
        if now >= next_line:
            line()
            next_line = now + every
        if skip_offline and now >= next_settle:
            # Checked now and then: it reads every silent box's presence.
            if call.settled():
                break
            next_settle = now + SETTLE_CHECK_S
        got = session.receive(min(deadline, next_line, next_settle if skip_offline else deadline)
                              - time.monotonic())
        if got is None:
            if time.monotonic() >= deadline:
                break
            continue
        if isinstance(got, Disconnected):
            if token is None:
                raise _lost(got.reason, record)
            down = got.reason  # paho connects again by itself; wait for it until the deadline
            print(f"\nlost the connection to the broker ({down}); waiting for it",
                  file=err, flush=True)
            continue
        if isinstance(got, Connected) and down is not None and not got.failed:
            assert token is not None
            try:
                subscribe_roll_call(session)  # a clean session: it forgot our subscriptions
                # Answers given while we were away are gone too: a box that has one answers
                # the repeat with it (duplicate), so each box without a final answer gets it.
                left = call.unfinished_boxes()
                session.publish_many([(device_topic(dev, "cmd"), token[0]) for dev in left],
                                     qos=1, expiry_s=token[1])
            except MqttError as exc:  # gone again: the next Connected tries again
                down = str(exc)
                continue
            down = None
            print(f"connected again: sent {call.cmd} again, same id, to the {len(left)} "
                  f"box(es) without a final answer", file=err, flush=True)
            continue
        if not isinstance(got, Received):
            continue
        parsed = parse_topic(got.topic)
        if parsed is not None and parsed.kind == "reply" and parsed.dev is not None:
            try:
                reply = decode(got.payload, Reply)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                continue
            call.take_reply(parsed.dev, reply, got.at)
            if parsed.dev in call.expected and (reply.id == call.command_id
                                                or reply.id in call.other_ids):
                record.answers.setdefault(parsed.dev, []).append(Answered(reply=reply,
                                                                          at=got.at))
        else:
            call.apply(got.topic, got.payload, got.at)
    line()
    if tty:
        print(file=err)
    if down is not None:
        raise _lost(down, record)


def _lost(reason: str, record: RunRecord) -> MqttError:
    return MqttError(f"lost the connection to the broker while waiting for replies "
                     f"({reason}); the command was sent and may still run: "
                     f"`diemcau-centre resend {record.id[:12]}` sends it to the silent")


def subscribe_roll_call(session: Session) -> None:
    """Replies at QoS 1; presence at QoS 0: it is retained, only says why a box is silent,
    and at thousands of boxes each acknowledgement costs the broker a turn of its loop."""
    session.subscribe([device_topic("+", "reply")])
    session.subscribe([device_topic("+", "state")], qos=0)


def _finish(call: RollCall, record: RunRecord, store: RunStore | None, out: TextIO,
            err: TextIO, as_json: bool = False) -> int:
    report = call.report(time.time())
    if as_json:
        out.write(json.dumps(report_record(report), ensure_ascii=False, indent=1) + "\n")
    else:
        out.write(render_report(report))
    out.flush()
    if store is not None:
        path = store.save(record)
        if not call.finished:
            print(f"{len(call.unfinished_boxes())} box(es) without a final answer; to send the "
                  f"command again to the silent ones: diemcau-centre resend {record.id[:12]} "
                  f"(record {path})", file=err)
    return report.exit_code


def send_to_group(session: Session, key: Ed25519PrivateKey, kid: str, target: Target, cmd: str,
                  args: dict[str, Any], *, expected: dict[str, str], ttl_s: int = 120,
                  timeout_s: float = 10.0, store: RunStore | None = None, out: TextIO,
                  err: TextIO, tty: bool = False, as_json: bool = False,
                  skip_offline: bool = False) -> int:
    """Send to a group whose members the manifest names (``expected``: device -> province),
    and take the roll-call: progress on ``err``, the report on ``out``; the exit code."""
    # Subscribe first: the presence says why a box is silent; replies come fast.
    subscribe_roll_call(session)
    jti = uuid.uuid4().hex
    iat = int(time.time())
    token = sign_command(key, kid, aud=target.aud, cmd=cmd, args=args, ttl_s=ttl_s, jti=jti,
                         now=iat)
    record = RunRecord(id=jti, aud=target.aud, cmd=cmd, args=args, iat=iat, exp=iat + ttl_s,
                       sent_at=time.time(), expected=dict(expected))
    if store is not None:
        store.save(record)  # before sending: an interrupted run can still be resent
    sent_mono = session.publish(target.cmd_topic, token, qos=1, expiry_s=ttl_s)
    record.sent_at = time.time() - (time.monotonic() - sent_mono)
    print(f"sent {cmd} to {target.aud} (id {jti}, expires in {ttl_s} s): {len(expected)} "
          f"box(es) expected; waiting up to {timeout_s:g} s", file=err, flush=True)
    call = _roll_call(record)
    _wait(session, call, record, sent_mono + timeout_s, err, tty=tty, skip_offline=skip_offline,
          token=(token, ttl_s))
    return _finish(call, record, store, out, err, as_json)


def resend(session: Session, key: Ed25519PrivateKey, kid: str, record: RunRecord, *,
           timeout_s: float = 10.0, store: RunStore | None = None, out: TextIO, err: TextIO,
           tty: bool = False, now: float | None = None, as_json: bool = False,
           skip_offline: bool = False) -> int:
    """Send a recorded run's command again to its silent boxes, each on its own topic, and
    take the roll-call of the whole run again.

    Same id or a new one: :func:`~diemcau_centre.rollcall.resend_keeps_id`.
    """
    call = _roll_call(record)
    silent = call.silent_boxes()
    if not silent:
        print(f"every box of run {record.id[:12]} answered; nothing to resend", file=err)
        return _finish(call, record, None, out, err, as_json)
    subscribe_roll_call(session)
    now = time.time() if now is None else now
    same_id = resend_keeps_id(record.exp, now)
    if same_id:
        jti, token = record.id, sign_command(key, kid, aud=record.aud, cmd=record.cmd,
                                             args=record.args, ttl_s=record.exp - record.iat,
                                             jti=record.id, now=record.iat)
        expiry = max(int(record.exp - now), 1)
    else:
        ttl_s = record.exp - record.iat
        jti = uuid.uuid4().hex
        token = sign_command(key, kid, aud=record.aud, cmd=record.cmd, args=record.args,
                             ttl_s=ttl_s, jti=jti, now=int(now))
        expiry = ttl_s
        call.other_ids.add(jti)
    record.resends.append({"at": now, "id": jti, "same_id": same_id, "devices": silent})
    if store is not None:
        store.save(record)
    start = time.monotonic()
    session.publish_many([(device_topic(dev, "cmd"), token) for dev in silent], qos=1,
                         expiry_s=expiry)
    how = ("with its first id" if same_id else
           f"with a new id {jti} (the first expired at {record.exp})")
    print(f"resent {record.cmd} to {len(silent)} silent box(es) of {record.aud} {how}; "
          f"waiting up to {timeout_s:g} s", file=err, flush=True)
    _wait(session, call, record, start + timeout_s, err, tty=tty, skip_offline=skip_offline,
          token=(token, expiry))
    return _finish(call, record, store, out, err, as_json)
