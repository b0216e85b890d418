"""The status light's patterns: one per state, priorities, and patterns people can tell apart.

The tables in docs/room-controls.md are made from the code: print them again
with ``.venv/bin/python -m tests.core.test_light`` after changing a pattern.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.core.light import (
    LABELS,
    LIGHT_STATES,
    OFF,
    PATTERNS,
    PRIORITY,
    STEADY,
    WHITE,
    LightState,
    LightView,
    Pattern,
    Rhythm,
    blink,
    holding,
    light_for,
    light_state,
    pulse,
)
from diemcau.core.meeting import Room

DOC = Path(__file__).resolve().parents[2] / "docs" / "room-controls.md"

READY = LightView(phase="ready")

# One view for each state, in the simplest situation that shows it.
EXAMPLES: dict[LightState, LightView] = {
    "starting": LightView(),
    "no_network": LightView(phase="no_network"),
    "connecting": LightView(phase="connecting"),
    "ready": READY,
    "invited": replace(READY, meeting="invited"),
    "joining": replace(READY, meeting="joining"),
    "live": replace(READY, meeting="live"),
    "live_muted": replace(READY, meeting="live", muted=True),
    "hand_raised": replace(READY, meeting="live", muted=True, hand_raised=True),
    "floor": replace(READY, meeting="live", floor=True),
    "leaving": replace(READY, meeting="leaving"),
    "error": replace(READY, meeting="error"),
    "updating": replace(READY, updating=True),
    "identify": replace(READY, identify=True),
    "resetting": LightView(resetting=True),
}

# On one plain LED, states in one group may look alike; the groups must not.
SINGLE_LED_GROUPS: list[set[LightState]] = [
    {"live", "floor"},  # they hear us
    {"live_muted"},  # in the meeting, they do not hear us
    {"invited", "hand_raised"},  # waiting: for the button, or for the chair
    {"ready"},
    {"starting", "connecting", "updating"},  # wait
    {"no_network", "error"},  # a fault: call the technician
    {"joining", "leaving", "identify", "resetting"},  # changing right now
]
# Two plain LEDs tell nearly everything apart.
DUAL_LED_GROUPS: list[set[LightState]] = [
    {"live", "floor"}, {"joining", "leaving"},
    *({state} for state in LIGHT_STATES if state not in ("live", "floor", "joining", "leaving")),
]

views = st.builds(
    LightView,
    phase=st.sampled_from(["starting", "no_network", "connecting", "ready"]),
    meeting=st.sampled_from(["idle", "invited", "joining", "live", "leaving", "error"]),
    muted=st.booleans(), hand_raised=st.booleans(), floor=st.booleans(),
    identify=st.booleans(), updating=st.booleans(), error=st.booleans(),
    resetting=st.booleans(),
)


# ---------------------------------------------------------------- one pattern per state


def test_every_state_has_one_pattern_a_label_and_a_place_in_the_priorities() -> None:
    assert set(PATTERNS) == set(LIGHT_STATES) == set(LABELS)
    assert sorted(PRIORITY) == sorted(LIGHT_STATES)
    assert all(PATTERNS[state].state == state for state in LIGHT_STATES)
    assert set(EXAMPLES) == set(LIGHT_STATES)


@pytest.mark.parametrize("state", LIGHT_STATES)
def test_each_state_shows_its_own_pattern(state: LightState) -> None:
    assert light_state(EXAMPLES[state]) == state
    assert light_for(EXAMPLES[state]) is PATTERNS[state]


@pytest.mark.parametrize(("state", "colour", "rgb", "single", "dual"), [
    ("ready", "blue", STEADY, blink(0.1, 1.9), (blink(0.1, 1.9), OFF)),
    ("invited", "green", blink(0.5, 0.5), blink(0.5, 0.5), (blink(0.5, 0.5), OFF)),
    ("live", "green", STEADY, STEADY, (STEADY, OFF)),
    ("live_muted", "red", STEADY, blink(1.8, 0.2), (STEADY, STEADY)),
    ("error", "red", blink(0.15, 0.15), blink(0.15, 0.15), (OFF, blink(0.15, 0.15))),
    ("starting", "white", pulse(1.0), blink(1.0, 1.0), (blink(1.0, 1.0), blink(1.0, 1.0))),
])
def test_key_patterns_as_documented(state: LightState, colour: str, rgb: Rhythm,
                                    single: Rhythm, dual: tuple[Rhythm, Rhythm]) -> None:
    pattern = PATTERNS[state]
    assert (pattern.colour.name, pattern.rgb, pattern.single) == (colour, rgb, single)
    assert (pattern.dual_green, pattern.dual_red) == dual


def test_the_view_of_a_room() -> None:
    room = Room(state="live", meeting_id="m1", muted=False, floor=True)
    view = LightView.from_room(room, "ready", hand_raised=True)
    assert view == LightView(phase="ready", meeting="live", floor=True, hand_raised=True)
    assert light_state(view) == "floor"


# ---------------------------------------------------------------- priorities


@pytest.mark.parametrize(("view", "expected"), [
    (replace(READY, meeting="live", error=True, updating=True, identify=True), "identify"),
    (replace(READY, identify=True, resetting=True), "resetting"),
    (replace(READY, meeting="live", updating=True, error=True), "updating"),
    (replace(READY, meeting="live", muted=True, error=True), "error"),
    (replace(READY, meeting="invited", error=True), "error"),
    # The meeting's truth beats the link's: a live microphone shows while the broker is away.
    (LightView(phase="no_network", meeting="live"), "live"),
    (LightView(phase="connecting", meeting="live", muted=True), "live_muted"),
    (LightView(phase="no_network", meeting="joining"), "joining"),
    # An invitation shows only once the box can act on it.
    (LightView(phase="connecting", meeting="invited"), "connecting"),
    (LightView(phase="no_network", meeting="invited"), "no_network"),
    (LightView(phase="starting", meeting="invited"), "starting"),
    # In a meeting: the floor, then a raised hand, then the microphone.
    (replace(READY, meeting="live", floor=True, hand_raised=True), "floor"),
    (replace(READY, meeting="live", floor=True, muted=True), "live_muted"),
    (replace(READY, meeting="live", floor=True, muted=True, hand_raised=True), "hand_raised"),
    (replace(READY, meeting="live", hand_raised=True), "hand_raised"),
    # Flags that mean nothing outside a meeting show nothing.
    (replace(READY, muted=True, floor=True, hand_raised=True), "ready"),
    (replace(READY, meeting="joining", muted=True, hand_raised=True), "joining"),
])
def test_priorities(view: LightView, expected: LightState) -> None:
    assert light_state(view) == expected


@given(views)
def test_the_light_shows_the_highest_state_that_holds(view: LightView) -> None:
    shown = light_state(view)
    held = holding(view)
    assert shown in held
    assert not held & set(PRIORITY[:PRIORITY.index(shown)])


@given(views)
def test_a_muted_microphone_never_shows_as_open(view: LightView) -> None:
    if view.muted:
        assert light_state(view) not in ("live", "floor")


@given(views)
def test_an_open_microphone_in_a_meeting_always_shows(view: LightView) -> None:
    quiet = not (view.resetting or view.identify or view.updating or view.error)
    if view.meeting == "live" and not view.muted and not view.hand_raised and quiet:
        assert light_state(view) in ("live", "floor")


@given(views)
def test_identify_shows_over_everything_but_a_reset(view: LightView) -> None:
    if view.identify and not view.resetting:
        assert light_state(view) == "identify"


# ---------------------------------------------------------------- telling them apart


def test_no_two_states_look_alike_on_the_rgb_light() -> None:
    looks = {(PATTERNS[s].colour, PATTERNS[s].rgb): s for s in LIGHT_STATES}
    assert len(looks) == len(LIGHT_STATES)


@pytest.mark.parametrize(("groups", "look"), [
    (SINGLE_LED_GROUPS, lambda p: p.single),
    (DUAL_LED_GROUPS, lambda p: (p.dual_green, p.dual_red)),
], ids=["one LED", "two LEDs"])
def test_states_a_clerk_must_tell_apart_differ_on_plain_leds(
        groups: list[set[LightState]], look: Callable[[Pattern], object]) -> None:
    assert sorted(itertools.chain.from_iterable(groups)) == sorted(LIGHT_STATES)
    for first, second in itertools.combinations(groups, 2):
        for a, b in itertools.product(first, second):
            assert look(PATTERNS[a]) != look(PATTERNS[b]), (a, b)


def test_no_plain_led_is_ever_dark_while_the_box_runs() -> None:
    # Dark means "no power" to anyone in the room.
    for pattern in PATTERNS.values():
        assert pattern.single != OFF
        assert (pattern.dual_green, pattern.dual_red) != (OFF, OFF)
        assert pattern.rgb != OFF


def test_rhythms_are_slow_enough_to_see() -> None:
    for pattern in PATTERNS.values():
        for rhythm in (pattern.rgb, pattern.single, pattern.dual_green, pattern.dual_red):
            if rhythm.kind == "blink":
                assert min(rhythm.on_s, rhythm.off_s) >= 0.05  # 10 Hz at most
                assert rhythm.period_s <= 2.0  # one look at the box is enough


# ---------------------------------------------------------------- the data itself


@pytest.mark.parametrize("make", [
    lambda: blink(0.0, 1.0), lambda: blink(1.0, 0.0), lambda: pulse(0.0),
    lambda: Rhythm("steady", on_s=1.0), lambda: Rhythm("off", fade_s=1.0),
    lambda: Rhythm("pulse", on_s=1.0, fade_s=1.0), lambda: blink(float("inf"), 1.0),
    lambda: blink(float("nan"), 1.0), lambda: blink(-1.0, 1.0),
])
def test_a_rhythm_that_makes_no_sense_is_refused(make: Callable[[], Rhythm]) -> None:
    with pytest.raises(ValueError):
        make()


def test_a_plain_led_cannot_pulse() -> None:
    with pytest.raises(ValueError, match="cannot pulse"):
        Pattern("starting", WHITE, pulse(1.0), pulse(1.0), STEADY, STEADY)


def test_colours_are_in_range() -> None:
    for pattern in PATTERNS.values():
        assert all(0.0 <= c <= 1.0 for c in pattern.colour.rgb)
        assert max(pattern.colour.rgb) == 1.0


def test_descriptions() -> None:
    assert STEADY.describe() == "steady"
    assert OFF.describe("vi") == "tắt"
    assert blink(1.8, 0.2).describe() == "blinks 1.8 s on, 0.2 s off"
    assert pulse(1.0).describe("vi") == "sáng dần rồi tối dần, mỗi chiều 1 giây"
    assert PATTERNS["live_muted"].describe_rgb("vi") == "đỏ, sáng liên tục"


# ---------------------------------------------------------------- the printed tables


def tables() -> dict[str, str]:
    """The light tables of docs/room-controls.md, each under a ``<!-- light: NAME -->`` mark."""
    rgb_en = ["| state | light | meaning |", "|---|---|---|"]
    rgb_vi = ["| trạng thái | đèn | nghĩa là |", "|---|---|---|"]
    plain_en = ["| state | one LED | two LEDs: green | two LEDs: red |", "|---|---|---|---|"]
    plain_vi = ["| trạng thái | một đèn | hai đèn: đèn xanh lá | hai đèn: đèn đỏ | nghĩa là |",
                "|---|---|---|---|---|"]
    for state in LIGHT_STATES:  # in the order a box goes through them
        p, (en, vi) = PATTERNS[state], LABELS[state]
        rgb_en.append(f"| `{state}` | {p.describe_rgb()} | {en} |")
        rgb_vi.append(f"| `{state}` | {p.describe_rgb('vi')} | {vi} |")
        plain_en.append(f"| `{state}` | {p.single.describe()} | {p.dual_green.describe()} "
                        f"| {p.dual_red.describe()} |")
        plain_vi.append(f"| `{state}` | {p.single.describe('vi')} | "
                        f"{p.dual_green.describe('vi')} | {p.dual_red.describe('vi')} | {vi} |")
    return {name: "\n".join(lines) for name, lines in
            [("rgb-en", rgb_en), ("rgb-vi", rgb_vi), ("plain-en", plain_en),
             ("plain-vi", plain_vi)]}


@pytest.mark.parametrize("name", ["rgb-en", "rgb-vi", "plain-en", "plain-vi"])
def test_the_docs_print_the_light_tables_of_the_code(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- light: {name} -->\n\n((?:\|.*\n)+)", text)
    assert match, f"no table marked <!-- light: {name} --> in {DOC.name}"
    assert match.group(1).rstrip("\n") == tables()[name], (
        "the table differs from the code: run `python -m tests.core.test_light`")


if __name__ == "__main__":
    for name, table in tables().items():
        print(f"<!-- light: {name} -->\n\n{table}\n")
