"""The media process's entry: wait for the Start with almost nothing loaded, then serve.

    python -m diemcau.media.child --down-fd R --up-fd W [--log-level debug]

Started by :class:`~diemcau.media.process.MediaProcess` in the box's
control plane, never by hand; the control plane keeps one started ahead of
the next meeting, the spare (:class:`~diemcau.media.process.Spare`). Until
the down pipe has something to read (the ``Start``, or its end when the
control plane goes) this process has imported only ``argparse``, ``select``
and ``signal``: a spare is part of the idle box's memory, about 12 MB RSS
this way against 18 MB with the pipe's messages (msgspec) and the logging
loaded. The rest, :mod:`diemcau.media.serve` and through it the media path,
is imported once the ``Start`` is there (some 30 ms on the join's path);
PyAV when the session starts.

SIGINT and SIGTERM are ignored: the control plane ends this process over
the pipe (a Ctrl-C in a terminal, or systemd's stop, reaches the whole group
at once, and the media must stop when the supervisor says, media first).
"""

from __future__ import annotations

import argparse
import faulthandler
import select
import signal
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diemcau.media.child")
    parser.add_argument("--down-fd", type=int, required=True, help="the pipe to read from")
    parser.add_argument("--up-fd", type=int, required=True, help="the pipe to write to")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Wait until the down pipe can be read, then import the rest and serve it."""
    args = _parser().parse_args(argv)
    faulthandler.enable()  # a crash in a C library leaves every thread's stack in the journal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    select.select([args.down_fd], [], [])  # the Start has come, or the control plane has gone
    # Imported here on purpose: this is what the spare does not hold while it waits.
    from .serve import serve

    return serve(args.down_fd, args.up_fd, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
