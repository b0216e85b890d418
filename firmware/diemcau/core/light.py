"""What the status light shows: one pattern per state of the box, as pure data.

The supervisor describes what decides the light in a :class:`LightView` and
hands ``light_for(view)`` to the status light adapter; the light is never set
any other way, so it always shows the true state. One table serves the three
kinds of hardware: an RGB LED on PWM pins (a colour and a rhythm), one plain
LED, and two plain LEDs (green and red), each with rhythms gpiozero's own
``blink`` and ``pulse`` can play. ``docs/room-controls.md`` prints the table.

When several things hold at once, the first in :data:`PRIORITY` shows:

    >>> light_for(LightView(phase="ready", meeting="live", muted=True)).state
    'live_muted'
    >>> light_for(LightView(phase="ready", meeting="live", muted=True, identify=True)).state
    'identify'
    >>> light_for(LightView(phase="ready", meeting="invited")).rgb.describe()
    'blinks 0.5 s on, 0.5 s off'
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol, get_args

from .meeting import MeetingState, Room

Phase = Literal["starting", "no_network", "connecting", "ready"]
LightState = Literal[
    "starting", "no_network", "connecting", "ready", "invited", "joining", "live",
    "live_muted", "hand_raised", "floor", "leaving", "error", "updating", "identify",
    "resetting",
]
LIGHT_STATES: tuple[LightState, ...] = get_args(LightState)
RhythmKind = Literal["off", "steady", "blink", "pulse"]


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Rhythm:
    """How one light changes over time, in seconds.

    ``blink``: ``on_s`` on, ``off_s`` off, again and again. ``pulse``: fades in
    over ``fade_s`` and out over ``fade_s`` (PWM only). Make them with
    :data:`OFF`, :data:`STEADY`, :func:`blink` and :func:`pulse`.
    """

    kind: RhythmKind
    on_s: float = 0.0
    off_s: float = 0.0
    fade_s: float = 0.0

    def __post_init__(self) -> None:
        times = (self.on_s, self.off_s, self.fade_s)
        if not all(math.isfinite(x) and x >= 0 for x in times):
            raise ValueError(f"rhythm times must be finite and >= 0: {times}")
        if self.kind == "blink":
            fits = self.on_s > 0 and self.off_s > 0 and self.fade_s == 0
        elif self.kind == "pulse":
            fits = self.fade_s > 0 and self.on_s == self.off_s == 0
        else:
            fits = self.on_s == self.off_s == self.fade_s == 0
        if not fits:
            raise ValueError(f"a {self.kind} rhythm cannot have times {times}")

    @property
    def period_s(self) -> float:
        """One cycle, in seconds; 0 for a light that does not change."""
        return self.on_s + self.off_s + 2 * self.fade_s

    def describe(self, lang: Literal["en", "vi"] = "en") -> str:
        """The rhythm in words, for the printed tables.

        >>> blink(0.1, 1.9).describe("vi")
        'nháy: sáng 0,1 giây, tắt 1,9 giây'
        """
        on, off, fade = (_seconds(x, lang) for x in (self.on_s, self.off_s, self.fade_s))
        if lang == "vi":
            return {"off": "tắt", "steady": "sáng liên tục",
                    "blink": f"nháy: sáng {on}, tắt {off}",
                    "pulse": f"sáng dần rồi tối dần, mỗi chiều {fade}"}[self.kind]
        return {"off": "off", "steady": "steady",
                "blink": f"blinks {on} on, {off} off",
                "pulse": f"pulses: fades in {fade}, out {fade}"}[self.kind]


OFF = Rhythm("off")
STEADY = Rhythm("steady")


def blink(on_s: float, off_s: float) -> Rhythm:
    """On for ``on_s``, off for ``off_s``, repeated."""
    return Rhythm("blink", on_s=on_s, off_s=off_s)


def pulse(fade_s: float) -> Rhythm:
    """Fades in over ``fade_s`` and out over ``fade_s``, repeated (PWM only)."""
    return Rhythm("pulse", fade_s=fade_s)


def _seconds(value: float, lang: str) -> str:
    text = f"{value:g}"
    return f"{text.replace('.', ',')} giây" if lang == "vi" else f"{text} s"


@dataclass(frozen=True, slots=True)
class Colour:
    """An RGB LED colour, each channel 0-1, with its name for people."""

    name: str
    name_vi: str
    red: float
    green: float
    blue: float

    @property
    def rgb(self) -> tuple[float, float, float]:
        return (self.red, self.green, self.blue)


WHITE = Colour("white", "trắng", 1.0, 1.0, 1.0)
RED = Colour("red", "đỏ", 1.0, 0.0, 0.0)
GREEN = Colour("green", "xanh lá", 0.0, 1.0, 0.0)
BLUE = Colour("blue", "xanh dương", 0.0, 0.0, 1.0)
# Full red and green look greenish on most RGB LEDs: less green reads as yellow.
YELLOW = Colour("yellow", "vàng", 1.0, 0.6, 0.0)
MAGENTA = Colour("magenta", "tím", 1.0, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Pattern:
    """What the light does in one state, for each kind of light.

    ``rgb`` is the RGB LED's rhythm in ``colour``; ``single`` is one plain
    LED; ``dual_green`` and ``dual_red`` are the two LEDs of a two-LED panel.
    Plain LEDs cannot fade, so their rhythms never pulse.
    """

    state: LightState
    colour: Colour
    rgb: Rhythm
    single: Rhythm
    dual_green: Rhythm
    dual_red: Rhythm

    def __post_init__(self) -> None:
        for name in ("single", "dual_green", "dual_red"):
            if getattr(self, name).kind == "pulse":
                raise ValueError(f"{self.state}: a plain LED cannot pulse ({name})")

    def describe_rgb(self, lang: Literal["en", "vi"] = "en") -> str:
        """The RGB LED in words: ``'green, steady'``."""
        name = self.colour.name_vi if lang == "vi" else self.colour.name
        return f"{name}, {self.rgb.describe(lang)}"


# ---------------------------------------------------------------- the table

# Colour says what, rhythm says how urgent: steady is settled, a slow rhythm
# waits, an even blink asks for the button, a fast one is a transition or a
# fault. Red steady means "microphone off", as on conference phones.
_HEARTBEAT = blink(0.1, 1.9)  # a short flash every 2 s: alive and idle
_WINK = blink(1.8, 0.2)  # on, with a short gap every 2 s
_SLOW = blink(1.0, 1.0)
_EVEN = blink(0.5, 0.5)
_FAST = blink(0.15, 0.15)
_FLICKER = blink(0.05, 0.05)


def _p(state: LightState, colour: Colour, rgb: Rhythm, single: Rhythm,
       green: Rhythm, red: Rhythm) -> tuple[LightState, Pattern]:
    return state, Pattern(state, colour, rgb, single, green, red)


PATTERNS: Mapping[LightState, Pattern] = MappingProxyType(dict([
    #   state          colour   RGB LED             one LED     two LEDs: green, red
    _p("starting",    WHITE,   pulse(1.0),         _SLOW,      _SLOW,      _SLOW),
    _p("no_network",  RED,     _SLOW,              _FAST,      OFF,        _SLOW),
    _p("connecting",  BLUE,    _EVEN,              _SLOW,      _SLOW,      OFF),
    _p("ready",       BLUE,    STEADY,             _HEARTBEAT, _HEARTBEAT, OFF),
    _p("invited",     GREEN,   _EVEN,              _EVEN,      _EVEN,      OFF),
    _p("joining",     GREEN,   _FAST,              _FLICKER,   _FAST,      OFF),
    _p("live",        GREEN,   STEADY,             STEADY,     STEADY,     OFF),
    _p("live_muted",  RED,     STEADY,             _WINK,      STEADY,     STEADY),
    _p("hand_raised", YELLOW,  _EVEN,              _EVEN,      STEADY,     _EVEN),
    _p("floor",       WHITE,   STEADY,             STEADY,     STEADY,     OFF),
    _p("leaving",     BLUE,    _FAST,              _FLICKER,   _FAST,      OFF),
    _p("error",       RED,     _FAST,              _FAST,      OFF,        _FAST),
    _p("updating",    MAGENTA, pulse(1.0),         _SLOW,      _EVEN,      _EVEN),
    _p("identify",    WHITE,   blink(0.1, 0.1),    _FLICKER,   _FLICKER,   _FLICKER),
    _p("resetting",   MAGENTA, blink(0.1, 0.1),    _FLICKER,   OFF,        _FLICKER),
]))

# What each state means, for the printed sheet (and later the TV's idle screen).
LABELS: Mapping[LightState, tuple[str, str]] = MappingProxyType({
    "starting": ("starting", "đang khởi động"),
    "no_network": ("no network", "mất kết nối mạng"),
    "connecting": ("connecting to the centre", "đang kết nối trung tâm"),
    "ready": ("ready", "sẵn sàng"),
    "invited": ("invited: press to join", "có cuộc họp, nhấn nút để tham gia"),
    "joining": ("joining", "đang vào cuộc họp"),
    "live": ("in the meeting, microphone on", "đang họp, micro bật"),
    "live_muted": ("in the meeting, microphone off", "đang họp, micro tắt"),
    "hand_raised": ("hand raised", "đã giơ tay phát biểu"),
    "floor": ("floor granted: speak", "được phát biểu"),
    "leaving": ("leaving", "đang rời cuộc họp"),
    "error": ("error: call the technician", "có lỗi, báo kỹ thuật viên"),
    "updating": ("updating: do not unplug", "đang cập nhật, không rút điện"),
    "identify": ("identify: this is the box", "nhận diện thiết bị"),
    "resetting": ("factory reset", "đang khôi phục cài đặt gốc"),
})

# Highest first: what shows when several states hold at once.
PRIORITY: tuple[LightState, ...] = (
    "resetting",  # local and destructive: the confirmation asked before erasing
    "identify",  # a technician is looking for this box right now
    "updating",  # do not unplug
    "error",
    "joining", "leaving", "floor", "hand_raised", "live_muted", "live",
    "starting", "no_network", "connecting",
    "invited", "ready",
)


# ---------------------------------------------------------------- the view


@dataclass(frozen=True, slots=True)
class LightView:
    """Everything that decides the light, and nothing else.

    ``phase`` is the box's connection: ``no_network`` (no address beyond
    the cable, see :func:`offline_phase`), ``connecting`` (network up, broker
    not yet), ``ready`` (connected to the centre). ``error`` is a fault the room must report (the meeting state
    ``error`` counts too); ``resetting`` a confirmed factory reset.
    """

    phase: Phase = "starting"
    meeting: MeetingState = "idle"
    muted: bool = False
    hand_raised: bool = False
    floor: bool = False
    identify: bool = False
    updating: bool = False
    error: bool = False
    resetting: bool = False

    @classmethod
    def from_room(cls, room: Room, phase: Phase, *, hand_raised: bool = False,
                  identify: bool = False, updating: bool = False, error: bool = False,
                  resetting: bool = False) -> LightView:
        """The view of the supervisor's :class:`~diemcau.core.meeting.Room` and flags."""
        return cls(phase=phase, meeting=room.state, muted=room.muted, floor=room.floor,
                   hand_raised=hand_raised, identify=identify, updating=updating,
                   error=error, resetting=resetting)


class Interface(Protocol):
    """A network interface as a health reading gives it (``adapters.health.NetInterface``)."""

    @property
    def up(self) -> bool: ...
    @property
    def addresses(self) -> Sequence[str]: ...


def offline_phase(interfaces: Iterable[Interface]) -> Phase:
    """The phase while the broker is not reached, from the interfaces of a health reading.

    ``connecting`` when some interface is up with an address beyond its own
    link (the network is there, the centre is not answering yet);
    ``no_network`` otherwise. Link-local addresses (``fe80::/10``,
    ``169.254.0.0/16``) do not count: every interface that is up has one,
    whether a DHCP server answered or not. An address that cannot be read
    counts, so that the light never blames a network it cannot judge.

        >>> from types import SimpleNamespace as If
        >>> offline_phase([If(up=True, addresses=["fe80::1/64"])])
        'no_network'
        >>> offline_phase([If(up=True, addresses=["fe80::1/64", "192.0.2.7/24"])])
        'connecting'
        >>> offline_phase([If(up=False, addresses=["192.0.2.7/24"])])
        'no_network'
    """
    for interface in interfaces:
        if interface.up and any(_routable(address) for address in interface.addresses):
            return "connecting"
    return "no_network"


def _routable(address: str) -> bool:
    try:
        ip = ipaddress.ip_interface(address).ip
    except ValueError:
        return True
    return not (ip.is_link_local or ip.is_loopback)


def holding(view: LightView) -> frozenset[LightState]:
    """Every light state that holds for ``view``; :func:`light_state` picks one."""
    live = view.meeting == "live"
    flags: dict[LightState, bool] = {
        "resetting": view.resetting,
        "identify": view.identify,
        "updating": view.updating,
        "error": view.error or view.meeting == "error",
        "joining": view.meeting == "joining",
        "leaving": view.meeting == "leaving",
        # Only an open microphone is the floor: a floor muted again shows as muted.
        "floor": live and view.floor and not view.muted,
        "hand_raised": live and view.hand_raised,
        "live_muted": live and view.muted,
        "live": live,
        "invited": view.meeting == "invited",
    }
    # "ready" is a phase too, so something always holds.
    return frozenset({view.phase, *(state for state, on in flags.items() if on)})


def light_state(view: LightView) -> LightState:
    """The one state the light shows for ``view``: the highest in :data:`PRIORITY`."""
    held = holding(view)
    return next(state for state in PRIORITY if state in held)


def light_for(view: LightView) -> Pattern:
    """The pattern the status light shows for ``view``."""
    return PATTERNS[light_state(view)]
