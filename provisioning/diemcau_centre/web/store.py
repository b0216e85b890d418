"""The web console's database: the fleet's state and history, operators, commands sent.

SQLAlchemy Core on SQLite (one file, the default: runs on one machine out of the
box) or PostgreSQL (``postgresql+psycopg://...``, for production). What a box
sends is decoded by :class:`~diemcau_centre.fleet.FleetView`, the same rules as
``watch`` (a stale will from an older session is ignored, a bad payload is noted
on the box and never raises); :meth:`FleetDb.ingest` writes what changed, a
batch of messages in one transaction.

    db = FleetDb("sqlite:///console.db")
    db.load_manifest(manifest)               # who should be there, and where
    db.ingest([Message(topic, payload, time.time(), retained=False)])
    page = db.boxes(Scope.everything(), BoxFilter(province="p01"), page=1)

Permissions are a :class:`Scope`: every read and every command goes through one,
so a province operator's query never returns another province's boxes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from diemcau.protocol import Reply, State, decode, parse_topic

from ..fleet import DEFAULT_SILENCE_S, GONE_STATES, FleetView, heard_too_long_ago
from ..manifest import Manifest
from ..rollcall import Answer, Report, RollCall, better, effective
from . import DEFAULT_HISTORY_DAYS

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
ROLES = ("admin", "province")
MAX_DETAIL = 500  # characters of a reply's detail kept

metadata = sa.MetaData()

places = sa.Table(
    "places", metadata,
    sa.Column("code", sa.String(16), primary_key=True),  # p01, d001, c00001
    sa.Column("level", sa.String(10), nullable=False),  # province, district, commune
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("parent", sa.String(16)),
)

boxes = sa.Table(
    "boxes", metadata,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("in_manifest", sa.Boolean, nullable=False, default=False),
    sa.Column("province", sa.String(16), index=True),
    sa.Column("district", sa.String(16), index=True),
    sa.Column("commune", sa.String(16), index=True),
    sa.Column("site_name", sa.String(200)),
    sa.Column("room", sa.String(200)),
    sa.Column("state", sa.String(16), index=True),  # None: never seen
    sa.Column("session", sa.Integer),
    sa.Column("state_at", sa.Float),  # when the state last changed (centre's clock)
    sa.Column("firmware", sa.String(64), index=True),
    sa.Column("meeting_state", sa.String(16)),
    sa.Column("meeting_id", sa.String(200)),
    sa.Column("muted", sa.Boolean),
    sa.Column("hand_raised", sa.Boolean),
    sa.Column("floor", sa.Boolean),
    sa.Column("stream_state", sa.String(16)),
    sa.Column("health", sa.Text),  # the latest health report, as the box sent it (JSON)
    sa.Column("health_at", sa.Float),
    sa.Column("alert_count", sa.Integer, nullable=False, default=0),
    sa.Column("critical_count", sa.Integer, nullable=False, default=0),
    sa.Column("problems", sa.Text),  # topics that carried something unreadable (JSON)
    sa.Column("last_seen", sa.Float),
)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("code", sa.String(64), primary_key=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("since", sa.Float, nullable=False),  # the box's clock
    sa.Column("raised_at", sa.Float, nullable=False),  # the centre's clock
    sa.Column("acked_by", sa.String(64)),
    sa.Column("acked_at", sa.Float),
)

history = sa.Table(
    "history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # state, status, alert, event, reply
    sa.Column("text", sa.Text, nullable=False),
    sa.Index("history_by_device", "device", "at"),
)
# Pruning deletes by time alone.
history_by_time = sa.Index("history_by_time", history.c.at)

operators = sa.Table(
    "operators", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("provinces", sa.Text, nullable=False, default=""),  # p01,p02 for a province role
)

commands = sa.Table(
    "commands", metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("sent_at", sa.Float, nullable=False),
    sa.Column("operator", sa.String(64), nullable=False),
    sa.Column("cmd", sa.String(64), nullable=False),
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),  # group:p01, or what filter chose the boxes
    sa.Column("expected", sa.Integer, nullable=False),
)

# One row per box that should answer a command (the roll-call), and per answer that came.
answers = sa.Table(
    "answers", metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("expected", sa.Boolean, nullable=False),
    # The id of the command this box was sent, when each box got its own (a filter that is
    # not one group); None: the box got the group command, whose id is ``jti``.
    sa.Column("token", sa.String(128), index=True),
    # The deciding answer so far (rollcall.better: a final beats a non-final, a success a
    # failure, whatever the order); a `duplicate` is kept as its first result. None: silent.
    sa.Column("status", sa.String(16)),
    sa.Column("code", sa.Integer),
    sa.Column("detail", sa.Text),
    sa.Column("first_at", sa.Float),  # first reply (the acknowledgement)
    sa.Column("last_at", sa.Float),
)

audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("operator", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),  # login, send, acknowledge
    sa.Column("detail", sa.Text, nullable=False),
)


# ---------------------------------------------------------------- who sees what


@dataclass(frozen=True, slots=True)
class Scope:
    """What one operator may see and command: everything, or the boxes of some provinces."""

    provinces: frozenset[str] | None  # None: every box (an admin)

    @classmethod
    def everything(cls) -> Scope:
        return cls(None)

    def allows(self, province: str | None) -> bool:
        return self.provinces is None or (province is not None and province in self.provinces)

    def where(self) -> sa.ColumnElement[bool]:
        if self.provinces is None:
            return sa.true()
        return boxes.c.province.in_(sorted(self.provinces))


@dataclass(frozen=True, slots=True)
class Operator:
    username: str
    role: str
    provinces: frozenset[str]

    @property
    def scope(self) -> Scope:
        return Scope.everything() if self.role == "admin" else Scope(self.provinces)


class OperatorError(ValueError):
    """An operator cannot be added as asked (bad name, role or province)."""


# ---------------------------------------------------------------- filters and pages


@dataclass(frozen=True, slots=True)
class BoxFilter:
    """The fleet table's filters; empty fields do not filter."""

    province: str = ""
    district: str = ""
    commune: str = ""
    # ready (and heard lately), lost, ..., "gone" (silent too long: fleet.heard_too_long_ago),
    # or "never" for boxes never seen
    state: str = ""
    alert: str = ""  # "any", "critical", "none", or an alert code
    firmware: str = ""
    search: str = ""  # part of a device id or a site name

    def where(self, gone: sa.ColumnElement[bool] | None = None) -> sa.ColumnElement[bool]:
        """``gone``: which boxes count as gone now (:meth:`FleetDb.gone`); None: none."""
        gone = sa.false() if gone is None else gone
        conds: list[sa.ColumnElement[bool]] = []
        for name in ("province", "district", "commune", "firmware"):
            value = getattr(self, name)
            if value:
                conds.append(boxes.c[name] == value)
        if self.state == "never":
            conds.append(boxes.c.state.is_(None))
        elif self.state == "gone":
            conds.append(gone)
        elif self.state:
            conds.append(sa.and_(boxes.c.state == self.state, sa.not_(gone)))
        if self.alert == "any":
            conds.append(boxes.c.alert_count > 0)
        elif self.alert == "critical":
            conds.append(boxes.c.critical_count > 0)
        elif self.alert == "none":
            conds.append(boxes.c.alert_count == 0)
        elif self.alert:
            conds.append(sa.exists().where(alerts.c.device == boxes.c.device,
                                           alerts.c.code == self.alert))
        if self.search:
            # Escape LIKE's wildcards: the operator searches for text, not patterns.
            text = self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(sa.or_(boxes.c.device.ilike(f"%{text}%", escape="\\"),
                                boxes.c.site_name.ilike(f"%{text}%", escape="\\")))
        return sa.and_(sa.true(), *conds)

    @property
    def group(self) -> str | None:
        """The one administrative group this filter is, if it is only that (else None)."""
        others = (self.state, self.alert, self.firmware, self.search)
        if any(others):
            return None
        return self.commune or self.district or self.province or None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int


@dataclass(frozen=True, slots=True)
class CommandRollCall:
    """One command sent from the console and its roll-call: the report of
    :class:`~diemcau_centre.rollcall.RollCall`, the same buckets as ``send`` prints."""

    jti: str
    cmd: str
    target: str
    operator: str
    sent_at: float
    report: Report

    @property
    def complete(self) -> bool:
        """Every expected box gave a final answer."""
        return self.report.counts.finished


@dataclass(slots=True)
class Message:
    """One MQTT message as it arrived."""

    topic: str
    payload: bytes
    at: float  # time.time() on arrival
    retained: bool = False


@dataclass(slots=True)
class Changes:
    """What one ingested batch changed: for the live updates."""

    devices: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    alerts: bool = False

    def __bool__(self) -> bool:
        return bool(self.devices or self.commands or self.alerts)


# ---------------------------------------------------------------- the database


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False,
                                                     "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            # WAL: the web's readers do not wait for the ingest's writer.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _upsert(engine: sa.Engine, table: sa.Table, keys: list[str], values: dict[str, Any],
            update: dict[str, Any] | None = None) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE, for SQLite and PostgreSQL alike."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(values)
    set_ = update if update is not None else {c: stmt.excluded[c] for c in values if c not in keys}
    if callable(set_):
        set_ = set_(stmt.excluded)
    return stmt.on_conflict_do_update(index_elements=keys, set_=set_)


class FleetDb:
    """The console's database; safe to use from several threads (one writer: ingest).

    ``history_days``: how long the boxes' timelines are kept (:meth:`prune_history`).
    ``silence_s``: a box that says it is there but from which nothing has come for this
    long is shown gone (:func:`~diemcau_centre.fleet.heard_too_long_ago`).
    """

    def __init__(self, url: str, *, silence_s: float = DEFAULT_SILENCE_S,
                 history_days: float = DEFAULT_HISTORY_DAYS) -> None:
        self.url = url
        self.silence_s = silence_s
        self.history_days = history_days
        self.engine = _engine(url)
        metadata.create_all(self.engine)
        history_by_time.create(self.engine, checkfirst=True)  # a database made before it
        self.view = FleetView(max_happenings=1_000_000)  # emptied after every batch
        self._manifest_devices: set[str] = set()
        self._hasher = PasswordHasher()
        self.province_of: dict[str, str | None] = {}  # device -> province: for the live feed
        with self.engine.connect() as conn:
            for dev, prov in conn.execute(sa.select(boxes.c.device, boxes.c.province)):
                self.province_of[dev] = prov

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ the manifest

    def load_manifest(self, manifest: Manifest) -> int:
        """Put every box of the manifest, and its places' names, in the database."""
        place_rows: dict[str, dict[str, Any]] = {}
        box_rows = []
        for dev in manifest.devices.values():
            s = dev.site
            place_rows[s.province.code] = {"code": s.province.code, "level": "province",
                                           "name": s.province.name, "parent": None}
            place_rows[s.district.code] = {"code": s.district.code, "level": "district",
                                           "name": s.district.name, "parent": s.province.code}
            place_rows[s.commune.code] = {"code": s.commune.code, "level": "commune",
                                          "name": s.commune.name, "parent": s.district.code}
            box_rows.append({"device": dev.id, "in_manifest": True,
                             "province": s.province.code, "district": s.district.code,
                             "commune": s.commune.code,
                             "room": s.room_name or str(s.room)})
        with self.engine.begin() as conn:
            if place_rows:
                conn.execute(_upsert(self.engine, places, ["code"], next(iter(place_rows.values()))),
                             list(place_rows.values()))
            if box_rows:
                conn.execute(_upsert(self.engine, boxes, ["device"], box_rows[0]), box_rows)
        self._manifest_devices = {r["device"] for r in box_rows}
        for r in box_rows:
            self.province_of[r["device"]] = r["province"]
        return len(box_rows)

    # ------------------------------------------------------------ ingest

    def ingest(self, batch: Iterable[Message]) -> Changes:
        """Apply a batch of messages from the fleet; one transaction; never raises on content."""
        changes = Changes()
        updates: dict[str, dict[str, Any]] = {}
        history_rows: list[dict[str, Any]] = []
        alert_sets: list[dict[str, Any]] = []
        alert_clears: list[tuple[str, str]] = []
        replies: list[tuple[str, Reply, float]] = []
        view = self.view
        for msg in batch:
            parsed = parse_topic(msg.topic)
            if parsed is None or parsed.dev is None or parsed.kind == "cmd":
                continue
            dev = parsed.dev
            old = view.boxes.get(dev)
            seen = len(view.happenings)
            before = (old.state, old.meta, old.status, old.health, dict(old.alerts),
                      dict(old.problems)) if old else (None, None, None, None, {}, {})
            view.apply(msg.topic, msg.payload, msg.at, retained=msg.retained)
            box = view.boxes[dev]
            for i in range(seen, len(view.happenings)):
                happening = view.happenings[i]
                history_rows.append({"device": dev, "at": happening.at, "kind": parsed.kind,
                                     "text": happening.text})
            row = updates.setdefault(dev, {})
            row["last_seen"] = msg.at
            if box.state is not before[0] and box.state is not None:
                if before[0] is None or before[0].state != box.state.state:
                    row["state_at"] = msg.at
                row["state"], row["session"] = box.state.state, box.state.session
            if box.meta is not before[1] and box.meta is not None:
                row["site_name"] = box.meta.site.name
                row["firmware"] = box.meta.firmware
                if dev not in self._manifest_devices:
                    site = box.meta.site
                    row.update(province=site.province, district=site.district,
                               commune=site.commune, room=site.room)
            if box.status is not before[2] and box.status is not None:
                st = box.status
                row.update(meeting_state=st.meeting_state, meeting_id=st.meeting_id,
                           muted=st.muted, hand_raised=st.hand_raised, floor=st.floor,
                           stream_state=st.stream.state)
            if box.health is not before[3] and box.health is not None:
                row["health"] = msgspec.json.encode(box.health).decode()
                row["health_at"] = box.health_at
            if box.alerts != before[4]:
                for code, alert in box.alerts.items():
                    if before[4].get(code) is not alert:
                        alert_sets.append({"device": dev, "code": code,
                                           "severity": alert.severity, "detail": alert.detail,
                                           "since": alert.since, "raised_at": msg.at})
                alert_clears += [(dev, code) for code in before[4] if code not in box.alerts]
                row["alert_count"] = len(box.alerts)
                row["critical_count"] = sum(a.severity == "critical"
                                            for a in box.alerts.values())
                changes.alerts = True
            if box.problems != before[5]:
                row["problems"] = json.dumps(box.problems) if box.problems else None
            if parsed.kind == "reply" and "reply" not in box.problems:
                # FleetView read it already (a bad one is in box.problems): this decode succeeds.
                replies.append((dev, decode(msg.payload, Reply), msg.at))
            changes.devices.add(dev)
        view.happenings.clear()
        with self.engine.begin() as conn:
            self._write_boxes(conn, updates)
            if alert_sets:
                conn.execute(_upsert(self.engine, alerts, ["device", "code"], alert_sets[0],
                                     update=self._alert_update), alert_sets)
            for dev, code in alert_clears:
                conn.execute(alerts.delete().where(alerts.c.device == dev, alerts.c.code == code))
            if history_rows:
                conn.execute(history.insert(), history_rows)
            for dev, reply, at in replies:
                broadcast = self._record_answer(conn, dev, reply, at)
                if broadcast is not None:
                    changes.commands.add(broadcast)
        return changes

    @staticmethod
    def _alert_update(excluded: Any) -> dict[str, Any]:
        # The same alert again (a retained copy, after a restart) keeps its acknowledgement;
        # an alert raised anew (a new `since`) must be acknowledged again.
        same = alerts.c.since == excluded.since
        return {"severity": excluded.severity, "detail": excluded.detail,
                "since": excluded.since,
                "raised_at": sa.case((same, alerts.c.raised_at), else_=excluded.raised_at),
                "acked_by": sa.case((same, alerts.c.acked_by), else_=None),
                "acked_at": sa.case((same, alerts.c.acked_at), else_=None)}

    def _write_boxes(self, conn: sa.Connection, updates: dict[str, dict[str, Any]]) -> None:
        # executemany needs the same columns in every row: group rows by their columns.
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for dev, row in updates.items():
            row["device"] = dev
            by_columns.setdefault(tuple(sorted(row)), []).append(row)
            if "province" in row:
                self.province_of[dev] = row["province"]
            else:
                self.province_of.setdefault(dev, None)
        for rows in by_columns.values():
            conn.execute(_upsert(self.engine, boxes, ["device"], rows[0]), rows)

    def _record_answer(self, conn: sa.Connection, dev: str, reply: Reply, at: float
                       ) -> str | None:
        """Note a reply in the roll-call it answers; its command's id, or None if not ours."""
        if not reply.id:
            return None
        columns = (answers.c.jti, answers.c.status, answers.c.code, answers.c.detail,
                   answers.c.last_at)
        current = conn.execute(sa.select(*columns).where(
            answers.c.token == reply.id, answers.c.device == dev)).first()
        if current is None:
            group = conn.execute(sa.select(commands.c.jti).where(commands.c.jti == reply.id)
                                 ).first()
            if group is None:
                return None  # another console's command, or garbage
            current = conn.execute(sa.select(*columns).where(
                answers.c.jti == reply.id, answers.c.device == dev)).first()
        jti = current.jti if current is not None else reply.id
        new = effective(reply, at)
        new = dataclasses.replace(new, detail=new.detail[:MAX_DETAIL])
        values = {"status": new.status, "code": new.code, "detail": new.detail, "last_at": at}
        if current is None:
            conn.execute(answers.insert().values(jti=jti, device=dev, expected=False,
                                                 first_at=at, **values))
            return jti
        old = None if current.status is None else Answer(
            current.status, current.code or 0, current.detail or "", current.last_at or 0.0)
        if better(old, new) is old:
            return None  # e.g. a late `accepted` never hides the final answer
        conn.execute(answers.update().where(answers.c.jti == jti, answers.c.device == dev)
                     .values(first_at=sa.func.coalesce(answers.c.first_at, at), **values))
        return jti

    # ------------------------------------------------------------ reading

    def gone(self, now: float | None = None) -> sa.ColumnElement[bool]:
        """The boxes gone at ``now``: :func:`~diemcau_centre.fleet.heard_too_long_ago` in SQL."""
        now = time.time() if now is None else now
        return sa.and_(boxes.c.state.is_not(None), boxes.c.state.not_in(sorted(GONE_STATES)),
                       boxes.c.last_seen.is_not(None),
                       boxes.c.last_seen < now - self.silence_s)

    def boxes_page(self, scope: Scope, flt: BoxFilter, page: int = 1,
                   page_size: int = PAGE_SIZE, now: float | None = None) -> Page:
        """One page of the fleet table; each row has ``gone`` (silent too long)."""
        page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        gone = self.gone(now)
        where = sa.and_(scope.where(), flt.where(gone))
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(boxes).where(where)
                                 ).scalar_one()
            pages = max(1, -(-total // page_size))
            page = max(1, min(page, pages))
            rows = conn.execute(sa.select(boxes, sa.case((gone, True), else_=False)
                                          .label("gone"))
                                .where(where).order_by(boxes.c.device)
                                .limit(page_size).offset((page - 1) * page_size)).mappings()
            return Page([{**r, "gone": bool(r["gone"])} for r in rows], total, page, pages)

    def devices(self, scope: Scope, flt: BoxFilter, now: float | None = None) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(boxes.c.device)
                                     .where(scope.where(), flt.where(self.gone(now)))
                                     .order_by(boxes.c.device)).scalars())

    def newly_gone(self, after: float, now: float) -> list[str]:
        """Boxes that became gone between ``after`` and ``now`` (the service tells the
        browsers: nothing arrives from them to say so)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(boxes.c.device).where(
                self.gone(now), boxes.c.last_seen >= after - self.silence_s)).scalars())

    def summary(self, scope: Scope, level: str = "province", parent: str | None = None,
                now: float | None = None) -> list[dict[str, Any]]:
        """Counts per province (or per district/commune under ``parent``): boxes, online
        (ready and heard lately), offline (every other box: its will said lost, it
        stopped, it was never heard, or it is gone), gone (silent too long, no will
        heard), live in a meeting, alerting."""
        gone = self.gone(now)
        col = boxes.c[level]
        parent_col = {"district": boxes.c.province, "commune": boxes.c.district}.get(level)
        where = scope.where()
        if parent is not None and parent_col is not None:
            where = sa.and_(where, parent_col == parent)
        stmt = (sa.select(col.label("code"), places.c.name,
                          sa.func.count().label("total"),
                          sa.func.sum(sa.case((sa.and_(boxes.c.state == "ready",
                                                       sa.not_(gone)), 1), else_=0)
                                      ).label("online"),
                          sa.func.sum(sa.case((gone, 1), else_=0)).label("gone"),
                          sa.func.sum(sa.case((boxes.c.meeting_state == "live", 1), else_=0)
                                      ).label("live"),
                          sa.func.sum(sa.case((boxes.c.alert_count > 0, 1), else_=0)
                                      ).label("alerting"))
                .select_from(boxes.outerjoin(places, places.c.code == col))
                .where(where).group_by(col, places.c.name).order_by(col))
        with self.engine.connect() as conn:
            return [{**r, "offline": r["total"] - (r["online"] or 0)}
                    for r in conn.execute(stmt).mappings()]

    def choices(self, scope: Scope) -> dict[str, list[tuple[str, str]]]:
        """The values the filters offer: (code, label) for places, firmware versions."""
        out: dict[str, list[tuple[str, str]]] = {}
        with self.engine.connect() as conn:
            for level in ("province", "district", "commune"):
                col = boxes.c[level]
                rows = conn.execute(sa.select(col, places.c.name).distinct()
                                    .select_from(boxes.outerjoin(places, places.c.code == col))
                                    .where(scope.where(), col.is_not(None)).order_by(col))
                out[level] = [(code, f"{code} {name}" if name else code) for code, name in rows]
            fw = conn.execute(sa.select(boxes.c.firmware).distinct()
                              .where(scope.where(), boxes.c.firmware.is_not(None))
                              .order_by(boxes.c.firmware)).scalars()
            out["firmware"] = [(v, v) for v in fw]
        return out

    def place_name(self, code: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(places.c.name).where(places.c.code == code)
                                ).scalar_one_or_none()

    def box(self, scope: Scope, device: str, now: float | None = None
            ) -> dict[str, Any] | None:
        """One box's row with its alerts and timeline, or None if absent or not in scope."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(boxes).where(boxes.c.device == device, scope.where())
                               ).mappings().first()
            if row is None:
                return None
            result = dict(row)
            result["gone"] = heard_too_long_ago(row["state"], row["last_seen"], now,
                                                self.silence_s)
            result["health"] = json.loads(row["health"]) if row["health"] else None
            result["problems"] = json.loads(row["problems"]) if row["problems"] else {}
            result["alerts"] = [dict(a) for a in conn.execute(
                sa.select(alerts).where(alerts.c.device == device).order_by(alerts.c.code)
            ).mappings()]
            result["timeline"] = [dict(h) for h in conn.execute(
                sa.select(history).where(history.c.device == device)
                .order_by(history.c.at.desc(), history.c.id.desc()).limit(100)).mappings()]
            return result

    def alerts_list(self, scope: Scope, *, unacknowledged_only: bool = False,
                    limit: int = 500) -> list[dict[str, Any]]:
        stmt = (sa.select(alerts, boxes.c.province, boxes.c.site_name)
                .select_from(alerts.join(boxes, boxes.c.device == alerts.c.device))
                .where(scope.where()))
        if unacknowledged_only:
            stmt = stmt.where(alerts.c.acked_by.is_(None))
        stmt = stmt.order_by((alerts.c.severity == "critical").desc(), alerts.c.raised_at.desc())
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt.limit(limit)).mappings()]

    def acknowledge(self, scope: Scope, operator: str, device: str, code: str,
                    now: float | None = None) -> bool:
        """Mark an alert seen by ``operator``; False if there is no such alert in scope."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            visible = conn.execute(sa.select(boxes.c.device).where(
                boxes.c.device == device, scope.where())).first()
            if visible is None:
                return False
            done = conn.execute(alerts.update().where(alerts.c.device == device,
                                                      alerts.c.code == code)
                                .values(acked_by=operator, acked_at=now)).rowcount
            if done:
                conn.execute(audit.insert().values(at=now, operator=operator,
                                                   action="acknowledge",
                                                   detail=f"{device} {code}"))
            return bool(done)

    # ------------------------------------------------------------ commands and roll-call

    def record_command(self, *, jti: str, operator: str, cmd: str, args: dict[str, Any],
                       target: str, expected: Iterable[str], sent_at: float,
                       tokens: dict[str, str] | None = None) -> None:
        """A command about to be published: who sent it, and who should answer.

        ``tokens``: the id of the command each box gets, when each gets its own.
        """
        expected = sorted(set(expected))
        tokens = tokens or {}
        with self.engine.begin() as conn:
            conn.execute(commands.insert().values(jti=jti, sent_at=sent_at, operator=operator,
                                                  cmd=cmd, args=json.dumps(args, ensure_ascii=False),
                                                  target=target, expected=len(expected)))
            if expected:
                conn.execute(answers.insert(), [{"jti": jti, "device": d, "expected": True,
                                                 "token": tokens.get(d)} for d in expected])
            conn.execute(audit.insert().values(
                at=sent_at, operator=operator, action="send",
                detail=f"{cmd} {json.dumps(args, ensure_ascii=False)} to {target} "
                       f"({len(expected)} box(es), id {jti})"))

    def commands_list(self, scope: Scope, limit: int = 200) -> list[dict[str, Any]]:
        """Commands whose boxes are all in scope (a province operator sees their own)."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                sa.select(commands).order_by(commands.c.sent_at.desc()).limit(limit)).mappings()]
        return [r for r in rows if self.command_in_scope(scope, r["jti"])]

    def command_in_scope(self, scope: Scope, jti: str) -> bool:
        if scope.provinces is None:
            return True
        with self.engine.connect() as conn:
            outside = conn.execute(
                sa.select(answers.c.device).select_from(
                    answers.outerjoin(boxes, boxes.c.device == answers.c.device))
                .where(answers.c.jti == jti, answers.c.expected,
                       sa.or_(boxes.c.province.is_(None), sa.not_(scope.where())))
                .limit(1)).first()
            exists = conn.execute(sa.select(commands.c.jti).where(commands.c.jti == jti)).first()
        return exists is not None and outside is None

    def rollcall(self, scope: Scope, jti: str, now: float | None = None
                 ) -> CommandRollCall | None:
        """The roll-call of one command in scope: the stored answers and each box's
        presence fed to :class:`~diemcau_centre.rollcall.RollCall`; None if not in scope."""
        if not self.command_in_scope(scope, jti):
            return None
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            cmd = conn.execute(sa.select(commands).where(commands.c.jti == jti)).mappings().one()
            rows = conn.execute(
                sa.select(answers, boxes.c.province, boxes.c.state, boxes.c.session,
                          boxes.c.state_at, boxes.c.last_seen)
                .select_from(answers.outerjoin(boxes, boxes.c.device == answers.c.device))
                .where(answers.c.jti == jti).order_by(answers.c.device)).mappings().all()
        args = json.loads(cmd["args"])
        call = RollCall(jti, cmd["cmd"], {r["device"]: r["province"] or "-"
                                          for r in rows if r["expected"]},
                        sent_at=cmd["sent_at"], meeting_id=args.get("meeting_id"),
                        silence_s=self.silence_s)
        for r in rows:
            if r["last_seen"] is not None:
                call.heard[r["device"]] = r["last_seen"]
            if r["state"] is not None and r["session"] is not None:
                call.take_state(r["device"], State(state=r["state"], session=r["session"],
                                                   ts=r["state_at"] or 0.0))
            if r["status"] is not None:
                call.take_answer(r["device"], Answer(r["status"], r["code"] or 0,
                                                     r["detail"] or "", r["last_at"] or 0.0))
        return CommandRollCall(jti=jti, cmd=cmd["cmd"], target=cmd["target"],
                               operator=cmd["operator"], sent_at=cmd["sent_at"],
                               report=call.report(now))

    def command_args(self, jti: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(commands.c.args).where(commands.c.jti == jti)
                                ).scalar_one()
        return json.loads(text)

    def audit_list(self, limit: int = 500) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(audit).order_by(audit.c.id.desc()).limit(limit)).mappings()]

    def note(self, operator: str, action: str, detail: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(audit.insert().values(at=time.time(), operator=operator,
                                               action=action, detail=detail))

    # ------------------------------------------------------------ operators

    def add_operator(self, username: str, password: str, role: str,
                     provinces: Iterable[str] = ()) -> Operator:
        provinces = frozenset(p.strip() for p in provinces if p.strip())
        if not username or len(username) > 64 or not username.isprintable():
            raise OperatorError("a user name is 1-64 printable characters")
        if role not in ROLES:
            raise OperatorError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if role == "province" and not provinces:
            raise OperatorError("a province operator needs at least one province (p01)")
        bad = [p for p in provinces if not (p[:1] == "p" and p[1:].isdigit() and len(p) == 3)]
        if bad:
            raise OperatorError(f"not a province code: {', '.join(sorted(bad))} (like p01)")
        if len(password) < 8:
            raise OperatorError("a password has at least 8 characters")
        values = {"username": username, "password_hash": self._hasher.hash(password),
                  "role": role, "provinces": ",".join(sorted(provinces))}
        with self.engine.begin() as conn:
            conn.execute(_upsert(self.engine, operators, ["username"], values))
        return Operator(username, role, provinces)

    def remove_operator(self, username: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(operators.delete().where(operators.c.username == username)
                                     ).rowcount)

    def operators_list(self) -> list[Operator]:
        with self.engine.connect() as conn:
            return [self._operator(r) for r in conn.execute(
                sa.select(operators).order_by(operators.c.username)).mappings()]

    def operator(self, username: str) -> Operator | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(operators).where(operators.c.username == username)
                               ).mappings().first()
        return self._operator(row) if row else None

    def check_login(self, username: str, password: str) -> Operator | None:
        """The operator if the password is right, else None (same work for an unknown name)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(operators).where(operators.c.username == username)
                               ).mappings().first()
        stored = row["password_hash"] if row else self._dummy_hash()
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return self._operator(row) if row else None

    def prune_history(self, now: float | None = None) -> int:
        """Delete the timeline older than :attr:`history_days`; how many rows went."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            return conn.execute(history.delete().where(
                history.c.at < now - self.history_days * 86400)).rowcount

    def _dummy_hash(self) -> str:
        # Verifying against a real hash makes an unknown name cost as much as a wrong password.
        if not hasattr(self, "_dummy"):
            self._dummy = self._hasher.hash("no such operator")
        return self._dummy

    @staticmethod
    def _operator(row: Any) -> Operator:
        provs = frozenset(p for p in row["provinces"].split(",") if p)
        return Operator(row["username"], row["role"], provs)
