"""``microphone_silent`` as properties over any run of observations (the rule is in core/alerts)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from diemcau.core.alerts import AlertState, Observation, Thresholds, evaluate

LIMITS = Thresholds(microphone_silent_dbfs=-60.0, microphone_silent_s=20.0)

steps = st.lists(st.tuples(
    st.floats(0.0, 15.0),  # seconds since the previous health step
    st.one_of(st.none(), st.floats(-100.0, 0.0)),  # level; None: unknown this time
    st.booleans(),  # muted
    st.sampled_from(["live", "live", "live", "joining", "idle"]),
), max_size=40)


def breaks_silence(level: float | None, muted: bool, meeting: str) -> bool:
    return meeting != "live" or muted or (level is not None and level >= LIMITS.microphone_silent_dbfs)


@given(steps)
@example([(0.0, -90.0, False, "live"), (10.0, None, False, "live"), (10.0, -80.0, False, "live"),
          (5.0, -20.0, False, "live")])  # raised at 20 s, cleared by sound
@example([(0.0, -90.0, False, "live"), (25.0, -90.0, False, "live"), (1.0, -90.0, True, "live")])
def test_raised_only_after_enough_unbroken_quiet_and_cleared_by_anything_that_breaks_it(
        run: list[tuple[float, float | None, bool, str]]) -> None:
    state, now, active = AlertState(), 0.0, False
    quiet_from: float | None = None  # first numeric quiet level since the last break
    for dt, level, muted, meeting in run:
        now += dt
        obs = Observation(meeting_state=meeting, stream_state="live", muted=muted,  # type: ignore[arg-type]
                          audio_level_dbfs=level)
        update = evaluate(state, obs, LIMITS, now)
        state = update.state
        if breaks_silence(level, muted, meeting):
            quiet_from = None
        elif level is not None and quiet_from is None:
            quiet_from = now
        raised = [a for a in update.raised if a.code == "microphone_silent"]
        if raised:
            assert not active
            assert quiet_from is not None and now - quiet_from >= LIMITS.microphone_silent_s
            active = True
        if "microphone_silent" in update.cleared:
            assert active
            active = False
        if breaks_silence(level, muted, meeting):
            assert not active, "still silent after sound, mute or the end of the meeting"
        assert active == ("microphone_silent" in state.active)
