"""The fleet as the centre sees it: pure, no I/O, no threads, no clock of its own.

:class:`FleetView` is fed every message under ``diemcau/v1/dev/...`` with the
time it arrived, and keeps one :class:`Box` per device. Anything a box sends
is distrusted: a payload that does not decode is recorded as a problem on that
box and never raises. The rendering functions turn a view into text.

    view = FleetView()
    view.apply("diemcau/v1/dev/c00001-r1/state", b'{"state":"ready","session":5,"ts":1.0}', now)
    print(render_devices(view, now))

Repeats are dropped: a box sends again, unchanged, the events and replies the
broker acknowledged just before it went away (it saves on a timer and may have
lost them), so an event already seen (by its ``seq``) or a reply already seen
(by its command id and status) among a box's last ``RECENT_PER_BOX`` is not
a new happening.

The session rule: each connection of a box has a new, higher ``session``. Its
will (``lost``) is prepared when it connects, so a will that the broker sends
late, after the box is back, carries an older session than the box's latest
``ready`` and is ignored; so is any other state (``disconnected``,
``updating``) from a session older than the latest ``ready``.
"""

from __future__ import annotations

import collections
import fnmatch
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from diemcau.config import HealthConfig
from diemcau.protocol import (
    Alert,
    Event,
    Health,
    Meta,
    Reply,
    State,
    Status,
    decode,
    parse_topic,
)

# Boxes publish small messages; anything much larger is broken or hostile.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_HAPPENINGS = 200
# A detail or a name is cut to this many characters in a table or an event line.
MAX_TEXT = 60

_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "state": State, "meta": Meta, "status": Status, "health": Health, "event": Event,
    "reply": Reply, "alert": Alert,
}
# What a box sends again after its broker went away is what the broker acknowledged
# within a few seconds (RESEND_GRACE_S): far fewer messages than this.
RECENT_PER_BOX = 256
GONE_STATES = frozenset({"lost", "disconnected"})
# A box reports its health every `health.interval_s` (the box's default, 30 s). On a broker
# cluster no will is published when a box vanishes, so the centre counts a box gone once
# it has heard nothing from it for this many health periods (a lost report or two is not).
HEALTH_PERIODS_BEFORE_GONE = 3
DEFAULT_HEALTH_INTERVAL_S = HealthConfig().interval_s
DEFAULT_SILENCE_S = HEALTH_PERIODS_BEFORE_GONE * DEFAULT_HEALTH_INTERVAL_S


def silence_bound(health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S) -> float:
    """How long a box may say nothing before it counts as gone: 3 health periods."""
    return HEALTH_PERIODS_BEFORE_GONE * health_interval_s


def heard_too_long_ago(state: str | None, last_heard: float | None, now: float,
                       silence_s: float) -> bool:
    """A box whose presence says it is there (``ready``, ``updating``) but from which
    nothing (health, status, anything) has come for more than ``silence_s``: gone
    without a will. A box never seen, or already ``lost``/``disconnected``, is not."""
    if state is None or state in GONE_STATES or last_heard is None:
        return False
    return now - last_heard > silence_s


@dataclass(slots=True)
class Box:
    """What the centre knows of one box; times are the centre's (arrival), not the box's."""

    dev: str
    state: State | None = None
    ready_session: int | None = None  # the session of the latest `ready`
    meta: Meta | None = None
    status: Status | None = None
    health: Health | None = None
    health_at: float | None = None
    alerts: dict[str, Alert] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # topic kind -> what was wrong
    last_seen: float | None = None
    # Keys of the latest events and replies, oldest first: ("event", seq) or ("reply", id, status).
    recent: dict[tuple[Any, ...], None] = field(default_factory=dict)

    def seen_before(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` is among the latest; remembered now if not."""
        if key in self.recent:
            return True
        self.recent[key] = None
        if len(self.recent) > RECENT_PER_BOX:
            del self.recent[next(iter(self.recent))]
        return False


@dataclass(frozen=True, slots=True)
class Happening:
    """One line of the recent-events list."""

    at: float
    dev: str
    text: str


class FleetView:
    """Every box's latest state, meta, status, health and alerts, and recent happenings."""

    def __init__(self, max_happenings: int = MAX_HAPPENINGS) -> None:
        self.boxes: dict[str, Box] = {}
        self.happenings: collections.deque[Happening] = collections.deque(maxlen=max_happenings)
        self.ignored_topics = 0  # not protocol v1, or commands (the centre's own)
        self.stale_ignored = 0
        self.repeats = 0  # events and replies a box sent again

    def apply(self, topic: str, payload: bytes | str, now: float, *,
              retained: bool = False) -> None:
        """Take one message that arrived at ``now``; never raises on what a box sends.

        ``retained`` messages are replays of the past (on subscribing): they
        update the view but are not listed as recent happenings.
        """
        parsed = parse_topic(topic) if isinstance(topic, str) else None
        if parsed is None or parsed.dev is None or parsed.kind == "cmd":
            self.ignored_topics += 1
            return
        box = self.boxes.get(parsed.dev)
        if box is None:
            box = self.boxes[parsed.dev] = Box(parsed.dev)
        box.last_seen = now
        kind = f"alert/{parsed.code}" if parsed.kind == "alert" else parsed.kind
        note = (lambda text: None) if retained else (
            lambda text: self.happenings.append(Happening(now, box.dev, text)))

        if parsed.kind == "alert" and len(payload) == 0:
            box.problems.pop(kind, None)
            if box.alerts.pop(str(parsed.code), None) is not None:
                note(f"alert cleared: {parsed.code}")
            return
        msg = self._decode(box, kind, parsed.kind, payload, note)
        if msg is None:
            return
        match msg:
            case State():
                self._apply_state(box, msg, note)
            case Meta():
                box.meta = msg
            case Status():
                old = box.status
                box.status = msg
                if old is None or (old.meeting_state, old.meeting_id) != (msg.meeting_state,
                                                                        msg.meeting_id):
                    note(f"meeting {msg.meeting_state} {msg.meeting_id or ''}".rstrip())
            case Health():
                box.health, box.health_at = msg, now
            case Alert():
                box.alerts[str(parsed.code)] = msg
                note(f"alert {parsed.code} ({msg.severity}): {msg.detail}")
            case Event() if box.seen_before(("event", msg.seq)):
                self.repeats += 1
            case Reply() if box.seen_before(("reply", msg.id, msg.status)):
                self.repeats += 1
            case Event():
                note(" ".join(p for p in (msg.kind, msg.meeting_id or "", msg.detail) if p))
            case Reply():
                note(f"reply {msg.cmd or '?'} {msg.status} {msg.code} {msg.detail}".rstrip())

    def _decode(self, box: Box, kind: str, schema: str, payload: bytes | str,
                note: Callable[[str], None]) -> Any:
        problem = None
        if len(payload) > MAX_PAYLOAD_BYTES:
            problem = f"{len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}"
        else:
            try:
                msg = decode(payload, _SCHEMAS[schema])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                problem = str(exc)
            except RecursionError:  # msgspec raises it for JSON nested thousands deep
                problem = "nested too deeply"
        if problem is not None:
            box.problems[kind] = problem
            note(f"bad {kind} payload: {problem}")
            return None
        box.problems.pop(kind, None)
        return msg

    def _apply_state(self, box: Box, msg: State, note: Callable[[str], None]) -> None:
        # Only a `ready` is always believed: it is the box speaking now, and a
        # reflashed box counts its sessions from 1 again.
        if (msg.state != "ready" and box.ready_session is not None
                and msg.session < box.ready_session):
            self.stale_ignored += 1
            note(f"ignored a stale '{msg.state}' from session {msg.session}"
                 f" (ready in session {box.ready_session})")
            return
        changed = box.state is None or (box.state.state, box.state.session) != (msg.state,
                                                                             msg.session)
        box.state = msg
        if msg.state == "ready":
            # The latest ready, not the highest: a reflashed box starts counting again.
            box.ready_session = msg.session
        if changed:
            note(f"{msg.state} (session {msg.session})")


# ---------------------------------------------------------------- rendering


def clean(text: Any, limit: int = MAX_TEXT) -> str:
    """Text from a box made safe for a terminal: no control characters, cut to ``limit``."""
    text = unicodedata.normalize("NFC", str(text))
    # Escape sequences from a box must never reach the operator's terminal.
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _alerts(box: Box) -> str:
    # Critical ones first and marked, so they stand out in a long list.
    items = sorted(box.alerts.items(), key=lambda kv: (kv[1].severity != "critical", kv[0]))
    return ",".join(code + ("!" if a.severity == "critical" else "") for code, a in items)


def device_record(box: Box) -> dict[str, Any]:
    """One box as plain data, for ``--json``."""
    st, meta, status = box.state, box.meta, box.status
    return {
        "device": box.dev,
        "state": st.state if st else None,
        "session": st.session if st else None,
        "site": meta.site.name if meta else None,
        "firmware": meta.firmware if meta else None,
        "meeting_state": status.meeting_state if status else None,
        "meeting_id": status.meeting_id if status else None,
        "muted": status.muted if status else None,
        "floor": status.floor if status else None,
        "hand_raised": status.hand_raised if status else None,
        "stream": status.stream.state if status else None,
        "alerts": {code: {"severity": a.severity, "detail": a.detail, "since": a.since}
                   for code, a in sorted(box.alerts.items())},
        "problems": dict(sorted(box.problems.items())),
    }


def select(view: FleetView, match: str | None = None) -> list[Box]:
    """The boxes whose id matches a shell pattern (``c00001-*``), sorted by id."""
    boxes = sorted(view.boxes.values(), key=lambda b: b.dev)
    return [b for b in boxes if match is None or fnmatch.fnmatchcase(b.dev, match)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in [header, *rows]]


def _figure(value: float | None) -> str:
    return "-" if value is None else clean(f"{value:.0f}", 6)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _marks(box: Box) -> str:
    """The alerts, then which topics carried something unreadable."""
    bad = f"[bad {','.join(sorted(box.problems))}]" if box.problems else ""
    return clean(" ".join(p for p in (_alerts(box), bad) if p), 80) or "-"


def render_devices(view: FleetView, now: float, match: str | None = None) -> str:
    """The ``devices`` table: who is there, where, and in which meeting."""
    rows = []
    for box in select(view, match):
        st, meta, status = box.state, box.meta, box.status
        rows.append([
            box.dev,
            st.state if st else "?",
            str(st.session) if st else "-",
            clean(meta.site.name, 32) if meta else "-",
            clean(meta.firmware, 16) if meta else "-",
            status.meeting_state if status else "-",
            clean(status.meeting_id or "-", 24) if status else "-",
            _yes(status.muted if status else None),
            _yes(status.hand_raised if status else None),
            _yes(status.floor if status else None),
            _marks(box),
        ])
    header = ["DEVICE", "STATE", "SESSION", "SITE", "FIRMWARE", "MEETING", "MEETING ID", "MUTED",
              "HAND", "FLOOR", "ALERTS"]
    if not rows:
        return "no boxes found" + (f" matching {match!r}" if match else "") + "\n"
    return "\n".join(_table(header, rows)) + "\n"


def _summary(boxes: list[Box]) -> str:
    counts = collections.Counter(b.state.state if b.state else "unknown" for b in boxes)
    live = sum(1 for b in boxes if b.status and b.status.meeting_state == "live")
    hands = sum(1 for b in boxes if b.status and b.status.hand_raised)
    alerted = sum(1 for b in boxes if b.alerts)
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return (f"{len(boxes)} box{'' if len(boxes) == 1 else 'es'}: {states or 'none'}; "
            f"{live} live in a meeting; "
            f"{hands} with a hand raised; {alerted} with alerts")


def render_watch(view: FleetView, now: float, *, match: str | None = None,
                 max_rows: int | None = None, events: int = 10, title: str = "",
                 snapshot: bool = False) -> str:
    """The ``watch`` screen: a summary line, one row per box, then recent happenings.

    A ``snapshot`` (``watch --once``) lists recent happenings only if there are some:
    it is made from retained messages, which are not happenings.
    """
    boxes = select(view, match)
    rows = []
    for box in boxes:
        st, status, health = box.state, box.status, box.health
        meeting = "-"
        if status:
            meeting = status.meeting_state + (f" {status.meeting_id}" if status.meeting_id else "")
        rows.append([
            box.dev,
            st.state if st else "?",
            clean(meeting, 32),
            _yes(status.muted) if status else "-",
            _yes(status.hand_raised) if status else "-",
            _yes(status.floor) if status else "-",
            status.stream.state if status else "-",
            _figure(health.cpu_percent) if health else "-",
            _figure(health.cpu_temperature_c) if health else "-",
            age(now - box.health_at) if box.health_at is not None else "-",
            _marks(box),
        ])
    header = ["DEVICE", "STATE", "MEETING", "MUTED", "HAND", "FLOOR", "STREAM", "CPU%", "TEMP°C",
              "HEALTH", "ALERTS"]
    lines = [clean(title, 200)] if title else []
    lines.append(_summary(boxes))
    lines.append("")
    shown = rows if max_rows is None else rows[: max(max_rows, 0)]
    lines += _table(header, shown) if shown else ["no boxes yet"]
    if len(shown) < len(rows):
        lines.append(f"... and {len(rows) - len(shown)} more (narrow with --match)")
    if events > 0:
        recent = [h for h in view.happenings
                  if match is None or fnmatch.fnmatchcase(h.dev, match)][-events:]
        if recent or not snapshot:
            lines += ["", "recent:"]
        lines += [f"  {age(now - h.at):>4} ago  {h.dev}  {clean(h.text, 100)}" for h in recent]
        if not recent and not snapshot:
            lines.append("  (nothing yet)")
    return "\n".join(lines) + "\n"
