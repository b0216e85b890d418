"""The panel on gpiozero's MockFactory: presses driven on the pin, the light's pin history.

Each test makes its own factory and passes it in; gpiozero's global factory and
its environment variable are never used. Buttons run on real time with short
timings (the press logic itself is tested without time in tests/core): the
assertions are on how a press is classified, never on how long anything took.
"""

from __future__ import annotations

import importlib.util
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from gpiozero import LED, Button
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from diemcau.adapters.panel import (
    ButtonPressed,
    JoinButton,
    LightKind,
    MuteButton,
    PanelButton,
    PanelError,
    StatusLight,
    pin_factory_for,
)
from diemcau.core.button import PressTiming
from diemcau.core.light import LIGHT_STATES, PATTERNS, LightState, Pattern, Rhythm, blink, pulse

TIMING = PressTiming(debounce_s=0.02, long_press_s=0.4, reset_hold_s=0.8)
JOIN_PIN = 17
RGB_PINS = {"red": 5, "green": 6, "blue": 13}
PLAIN_PINS: dict[LightKind, dict[str, int]] = {"single": {"pin": 12},
                                               "dual": {"green": 20, "red": 21}}
QUIET_S = 0.12  # how long "nothing more came" is watched for


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    made = MockFactory(pin_class=MockPWMPin)
    yield made
    made.reset()


@pytest.fixture
def events() -> queue.Queue[object]:
    return queue.Queue()


@pytest.fixture
def closing() -> Iterator[Callable[..., object]]:
    """Register buttons and lights to stop or close after the test, whatever happens."""
    things: list[object] = []

    def keep(thing: object) -> object:
        things.append(thing)
        return thing

    yield keep
    for thing in reversed(things):
        if isinstance(thing, PanelButton):
            thing.stop()
        elif isinstance(thing, StatusLight):
            thing.close()


def join_button(factory: MockFactory, events: queue.Queue[object],
                closing: Callable[..., object], **kw: object) -> JoinButton:
    button = JoinButton(JOIN_PIN, post=events.put, timing=TIMING, pin_factory=factory,
                        **kw)  # type: ignore[arg-type]
    closing(button)
    return button


def next_event(events: queue.Queue[object]) -> object:
    return events.get(timeout=3.0)


def assert_quiet(events: queue.Queue[object]) -> None:
    with pytest.raises(queue.Empty):
        extra = events.get(timeout=QUIET_S)
        pytest.fail(f"unexpected event {extra!r}")


# ---------------------------------------------------------------- the join button


def test_a_short_press(factory: MockFactory, events: queue.Queue[object],
                       closing: Callable[..., object]) -> None:
    button = join_button(factory, events, closing, reset_window_s=0.0)
    button.start()
    pin = factory.pin(JOIN_PIN)
    pin.drive_low()  # pulled up: pressed is low
    time.sleep(0.05)
    pin.drive_high()
    event = next_event(events)
    assert isinstance(event, ButtonPressed)
    assert (event.button, event.kind) == ("join", "short_press")
    assert event.held_s < TIMING.long_press_s
    assert_quiet(events)


def test_a_long_press_is_reported_while_held_and_gives_no_short_press(
        factory: MockFactory, events: queue.Queue[object],
        closing: Callable[..., object]) -> None:
    button = join_button(factory, events, closing, reset_window_s=0.0)
    button.start()
    pin = factory.pin(JOIN_PIN)
    pin.drive_low()
    event = next_event(events)
    assert isinstance(event, ButtonPressed)
    assert (event.button, event.kind) == ("join", "long_press")
    assert button.is_pressed  # it came before the release
    pin.drive_high()
    assert_quiet(events)


def test_a_press_held_in_the_reset_window_is_a_reset_and_nothing_else(
        factory: MockFactory, events: queue.Queue[object],
        closing: Callable[..., object]) -> None:
    button = join_button(factory, events, closing, reset_window_s=30.0)
    button.start()
    pin = factory.pin(JOIN_PIN)
    pin.drive_low()
    event = next_event(events)  # no long press on the way
    assert isinstance(event, ButtonPressed)
    assert event.kind == "reset_hold"
    assert event.held_s >= TIMING.reset_hold_s
    pin.drive_high()
    assert_quiet(events)


def test_a_button_held_at_start_counts_for_nothing(
        factory: MockFactory, events: queue.Queue[object],
        closing: Callable[..., object]) -> None:
    pin = factory.pin(JOIN_PIN)
    button = join_button(factory, events, closing, reset_window_s=30.0)
    pin.drive_low()  # held (or stuck) while the box starts
    button.start()
    with pytest.raises(queue.Empty):  # longer than a long press
        events.get(timeout=TIMING.long_press_s + 0.1)
    pin.drive_high()
    assert_quiet(events)
    pin.drive_low()  # the next press counts
    time.sleep(0.05)
    pin.drive_high()
    event = next_event(events)
    assert isinstance(event, ButtonPressed) and event.kind == "short_press"


def test_bounce_gives_one_press(factory: MockFactory, events: queue.Queue[object],
                                closing: Callable[..., object]) -> None:
    button = join_button(factory, events, closing)
    button.start()
    pin = factory.pin(JOIN_PIN)
    for level in (0, 1, 0, 1, 0):  # contacts bounce for microseconds
        pin.drive_high() if level else pin.drive_low()
    time.sleep(0.06)
    for level in (1, 0, 1, 0, 1):
        pin.drive_high() if level else pin.drive_low()
    event = next_event(events)
    assert isinstance(event, ButtonPressed) and event.kind == "short_press"
    assert_quiet(events)


def test_a_receiver_that_fails_does_not_end_the_button(
        factory: MockFactory, closing: Callable[..., object]) -> None:
    got: queue.Queue[object] = queue.Queue()
    calls = []

    def post(event: object) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("queue gone")
        got.put(event)

    button = closing(MuteButton(JOIN_PIN, post=post, timing=TIMING, pin_factory=factory))
    assert isinstance(button, MuteButton)
    button.start()
    pin = factory.pin(JOIN_PIN)
    for _ in range(2):
        pin.drive_low()
        time.sleep(0.05)
        pin.drive_high()
        time.sleep(TIMING.debounce_s * 3)
    event = got.get(timeout=3.0)
    assert isinstance(event, ButtonPressed)
    assert (event.button, event.kind) == ("mute", "short_press")
    assert len(calls) == 2


def test_stop_ends_at_once_mid_press_and_frees_the_pin(
        factory: MockFactory, events: queue.Queue[object]) -> None:
    button = JoinButton(JOIN_PIN, post=events.put, timing=TIMING, pin_factory=factory)
    button.start()
    factory.pin(JOIN_PIN).drive_low()
    button.stop()
    assert_quiet(events)
    again = Button(JOIN_PIN, pin_factory=factory)  # the pin is free again
    again.close()


def test_a_button_wired_to_3v3_is_pressed_high(
        factory: MockFactory, events: queue.Queue[object],
        closing: Callable[..., object]) -> None:
    button = join_button(factory, events, closing, pull_up=False)
    button.start()
    pin = factory.pin(JOIN_PIN)
    pin.drive_high()
    time.sleep(0.05)
    pin.drive_low()
    event = next_event(events)
    assert isinstance(event, ButtonPressed) and event.kind == "short_press"


@pytest.mark.parametrize(("pin", "match"), [
    ("GPIO99", "join button on pin 'GPIO99'"),
    ("BOARD1", "join button on pin 'BOARD1'"),  # 3.3 V, not a GPIO
])
def test_a_bad_button_pin_is_a_clear_error(factory: MockFactory, pin: str, match: str) -> None:
    with pytest.raises(PanelError, match=match):
        JoinButton(pin, post=lambda event: None, pin_factory=factory)


def test_a_pin_in_use_is_a_clear_error(factory: MockFactory,
                                       closing: Callable[..., object]) -> None:
    closing(JoinButton(JOIN_PIN, post=lambda event: None, pin_factory=factory))
    with pytest.raises(PanelError, match="mute button on pin 17"):
        MuteButton(JOIN_PIN, post=lambda event: None, pin_factory=factory)


# ---------------------------------------------------------------- pin factories


def test_the_mock_pin_factory_does_pwm() -> None:
    made = pin_factory_for("mock")
    assert isinstance(made, MockFactory) and made.pin_class is MockPWMPin


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio is here")
def test_without_the_pis_gpio_the_error_says_what_to_use() -> None:
    with pytest.raises(PanelError, match="use 'mock' on a development machine"):
        pin_factory_for("lgpio")


def test_an_unknown_pin_factory_is_refused() -> None:
    with pytest.raises(PanelError, match="expected 'lgpio' or 'mock'"):
        pin_factory_for("native")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the status light


def make_light(factory: MockFactory, kind: LightKind, closing: Callable[..., object],
               **kw: object) -> StatusLight:
    pins = RGB_PINS if kind == "rgb" else PLAIN_PINS[kind]
    light = StatusLight(kind, pin_factory=factory, **pins, **kw)  # type: ignore[arg-type]
    closing(light)
    return light


def levels(factory: MockFactory, pin: int) -> list[float]:
    """The pin's history: every level it went through, from the first."""
    return [float(s.state) for s in factory.pin(pin).states]


def wait_for(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the light never got there")
        time.sleep(0.005)


def quick(pattern: Pattern, factor: float = 1 / 50) -> Pattern:
    """The same pattern played faster, so a test sees several cycles in a blink."""

    def scaled(r: Rhythm) -> Rhythm:
        if r.kind == "blink":
            return blink(r.on_s * factor, r.off_s * factor)
        if r.kind == "pulse":
            return pulse(max(0.2, r.fade_s * factor))  # gpiozero fades at 25 steps a second
        return r

    return replace(pattern, rgb=scaled(pattern.rgb), single=scaled(pattern.single),
                   dual_green=scaled(pattern.dual_green), dual_red=scaled(pattern.dual_red))


def expected_history(rhythm: Rhythm, level: float) -> list[float]:
    """The first levels a pin goes through for ``rhythm`` at ``level`` (from dark)."""
    if rhythm.kind == "off" or level == 0:
        return [0.0]
    if rhythm.kind == "steady":
        return [0.0, level]
    if rhythm.kind == "blink":
        return [0.0, level, 0.0, level, 0.0]
    steps = [level * i / 5 for i in range(1, 5)]  # 0.2 s fades at 25 frames a second
    return [0.0, *steps, level, steps[-1]]  # up, and the first step down


def pins_and_rhythms(kind: LightKind, pattern: Pattern) -> list[tuple[int, Rhythm, float]]:
    if kind == "rgb":
        return [(RGB_PINS[c], pattern.rgb, v) for c, v in zip(
            ("red", "green", "blue"), pattern.colour.rgb, strict=True)]
    if kind == "single":
        return [(PLAIN_PINS["single"]["pin"], pattern.single, 1.0)]
    return [(PLAIN_PINS["dual"]["green"], pattern.dual_green, 1.0),
            (PLAIN_PINS["dual"]["red"], pattern.dual_red, 1.0)]


@pytest.mark.parametrize("kind", ["rgb", "single", "dual"])
@pytest.mark.parametrize("state", LIGHT_STATES)
def test_the_pin_history_of_each_state(factory: MockFactory, closing: Callable[..., object],
                                       kind: LightKind, state: LightState) -> None:
    light = make_light(factory, kind, closing)
    pattern = quick(PATTERNS[state])
    light.show(pattern)
    assert light.shown is pattern
    for pin, rhythm, level in pins_and_rhythms(kind, pattern):
        want = expected_history(rhythm, level)
        wait_for(lambda pin=pin, want=want: len(levels(factory, pin)) >= len(want))
        assert levels(factory, pin)[:len(want)] == pytest.approx(want), (pin, rhythm)


@pytest.mark.parametrize(("state", "kind", "history"), [
    # As a clerk would check the real thing: pin by pin, first levels only.
    ("live", "rgb", {5: [0.0], 6: [0.0, 1.0], 13: [0.0]}),
    ("live_muted", "rgb", {5: [0.0, 1.0], 6: [0.0], 13: [0.0]}),
    ("ready", "rgb", {5: [0.0], 6: [0.0], 13: [0.0, 1.0]}),
    ("floor", "rgb", {5: [0.0, 1.0], 6: [0.0, 1.0], 13: [0.0, 1.0]}),
    ("hand_raised", "rgb", {5: [0.0, 1.0], 6: [0.0, 0.6], 13: [0.0]}),
    ("live", "single", {12: [0.0, 1.0]}),
    ("live_muted", "dual", {20: [0.0, 1.0], 21: [0.0, 1.0]}),
    ("live", "dual", {20: [0.0, 1.0], 21: [0.0]}),
    ("error", "dual", {20: [0.0], 21: [0.0, 1.0]}),
])
def test_the_first_levels_of_real_patterns(
        factory: MockFactory, closing: Callable[..., object], state: LightState,
        kind: LightKind, history: dict[int, list[float]]) -> None:
    light = make_light(factory, kind, closing)
    light.show(PATTERNS[state])
    for pin, want in history.items():
        wait_for(lambda pin=pin, want=want: len(levels(factory, pin)) >= len(want))
        assert levels(factory, pin)[:len(want)] == pytest.approx(want)


@pytest.mark.parametrize("kind", ["rgb", "single", "dual"])
def test_a_new_pattern_stops_the_old_rhythm_at_once(
        factory: MockFactory, closing: Callable[..., object], kind: LightKind) -> None:
    light = make_light(factory, kind, closing)
    light.show(quick(PATTERNS["identify"]))
    pins = [pin for pin, _, _ in pins_and_rhythms(kind, PATTERNS["identify"])]
    wait_for(lambda: all(len(levels(factory, pin)) >= 4 for pin in pins))
    light.show(PATTERNS["live"])
    settled = {pin: levels(factory, pin) for pin in pins}
    time.sleep(QUIET_S)  # many cycles of the quick identify pattern
    assert {pin: levels(factory, pin) for pin in pins} == settled


def test_showing_the_same_pattern_again_changes_nothing(
        factory: MockFactory, closing: Callable[..., object]) -> None:
    light = make_light(factory, "rgb", closing)
    light.show(PATTERNS["live"])
    before = {pin: levels(factory, pin) for pin in RGB_PINS.values()}
    light.show(PATTERNS["live"])
    assert {pin: levels(factory, pin) for pin in RGB_PINS.values()} == before


def test_brightness_scales_the_rgb_colours(factory: MockFactory,
                                           closing: Callable[..., object]) -> None:
    light = make_light(factory, "rgb", closing, brightness=0.25)
    light.show(PATTERNS["hand_raised"])
    wait_for(lambda: len(levels(factory, 6)) >= 2)
    assert levels(factory, 5)[1] == pytest.approx(0.25)
    assert levels(factory, 6)[1] == pytest.approx(0.15)


def test_a_common_anode_rgb_led_is_lit_low(factory: MockFactory,
                                           closing: Callable[..., object]) -> None:
    light = make_light(factory, "rgb", closing, active_high=False)
    light.show(PATTERNS["live"])
    assert [float(factory.pin(p).state) for p in (5, 6, 13)] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("kind", ["rgb", "single", "dual"])
def test_close_turns_the_light_off_and_frees_its_pins(factory: MockFactory,
                                                      kind: LightKind) -> None:
    light = StatusLight(kind, pin_factory=factory,
                        **(RGB_PINS if kind == "rgb" else PLAIN_PINS[kind]))  # type: ignore[arg-type]
    light.show(PATTERNS["identify"])
    light.close()
    pins = [pin for pin, _, _ in pins_and_rhythms(kind, PATTERNS["identify"])]
    assert all(float(factory.pin(pin).state) == 0.0 for pin in pins)
    for pin in pins:
        LED(pin, pin_factory=factory).close()  # free again
    light.close()  # twice is harmless


def test_a_light_of_kind_none_drives_nothing(factory: MockFactory) -> None:
    light = StatusLight("none", pin_factory=factory)
    light.show(PATTERNS["live"])
    assert light.shown is PATTERNS["live"]
    assert not factory.pins
    light.close()


@pytest.mark.parametrize(("kind", "pins", "match"), [
    ("rgb", {"red": 5, "green": 6}, "needs pins red, green, blue; missing blue"),
    ("single", {"pin": 12, "red": 5}, "not used: red"),
    ("dual", {"green": 20}, "missing red"),
    ("dual", {"green": 20, "red": 20}, "red LED on pin 20"),
    ("single", {"pin": "GPIO99"}, "pin 'GPIO99'"),
    ("rgb", {"red": 5, "green": 6, "blue": "GPIO99"}, "GPIO99"),
    ("rainbow", {}, "expected 'rgb', 'single', 'dual' or 'none'"),
])
def test_bad_light_pins_are_a_clear_error(factory: MockFactory, kind: str,
                                          pins: dict[str, object], match: str) -> None:
    with pytest.raises(PanelError, match=match):
        StatusLight(kind, pin_factory=factory, **pins)  # type: ignore[arg-type]


def test_a_failed_light_leaves_its_pins_free(factory: MockFactory) -> None:
    with pytest.raises(PanelError):
        StatusLight("dual", green=20, red=20, pin_factory=factory)
    LED(20, pin_factory=factory).close()


def test_an_rgb_light_needs_pwm_pins() -> None:
    plain = MockFactory(pin_class=MockPin)
    with pytest.raises(PanelError, match="cannot do PWM"):
        StatusLight("rgb", pin_factory=plain, **RGB_PINS)  # type: ignore[arg-type]
    plain.reset()


def test_brightness_out_of_range_is_refused(factory: MockFactory) -> None:
    with pytest.raises(PanelError, match="brightness"):
        StatusLight("rgb", brightness=0.0, pin_factory=factory, **RGB_PINS)  # type: ignore[arg-type]
