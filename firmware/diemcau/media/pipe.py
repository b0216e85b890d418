"""The pipe between the box's processes: small typed messages, one module for both ends.

The control plane (``diemcau run``) starts a media process for a meeting
(:mod:`diemcau.media.process`, :mod:`diemcau.media.child`)
and talks to it over two pipes, one each way. Each message is a msgspec
struct, tagged with its class name, MessagePack-encoded, and framed by its
length (4 bytes, big-endian):

    down (parent → child): Start, Stop, Mute, Keyframe, Profile
    up   (child → parent): Changed, Figures, Stepped

The screen process (:mod:`diemcau.media.screen`, :mod:`diemcau.media.screen_child`),
owner of the TV and the speaker, has its own pair:

    down: Setup, Show, Play, StopPlay, Volume, Prompt, Stop
    up:   Programme, PlayFigures

The up messages are the media session's events
(:mod:`diemcau.core.events`) as they cross the pipe: :func:`to_wire` and
:func:`from_wire` turn one into the other.

    >>> end = Channel(*os.pipe())  # both ends of one pipe, to show the round trip
    >>> end.send(Mute(muted=True))
    True
    >>> end.receive(Down)
    [Mute(muted=True)]
    >>> end.close()
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
from typing import Any, Literal

import msgspec

from ..config import Media, Screen
from ..core.events import (
    MediaStepped,
    ProgrammeChanged,
    ProgrammeFiguresUpdated,
    StreamChanged,
    StreamFiguresUpdated,
)

MAX_MESSAGE = 1 << 20  # a message is a few hundred bytes; anything near this is a broken pipe
_LENGTH = struct.Struct(">I")


class Start(msgspec.Struct, tag=True, frozen=True):
    """The meeting to publish: the whole ``[media]`` configuration and the stream request."""

    media: Media
    device_id: str
    meeting_id: str
    publish_url: str
    profile: str
    muted: bool
    play_url: str | None = None
    echo_canceller: str = "none"  # speex, webrtc or none: see media.session.MediaSession
    reference_socket: str = ""


class Stop(msgspec.Struct, tag=True, frozen=True):
    """End the session; the child exits once its threads have."""


class Mute(msgspec.Struct, tag=True, frozen=True):
    muted: bool


class Keyframe(msgspec.Struct, tag=True, frozen=True):
    """Make the next picture an IDR."""


class Profile(msgspec.Struct, tag=True, frozen=True):
    profile: str


class Changed(msgspec.Struct, tag=True, frozen=True):
    """StreamChanged."""

    state: Literal["off", "starting", "live", "reconnecting", "error"]
    detail: str = ""
    fatal: bool = False


class Figures(msgspec.Struct, tag=True, frozen=True):
    """StreamFiguresUpdated: keys as in the protocol's ``StreamFigures``."""

    figures: dict[str, Any]


class Stepped(msgspec.Struct, tag=True, frozen=True):
    """MediaStepped."""

    profile: str
    kbps: int
    direction: Literal["down", "up"]
    reason: str


Down = Start | Stop | Mute | Keyframe | Profile
Up = Changed | Figures | Stepped


class Setup(msgspec.Struct, tag=True, frozen=True):
    """The screen process's first message: the ``[screen]`` section, and where to send what the
    speaker plays for the microphone's echo canceller ("": nowhere)."""

    screen: Screen
    reference_socket: str = ""


class Show(msgspec.Struct, tag=True, frozen=True):
    """The idle screen: a ``core.idlescreen.IdleScreen`` as plain data (None: a plain screen)."""

    view: dict[str, Any] | None = None


class Play(msgspec.Struct, tag=True, frozen=True):
    """The programme feed full screen (the meeting's ``play`` URL)."""

    meeting_id: str
    url: str


class StopPlay(msgspec.Struct, tag=True, frozen=True):
    """Back to the idle screen; a Programme "off" follows once the feed is closed."""


class Volume(msgspec.Struct, tag=True, frozen=True):
    percent: int


class Prompt(msgspec.Struct, tag=True, frozen=True):
    """S16_LE PCM for the speaker, mixed over the programme (which it ducks).

    A long prompt comes as several messages, played one after the other.
    """

    samples: bytes
    rate_hz: int
    channels: int


class Programme(msgspec.Struct, tag=True, frozen=True):
    """ProgrammeChanged."""

    state: Literal["off", "starting", "live", "reconnecting", "error"]
    detail: str = ""


class PlayFigures(msgspec.Struct, tag=True, frozen=True):
    """ProgrammeFiguresUpdated."""

    figures: dict[str, Any]


ScreenDown = Setup | Show | Play | StopPlay | Volume | Prompt | Stop
ScreenUp = Programme | PlayFigures

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """One framed message: its length, then its MessagePack."""
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


def to_wire(event: object) -> Up | ScreenUp | None:
    """A media session's event as it goes up the pipe (None: not one that crosses)."""
    match event:
        case StreamChanged(state=state, detail=detail, fatal=fatal):
            return Changed(state, detail, fatal)
        case StreamFiguresUpdated(figures=figures):
            return Figures(figures)
        case MediaStepped(profile=profile, kbps=kbps, direction=direction, reason=reason):
            return Stepped(profile, kbps, direction, reason)
        case ProgrammeChanged(state=state, detail=detail):
            return Programme(state, detail)
        case ProgrammeFiguresUpdated(figures=figures):
            return PlayFigures(figures)
    return None


def from_wire(message: Up | ScreenUp) -> object:
    """The event the supervisor gets for a message that came up the pipe."""
    match message:
        case Changed(state=state, detail=detail, fatal=fatal):
            return StreamChanged(state, detail, fatal)
        case Figures(figures=figures):
            return StreamFiguresUpdated(figures)
        case Stepped(profile=profile, kbps=kbps, direction=direction, reason=reason):
            return MediaStepped(profile, kbps, direction, reason)
        case Programme(state=state, detail=detail):
            return ProgrammeChanged(state, detail)
        case PlayFigures(figures=figures):
            return ProgrammeFiguresUpdated(figures)
    raise TypeError(f"not an up message: {message!r}")


class PipeClosed(Exception):
    """The other end has gone (EOF), or sent something that is not a message."""


class Channel:
    """One end of the pair of pipes: ``send`` on one fd, ``receive`` on the other.

    ``send`` may be called from any thread (one lock); ``receive`` from one.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._lock = threading.Lock()
        self._buffer = bytearray()

    def send(self, message: msgspec.Struct) -> bool:
        """Write one message; False if the other end has gone."""
        data = memoryview(encode(message))
        with self._lock:
            try:
                while data:
                    data = data[os.write(self.write_fd, data):]
            except OSError:  # EPIPE, EBADF: the other process ended
                return False
        return True

    def receive(self, kind: Any, timeout_s: float | None = None) -> list[Any]:
        """The whole messages that arrived within ``timeout_s`` (None: wait for one).

        ``kind``: :data:`Down`, :data:`Up`, :data:`ScreenDown` or :data:`ScreenUp`. Raises PipeClosed at EOF.
        """
        while True:
            messages = self._messages(kind)
            if messages:
                return messages
            ready, _, _ = select.select([self.read_fd], [], [], timeout_s)
            if not ready:
                return []
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                raise PipeClosed("the other end closed the pipe")
            self._buffer += chunk

    def _messages(self, kind: Any) -> list[Any]:
        found = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                raise PipeClosed(f"a message of {size} bytes: not from a media process")
            if len(self._buffer) < _LENGTH.size + size:
                break
            body = bytes(self._buffer[_LENGTH.size:_LENGTH.size + size])
            del self._buffer[:_LENGTH.size + size]
            try:
                found.append(msgspec.msgpack.decode(body, type=kind))
            except msgspec.DecodeError as exc:
                raise PipeClosed(f"an unreadable message: {exc}") from exc
        return found

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
