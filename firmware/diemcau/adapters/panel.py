"""The room's panel on gpiozero: the join button, an optional mute button, the status light.

The box's hardware edge, and its only user interface besides the voice.

- A button turns raw edges into presses with :mod:`diemcau.core.button` (the
  debounce included) and posts a :class:`ButtonPressed` through ``post``. Its
  gpiozero callback only stamps the edge and queues it; one small thread per
  button classifies, waking at the next deadline, never polling. Nothing here
  blocks the caller or changes the box's state.
- The status light shows only a :class:`~diemcau.core.light.Pattern` the
  supervisor gives it, with gpiozero's own ``blink`` and ``pulse``, whose
  background threads stop at once when the pattern changes.

gpiozero is imported when a device is made. The pin factory is passed in,
never read from gpiozero's environment variable: :func:`pin_factory_for`
makes the Pi's (lgpio) or, on a development machine, gpiozero's MockFactory.

    >>> from diemcau.core.light import PATTERNS
    >>> factory = pin_factory_for("mock")
    >>> light = StatusLight("rgb", red=5, green=6, blue=13, pin_factory=factory)
    >>> light.show(PATTERNS["live_muted"])
    >>> [float(factory.pin(n).state) for n in (5, 6, 13)]
    [1.0, 0.0, 0.0]
    >>> light.close()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ..core.button import ButtonName, ButtonState, PressTiming
from ..core.events import ButtonPressed
from ..core.light import Colour, Pattern, Rhythm

if TYPE_CHECKING:
    from gpiozero import LED, RGBLED, Button, Factory

log = logging.getLogger("diemcau.panel")

LightKind = Literal["rgb", "single", "dual", "none"]
PinName = int | str  # a BCM number (17) or a gpiozero pin name ("GPIO17", "BOARD11")


class PanelError(Exception):
    """A button or light cannot be set up: a bad pin, a pin in use, no GPIO here."""


# ---------------------------------------------------------------- pin factory


def pin_factory_for(gpio: Literal["lgpio", "mock"]) -> Factory:
    """The gpiozero pin factory the configuration names.

    ``lgpio`` drives the Pi's GPIO (Raspberry Pi OS and Debian ship it as
    python3-lgpio); ``mock`` is gpiozero's MockFactory with PWM-capable pins,
    so an RGB light works on a development machine too.
    """
    if gpio == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    if gpio == "lgpio":
        try:
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        except Exception as exc:  # noqa: BLE001 - ImportError off a Pi, OSError without gpiochip
            raise PanelError(f"gpio 'lgpio': cannot open the Pi's GPIO ({exc}); it needs a "
                             "Raspberry Pi with python3-lgpio (use 'mock' on a development "
                             "machine)") from None
    raise PanelError(f"gpio {gpio!r}: expected 'lgpio' or 'mock'")


def _device(what: str, make: Callable[[], Any]) -> Any:
    """Make a gpiozero device; its errors become a PanelError that says which one."""
    from gpiozero.exc import GPIOZeroError

    try:
        return make()
    except (GPIOZeroError, ValueError) as exc:  # an unknown pin name is both
        raise PanelError(f"{what}: {exc}") from None


# ---------------------------------------------------------------- buttons


class PanelButton:
    """One push button: raw edges in, :class:`ButtonPressed` events out through ``post``.

    ``pin``: a BCM number or gpiozero pin name; ``pull_up``: the button
    connects the pin to ground (True) or to 3.3 V (False). ``timing`` tells
    presses apart (:class:`~diemcau.core.button.PressTiming`); a press that
    begins within ``reset_window_s`` of :meth:`start` may become a
    ``reset_hold``. ``bounce_time_s`` is gpiozero's own edge filter, off by
    default: the core debounces, and gpiozero's software filter can lose a
    release. ``clock`` is monotonic seconds.

    Call :meth:`start` to begin reporting and :meth:`stop` to end.
    """

    def __init__(self, pin: PinName, *, post: Callable[[object], None],
                 name: ButtonName = "join", timing: PressTiming | None = None,
                 reset_window_s: float = 0.0, pull_up: bool = True,
                 bounce_time_s: float | None = None, pin_factory: Factory | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from gpiozero import Button

        self.name: ButtonName = name
        self._post = post
        self._timing = timing or PressTiming()
        self._reset_window_s = reset_window_s
        self._clock = clock
        # Holds are timed by the core. gpiozero's own hold thread waits out hold_time
        # before it sees close(): kept short, stop() never waits a second on a held button.
        self._button: Button = _device(
            f"{name} button on pin {pin!r}",
            lambda: Button(pin, pull_up=pull_up, bounce_time=bounce_time_s, hold_time=0.05,
                           pin_factory=pin_factory))
        self._edges: queue.SimpleQueue[tuple[bool, float] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def is_pressed(self) -> bool:
        """The raw level of the pin: pressed now (not debounced)."""
        return bool(self._button.is_pressed)

    def start(self) -> None:
        """Begin reporting presses. A press already held now counts for nothing."""
        if self._thread is not None:
            return
        # Hooked before the level is read, so that no edge falls between the two.
        self._button.when_pressed = self._on_pressed
        self._button.when_released = self._on_released
        state = ButtonState.start(self._timing, self._clock(), pressed=self.is_pressed,
                                  reset_window_s=self._reset_window_s)
        self._thread = threading.Thread(target=self._run, args=(state,),
                                        name=f"{self.name}-button", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting and release the pin; returns at once (the thread only waits)."""
        if self._thread is not None:
            self._button.when_pressed = None
            self._button.when_released = None
            self._edges.put(None)
            self._thread.join(timeout=2.0)
            self._thread = None
        self._button.close()

    # gpiozero calls these from its own thread: stamp, queue, return.
    def _on_pressed(self) -> None:
        self._edges.put((True, self._clock()))

    def _on_released(self) -> None:
        self._edges.put((False, self._clock()))

    def _run(self, state: ButtonState) -> None:
        while True:
            deadline = state.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                item = self._edges.get(timeout=timeout)
            except queue.Empty:
                state, actions = state.tick(self._clock())
            else:
                if item is None:
                    return
                state, actions = state.edge(*item)
            for action in actions:
                self._send(ButtonPressed(self.name, action.kind, round(action.held_s, 3)))

    def _send(self, event: ButtonPressed) -> None:
        log.info("%s button: %s after %.2f s", event.button, event.kind, event.held_s)
        try:
            self._post(event)
        except Exception:  # noqa: BLE001 - a failing receiver must not end the button
            log.exception("could not post %r", event)


class JoinButton(PanelButton):
    """The box's one button: join, raise a hand, leave; held at start, factory reset.

    Presses that begin within ``reset_window_s`` (default a minute) of
    :meth:`start` may become a ``reset_hold``.
    """

    def __init__(self, pin: PinName, *, post: Callable[[object], None],
                 reset_window_s: float = 60.0, **kw: Any) -> None:
        super().__init__(pin, post=post, name="join", reset_window_s=reset_window_s, **kw)


class MuteButton(PanelButton):
    """The optional second button: mute and unmute. It never resets the box."""

    def __init__(self, pin: PinName, *, post: Callable[[object], None], **kw: Any) -> None:
        super().__init__(pin, post=post, name="mute", reset_window_s=0.0, **kw)


# ---------------------------------------------------------------- the light


class StatusLight:
    """The status light: an RGB LED on PWM pins, one plain LED, or two (green and red).

    ``kind`` picks the hardware and which pins are needed: ``rgb`` needs
    ``red``, ``green`` and ``blue``; ``single`` needs ``pin``; ``dual`` needs
    ``green`` and ``red``; ``none`` drives nothing. ``active_high=False`` is
    for LEDs wired to 3.3 V (a common-anode RGB LED). ``brightness`` (0-1)
    scales the RGB LED's colours.

    Only :meth:`show` changes it, with a pattern from the supervisor.
    """

    def __init__(self, kind: LightKind, *, red: PinName | None = None,
                 green: PinName | None = None, blue: PinName | None = None,
                 pin: PinName | None = None, active_high: bool = True,
                 brightness: float = 1.0, pin_factory: Factory | None = None) -> None:
        if not 0.0 < brightness <= 1.0:
            raise PanelError(f"light brightness {brightness}: must be more than 0 and at most 1")
        self.kind: LightKind = kind
        self._brightness = brightness
        self._shown: Pattern | None = None
        self._rgb: RGBLED | None = None
        self._leds: dict[str, LED] = {}
        pins = {"red": red, "green": green, "blue": blue, "pin": pin}
        needed = {"rgb": ("red", "green", "blue"), "single": ("pin",),
                  "dual": ("green", "red"), "none": ()}.get(kind)
        if needed is None:
            raise PanelError(f"light kind {kind!r}: expected 'rgb', 'single', 'dual' or 'none'")
        missing = [name for name in needed if pins[name] is None]
        unused = [name for name, value in pins.items() if value is not None and name not in needed]
        if missing or unused:
            raise PanelError(f"a {kind} light needs pins {', '.join(needed) or 'none'}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; not used: {', '.join(unused)}" if unused else ""))
        if kind == "rgb":
            self._rgb = self._make_rgb(red, green, blue, active_high, pin_factory)
        elif kind in ("single", "dual"):
            from gpiozero import LED

            try:
                for name in needed:
                    self._leds[name] = _device(
                        f"{kind} light's {name} LED on pin {pins[name]!r}",
                        lambda p=pins[name]: LED(p, active_high=active_high,
                                                 pin_factory=pin_factory))
            except PanelError:
                self.close()
                raise

    @staticmethod
    def _make_rgb(red: PinName | None, green: PinName | None, blue: PinName | None,
                  active_high: bool, pin_factory: Factory | None) -> RGBLED:
        from gpiozero import RGBLED
        from gpiozero.exc import GPIOZeroError, PinPWMError

        what = f"RGB light on pins {red!r}, {green!r}, {blue!r}"
        try:
            return RGBLED(red, green, blue, active_high=active_high, pwm=True,
                          pin_factory=pin_factory)
        except PinPWMError as exc:
            raise PanelError(f"{what}: these pins cannot do PWM, which an RGB light needs "
                             f"({exc or type(exc).__name__})") from None
        except (GPIOZeroError, ValueError) as exc:
            raise PanelError(f"{what}: {exc}") from None

    @property
    def shown(self) -> Pattern | None:
        """The pattern on the light now; None before the first :meth:`show`."""
        return self._shown

    def show(self, pattern: Pattern) -> None:
        """Show ``pattern``; the one already shown is left running, not restarted.

        A failing light is logged, never raised: it must not stop the box.
        """
        if pattern == self._shown:
            return
        from gpiozero.exc import GPIOZeroError

        try:
            if self._rgb is not None:
                self._show_rgb(self._rgb, pattern.colour, pattern.rgb)
            elif self.kind == "single":
                _play(self._leds["pin"], pattern.single)
            elif self.kind == "dual":
                _play(self._leds["green"], pattern.dual_green)
                _play(self._leds["red"], pattern.dual_red)
        except GPIOZeroError:
            log.exception("status light: could not show %s", pattern.state)
            self._shown = None
            return
        self._shown = pattern

    def _show_rgb(self, rgb: RGBLED, colour: Colour, rhythm: Rhythm) -> None:
        on = tuple(channel * self._brightness for channel in colour.rgb)
        match rhythm.kind:
            case "off":
                rgb.off()
            case "steady":
                rgb.value = on
            case "blink":
                rgb.blink(on_time=rhythm.on_s, off_time=rhythm.off_s, on_color=on)
            case "pulse":
                rgb.pulse(fade_in_time=rhythm.fade_s, fade_out_time=rhythm.fade_s, on_color=on)

    def close(self) -> None:
        """Stop any blinking, turn the light off and release its pins."""
        devices: list[Any] = [self._rgb, *self._leds.values()]
        for device in devices:
            if device is not None:
                device.off()  # stops its blink thread; closing alone leaves the pin as it was
                device.close()
        self._rgb = None
        self._leds = {}
        self._shown = None


def _play(led: LED, rhythm: Rhythm) -> None:
    match rhythm.kind:
        case "off":
            led.off()
        case "steady":
            led.on()
        case "blink":
            led.blink(on_time=rhythm.on_s, off_time=rhythm.off_s)
        case "pulse":  # Pattern forbids it; a plain LED cannot fade
            raise ValueError("a plain LED cannot pulse")
