"""What the other threads tell the supervisor: small frozen dataclasses.

Adapters never change state themselves; they post one of these to the
supervisor's queue and return at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .button import ButtonName, PressKind

StreamState = Literal["off", "starting", "live", "reconnecting", "error"]


@dataclass(frozen=True, slots=True)
class CommandArrived:
    """A message on one of the box's command topics (not yet verified).

    ``ack``: how to acknowledge it to the broker (the link's token for its
    PUBACK), once the command and its reply are on disk; None for a message
    that needs none (QoS 0, or made up by a test).
    """

    topic: str
    payload: bytes
    ack: Any = None


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
class CameraDetected:
    """``media.camera = "auto"`` resolved: ``picamera2``, ``usb``, ``test_pattern`` or ``none``."""

    backend: str


@dataclass(frozen=True, slots=True)
class StreamFiguresUpdated:
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProgrammeChanged:
    """The meeting's programme on the room's TV and speaker (the screen process) changed state."""

    state: StreamState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ProgrammeFiguresUpdated:
    """The player's figures; keys as in the protocol's ``ProgrammeFigures``."""

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


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    """A classified press of one of the panel's buttons; ``held_s`` in seconds."""

    button: ButtonName
    kind: PressKind
    held_s: float


@dataclass(frozen=True, slots=True)
class Tick:
    """The schedule timer: time to look at the clock (invitations, identify)."""


@dataclass(frozen=True, slots=True)
class PromptSpoken:
    """The voice finished (or gave up on) the prompt ``key``."""

    key: str


class EnrollmentStopped(Exception):
    """A stop signal came while the box was still enrolling."""


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """From the renewal thread: the certificate in use (Unix times) and the last failure."""

    not_before: float
    not_after: float
    last_error: str = ""
    renewed: bool = False  # a new certificate is on disk: use it for the next connection


@dataclass(frozen=True, slots=True)
class UpdateProgress:
    """The update's worker got further (downloaded so much, verifying, installing)."""

    command_id: str
    detail: str


@dataclass(frozen=True, slots=True)
class UpdateInstalled:
    """The new release is downloaded, verified and installed beside the running one."""

    command_id: str
    version: str


@dataclass(frozen=True, slots=True)
class UpdateFailed:
    """The update stopped before anything the service runs was changed."""

    command_id: str
    code: int
    detail: str
