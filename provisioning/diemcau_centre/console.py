"""``devices`` and ``watch``: fill a :class:`FleetView` from the broker and print it.

On subscribing, the broker sends every retained state, meta, status and alert
at once; the view is printed when they stop coming (``quiet_s`` without a
retained message), or after ``max_wait_s`` at most.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from typing import TextIO

from diemcau.protocol import alert_topic, device_filter, device_topic

from .fleet import FleetView, device_record, render_devices, render_watch, select
from .mqtt import Connected, Disconnected, MqttError, Received, Session
from .send import missing_text

DEVICE_FILTERS = [device_topic("+", "state"), device_topic("+", "meta"),
                  device_topic("+", "status"), alert_topic("+", "+")]
WATCH_FILTERS = [device_filter("+")]
# Home, then each line cleared to its end, then the rest of the screen: no flicker.
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def collect_retained(session: Session, view: FleetView, *, quiet_s: float = 0.5,
                     max_wait_s: float = 10.0) -> bool:
    """Feed what arrives into ``view`` until retained messages stop; False if cut short."""
    start = last = time.monotonic()
    while True:
        now = time.monotonic()
        if now - last >= quiet_s:
            return True
        if now - start >= max_wait_s:
            return False
        got = session.receive(min(last + quiet_s, start + max_wait_s) - now)
        if isinstance(got, Disconnected):
            raise MqttError(f"lost the connection to the broker: {got.reason}")
        if isinstance(got, Received):
            view.apply(got.topic, got.payload, got.at, retained=got.retain)
            # Only retained ones count: live health and events never stop coming.
            if got.retain:
                last = got.at_mono


def missing_boxes(view: FleetView, expected: set[str] | None, match: str | None) -> set[str]:
    """The boxes of the manifest (that match) of which the broker gave nothing."""
    if expected is None:
        return set()
    return {dev for dev in expected if dev not in view.boxes
            and (match is None or fnmatch.fnmatchcase(dev, match))}


def report_missing(view: FleetView, expected: set[str] | None, match: str | None,
                   err: TextIO) -> int:
    """Say how many boxes of the manifest were listed; 1 if some are missing, else 0."""
    missing = missing_boxes(view, expected, match)
    if not missing:
        return 0
    wanted = len(missing) + sum(1 for dev in view.boxes if dev in (expected or ())
                                and (match is None or fnmatch.fnmatchcase(dev, match)))
    print(f"listed {wanted - len(missing)} of the {wanted} box(es) in the manifest; the broker "
          f"gave nothing of {len(missing)} (never connected, or their messages were lost): "
          f"{missing_text(missing)}", file=err)
    return 1


def devices(session: Session, *, as_json: bool, match: str | None, max_wait_s: float,
            out: TextIO, err: TextIO, expected: set[str] | None = None) -> int:
    """Print the boxes; 1 if boxes of the manifest (``expected``) are missing."""
    session.subscribe(DEVICE_FILTERS)
    view = FleetView()
    if not collect_retained(session, view, max_wait_s=max_wait_s):
        print(f"still receiving after {max_wait_s:g} s: the list may be incomplete "
              "(raise --max-wait)", file=err)
    if as_json:
        records = [device_record(b) for b in select(view, match)]
        out.write(json.dumps(records, ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(render_devices(view, time.time(), match))
    out.flush()
    return report_missing(view, expected, match, err)


def watch(session: Session, *, once: bool, interval_s: float, match: str | None,
          max_wait_s: float, out: TextIO, err: TextIO, events: int = 10,
          expected: set[str] | None = None) -> int:
    """Redraw the fleet every ``interval_s`` until interrupted; ``once``: one snapshot."""
    session.subscribe(WATCH_FILTERS)
    view = FleetView()
    collect_retained(session, view, max_wait_s=max_wait_s)
    tty = out.isatty()
    connected = True
    if tty and not once:
        out.write(HOME + "\x1b[2J")  # once, then each frame overwrites the last

    def draw() -> None:
        title = f"diemcau fleet at {session.where}, {time.strftime('%Y-%m-%d %H:%M:%S')}"
        if not connected:
            title += " - DISCONNECTED, reconnecting"
        missing = missing_boxes(view, expected, match)
        if missing:
            title += f" - {len(missing)} box(es) of the manifest not seen"
        max_rows = None
        size = shutil.get_terminal_size()
        if tty:
            # Keep the summary, the table's head and the recent events on screen.
            max_rows = max(size.lines - events - 8, 5)
        text = render_watch(view, time.time(), match=match, max_rows=max_rows, events=events,
                            title=title, snapshot=once)
        if tty:
            # Lines cut to the width: a wrapped line would push the screen out of place.
            lines = [line[: size.columns] for line in text.splitlines()]
            out.write(HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
        else:
            out.write(text + "\n")
        out.flush()

    if once:
        draw()
        return report_missing(view, expected, match, err)
    next_draw = time.monotonic()
    while True:
        if time.monotonic() >= next_draw:
            draw()
            next_draw = time.monotonic() + interval_s
        got = session.receive(next_draw - time.monotonic())
        if isinstance(got, Received):
            view.apply(got.topic, got.payload, got.at, retained=got.retain)
        elif isinstance(got, Disconnected):
            connected = False  # paho reconnects by itself; the session is clean, so...
        elif isinstance(got, Connected) and not got.failed:
            try:
                session.subscribe(WATCH_FILTERS)  # ...subscribe again
                connected = True
            except MqttError as exc:
                print(f"after reconnecting: {exc}", file=err)
