"""A real RTSP server for the far end's tests: GStreamer's (gst-rtsp-server), a live test
card (H.264) and a 1 kHz tone (Opus), at ``rtsp://127.0.0.1:PORT/programme``.

    python -m tests.harness.rtsp_server --port 8554

Runs until SIGTERM. Needs Debian's ``gir1.2-gst-rtsp-server-1.0``, ``python3-gi`` and
GStreamer's base, good and ugly plugins (x264enc).
"""

from __future__ import annotations

import argparse
import signal

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=25/1"
    " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bframes=0"
    " ! rtph264pay name=pay0 pt=96"
    " audiotestsrc is-live=true wave=sine freq=1000 volume=0.25"
    " ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2"
    " ! opusenc ! rtpopuspay name=pay1 pt=97 )"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/programme", factory)
    server.attach(None)
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"rtsp://127.0.0.1:{args.port}/programme", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
