"""The roll-call of one command sent to a group: who answered what, and who is silent.

Pure: no I/O, no clock of its own. It is fed the boxes the manifest expects
(with their province), then every reply and presence (``state``) message with
the centre's time of arrival, and says at any moment where each expected box
stands. Every expected box is in exactly one bucket:

- ``succeeded``: its final answer was a success;
- ``failed``: its final answer was ``failed``, ``rejected`` or ``expired``
  (the reasons are grouped by detail);
- ``acknowledged``: it answered ``accepted`` or ``in_progress`` and no final
  answer yet (for ``meeting.join``: still joining);
- ``silent``: no answer at all; its presence says why (offline since when,
  online but not answering, never seen).

A repeat delivery is answered ``duplicate`` with the first result
(``first_status``); it counts as that first result. Whatever the order in
which replies come (MQTT may deliver one twice, and a late copy after a newer
one), the outcome is the same: a final answer beats a non-final one, and
among finals a success beats a failure (a box that says both has done it).

    call = RollCall("3f2a...", "meeting.join", {"c00001-r1": "p01", "c00002-r1": "p01"})
    call.apply(device_topic("c00001-r1", "reply"), payload, at=now)
    call.counts()      # Counts(expected=2, answered=1, succeeded=1, ...)
    print(render_report(call.report(now)))
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from diemcau.protocol import FINAL_STATUSES, Reply, State, decode, parse_topic

from .fleet import GONE_STATES, clean, heard_too_long_ago

Bucket = Literal["succeeded", "failed", "acknowledged", "silent"]
BUCKETS: tuple[Bucket, ...] = ("succeeded", "failed", "acknowledged", "silent")
# How a bucket reads for a meeting convened with meeting.join.
MEETING_WORDS: dict[str, str] = {"succeeded": "joined", "failed": "failed",
                                 "acknowledged": "still joining", "silent": "silent"}
FAILURE_STATUSES = frozenset({"failed", "rejected", "expired"})
# Order-free choice between two answers of one box: the higher rank wins.
_RANK = {"accepted": 1, "in_progress": 2, "expired": 3, "rejected": 4, "failed": 5,
         "succeeded": 6}
# Silent boxes, by what their presence says.
SilentWhy = Literal["offline", "online", "updating", "never_seen"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One box's deciding answer: its status, counted as the first result for a duplicate."""

    status: str  # accepted, in_progress, succeeded, failed, rejected, expired
    code: int
    detail: str
    at: float  # the centre's time of arrival
    duplicate: bool = False  # it came as a `duplicate` of an earlier delivery

    @property
    def bucket(self) -> Bucket:
        if self.status == "succeeded":
            return "succeeded"
        if self.status in FAILURE_STATUSES:
            return "failed"
        return "acknowledged"

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def effective(reply: Reply, at: float) -> Answer:
    """The answer a reply stands for: a ``duplicate`` is its first result."""
    if reply.status != "duplicate":
        return Answer(reply.status, reply.code, reply.detail, at)
    first = reply.first_status
    if first is None or first == "duplicate":
        # An older box may not say: the command ran once, but how it went is unknown.
        return Answer("failed", reply.code, "answered as a duplicate without the first result"
                      f"{': ' + reply.detail if reply.detail else ''}", at, duplicate=True)
    return Answer(first, reply.code, reply.detail, at, duplicate=True)


def better(old: Answer | None, new: Answer) -> Answer:
    """The answer that stands between two of the same box, whatever their order."""
    if old is None:
        return new
    key_old = (_RANK.get(old.status, 0), old.code, old.detail, -old.at)
    key_new = (_RANK.get(new.status, 0), new.code, new.detail, -new.at)
    return new if key_new > key_old else old


@dataclass(frozen=True, slots=True)
class Counts:
    expected: int
    answered: int  # expected boxes that said anything (acknowledged, succeeded or failed)
    succeeded: int
    failed: int
    acknowledged: int  # answered, not yet finally
    silent: int
    unexpected: int  # answers from boxes not in the manifest's group

    @property
    def finished(self) -> bool:
        return self.silent == 0 and self.acknowledged == 0


@dataclass(frozen=True, slots=True)
class Silent:
    dev: str
    why: SilentWhy
    state: str | None  # the presence it last showed
    session: int | None
    since: float | None  # the state's own timestamp (the box's clock)
    # Set when the box is offline because nothing came from it for too long (no will on a
    # broker cluster): when the centre last heard it (the centre's clock).
    last_heard: float | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Boxes that failed for one reason."""

    status: str
    code: int
    detail: str
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProvinceLine:
    province: str
    expected: int
    succeeded: int
    failed: int
    acknowledged: int
    silent: int


@dataclass(frozen=True, slots=True)
class Report:
    command_id: str
    cmd: str
    meeting_id: str | None
    counts: Counts
    buckets: dict[str, tuple[str, ...]]  # bucket -> sorted device ids
    failures: tuple[Failure, ...]  # most boxes first
    silent: tuple[Silent, ...]
    provinces: tuple[ProvinceLine, ...]
    unexpected: tuple[str, ...]
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        """0 only when every expected box gave a final answer and every one succeeded."""
        c = self.counts
        return 0 if c.expected and c.succeeded == c.expected else 1


@dataclass(slots=True)
class RollCall:
    """The answers to one command (by its id) from the boxes a manifest expects."""

    command_id: str
    cmd: str
    expected: Mapping[str, str]  # device id -> its province (a code or a name)
    sent_at: float = 0.0  # the centre's time of publishing
    meeting_id: str | None = None
    # Ids of the same command sent again with a new id (the first had expired): they count too.
    other_ids: set[str] = field(default_factory=set)
    answers: dict[str, Answer] = field(default_factory=dict)
    presence: dict[str, State] = field(default_factory=dict)
    ready_session: dict[str, int] = field(default_factory=dict)
    unexpected: set[str] = field(default_factory=set)
    # When the centre last heard each box, and how long a box may say nothing before it
    # counts as gone (fleet.heard_too_long_ago); None: only its presence says so.
    heard: dict[str, float] = field(default_factory=dict)
    silence_s: float | None = None
    _counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._counts = collections.Counter({"silent": len(self.expected)})

    # ------------------------------------------------------------ feeding

    def apply(self, topic: str, payload: bytes | str, at: float) -> bool:
        """Take one message; True if it changed a box's bucket. Never raises on what a box sends."""
        parsed = parse_topic(topic) if isinstance(topic, str) else None
        if parsed is None or parsed.dev is None or parsed.kind not in ("reply", "state"):
            return False
        try:
            if parsed.kind == "reply":
                return self.take_reply(parsed.dev, decode(payload, Reply), at)
            self.take_state(parsed.dev, decode(payload, State))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass  # a broken box's message changes nothing here; `watch` shows it
        return False

    def take_reply(self, dev: str, reply: Reply, at: float) -> bool:
        """A reply from ``dev``; only replies to this command count. True if a bucket changed."""
        if reply.id != self.command_id and reply.id not in self.other_ids:
            return False
        return self.take_answer(dev, effective(reply, at))

    def take_answer(self, dev: str, answer: Answer) -> bool:
        """An answer already read (e.g. one kept in a database); True if a bucket changed."""
        if dev not in self.expected:
            self.unexpected.add(dev)
            return False
        old = self.answers.get(dev)
        new = better(old, answer)
        if new is old:
            return False
        self.answers[dev] = new
        before = "silent" if old is None else old.bucket
        self._counts[before] -= 1
        self._counts[new.bucket] += 1
        return before != new.bucket

    def take_state(self, dev: str, state: State) -> None:
        """A box's presence, with the session rule of :class:`~diemcau_centre.fleet.FleetView`:
        a state other than ``ready`` from a session older than the latest ``ready`` is stale."""
        ready = self.ready_session.get(dev)
        if state.state != "ready" and ready is not None and state.session < ready:
            return
        self.presence[dev] = state
        if state.state == "ready":
            self.ready_session[dev] = state.session

    # ------------------------------------------------------------ reading

    def bucket(self, dev: str) -> Bucket:
        answer = self.answers.get(dev)
        return "silent" if answer is None else answer.bucket

    def counts(self) -> Counts:
        c = self._counts
        return Counts(expected=len(self.expected),
                      answered=len(self.expected) - c["silent"],
                      succeeded=c["succeeded"], failed=c["failed"],
                      acknowledged=c["acknowledged"], silent=c["silent"],
                      unexpected=len(self.unexpected))

    @property
    def finished(self) -> bool:
        """Every expected box gave a final answer: nothing more to wait for."""
        return self.counts().finished

    def settled(self, now: float | None = None) -> bool:
        """Nothing more is to be expected soon: every box gave a final answer or is silent
        and offline by its presence (it may still answer if it comes back within the TTL)."""
        c = self.counts()
        if c.acknowledged:
            return False
        return all(self.why_silent(d, now).why == "offline" for d in self.expected
                   if d not in self.answers)

    def silent_boxes(self) -> list[str]:
        return sorted(d for d in self.expected if d not in self.answers)

    def unfinished_boxes(self) -> list[str]:
        """Boxes without a final answer: the silent and the still acknowledged."""
        return sorted(d for d in self.expected
                      if d not in self.answers or not self.answers[d].final)

    def why_silent(self, dev: str, now: float | None = None) -> Silent:
        """Why ``dev`` is silent; with ``now`` and :attr:`silence_s`, a box whose presence
        says it is there but that has said nothing for too long is offline too."""
        state = self.presence.get(dev)
        if state is None:
            return Silent(dev, "never_seen", None, None, None)
        last = self.heard.get(dev)
        if now is not None and self.silence_s is not None and heard_too_long_ago(
                state.state, last, now, self.silence_s):
            return Silent(dev, "offline", state.state, state.session, state.ts, last_heard=last)
        why: SilentWhy = ("offline" if state.state in GONE_STATES else
                          "updating" if state.state == "updating" else "online")
        return Silent(dev, why, state.state, state.session, state.ts)

    def report(self, now: float) -> Report:
        buckets: dict[str, list[str]] = {b: [] for b in BUCKETS}
        for dev in self.expected:
            buckets[self.bucket(dev)].append(dev)
        reasons: dict[tuple[str, int, str], list[str]] = collections.defaultdict(list)
        for dev in buckets["failed"]:
            a = self.answers[dev]
            reasons[(a.status, a.code, a.detail)].append(dev)
        failures = sorted((Failure(s, c, d, tuple(sorted(devs)))
                           for (s, c, d), devs in reasons.items()),
                          key=lambda f: (-len(f.devices), f.status, f.code, f.detail))
        provinces: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        for dev, province in self.expected.items():
            provinces[province][self.bucket(dev)] += 1
        lines = tuple(ProvinceLine(p, sum(c.values()), c["succeeded"], c["failed"],
                                   c["acknowledged"], c["silent"])
                      for p, c in sorted(provinces.items()))
        return Report(
            command_id=self.command_id, cmd=self.cmd, meeting_id=self.meeting_id,
            counts=self.counts(),
            buckets={b: tuple(sorted(devs)) for b, devs in buckets.items()},
            failures=tuple(failures),
            silent=tuple(self.why_silent(d, now) for d in sorted(buckets["silent"])),
            provinces=lines, unexpected=tuple(sorted(self.unexpected)),
            elapsed_s=max(now - self.sent_at, 0.0))


# A command resent with its first id must still be valid when it arrives and
# while the box handles it; closer to its expiry than this, a new id is used.
RESEND_MARGIN_S = 15.0


def resend_keeps_id(exp: float, now: float, margin_s: float = RESEND_MARGIN_S) -> bool:
    """Resend with the first id while the command is valid for ``margin_s`` more.

    With the first id a box that did get it answers ``duplicate`` with its first
    result and does nothing twice (it remembers the id until the expiry). Once
    expired the box would refuse it (410), so a new id is signed, and a box that
    ran the first one but whose reply was lost runs it again.
    """
    return now + margin_s < exp


def send_again_to(report: Report, exp: float, now: float) -> tuple[str, ...]:
    """The boxes a command goes to again, same id, once the centre's connection to the
    broker is back after a drop: each expected box without a final answer (silent, or
    only acknowledged), while the command is valid (``exp``, the centre's clock).

    Whoever saw the drop cannot tell what was lost: the broker saves on a timer, so
    it may have lost the command unsaved; and the centre's session is clean, so
    answers given while it was away are gone. Sent again, a box that had it answers
    ``duplicate`` with its latest result, and one that had not runs it.
    """
    if now >= exp:
        return ()
    return tuple(sorted(report.buckets["silent"] + report.buckets["acknowledged"]))


# ---------------------------------------------------------------- text


def _word(bucket: str, cmd: str) -> str:
    return MEETING_WORDS[bucket] if cmd == "meeting.join" else bucket


def progress_line(counts: Counts, cmd: str, elapsed_s: float) -> str:
    """``2000 expected · 1990 acked · 1950 ok · 28 failed · 12 joining · 10 silent · 1.4 s``."""
    waiting = "joining" if cmd == "meeting.join" else "working"
    return (f"{counts.expected} expected · {counts.answered} acked · {counts.succeeded} ok · "
            f"{counts.failed} failed · {counts.acknowledged} {waiting} · {counts.silent} silent"
            f" · {elapsed_s:.1f} s")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "?"


def silent_text(s: Silent) -> str:
    """Why one box is silent, in the operator's words."""
    if s.why == "never_seen":
        return "never seen on this broker (not installed, or never connected)"
    if s.last_heard is not None:
        return (f"offline: nothing heard since {_when(s.last_heard)} (its health reports "
                f"stopped; it last said {s.state}, session {s.session})")
    if s.state == "disconnected":
        return f"offline: stopped cleanly at {_when(s.since)} (session {s.session})"
    if s.state == "lost":
        # The will is written when the box connects: its time is that session's start.
        return f"offline: connection lost (session {s.session}, connected at {_when(s.since)})"
    if s.why == "updating":
        return f"updating its firmware since {_when(s.since)} (session {s.session})"
    return f"online since {_when(s.since)} (session {s.session}) but not answering"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    return ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in [header, *rows]]


def _names(devices: Iterable[str], limit: int) -> str:
    devices = list(devices)
    shown = ", ".join(devices[:limit])
    return shown + (f" and {len(devices) - limit} more" if len(devices) > limit else "")


def report_record(report: Report) -> dict[str, object]:
    """The whole report as plain data (``send --json``): every box named, for scripts."""
    c = report.counts
    return {
        "id": report.command_id, "cmd": report.cmd, "meeting_id": report.meeting_id,
        "elapsed_s": round(report.elapsed_s, 3),
        "counts": {"expected": c.expected, "answered": c.answered, "succeeded": c.succeeded,
                   "failed": c.failed, "acknowledged": c.acknowledged, "silent": c.silent,
                   "unexpected": c.unexpected},
        "buckets": {b: list(devs) for b, devs in report.buckets.items()},
        "failures": [{"status": f.status, "code": f.code, "detail": f.detail,
                      "devices": list(f.devices)} for f in report.failures],
        "silent": [{"device": s.dev, "why": s.why, "state": s.state, "session": s.session,
                    "since": s.since, "last_heard": s.last_heard} for s in report.silent],
        "provinces": [{"province": p.province, "expected": p.expected,
                       "succeeded": p.succeeded, "failed": p.failed,
                       "acknowledged": p.acknowledged, "silent": p.silent}
                      for p in report.provinces],
        "unexpected": list(report.unexpected),
    }


def render_report(report: Report, *, names: int = 10) -> str:
    """The final table: the buckets, the reasons for failing, who is silent and why, by province."""
    c, cmd = report.counts, report.cmd
    what = f"{cmd} {report.meeting_id}" if report.meeting_id else cmd
    lines = [f"roll-call of {what} (id {report.command_id}) after {report.elapsed_s:.1f} s:"]
    lines += [f"  {label:<15}{n:>7}" for label, n in [
        ("expected", c.expected), *((_word(b, cmd), len(report.buckets[b])) for b in BUCKETS)]]
    if report.failures:
        lines += ["", f"{_word('failed', cmd)}, by reason:"]
        for f in report.failures:
            lines.append(f"  {len(f.devices):>5}  {f.status} {f.code} {clean(f.detail, 100)}: "
                         f"{_names(f.devices, names)}")
    if report.buckets["acknowledged"]:
        lines += ["", f"{_word('acknowledged', cmd)} (no final answer yet): "
                      f"{_names(report.buckets['acknowledged'], names)}"]
    if report.silent:
        by_why: dict[str, list[Silent]] = collections.defaultdict(list)
        for s in report.silent:
            by_why[s.why].append(s)
        lines += ["", "silent:"]
        titles = {"offline": "offline", "online": "online but not answering",
                  "updating": "updating", "never_seen": "never seen"}
        for why in ("offline", "online", "updating", "never_seen"):
            group = by_why.get(why, [])
            if not group:
                continue
            lines.append(f"  {len(group):>5}  {titles[why]}:")
            lines += [f"         {s.dev}  {silent_text(s)}" for s in group[:names]]
            if len(group) > names:
                lines.append(f"         ... and {len(group) - names} more")
    if report.unexpected:
        lines += ["", f"{len(report.unexpected)} answer(s) from boxes not in the manifest's "
                      f"group: {_names(report.unexpected, names)}"]
    header = ["PROVINCE", "EXPECTED", _word("succeeded", cmd).upper(),
              _word("failed", cmd).upper(), _word("acknowledged", cmd).upper(), "SILENT"]
    lines += ["", "by province:"]
    lines += ["  " + line for line in _table(header, [
        [clean(p.province, 40), str(p.expected), str(p.succeeded), str(p.failed),
         str(p.acknowledged), str(p.silent)] for p in report.provinces])]
    return "\n".join(lines) + "\n"
