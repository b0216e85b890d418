"""What the other threads tell the supervisor: small frozen dataclasses.

Adapters never change state themselves; they post one of these to the
supervisor's queue and return at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StreamState = Literal["off", "starting", "live", "reconnecting", "error"]


@dataclass(frozen=True, slots=True)
class CommandArrived:
    """A message on one of the box's command topics (not yet verified)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LinkUp:
    session: int
    session_present: bool


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """The broker acknowledged a QoS 1 publish (paho's message id)."""

    mid: int


@dataclass(frozen=True, slots=True)
class OwnStateSeen:
    """The retained ``state`` of this very box, as the broker holds it."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamChanged:
    """The media path changed state. ``fatal`` errors are not retried."""

    state: StreamState
    detail: str = ""
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class StreamFiguresUpdated:
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MediaStepped:
    """Adaptive bitrate moved the stream to another profile or bitrate (kb/s; 0 for audio)."""

    profile: str
    kbps: int
    direction: Literal["down", "up"]
    reason: str


@dataclass(frozen=True, slots=True)
class HealthDue:
    """Time to measure and publish health."""


@dataclass(frozen=True, slots=True)
class StopRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class FromMedia:
    """An event from one media session; ``generation`` tells a stale session's apart."""

    generation: int
    event: object
