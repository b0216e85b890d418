"""The fleet view: pure, fed topic by topic, never raised by what a box sends."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
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
    StreamFigures,
    alert_topic,
    device_topic,
    encode,
    group_cmd_topic,
)
from diemcau_centre.fleet import (
    DEFAULT_SILENCE_S,
    MAX_PAYLOAD_BYTES,
    FleetView,
    age,
    clean,
    device_record,
    heard_too_long_ago,
    render_devices,
    render_watch,
)

DEV = "c00001-r1"
T0 = 1_700_000_000.0


def state(s: str, session: int) -> bytes:
    return encode(State(state=s, session=session, ts=T0))  # type: ignore[arg-type]


def meta(name: str = "UBND xã Đông Anh") -> bytes:
    site = Site(name=name, province="p01", district="d001", commune="c00001")
    return encode(Meta(model="Raspberry Pi 4", serial="1000abcd", firmware="0.1.0",
                       capabilities=["h264"], site=site, groups=["p01", "d001", "c00001", "all"],
                       config_version="7", ts=T0))


def status(meeting_state: str = "live", meeting_id: str | None = "m1", muted: bool = True,
           hand_raised: bool = False, floor: bool = False) -> bytes:
    return encode(Status(meeting_state=meeting_state, meeting_id=meeting_id, muted=muted,  # type: ignore[arg-type]
                         floor=floor, hand_raised=hand_raised, stream=StreamFigures(state="live"),
                         ts=T0))


def health(cpu: float = 37.0, temp: float | None = 61.5) -> bytes:
    return encode(Health(seq=1, ts=T0, uptime_s=100, cpu_percent=cpu, load_1m=0.5,
                         memory_used_percent=40, memory_available_mb=900, process_rss_mb=45,
                         disk_free_mb=9000, disk_used_percent=20, interfaces=[],
                         cpu_temperature_c=temp))


def alert(code: str = "temperature_high", severity: str = "critical") -> bytes:
    return encode(Alert(code=code, severity=severity, detail="85 °C", since=T0))  # type: ignore[arg-type]


def fed(*messages: tuple[str, bytes | str], retained: bool = False) -> FleetView:
    view = FleetView()
    for i, (topic, payload) in enumerate(messages):
        view.apply(topic, payload, T0 + i, retained=retained)
    return view


# ---------------------------------------------------------------- the session rule


def test_a_late_will_from_an_older_session_is_ignored() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "state"), state("lost", 4)))
    box = view.boxes[DEV]
    assert box.state is not None and (box.state.state, box.state.session) == ("ready", 5)
    assert view.stale_ignored == 1
    assert "ignored a stale 'lost' from session 4" in view.happenings[-1].text


def test_a_disconnect_from_an_older_session_is_ignored_too() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "state"), state("disconnected", 2)))
    assert view.boxes[DEV].state.state == "ready"  # type: ignore[union-attr]


def test_a_will_from_the_current_session_counts() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "state"), state("lost", 5)))
    assert view.boxes[DEV].state.state == "lost"  # type: ignore[union-attr]


def test_a_lost_with_no_ready_seen_counts() -> None:
    view = fed((device_topic(DEV, "state"), state("lost", 3)), retained=True)
    assert view.boxes[DEV].state.state == "lost"  # type: ignore[union-attr]


def test_a_reflashed_box_counting_sessions_from_one_again_is_followed() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 57)),
               (device_topic(DEV, "state"), state("ready", 1)),
               (device_topic(DEV, "state"), state("lost", 1)))
    assert view.boxes[DEV].state.state == "lost"  # type: ignore[union-attr]


def test_an_update_announced_by_an_older_session_is_stale_too() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "state"), state("updating", 4)))
    assert view.boxes[DEV].state.state == "ready"  # type: ignore[union-attr]


def test_updating_never_counts_as_ready() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "state"), state("updating", 5)),
               (device_topic(DEV, "state"), state("lost", 4)))
    assert view.boxes[DEV].state.state == "updating"  # type: ignore[union-attr]


# ---------------------------------------------------------------- alerts, problems


def test_an_empty_alert_payload_clears_it() -> None:
    topic = alert_topic(DEV, "temperature_high")
    view = fed((topic, alert()))
    assert list(view.boxes[DEV].alerts) == ["temperature_high"]
    view.apply(topic, b"", T0 + 5)
    assert view.boxes[DEV].alerts == {}
    assert view.happenings[-1].text == "alert cleared: temperature_high"


def test_clearing_an_alert_never_seen_is_quiet() -> None:
    view = fed((alert_topic(DEV, "disk_low"), b""))
    assert view.boxes[DEV].alerts == {} and not view.happenings


def test_a_bad_payload_is_recorded_on_the_box_and_a_good_one_forgets_it() -> None:
    view = fed((device_topic(DEV, "status"), b"{not json"),
               (device_topic(DEV, "state"), b'{"state":"sleeping","session":1,"ts":0}'))
    box = view.boxes[DEV]
    assert set(box.problems) == {"status", "state"}
    assert box.status is None and box.state is None
    assert "bad state" in render_devices(view, T0)
    view.apply(device_topic(DEV, "status"), status(), T0 + 9)
    assert set(box.problems) == {"state"} and box.status is not None


def test_an_oversized_payload_is_refused_unread() -> None:
    view = fed((device_topic(DEV, "event"), b"[" * (MAX_PAYLOAD_BYTES + 1)))
    assert "more than" in view.boxes[DEV].problems["event"]


def test_json_nested_thousands_deep_is_a_problem_not_a_crash() -> None:
    deep = b'{"seq":1,"ts":1,"kind":"x","data":{"a":' + b"[" * 30000 + b"]" * 30000 + b"}}"
    view = fed((device_topic(DEV, "event"), deep), (device_topic(DEV, "state"), b"[" * 60000))
    assert view.boxes[DEV].problems["event"] == "nested too deeply"
    assert "state" in view.boxes[DEV].problems


def test_commands_and_foreign_topics_make_no_box() -> None:
    view = fed((device_topic(DEV, "cmd"), b"eyJ..."), (group_cmd_topic("p01"), b"x"),
               ("other/thing", b"{}"), ("diemcau/v1/dev/UPPER/state", state("ready", 1)))
    assert view.boxes == {} and view.ignored_topics == 4


# ---------------------------------------------------------------- happenings


def test_retained_replays_update_the_view_but_are_not_news() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "status"), status()),
               (alert_topic(DEV, "undervoltage"), alert("undervoltage", "warning")),
               retained=True)
    assert not view.happenings
    assert view.boxes[DEV].status is not None


def test_live_messages_are_news() -> None:
    ev = encode(Event(seq=3, ts=T0, kind="hand_raised", meeting_id="m1"))
    rp = encode(Reply(id="j1", cmd="audio.mute", status="succeeded", code=200, detail="muted",
                      ts=T0))
    view = fed((device_topic(DEV, "event"), ev), (device_topic(DEV, "reply"), rp),
               (device_topic(DEV, "status"), status("joining", "m2")))
    texts = [h.text for h in view.happenings]
    assert texts == ["hand_raised m1", "reply audio.mute succeeded 200 muted", "meeting joining m2"]


def test_health_age_is_measured_from_arrival_not_the_box_clock() -> None:
    view = FleetView()
    view.apply(device_topic(DEV, "health"), health(cpu=37.2, temp=61.5), T0 + 100)
    text = render_watch(view, T0 + 142)
    row = next(line for line in text.splitlines() if line.startswith(DEV))
    assert "37" in row and "62" in row and "42s" in row


# ---------------------------------------------------------------- rendering


def test_devices_table_has_one_row_per_box() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "meta"), meta()),
               (device_topic(DEV, "status"), status()),
               (alert_topic(DEV, "disk_low"), alert("disk_low", "warning")),
               (alert_topic(DEV, "temperature_high"), alert()),
               (device_topic("c00002-r1", "state"), state("lost", 2)))
    lines = render_devices(view, T0).splitlines()
    assert lines[0].split() == ["DEVICE", "STATE", "SESSION", "SITE", "FIRMWARE", "MEETING",
                                "MEETING", "ID", "MUTED", "HAND", "FLOOR", "ALERTS"]
    assert lines[1].split() == [DEV, "ready", "5", "UBND", "xã", "Đông", "Anh", "0.1.0", "live",
                                "m1", "yes", "no", "no", "temperature_high!,disk_low"]
    assert lines[2].split()[:3] == ["c00002-r1", "lost", "2"]


def test_a_raised_hand_and_the_floor_show_in_both_tables_and_the_record() -> None:
    second = "c00002-r1"
    view = fed((device_topic(DEV, "state"), state("ready", 5)),
               (device_topic(DEV, "status"), status(muted=True, hand_raised=True)),
               (device_topic(second, "state"), state("ready", 3)),
               (device_topic(second, "status"), status(muted=False, floor=True)))
    devices = {line.split()[0]: line.split() for line in render_devices(view, T0).splitlines()}
    # MUTED, HAND, FLOOR, then the alerts.
    assert devices[DEV][-4:] == ["yes", "yes", "no", "-"]
    assert devices[second][-4:] == ["no", "no", "yes", "-"]
    text = render_watch(view, T0, events=0)
    assert "2 live in a meeting; 1 with a hand raised; 0 with alerts" in text
    header, *rows = [line.split() for line in text.splitlines()[2:]]
    assert header[:7] == ["DEVICE", "STATE", "MEETING", "MUTED", "HAND", "FLOOR", "STREAM"]
    # The meeting cell is two words: "live m1".
    assert rows[0][:8] == [DEV, "ready", "live", "m1", "yes", "yes", "no", "live"]
    assert rows[1][:8] == [second, "ready", "live", "m1", "no", "no", "yes", "live"]
    assert device_record(view.boxes[DEV])["hand_raised"] is True
    assert device_record(view.boxes[second])["floor"] is True

    # The hand lowered: the tables follow the latest status.
    view.apply(device_topic(DEV, "status"), status(muted=True), T0 + 9)
    assert "0 with a hand raised" in render_watch(view, T0 + 9, events=0)
    assert device_record(view.boxes[DEV])["hand_raised"] is False


def test_a_box_cannot_write_escape_sequences_to_the_terminal() -> None:
    view = fed((device_topic(DEV, "meta"), meta("\x1b[2J\x1b]0;pwned\x07room")),
               (device_topic(DEV, "event"),
                encode(Event(seq=1, ts=T0, kind="x\x1b[31m", detail="a\rb\u2028c"))))
    devices, watch = render_devices(view, T0), render_watch(view, T0)
    for text in (devices, watch):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "?[2J?]0;pwned?room" in devices and "x?[31m a?b?c" in watch


def test_watch_match_and_row_limit() -> None:
    view = fed(*[(device_topic(f"c0000{i}-r1", "state"), state("ready", 1)) for i in range(5)])
    text = render_watch(view, T0, match="c0000[1-4]-*", max_rows=2, events=0,
                        title="fleet")
    assert text.startswith("fleet\n4 boxes: 4 ready")
    assert "c00001-r1" in text and "c00003-r1" not in text and "... and 2 more" in text


def test_device_record_is_plain_data() -> None:
    view = fed((device_topic(DEV, "state"), state("ready", 5)), (alert_topic(DEV, "disk_low"),
                                                                 alert("disk_low", "warning")))
    record = device_record(view.boxes[DEV])
    assert json.loads(json.dumps(record))["alerts"]["disk_low"]["severity"] == "warning"


def test_small_helpers() -> None:
    assert [age(s) for s in (None, float("inf"), -3, 42, 300, 7200, 200000)] == [
        "-", "-", "0s", "42s", "5m", "2h", "2d"]
    assert clean("abcdef", 4) == "abc…"
    assert clean("Hoa\u0300ng") == "Hoàng"  # decomposed Vietnamese made whole for alignment


# ---------------------------------------------------------------- hostile input

KINDS = ["state", "meta", "status", "health", "event", "reply", "cmd", "alert/temperature_high",
         "alert/x", "alert/", "bogus", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
TEMPLATES = [msgspec.json.decode(p) for p in (state("ready", 3), meta(), status(), health(),
                                               alert())]


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A real message with some fields dropped or replaced by any JSON value."""
    template = dict(draw(st.sampled_from(TEMPLATES)))
    for key in list(template):
        action = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
        if action == "drop":
            del template[key]
        elif action == "replace":
            template[key] = draw(json_values)
    return json.dumps(template).encode()


topics = st.one_of(
    st.text(max_size=60),
    st.builds(lambda dev, kind: f"diemcau/v1/dev/{dev}/{kind}",
              st.sampled_from(["a", "c00001-r1", "c00002-r1", "UP", "a/b", "+", ""]),
              st.sampled_from(KINDS)),
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid(),
    st.integers(1, 40000).map(lambda n: b'{"data":' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([b"", state("ready", 5), state("lost", 4), state("lost", 6), alert()]),
)
messages = st.tuples(topics, payloads, st.floats(min_value=0, max_value=4e9),
                     st.booleans())


@settings(max_examples=400)
@given(st.lists(messages, max_size=30))
def test_hostile_topics_and_payloads_never_raise(batch: list) -> None:
    view = FleetView(max_happenings=20)
    for topic, payload, now, retained in batch:
        view.apply(topic, payload, now, retained=retained)
        for box in view.boxes.values():
            # The session rule holds whatever came: never gone from before the latest ready.
            if box.state and box.state.state != "ready" and box.ready_session is not None:
                assert box.state.session >= box.ready_session
    for text in (render_devices(view, 5e9), render_watch(view, 5e9, max_rows=3),
                 json.dumps([device_record(b) for b in view.boxes.values()])):
        assert all(ch == "\n" or ch.isprintable() for ch in text)
    assert len(view.happenings) <= 20


def test_a_snapshot_lists_recent_happenings_only_when_there_are_some() -> None:
    retained = fed((device_topic(DEV, "state"), state("ready", 5)),
                   (device_topic(DEV, "status"), status()), retained=True)
    live = render_watch(retained, T0)
    assert "recent:\n  (nothing yet)" in live  # the live screen keeps its place for them
    snapshot = render_watch(retained, T0, snapshot=True)
    assert "recent:" not in snapshot and "nothing yet" not in snapshot
    assert DEV in snapshot
    retained.apply(device_topic(DEV, "status"), status("joining", "m2"), T0 + 5)
    snapshot = render_watch(retained, T0 + 6, snapshot=True)
    assert "recent:" in snapshot and "meeting joining m2" in snapshot


def test_a_box_is_gone_after_three_health_periods_of_silence() -> None:
    assert DEFAULT_SILENCE_S == 90.0  # the box's health.interval_s is 30 s by default
    assert not heard_too_long_ago("ready", T0, T0 + 90.0, 90.0)
    assert heard_too_long_ago("ready", T0, T0 + 90.1, 90.0)
    assert heard_too_long_ago("updating", T0, T0 + 500, 90.0)
    # Already offline by its will or its goodbye, or never seen: not "gone" on top.
    assert not heard_too_long_ago("lost", T0, T0 + 500, 90.0)
    assert not heard_too_long_ago("disconnected", T0, T0 + 500, 90.0)
    assert not heard_too_long_ago(None, None, T0 + 500, 90.0)


@given(state=st.sampled_from(["ready", "updating", "lost", "disconnected", None]),
       last=st.floats(0, 1e6), later=st.floats(0, 1e6), more=st.floats(0, 1e6),
       bound=st.floats(1, 1e5))
def test_once_gone_a_box_stays_gone_until_it_speaks(state: str | None, last: float,
                                                    later: float, more: float,
                                                    bound: float) -> None:
    now = last + later
    if heard_too_long_ago(state, last, now, bound):
        assert state in ("ready", "updating")
        assert heard_too_long_ago(state, last, now + more, bound)
        assert not heard_too_long_ago(state, now, now, bound)  # it spoke at `now`


def test_events_and_replies_a_box_sends_again_are_one_happening() -> None:
    """After its broker went away a box sends again what the broker had just acknowledged."""
    view = FleetView()
    ev = [encode(Event(seq=n, ts=T0, kind="identify")) for n in (1, 2)]
    accepted = encode(Reply(id="j1", cmd="meeting.join", status="accepted", code=202,
                           detail="", ts=T0))
    done = encode(Reply(id="j1", cmd="meeting.join", status="succeeded", code=200,
                       detail="", ts=T0))
    for payload in (ev[0], accepted, ev[1], done):
        topic = device_topic(DEV, "event" if b"seq" in payload else "reply")
        view.apply(topic, payload, T0)
    for payload in (ev[1], done, ev[0]):  # sent again, unchanged
        view.apply(device_topic(DEV, "event" if b"seq" in payload else "reply"), payload, T0 + 5)
    view.apply(device_topic(DEV, "event"), encode(Event(seq=3, ts=T0, kind="link_lost")), T0 + 5)

    texts = [h.text for h in view.happenings]
    assert texts == ["identify", "reply meeting.join accepted 202", "identify",
                     "reply meeting.join succeeded 200", "link_lost"]
    assert view.repeats == 3
