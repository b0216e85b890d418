"""The media process: one meeting's :class:`~diemcau.adapters.media.MediaSession`, alone.

    python -m diemcau.media.child --down-fd R --up-fd W [--log-level debug]

Started by :class:`~diemcau.media.process.MediaProcess` in the box's
control plane, never by hand. It reads a ``Start`` from the down pipe, runs
the session, sends its events up (:mod:`diemcau.media.pipe`), obeys
``Stop``, ``Mute``, ``Keyframe`` and ``Profile``, and exits once the session
has ended. PyAV, FFmpeg and x264 live in this process only, so their memory
goes when it does, and a crash inside them leaves the box's MQTT link up.

Process settings as ``diemcau run`` makes them (:mod:`diemcau.adapters.process`),
before any thread starts; the log goes to the same stderr (the journal),
scrubbed the same way (:mod:`diemcau.adapters.logs`). SIGINT and SIGTERM are
ignored: the control plane ends this process over the pipe (a Ctrl-C in a
terminal, or systemd's stop, reaches the whole group at once, and the media
must stop when the supervisor says, media first). If the control plane goes
away, the down pipe closes and the session stops.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..adapters.logs import log_to_stderr, scrub_log_handlers
from ..core.events import StreamChanged
from .pipe import Channel, Down, Keyframe, Mute, PipeClosed, Profile, Start, Stop, to_wire

if TYPE_CHECKING:
    from .session import MediaSession

log = logging.getLogger("diemcau.media.process")

POLL_S = 0.2  # how often the main thread looks whether the session has ended by itself
JOIN_S = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diemcau.media.child")
    parser.add_argument("--down-fd", type=int, required=True, help="the pipe to read from")
    parser.add_argument("--up-fd", type=int, required=True, help="the pipe to write to")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Wait for the Start, then import the media code and run the session.

    Until its Start this process is small (the pipe's messages only): it may
    be started long before the meeting, as the control plane's spare
    (:class:`~diemcau.media.process.Spare`). The rest is imported after it.
    """
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_to_stderr(args.log_level)
    channel = Channel(args.down_fd, args.up_fd)
    try:
        first = channel.receive(Down)
    except PipeClosed:
        return 0  # the control plane went before it said what to publish
    start, pending = first[0], first[1:]
    if not isinstance(start, Start):
        log.error("the media process expected Start first, got %s", type(start).__name__)
        return 2
    scrub_log_handlers(known=(start.media.srt_passphrase,))
    from ..adapters.process import settle

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

    from ..core.meeting import StreamRequest
    from .session import MediaSession  # PyAV loads when the session starts, in this process only

    request = StreamRequest(start.meeting_id, start.publish_url, start.profile,  # type: ignore[arg-type]
                            start.muted, start.play_url)
    session = MediaSession(start.media, request, post, device_id=start.device_id)
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


if __name__ == "__main__":
    sys.exit(main())
