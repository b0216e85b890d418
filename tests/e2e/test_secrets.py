"""No secret leaves the box: the real box, real Mosquitto, real ffmpeg SRT listeners.

The box has an SRT passphrase; the centre's URLs carry their own (a
``passphrase=``, an access-control stream id with a session secret, an RTSP
``user:password@``). The box joins with each, live or failing, and then
everything it logged and everything it published (every message under
``diemcau/v1/#`` from before it started, retained ones included) is read
for those secrets. The informative part of the errors must still be there.
"""

from __future__ import annotations

import pytest

from diemcau.protocol import Event, Status, decode, device_topic
from tests.harness.box import start_box
from tests.harness.srt_listener import SrtListener, free_tcp_port, free_udp_port

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
EVENT = device_topic(DEV, "event")
STATUS = device_topic(DEV, "status")

BOX_PASSPHRASE = "tre-xanh-nuoc-bac-7f3a9c"  # media.srt_passphrase
LISTENER_PASSPHRASE = "mot-mat-khau-khac-2b8d41"  # a media server's that differs
URL_PASSPHRASE = "url-mat-khau-51d0e8"  # in the centre's publish URL
SESSION_SECRET = "phien-c94b27"  # s= of an access-control stream id
RTSP_PASSWORD = "rtsp-pw-3e81f7"  # rtsp://user:password@
SECRETS = [BOX_PASSPHRASE, LISTENER_PASSPHRASE, URL_PASSPHRASE, SESSION_SECRET, RTSP_PASSWORD,
           # their tails: a secret cut in two by an escape or a line break is still found
           "7f3a9c", "2b8d41", "51d0e8", "c94b27", "3e81f7"]


def reconnecting_events(observer, meeting_id: str, after: float) -> list[Event]:  # noqa: ANN001
    events = [decode(m.payload, Event) for m in observer.on(EVENT) if m.at >= after]
    return [e for e in events if e.kind == "stream_reconnecting" and e.meeting_id == meeting_id]


def fail_twice_then_leave(observer, meeting_id: str, publish: str) -> list[Event]:  # noqa: ANN001
    """Join ``publish`` (which cannot work), see two failed attempts, leave."""
    jti = observer.command(DEV, "meeting.join", {"meeting_id": meeting_id, "publish": publish})
    accepted = observer.wait_reply(DEV, jti, status="accepted")
    observer.wait_for(lambda m: len(reconnecting_events(observer, meeting_id, accepted.ts)) >= 2,
                      timeout=30)
    leave = observer.command(DEV, "meeting.leave")
    assert observer.wait_reply(DEV, leave, status="succeeded", timeout=20).code == 200
    return reconnecting_events(observer, meeting_id, accepted.ts)


def test_no_passphrase_or_password_in_anything_the_box_logs_or_publishes(
        make_box, observer, tmp_path) -> None:  # noqa: ANN001
    box = start_box(make_box, observer, tmp_path, allowed_schemes=("srt", "rtsp"),
                    srt_passphrase=BOX_PASSPHRASE)
    good = SrtListener(tmp_path / "good", passphrase=BOX_PASSPHRASE)
    other = SrtListener(tmp_path / "other", passphrase=LISTENER_PASSPHRASE)
    try:
        good.start()
        other.start()

        # An upper-case scheme is the same URL: a normal SRT join, encrypted, live.
        jti = observer.command(DEV, "meeting.join", {
            "meeting_id": "m1", "publish": f"SRT://127.0.0.1:{good.port}"})
        assert observer.wait_reply(DEV, jti, status="succeeded", timeout=20).detail == "live in m1"
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=20).code == 200

        # A server with another passphrase rejects the handshake.
        rejected = fail_twice_then_leave(observer, "m2", f"srt://127.0.0.1:{other.port}")
        assert all("rejected the connection" in e.detail for e in rejected)
        assert all(f"127.0.0.1:{other.port}" in e.detail for e in rejected)

        # Nobody listens; the centre's URL carries a passphrase and a secret stream id.
        dead = free_udp_port()
        unreachable = fail_twice_then_leave(
            observer, "m3", f"srt://127.0.0.1:{dead}?passphrase={URL_PASSPHRASE}"
                            f"&streamid=#!::r=live/m3,u={DEV},s={SESSION_SECRET}")
        assert all(f"srt://127.0.0.1:{dead}" in e.detail for e in unreachable)

        # RTSP push with credentials in the URL, nobody listening: FFmpeg's own error text.
        port = free_tcp_port()
        refused = fail_twice_then_leave(
            observer, "m4", f"rtsp://operator:{RTSP_PASSWORD}@127.0.0.1:{port}/live/m4")
        assert all(f"rtsp://127.0.0.1:{port}" in e.detail for e in refused)
        assert all("refused" in e.detail.lower() for e in refused)

        # Refused by the policy: the command (and its URL) is still logged.
        bad = observer.command(DEV, "meeting.join", {
            "meeting_id": "m5", "publish": f"srt://elsewhere.example:9000?passphrase="
                                           f"{URL_PASSPHRASE}"})
        assert observer.wait_reply(DEV, bad).code == 403
    finally:
        good.kill()
        other.kill()
    assert box.stop() == 0  # the final status and `disconnected` are published too

    log_lines = box.log_text().splitlines()
    messages = [(m.topic, m.payload.decode(errors="replace")) for m in observer.messages]
    statuses = [decode(m.payload, Status) for m in observer.on(STATUS)]
    assert len(log_lines) > 50 and len(messages) > 30
    assert any(s.stream.state == "reconnecting" and f"127.0.0.1:{port}" in s.stream.detail
               for s in statuses), "the retained status names the server it cannot reach"
    assert any(f"connecting to srt://127.0.0.1:{good.port}" in line for line in log_lines)
    leaked_lines = [line for line in log_lines if any(s in line for s in SECRETS)]
    leaked_messages = [(t, p) for t, p in messages if any(s in p for s in SECRETS)]
    assert not leaked_lines, f"{len(leaked_lines)} log lines hold a secret:\n" + \
        "\n".join(leaked_lines[:10])
    assert not leaked_messages, f"{len(leaked_messages)} messages hold a secret:\n" + \
        "\n".join(f"{t} {p[:400]}" for t, p in leaked_messages[:10])
