"""The web console's state keeping: real protocol messages in, the database's view out.

Each test runs on SQLite (the default) and on PostgreSQL (Debian's, a throwaway cluster;
marked e2e for its start-up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diemcau.protocol import (
    Alert,
    Event,
    Health,
    Meta,
    Reply,
    Site,
    State,
    Status,
    alert_topic,
    device_topic,
    encode,
)
from diemcau_centre.fleet import heard_too_long_ago
from diemcau_centre.web.store import (
    BoxFilter,
    FleetDb,
    Message,
    OperatorError,
    Scope,
    boxes,
    metadata,
)
from tests.harness.console import manifest_of
from tests.harness.postgres import Postgres

T0 = 1_800_000_000.0
FLEET = {"c00001-r1": "p01", "c00002-r1": "p01", "c00003-r1": "p02", "c00004-r1": "p79"}
P01 = Scope(frozenset({"p01"}))


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with Postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetDb]:
    """The same tests on the embedded default and on PostgreSQL (a fresh cluster)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'console.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.url
        FleetDb(url).close()  # the tables
        with sa.create_engine(url).begin() as conn:  # empty, for each test
            conn.execute(sa.text("TRUNCATE " + ", ".join(metadata.tables)))
    db = FleetDb(url)
    db.load_manifest(manifest_of(FLEET))
    yield db
    db.close()


def msg(dev: str, kind: str, body: object, at: float = T0, retained: bool = False) -> Message:
    return Message(device_topic(dev, kind), encode(body), at, retained)  # type: ignore[arg-type]


def alert(dev: str, code: str, since: float, severity: str = "critical") -> Message:
    return Message(alert_topic(dev, code), encode(Alert(code=code, severity=severity,  # type: ignore[arg-type]
                                                        detail="83 °C", since=since)), T0, True)


def meta(dev: str, province: str, firmware: str = "0.1.0") -> Meta:
    site = Site(name=f"UBND xã {dev}", province=province, district="d999", commune="c99999")
    return Meta(model="pi5", serial="s", firmware=firmware, capabilities=[], site=site,
                groups=[province, "all"], config_version="1", ts=T0)


def health() -> Health:
    return Health(seq=1, ts=T0, uptime_s=7200, cpu_percent=41.0, load_1m=0.5,
                  memory_used_percent=30.0, memory_available_mb=2000.0, process_rss_mb=80.0,
                  disk_free_mb=9000.0, disk_used_percent=20.0, interfaces=[],
                  cpu_temperature_c=83.0)


def test_the_manifest_lists_every_box_never_seen_until_it_speaks(db: FleetDb) -> None:
    page = db.boxes_page(Scope.everything(), BoxFilter())
    assert page.total == 4
    assert {r["state"] for r in page.rows} == {None}
    assert db.boxes_page(Scope.everything(), BoxFilter(state="never")).total == 4
    summary = {s["code"]: s for s in db.summary(Scope.everything())}
    assert summary["p01"]["name"] == "Hà Nội" and summary["p01"]["total"] == 2
    assert summary["p01"]["online"] == 0


def test_state_meta_status_and_health_fill_the_row(db: FleetDb) -> None:
    changes = db.ingest([
        msg("c00001-r1", "state", State(state="ready", session=3, ts=T0), retained=True),
        msg("c00001-r1", "meta", meta("c00001-r1", "p01", "0.2.0"), retained=True),
        msg("c00001-r1", "status", Status(meeting_state="live", meeting_id="hop-1", muted=True,
                                          ts=T0), retained=True),
        msg("c00001-r1", "health", health(), at=T0 + 5),
    ])
    assert changes.devices == {"c00001-r1"}
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None
    assert (box["state"], box["session"], box["firmware"]) == ("ready", 3, "0.2.0")
    assert (box["meeting_state"], box["meeting_id"], box["muted"]) == ("live", "hop-1", True)
    assert box["health"]["cpu_temperature_c"] == 83.0 and box["health_at"] == T0 + 5
    # The manifest says where a box stands; its own meta does not move it.
    assert box["province"] == "p01" and box["commune"] != "c99999"
    summary = {s["code"]: s for s in db.summary(Scope.everything())}
    assert (summary["p01"]["online"], summary["p01"]["live"]) == (1, 1)
    assert db.boxes_page(Scope.everything(), BoxFilter(firmware="0.2.0")).total == 1


def test_a_box_outside_the_manifest_is_placed_by_its_meta(db: FleetDb) -> None:
    db.ingest([msg("c09999-r1", "state", State(state="ready", session=1, ts=T0)),
               msg("c09999-r1", "meta", meta("c09999-r1", "p02"))])
    row = db.boxes_page(Scope(frozenset({"p02"})), BoxFilter(search="c09999")).rows
    assert [(r["device"], r["province"], r["in_manifest"]) for r in row] == [
        ("c09999-r1", "p02", False)]


def test_a_late_will_from_an_older_session_is_ignored(db: FleetDb) -> None:
    db.ingest([msg("c00001-r1", "state", State(state="ready", session=7, ts=T0))])
    db.ingest([msg("c00001-r1", "state", State(state="lost", session=6, ts=T0), at=T0 + 1)])
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None and (box["state"], box["session"]) == ("ready", 7)
    assert any("ignored a stale 'lost'" in h["text"] for h in box["timeline"])
    db.ingest([msg("c00001-r1", "state", State(state="lost", session=7, ts=T0), at=T0 + 2)])
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None and box["state"] == "lost" and box["state_at"] == T0 + 2


def test_alerts_raise_clear_and_keep_their_acknowledgement(db: FleetDb) -> None:
    db.ingest([alert("c00001-r1", "temperature_high", since=T0)])
    assert db.boxes_page(Scope.everything(), BoxFilter(alert="critical")).total == 1
    assert db.boxes_page(Scope.everything(), BoxFilter(alert="temperature_high")).total == 1
    assert db.acknowledge(Scope.everything(), "an", "c00001-r1", "temperature_high", now=T0 + 9)
    # The same alert again (retained, after the service restarts): still acknowledged.
    db.ingest([alert("c00001-r1", "temperature_high", since=T0)])
    (row,) = db.alerts_list(Scope.everything())
    assert (row["acked_by"], row["acked_at"]) == ("an", T0 + 9)
    # Raised anew: to be acknowledged again.
    db.ingest([alert("c00001-r1", "temperature_high", since=T0 + 100)])
    (row,) = db.alerts_list(Scope.everything())
    assert row["acked_by"] is None
    # Cleared (an empty retained message).
    db.ingest([Message(alert_topic("c00001-r1", "temperature_high"), b"", T0 + 200)])
    assert db.alerts_list(Scope.everything()) == []
    assert db.boxes_page(Scope.everything(), BoxFilter(alert="any")).total == 0
    assert any(a["action"] == "acknowledge" and a["operator"] == "an" for a in db.audit_list())


def test_an_unreadable_payload_is_noted_on_the_box_and_nothing_else_changes(db: FleetDb) -> None:
    db.ingest([msg("c00001-r1", "state", State(state="ready", session=1, ts=T0))])
    db.ingest([Message(device_topic("c00001-r1", "state"), b'{"state": 5', T0 + 1),
               Message(device_topic("c00001-r1", "status"), b"\xff" * 10, T0 + 1),
               Message("not/ours", b"x", T0 + 1)])
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None and box["state"] == "ready"
    assert set(box["problems"]) == {"state", "status"}


def test_events_and_replies_make_the_timeline(db: FleetDb) -> None:
    db.ingest([msg("c00001-r1", "event", Event(seq=1, ts=T0, kind="joined", meeting_id="hop-1"),
                   at=T0 + 1),
               msg("c00001-r1", "reply", Reply(id="x", cmd="audio.mute", status="succeeded",
                                               code=200, detail="muted", ts=T0), at=T0 + 2)])
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None
    assert [(h["kind"], h["text"]) for h in box["timeline"]] == [
        ("reply", "reply audio.mute succeeded 200 muted"), ("event", "joined hop-1")]


def reply(dev: str, jti: str, status: str, code: int = 200, detail: str = "",
          at: float = T0) -> Message:
    return msg(dev, "reply", Reply(id=jti, cmd="meeting.join", status=status, code=code,  # type: ignore[arg-type]
                                   detail=detail, ts=T0), at=at)


def test_the_roll_call_of_a_group_command(db: FleetDb) -> None:
    db.ingest([msg("c00002-r1", "state", State(state="lost", session=2, ts=T0))])
    expected = db.devices(P01, BoxFilter(province="p01"))
    db.record_command(jti="g1", operator="hanoi", cmd="meeting.join", args={"meeting_id": "m"},
                      target="group:p01", expected=expected, sent_at=T0)
    changes = db.ingest([reply("c00001-r1", "g1", "accepted", 202),
                         reply("c00003-r1", "g1", "succeeded"),  # not of the group
                         reply("c00001-r1", "other", "succeeded")])  # another console's
    assert changes.commands == {"g1"}
    roll = db.rollcall(P01, "g1", now=T0 + 3)
    assert roll is not None
    c = roll.report.counts
    assert (c.expected, c.answered, c.acknowledged, c.succeeded, c.unexpected) == (2, 1, 1, 0, 1)
    (silent,) = roll.report.silent
    assert (silent.dev, silent.why, silent.state) == ("c00002-r1", "offline", "lost")
    assert roll.report.buckets["acknowledged"] == ("c00001-r1",)
    assert roll.report.elapsed_s == 3
    db.ingest([reply("c00001-r1", "g1", "failed", 502, "no media server"),
               reply("c00001-r1", "g1", "accepted", 202)])  # late: must not hide the failure
    roll = db.rollcall(P01, "g1")
    assert roll is not None and not roll.complete
    (failure,) = roll.report.failures
    assert (failure.status, failure.code, failure.detail, failure.devices) == (
        "failed", 502, "no media server", ("c00001-r1",))
    assert any(a["action"] == "send" and "group:p01" in a["detail"] for a in db.audit_list())


def test_the_roll_call_of_one_command_per_box(db: FleetDb) -> None:
    tokens = {"c00001-r1": "t1", "c00002-r1": "t2"}
    db.record_command(jti="b1", operator="admin", cmd="meeting.leave", args={},
                      target="filter state=ready", expected=tokens, sent_at=T0, tokens=tokens)
    changes = db.ingest([reply("c00001-r1", "t1", "succeeded"),
                         reply("c00002-r1", "t1", "succeeded")])  # t1 was not c00002's
    assert changes.commands == {"b1"}
    db.ingest([reply("c00002-r1", "t2", "rejected", 409, "nothing to leave")])
    roll = db.rollcall(Scope.everything(), "b1")
    assert roll is not None and roll.complete
    c = roll.report.counts
    assert (c.expected, c.succeeded, c.failed, roll.report.silent) == (2, 1, 1, ())


def test_the_roll_call_takes_the_cli_rules_for_duplicates_and_order(db: FleetDb) -> None:
    """The console's roll-call is rollcall.RollCall's: the same answer whatever the order."""
    db.record_command(jti="g3", operator="admin", cmd="meeting.join", args={"meeting_id": "m"},
                      target="group:p01", expected=["c00001-r1", "c00002-r1"], sent_at=T0)
    dup = Reply(id="g3", cmd="meeting.join", status="duplicate", code=200, detail="live",
                first_status="succeeded", ts=T0)
    db.ingest([msg("c00001-r1", "reply", dup, at=T0 + 1),
               reply("c00001-r1", "g3", "accepted", 202, at=T0 + 2),
               reply("c00002-r1", "g3", "succeeded", at=T0 + 1),
               reply("c00002-r1", "g3", "failed", 502, "late copy", at=T0 + 2)])
    roll = db.rollcall(Scope.everything(), "g3")
    assert roll is not None and roll.complete
    assert roll.report.buckets["succeeded"] == ("c00001-r1", "c00002-r1")
    assert roll.report.meeting_id == "m" and roll.report.exit_code == 0


def test_a_province_scope_sees_only_its_province(db: FleetDb) -> None:
    db.ingest([alert("c00003-r1", "disk_low", since=T0)])
    assert {r["device"] for r in db.boxes_page(P01, BoxFilter()).rows} == {"c00001-r1",
                                                                         "c00002-r1"}
    assert db.boxes_page(P01, BoxFilter(province="p02")).total == 0
    assert db.box(P01, "c00003-r1") is None
    assert [s["code"] for s in db.summary(P01)] == ["p01"]
    assert db.alerts_list(P01) == []
    assert not db.acknowledge(P01, "hanoi", "c00003-r1", "disk_low")
    assert db.alerts_list(Scope.everything())[0]["acked_by"] is None
    db.record_command(jti="g2", operator="admin", cmd="meeting.leave", args={},
                      target="group:p02", expected=["c00003-r1"], sent_at=T0)
    assert db.rollcall(P01, "g2") is None and db.commands_list(P01) == []
    assert {c for c, _ in db.choices(P01)["province"]} == {"p01"}


def test_operators_passwords_are_hashed_and_checked(db: FleetDb) -> None:
    db.add_operator("hanoi", "mat-khau-dai", "province", ["p01"])
    assert db.check_login("hanoi", "mat-khau-dai") == db.operator("hanoi")
    assert db.check_login("hanoi", "wrong-password") is None
    assert db.check_login("nobody", "mat-khau-dai") is None
    with db.engine.connect() as conn:
        stored = conn.exec_driver_sql("select password_hash from operators").scalar()
    assert stored.startswith("$argon2") and "mat-khau-dai" not in stored
    for bad in [("x", "short", "admin", []), ("x", "long enough", "boss", []),
                ("x", "long enough", "province", []), ("x", "long enough", "province", ["hn"])]:
        with pytest.raises(OperatorError):
            db.add_operator(*bad)
    assert [o.username for o in db.operators_list()] == ["hanoi"]


def test_a_box_heard_too_long_ago_is_gone_in_the_table_the_summary_and_the_roll_call(
        db: FleetDb) -> None:
    db.ingest([msg("c00001-r1", "state", State(state="ready", session=1, ts=T0)),
               msg("c00002-r1", "state", State(state="ready", session=1, ts=T0)),
               msg("c00002-r1", "health", health(), at=T0 + 60)])
    later = T0 + db.silence_s + 30  # c00001: silent 120 s; c00002: 60 s
    page = db.boxes_page(Scope.everything(), BoxFilter(province="p01"), now=later)
    assert {r["device"]: r["gone"] for r in page.rows} == {"c00001-r1": True,
                                                         "c00002-r1": False}
    assert db.devices(Scope.everything(), BoxFilter(state="gone"), now=later) == ["c00001-r1"]
    assert db.devices(Scope.everything(), BoxFilter(state="ready"), now=later) == ["c00002-r1"]
    p01 = {s["code"]: s for s in db.summary(Scope.everything(), now=later)}["p01"]
    assert (p01["online"], p01["gone"], p01["offline"]) == (1, 1, p01["total"] - 1)
    box = db.box(Scope.everything(), "c00001-r1", now=later)
    assert box is not None and box["gone"] and box["state"] == "ready"
    assert db.newly_gone(T0 + 60, later) == ["c00001-r1"]
    assert db.newly_gone(later, later + 1) == []  # told once
    db.record_command(jti="g4", operator="admin", cmd="meeting.leave", args={},
                      target="group:p01", expected=["c00001-r1", "c00002-r1"], sent_at=T0)
    roll = db.rollcall(Scope.everything(), "g4", now=later)
    assert roll is not None
    assert [(s.dev, s.why, s.last_heard) for s in roll.report.silent] == [
        ("c00001-r1", "offline", T0), ("c00002-r1", "online", None)]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["ready", "updating", "lost", "disconnected",
                                                 None]),
                               st.one_of(st.none(), st.floats(T0 - 500, T0))),
                     min_size=1, max_size=8))
def test_the_database_counts_gone_exactly_as_the_pure_rule(
        tmp_path: Path, rows: list[tuple[str | None, float | None]]) -> None:
    db = FleetDb(f"sqlite:///{tmp_path / 'gone.db'}", silence_s=90.0)
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.delete(boxes))
            conn.execute(boxes.insert(), [
                {"device": f"c{i:05d}-r1", "in_manifest": True, "state": state,
                 "last_seen": last if state is not None else None}
                for i, (state, last) in enumerate(rows)])
        expected = [f"c{i:05d}-r1" for i, (state, last) in enumerate(rows)
                    if heard_too_long_ago(state, last if state else None, T0, 90.0)]
        assert db.devices(Scope.everything(), BoxFilter(state="gone"), now=T0) == expected
    finally:
        db.close()


def test_the_timeline_keeps_a_bounded_window(db: FleetDb) -> None:
    day = 86400.0
    db.ingest([msg("c00001-r1", "event", Event(seq=1, ts=T0, kind="joined"), at=T0),
               msg("c00001-r1", "event", Event(seq=2, ts=T0, kind="left"), at=T0 + 20 * day),
               msg("c00002-r1", "event", Event(seq=1, ts=T0, kind="joined"), at=T0 + 29 * day)])
    assert db.history_days == 30
    assert db.prune_history(now=T0 + 40 * day) == 1  # the one older than 30 days
    box = db.box(Scope.everything(), "c00001-r1")
    assert box is not None and [h["text"] for h in box["timeline"]] == ["left"]
    assert db.prune_history(now=T0 + 40 * day) == 0
    # The boxes' current state is not history: it stays.
    assert db.boxes_page(Scope.everything(), BoxFilter()).total == 4


def test_the_service_prunes_the_timeline_when_it_sweeps_then_hourly(db: FleetDb) -> None:
    from diemcau.config import Mqtt
    from diemcau_centre.web.service import PRUNE_EVERY_S, CentreService

    day = 86400.0
    service = CentreService(db, Mqtt(host="127.0.0.1"), "centre-test")  # not started: no broker
    db.ingest([msg("c00001-r1", "event", Event(seq=1, ts=T0, kind="joined"), at=T0)])
    service.sweep(now=T0 + 31 * day)
    assert service.pruned == 1
    db.ingest([msg("c00001-r1", "event", Event(seq=2, ts=T0, kind="left"), at=T0 + day)])
    service.sweep(now=T0 + 31 * day + 60)  # within the hour: not again
    assert service.pruned == 1
    service.sweep(now=T0 + 31 * day + PRUNE_EVERY_S)
    assert service.pruned == 2
