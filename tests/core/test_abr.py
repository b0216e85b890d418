"""Adaptive bitrate: the ladder, and stepping down and up with hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.abr import (
    DOWN_AFTER,
    MIN_VIDEO_KBPS,
    UP_HOLD_MAX,
    UP_HOLD_MIN,
    AbrState,
    Measurement,
    Rung,
    ladder,
    step,
)

PROFILES = [("720p30", 1500), ("480p25", 800), ("360p15", 400)]
CONGESTED = Measurement(queue_fill=0.8, stalled_fraction=0.6, dropped_video=5)
CLEAR = Measurement()
MEASUREMENTS = st.builds(
    Measurement,
    queue_fill=st.floats(0, 1),
    stalled_fraction=st.floats(0, 1),
    dropped_video=st.integers(0, 50),
    dropped_audio=st.one_of(st.just(0), st.integers(0, 5)),
    backlog_fraction=st.floats(0, 2),
    loss_fraction=st.floats(0, 1),
)


def run(rungs: list[Rung], seconds: list[Measurement]) -> tuple[AbrState, list[tuple[int, object]]]:
    state, steps = AbrState(), []
    for t, m in enumerate(seconds):
        state, change = step(state, m, rungs)
        if change is not None:
            steps.append((t, change))
    return state, steps


@pytest.mark.parametrize("top", ["720p30", "480p25", "360p15"])
def test_the_ladder_goes_down_from_the_requested_profile_to_audio(top: str) -> None:
    rungs = ladder(PROFILES, top)
    assert rungs[0] == Rung(top, dict(PROFILES)[top])
    assert rungs[-1] == Rung("audio", 0)
    video = rungs[:-1]
    assert [r.kbps for r in video] == sorted((r.kbps for r in video), reverse=True)
    assert all(r.kbps >= MIN_VIDEO_KBPS for r in video)
    assert video[-1].kbps == MIN_VIDEO_KBPS
    assert len(set(rungs)) == len(rungs)


def test_a_configured_bitrate_tops_the_ladder_and_audio_is_a_ladder_of_one() -> None:
    assert ladder(PROFILES, "720p30", top_kbps=2500)[0] == Rung("720p30", 2500)
    assert ladder(PROFILES, "360p15", top_kbps=100)[0] == Rung("360p15", MIN_VIDEO_KBPS)
    assert ladder(PROFILES, "audio") == [Rung("audio", 0)]
    with pytest.raises(ValueError, match="unknown profile"):
        ladder(PROFILES, "1080p60")


def test_congestion_steps_down_rung_by_rung_and_clear_air_brings_it_back() -> None:
    rungs = ladder(PROFILES, "720p30")
    state, steps = run(rungs, [CONGESTED] * (DOWN_AFTER * 3))
    assert state.index == 3
    assert [c.direction for _, c in steps] == ["down"] * 3  # type: ignore[attr-defined]
    assert [t for t, _ in steps] == [DOWN_AFTER - 1, 2 * DOWN_AFTER - 1, 3 * DOWN_AFTER - 1]
    state, steps = run(rungs, [CONGESTED] * (DOWN_AFTER * 3) + [CLEAR] * (UP_HOLD_MIN * 3 + 3))
    assert state.index == 0
    assert [c.direction for _, c in steps].count("up") == 3  # type: ignore[attr-defined]


def test_dropped_audio_gives_up_the_picture_at_once() -> None:
    rungs = ladder(PROFILES, "720p30")
    state, change = step(AbrState(), Measurement(dropped_audio=1), rungs)
    assert change is not None and change.rung == Rung("audio", 0)
    assert state.index == len(rungs) - 1
    assert "audio" in change.reason


def test_a_failed_probe_up_makes_the_next_one_wait_longer() -> None:
    rungs = ladder(PROFILES, "720p30")
    state, _ = run(rungs, [CONGESTED] * DOWN_AFTER)  # one rung down
    assert state.index == 1
    for _ in range(UP_HOLD_MIN):
        state, change = step(state, CLEAR, rungs)
    assert change is not None and change.direction == "up" and state.index == 0
    for _ in range(DOWN_AFTER):
        state, change = step(state, CONGESTED, rungs)
    assert change is not None and change.direction == "down"
    assert state.up_hold == 2 * UP_HOLD_MIN


@pytest.mark.parametrize("m", [Measurement(backlog_fraction=0.7), Measurement(loss_fraction=0.3)],
                         ids=["backlog", "loss"])
def test_what_srt_reports_counts_as_congestion_too(m: Measurement) -> None:
    assert m.congested and not m.clear
    rungs = ladder(PROFILES, "720p30")
    state, steps = run(rungs, [m] * DOWN_AFTER)
    assert state.index == 1 and "SRT backlog" in steps[0][1].reason  # type: ignore[attr-defined]


def test_a_mixed_second_is_neither_congested_nor_clear() -> None:
    rungs = ladder(PROFILES, "720p30")
    meh = Measurement(queue_fill=0.3, stalled_fraction=0.1)
    assert not meh.congested and not meh.clear
    state, steps = run(rungs, [CONGESTED] * DOWN_AFTER + [meh] * 100)
    assert state.index == 1 and len(steps) == 1


@given(seconds=st.lists(MEASUREMENTS, max_size=200),
       top=st.sampled_from(["720p30", "480p25", "360p15", "audio"]))
def test_any_measurements_keep_the_state_on_the_ladder_with_hysteresis(
        seconds: list[Measurement], top: str) -> None:
    rungs = ladder(PROFILES, top)
    state, steps = run(rungs, seconds)
    assert 0 <= state.index < len(rungs)
    assert UP_HOLD_MIN <= state.up_hold <= UP_HOLD_MAX
    index = 0
    last_step_t = -1
    for t, change in steps:
        assert change.previous == rungs[index]  # type: ignore[attr-defined]
        new = rungs.index(change.rung)  # type: ignore[attr-defined]
        if change.direction == "up":  # type: ignore[attr-defined]
            assert new == index - 1
            # Up only after a run of clear seconds, all of them since the last step.
            assert t - last_step_t >= UP_HOLD_MIN
            assert all(m.clear for m in seconds[t - UP_HOLD_MIN + 1:t + 1])
        else:
            assert new > index
            assert seconds[t].congested
            if new != len(rungs) - 1 or seconds[t].dropped_audio == 0:
                assert new == index + 1
                assert all(m.congested for m in seconds[t - DOWN_AFTER + 1:t + 1])
        index, last_step_t = new, t
    assert index == state.index
