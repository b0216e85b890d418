"""The alert rules: pure steps, driven with observations and a made-up clock."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.config import HealthConfig
from diemcau.core.alerts import (
    SEVERITY,
    AlertState,
    AlertUpdate,
    Observation,
    Thresholds,
    evaluate,
)
from diemcau.protocol.messages import ALERT_CODES, Alert, decode, encode

LIMITS = Thresholds()  # 80 °C, 500 MB, -60 dBFS for 60 s, stream 30 s
LIVE = Observation(meeting_state="live", stream_state="live", audio_level_dbfs=-20.0)


def run(observations: list[tuple[float, Observation]],
        state: AlertState | None = None) -> list[AlertUpdate]:
    """Evaluate a sequence of (now, observation), threading the state through."""
    state = state or AlertState()
    updates = []
    for now, obs in observations:
        update = evaluate(state, obs, LIMITS, now)
        updates.append(update)
        state = update.state
    return updates


def codes(update: AlertUpdate) -> list[str]:
    return [a.code for a in update.raised]


# ---------------------------------------------------------------- each rule


def test_every_protocol_code_has_a_severity() -> None:
    assert set(SEVERITY) == set(ALERT_CODES)


def test_thresholds_come_from_the_health_section() -> None:
    cfg = HealthConfig(temperature_high_c=75.0, disk_low_mb=200.0, microphone_silent_dbfs=-50.0,
                       microphone_silent_s=20.0, stream_failing_s=10.0)
    assert Thresholds.from_config(cfg) == Thresholds(75.0, 200.0, -50.0, 20.0, 10.0)
    assert Thresholds.from_config(HealthConfig()) == Thresholds()


def test_a_healthy_box_raises_nothing() -> None:
    obs = Observation(cpu_temperature_c=50.0, undervoltage=False, throttled=False,
                      disk_free_mb=4000.0, clock_synced=True)
    update = evaluate(AlertState(), obs, LIMITS, now=1.0)
    assert update.raised == () and update.cleared == () and update.state.codes == []


def test_temperature_raises_at_the_limit_and_clears_five_degrees_under() -> None:
    temps = [79.9, 80.0, 83.0, 76.0, 75.1, 75.0, 79.0]
    updates = run([(float(i), Observation(cpu_temperature_c=t)) for i, t in enumerate(temps)])
    assert [codes(u) for u in updates] == [[], ["temperature_high"], [], [], [], [], []]
    assert [list(u.cleared) for u in updates] == [[], [], [], [], [], ["temperature_high"], []]
    alert = updates[1].raised[0]
    assert alert.severity == "warning"
    assert alert.detail == "CPU at 80.0 °C (limit 80.0 °C)"
    assert alert.since == 1.0


def test_an_alert_keeps_its_since_while_active() -> None:
    updates = run([(10.0, Observation(cpu_temperature_c=90.0)),
                   (40.0, Observation(cpu_temperature_c=95.0))])
    assert updates[1].raised == ()
    assert updates[1].state.active["temperature_high"].since == 10.0


def test_since_is_stamped_with_the_wall_clock_when_given() -> None:
    update = evaluate(AlertState(), Observation(cpu_temperature_c=90.0), LIMITS,
                      now=12.5, ts=1_700_000_000.123)
    assert update.raised[0].since == 1_700_000_000.123


def test_disk_low_clears_at_one_point_two_times_the_limit() -> None:
    free = [600.0, 499.0, 550.0, 599.0, 600.0, 450.0]
    updates = run([(float(i), Observation(disk_free_mb=f)) for i, f in enumerate(free)])
    assert [codes(u) for u in updates] == [[], ["disk_low"], [], [], [], ["disk_low"]]
    assert [list(u.cleared) for u in updates] == [[], [], [], [], ["disk_low"], []]
    assert updates[1].raised[0].detail == "499 MB free on the state disk (limit 500 MB)"


@pytest.mark.parametrize(
    ("field", "code", "severity"),
    [("undervoltage", "undervoltage", "critical"), ("throttled", "throttled", "warning"),
     ("camera_missing", "camera_missing", "critical")],
)
def test_flags_raise_while_set(field: str, code: str, severity: str) -> None:
    updates = run([(0.0, Observation(**{field: True})), (1.0, Observation(**{field: True})),
                   (2.0, Observation(**{field: False}))])
    assert [codes(u) for u in updates] == [[code], [], []]
    assert updates[0].raised[0].severity == severity
    assert [list(u.cleared) for u in updates] == [[], [], [code]]


def test_clock_unsynced_while_the_clock_is_not_synchronised() -> None:
    updates = run([(0.0, Observation(clock_synced=False)), (1.0, Observation(clock_synced=None)),
                   (2.0, Observation(clock_synced=True))])
    assert [codes(u) for u in updates] == [["clock_unsynced"], [], []]
    assert [list(u.cleared) for u in updates] == [[], [], ["clock_unsynced"]]


def test_an_unknown_figure_neither_raises_nor_clears() -> None:
    hot = Observation(cpu_temperature_c=90.0, undervoltage=True, throttled=True,
                      disk_free_mb=10.0, clock_synced=False)
    unknown = Observation()
    updates = run([(0.0, hot), (1.0, unknown)])
    raised = {"temperature_high", "undervoltage", "throttled", "disk_low", "clock_unsynced"}
    assert set(codes(updates[0])) == raised
    assert updates[1].cleared == () and set(updates[1].state.codes) == raised


def _failing(state: str, since: float | None, meeting: str = "live") -> Observation:
    return Observation(meeting_state=meeting, stream_state=state, stream_failing_since=since,
                       stream_detail="connection refused")


def test_stream_failing_after_its_delay_in_a_meeting() -> None:
    updates = run([(100.0, _failing("reconnecting", 100.0)),
                   (129.0, _failing("reconnecting", 100.0)),
                   (130.0, _failing("error", 100.0)),
                   (131.0, _failing("starting", 100.0)),  # between attempts: stays
                   (140.0, _failing("live", None))])
    assert [codes(u) for u in updates] == [[], [], ["stream_failing"], [], []]
    assert [list(u.cleared) for u in updates] == [[], [], [], [], ["stream_failing"]]
    alert = updates[2].raised[0]
    assert alert.severity == "critical" and alert.since == 130.0
    assert alert.detail == "stream error for 30 s (limit 30 s): connection refused"


def test_stream_failing_clears_when_the_meeting_ends() -> None:
    updates = run([(0.0, _failing("reconnecting", 0.0, "joining")),
                   (40.0, _failing("reconnecting", 0.0, "joining")),
                   (41.0, _failing("reconnecting", 0.0, "leaving"))])
    assert [codes(u) for u in updates] == [[], ["stream_failing"], []]
    assert updates[2].cleared == ("stream_failing",)


def test_a_failing_stream_outside_a_meeting_is_no_alert() -> None:
    updates = run([(0.0, _failing("error", 0.0, "idle")), (100.0, _failing("error", 0.0, "idle"))])
    assert all(u.raised == () for u in updates)


def _programme(state: str, since: float | None, meeting: str = "live") -> Observation:
    return replace(LIVE, meeting_state=meeting, programme_state=state,
                   programme_lost_since=since, programme_detail="no data from the feed for 3 s")


def test_programme_lost_after_its_delay_and_back_when_it_plays() -> None:
    updates = run([(0.0, _programme("live", None)),
                   (5.0, _programme("reconnecting", 5.0)),
                   (14.0, _programme("starting", 5.0)),  # between attempts: not yet, not cleared
                   (15.0, _programme("reconnecting", 5.0)),
                   (16.0, _programme("starting", 5.0)),
                   (20.0, _programme("live", None))])
    assert [codes(u) for u in updates] == [[], [], [], ["programme_lost"], [], []]
    assert [list(u.cleared) for u in updates] == [[], [], [], [], [], ["programme_lost"]]
    alert = updates[3].raised[0]
    assert alert.severity == "critical"
    assert alert.detail == ("programme on the TV reconnecting for 10 s (limit 10 s):"
                            " no data from the feed for 3 s")


def test_no_programme_alert_without_a_programme_or_outside_a_meeting() -> None:
    off = run([(0.0, _programme("off", None)), (100.0, _programme("off", None))])
    idle = run([(0.0, _programme("error", 0.0, "idle")), (100.0, _programme("error", 0.0, "idle"))])
    assert all(u.raised == () for u in off + idle)
    ended = run([(0.0, _programme("error", 0.0)), (11.0, _programme("error", 0.0)),
                 (12.0, _programme("error", 0.0, "idle"))])
    assert [codes(u) for u in ended] == [[], ["programme_lost"], []]
    assert ended[2].cleared == ("programme_lost",)


def _mic(level: float | None, meeting: str = "live", muted: bool = False) -> Observation:
    return replace(LIVE, meeting_state=meeting, audio_level_dbfs=level, muted=muted)


def test_microphone_silent_after_a_minute_under_the_limit_while_live() -> None:
    updates = run([(0.0, _mic(-80.0)), (30.0, _mic(-75.0)), (59.0, _mic(None)),
                   (60.0, _mic(-90.0)), (70.0, _mic(-20.0))])
    assert [codes(u) for u in updates] == [[], [], [], ["microphone_silent"], []]
    assert updates[3].raised[0].detail == "microphone under -60 dBFS for 60 s (now -90.0 dBFS)"
    assert updates[4].cleared == ("microphone_silent",)


def test_a_sound_restarts_the_silence_count() -> None:
    updates = run([(0.0, _mic(-80.0)), (50.0, _mic(-30.0)), (51.0, _mic(-80.0)),
                   (100.0, _mic(-80.0)), (111.0, _mic(-80.0))])
    assert [codes(u) for u in updates] == [[], [], [], [], ["microphone_silent"]]


@pytest.mark.parametrize("meeting", ["idle", "joining", "leaving", "error"])
def test_microphone_silence_counts_only_while_live(meeting: str) -> None:
    updates = run([(0.0, _mic(-90.0, meeting)), (500.0, _mic(-90.0, meeting))])
    assert all(u.raised == () for u in updates)


def test_microphone_silent_clears_when_the_meeting_ends_or_the_box_is_muted() -> None:
    silent = [(0.0, _mic(-90.0)), (60.0, _mic(-90.0))]
    ended = run([*silent, (61.0, _mic(-90.0, "leaving"))])
    muted = run([*silent, (61.0, _mic(-90.0, muted=True))])
    assert ended[1].raised and muted[1].raised
    assert ended[2].cleared == ("microphone_silent",) == muted[2].cleared
    assert muted[2].state.quiet_since is None


def test_after_a_restart_the_first_step_clears_every_code_not_raised_again() -> None:
    update = evaluate(AlertState.after_restart(), Observation(cpu_temperature_c=90.0), LIMITS, 0.0)
    assert codes(update) == ["temperature_high"]
    assert set(update.cleared) == set(ALERT_CODES) - {"temperature_high"}
    again = evaluate(update.state, Observation(cpu_temperature_c=90.0), LIMITS, 1.0)
    assert again.raised == () and again.cleared == ()


def test_active_codes_are_in_protocol_order_and_alerts_encode() -> None:
    obs = Observation(cpu_temperature_c=90.0, clock_synced=False, undervoltage=True)
    update = evaluate(AlertState(), obs, LIMITS, 5.0)
    assert update.state.codes == ["temperature_high", "undervoltage", "clock_unsynced"]
    for alert in update.raised:
        assert decode(encode(alert), Alert) == alert


# ---------------------------------------------------------------- properties

observations = st.builds(
    Observation,
    cpu_temperature_c=st.none() | st.floats(20.0, 100.0),
    undervoltage=st.none() | st.booleans(),
    throttled=st.none() | st.booleans(),
    disk_free_mb=st.none() | st.floats(0.0, 2000.0),
    clock_synced=st.none() | st.booleans(),
    meeting_state=st.sampled_from(["idle", "invited", "joining", "live", "leaving", "error"]),
    muted=st.booleans(),
    stream_state=st.sampled_from(["off", "starting", "live", "reconnecting", "error"]),
    stream_failing_since=st.none() | st.floats(0.0, 1000.0),
    camera_missing=st.booleans(),
    audio_level_dbfs=st.none() | st.floats(-120.0, 0.0),
)
steps = st.lists(st.tuples(st.floats(0.0, 60.0), observations), min_size=1, max_size=30)


def _timeline(steps: list[tuple[float, Observation]],
              restart: bool = False) -> list[tuple[AlertState, AlertUpdate]]:
    state = AlertState.after_restart() if restart else AlertState()
    now, out = 1000.0, []
    for dt, obs in steps:
        now += dt
        update = evaluate(state, obs, LIMITS, now)
        out.append((state, update))
        state = update.state
    return out


@given(steps, st.booleans())
def test_no_code_is_both_raised_and_cleared_in_one_step(steps, restart) -> None:
    for _, update in _timeline(steps, restart):
        assert not set(codes(update)) & set(update.cleared)


@given(steps, st.booleans())
def test_changes_are_exactly_the_difference_between_states(steps, restart) -> None:
    for before, update in _timeline(steps, restart):
        old, new = set(before.active), set(update.state.active)
        assert set(codes(update)) == new - old
        assert set(update.cleared) - before.unconfirmed == old - new
        assert not set(update.cleared) & new
        assert all(update.state.active[c].since == before.active[c].since for c in old & new)


@given(steps, st.booleans())
def test_repeating_an_observation_changes_nothing(steps, restart) -> None:
    # Clearing (and raising) is idempotent: the same input twice at the same
    # moment gives no second change.
    _, update = _timeline(steps, restart)[-1]
    now = 1000.0 + sum(dt for dt, _ in steps)
    again = evaluate(update.state, steps[-1][1], LIMITS, now)
    assert again.raised == () and again.cleared == ()
    assert again.state == update.state


@given(st.lists(st.floats(60.0, 100.0, allow_nan=False), min_size=1, max_size=60))
def test_temperature_hysteresis_holds(temps: list[float]) -> None:
    state, active = AlertState(), False
    for i, t in enumerate(temps):
        update = evaluate(state, Observation(cpu_temperature_c=t), LIMITS, float(i))
        # The model: on at the limit, off only 5 °C under it, else unchanged.
        active = t >= 80.0 or (active and t > 75.0)
        assert ("temperature_high" in update.state.active) == active
        if "temperature_high" in update.cleared:
            assert t <= 75.0
        if "temperature_high" in codes(update):
            assert t >= 80.0
        state = update.state


@given(st.lists(st.floats(0.0, 1000.0, allow_nan=False), min_size=1, max_size=60))
def test_disk_hysteresis_holds(free: list[float]) -> None:
    state, active = AlertState(), False
    for i, f in enumerate(free):
        update = evaluate(state, Observation(disk_free_mb=f), LIMITS, float(i))
        active = f < 500.0 or (active and f < 600.0)
        assert ("disk_low" in update.state.active) == active
        state = update.state
