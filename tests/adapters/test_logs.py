"""The box's log handlers scrub every line: messages, arguments, tracebacks, FFmpeg's own."""

from __future__ import annotations

import io
import logging
from urllib.parse import quote

from diemcau.adapters.logs import ScrubFilter, scrub_log_handlers

PASSPHRASE = "tre xanh&nuoc bac 7f3a9c"


def test_every_line_a_handler_writes_is_scrubbed() -> None:
    root = logging.getLogger("test-scrub-root")
    root.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    try:
        scrub_log_handlers(logger=root)
        scrub_log_handlers(known=[PASSPHRASE, ""], logger=root)  # the config's, once it is read
        assert [type(f) for f in handler.filters] == [ScrubFilter], "one filter, updated"
        child = logging.getLogger("test-scrub-root.libav.srt")  # propagated, not its own
        child.warning("open %s", "srt://h:1?passphrase=abc123&latency=1")
        child.warning("rtsp://op:pw-3e81f7@h:8554/live refused")
        child.warning("the passphrase is %s, as is: %s", quote(PASSPHRASE, safe=""), PASSPHRASE)
        try:
            raise ValueError("cannot open 'rtsp://op:pw-51d0e8@h:8554/live'")
        except ValueError:
            child.exception("media path failed")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    for secret in ("abc123", "pw-3e81f7", "7f3a9c", "pw-51d0e8"):
        assert secret not in text, text
    assert "passphrase=***&latency=1" in text and "rtsp://***@h:8554/live" in text
    assert "Traceback" in text and "ValueError: cannot open 'rtsp://***@h:8554/live'" in text
