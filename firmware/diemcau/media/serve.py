"""The media process once its Start is there: one meeting's ``MediaSession``, alone.

:mod:`diemcau.media.child` (the process's entry) waits for the down pipe
with almost nothing imported, then calls :func:`serve`. It reads the
``Start``, runs the session (:mod:`diemcau.media.session`), sends its events
up (:mod:`diemcau.media.pipe`), obeys ``Stop``, ``Mute``, ``Keyframe`` and
``Profile``, and returns once the session has ended. PyAV, FFmpeg and x264
live in this process only, so their memory goes when it does, and a crash
inside them leaves the box's MQTT link up.

    serve(down_fd, up_fd, "info")   # the exit code

Process settings as ``diemcau run`` makes them (:mod:`diemcau.adapters.process`),
before any thread starts; the log goes to the same stderr (the journal),
scrubbed the same way (:mod:`diemcau.adapters.logs`). If the control plane
goes away, the down pipe closes and the session stops.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..adapters.logs import log_to_stderr, scrub_log_handlers
from ..adapters.process import settle
from ..core.events import StreamChanged
from ..core.meeting import StreamRequest
from .pipe import Channel, Down, Keyframe, Mute, PipeClosed, Profile, Start, Stop, to_wire
from .session import MediaSession  # PyAV loads when the session starts

log = logging.getLogger("diemcau.media.process")

POLL_S = 0.2  # how often the main thread looks whether the session has ended by itself
JOIN_S = 10.0


def serve(down_fd: int, up_fd: int, log_level: str = "info") -> int:
    """Read the Start from ``down_fd``, run its session until it has ended; the exit code."""
    log_to_stderr(log_level)
    channel = Channel(down_fd, up_fd)
    try:
        first = channel.receive(Down)
    except PipeClosed:
        return 0  # the control plane went before it said what to publish
    start, pending = first[0], first[1:]
    if not isinstance(start, Start):
        log.error("the media process expected Start first, got %s", type(start).__name__)
        return 2
    scrub_log_handlers(known=(start.media.srt_passphrase,))
    settle()  # before any thread starts, as `diemcau run` does
    return _serve(channel, start, pending)


def _serve(channel: Channel, start: Start, pending: list[Any]) -> int:
    """Run the session until it has ended (stopped, or the pipe closed); the exit code."""
    ended = threading.Event()

    def post(event: object) -> None:
        message = to_wire(event)
        if message is not None:
            channel.send(message)  # False: the control plane has gone; the pipe says so below
        if isinstance(event, StreamChanged) and event.state == "off":
            ended.set()

    request = StreamRequest(start.meeting_id, start.publish_url, start.profile,  # type: ignore[arg-type]
                            start.muted, start.play_url)
    session = MediaSession(start.media, request, post, device_id=start.device_id,
                           echo_canceller=start.echo_canceller, reference=start.reference_socket)
    session.start()
    try:
        while not ended.is_set():
            for message in pending:
                _obey(session, message)
            pending = channel.receive(Down, timeout_s=POLL_S)
    except PipeClosed:
        log.warning("the control plane has gone: stopping the media session")
        session.stop()
    if not session.join(JOIN_S):
        log.error("the media session did not end within %.0f s: exiting anyway", JOIN_S)
        return 1
    return 0


def _obey(session: MediaSession, message: object) -> None:
    match message:
        case Stop():
            session.stop()
        case Mute(muted=muted):
            session.set_muted(muted)
        case Keyframe():
            session.request_keyframe()
        case Profile(profile=profile):
            try:
                session.set_profile(profile)
            except ValueError as exc:
                log.error("media.profile: %s", exc)
        case Start():
            log.warning("a second Start for a media process that has one: ignored")
