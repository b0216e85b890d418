"""The room's controls through the wired supervisor, on real parts.

The box runs in this process (``app.build``, the same composition as
``diemcau run``) with its panel on a gpiozero ``MockFactory`` of PWM pins that
the test holds, its speaker on ALSA's ``file`` plugin, a real Mosquitto, a
real ffmpeg SRT listener as the media server. Presses are driven on the
button's pin; the light is read back from its pins; the prompts from what the
speaker played. The last tests run the real ``diemcau run`` process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from diemcau.app import build
from diemcau.config import parse_config
from diemcau.core.events import StopRequested
from diemcau.core.light import PATTERNS, LightState
from diemcau.protocol import Event, Status, decode, device_topic
from diemcau.supervisor import Supervisor
from tests.harness.alsa import SimulatedSpeaker, make_microphone, make_speaker
from tests.harness.box import RGB_PINS, box_config
from tests.harness.srt_listener import SrtListener
from tests.harness.voice import prompts_said

pytestmark = pytest.mark.e2e

DEV = "c00001-r1"
STATUS = device_topic(DEV, "status")
EVENT = device_topic(DEV, "event")
JOIN_PIN, MUTE_PIN = 17, 27
VOLUME = 80
SITE = "UBND xã Thử Nghiệm"  # tests/harness/box.py


def panel(reset_window_s: float = 0.0) -> str:
    # Short press timings, so that a long press and a reset hold do not take seconds.
    return f"""
[panel]
gpio = "mock"
debounce_ms = 20
long_press_s = 0.6
reset_hold_s = 1.2
reset_window_s = {reset_window_s}

[panel.join_button]
pin = {JOIN_PIN}

[panel.mute_button]
pin = {MUTE_PIN}

[panel.light]
kind = "rgb"
red_pin = {RGB_PINS[0]}
green_pin = {RGB_PINS[1]}
blue_pin = {RGB_PINS[2]}
"""


@dataclass
class RoomBox:
    supervisor: Supervisor
    factory: MockFactory
    speaker: SimulatedSpeaker
    state_dir: Path
    thread: threading.Thread

    def press(self, held_s: float, pin: int = JOIN_PIN) -> None:
        """Press and release a button wired to ground (pull-up): low is pressed."""
        self.factory.pin(pin).drive_low()
        time.sleep(held_s)
        self.factory.pin(pin).drive_high()

    def hold(self, pin: int = JOIN_PIN) -> Callable[[], None]:
        self.factory.pin(pin).drive_low()
        return self.factory.pin(pin).drive_high

    def wait_light(self, state: LightState, timeout: float = 15.0) -> dict[int, int]:
        """Wait until the light shows ``state`` and check its pins' history from then on.

        Returns, per pin, where in the pin's history (gpiozero's ``MockPin.states``)
        the pattern began.
        """
        deadline = time.time() + timeout
        light = self.supervisor.a.light
        while light.shown is None or light.shown.state != state:
            assert time.time() < deadline, f"the light shows {light.shown and light.shown.state}"
            time.sleep(0.02)
        marks = {pin: len(self.factory.pin(pin).states) - 1 for pin in RGB_PINS}
        pattern = PATTERNS[state]
        time.sleep(max(0.05, pattern.rgb.period_s * 1.2))
        for pin, channel in zip(RGB_PINS, pattern.colour.rgb, strict=True):
            history = [s.state for s in self.factory.pin(pin).states[marks[pin]:]]
            current = float(self.factory.pin(pin).state)
            if pattern.rgb.kind == "steady":
                assert current == pytest.approx(channel), (state, pin)
            elif channel:  # blinking: this channel went on and off
                seen = history + [current]
                assert max(seen) == pytest.approx(channel) and min(seen) == 0, (state, pin, seen)
            else:
                assert current == 0, (state, pin)
        return marks

    def prompts(self) -> list[str]:
        """The prompts the speaker played, in order, recognised by their samples."""
        return prompts_said(self.speaker, VOLUME, SITE)

    def stop(self) -> None:
        self.supervisor.post(StopRequested("test"))
        self.thread.join(20)


@pytest.fixture
def room_box(tmp_path: Path, broker, centre, observer, monkeypatch
             ) -> Iterator[Callable[..., RoomBox]]:  # noqa: ANN001
    boxes: list[RoomBox] = []

    def start(reset_window_s: float = 0.0, before: Callable[[Path], None] | None = None,
              held_at_start: bool = False) -> RoomBox:
        mic = make_microphone(tmp_path / "mic", seconds=120)
        speaker = make_speaker(tmp_path / "speaker", also=mic)
        monkeypatch.setenv("ALSA_CONFIG_PATH", speaker.env["ALSA_CONFIG_PATH"])
        state_dir = tmp_path / "state"
        if before:
            before(state_dir)
        text = box_config(device_id=DEV, broker=broker, state_dir=state_dir,
                          keys={centre.kid: centre.public_text}, microphone=mic.pcm,
                          voice=f'enabled = true\npcm = "{speaker.pcm}"\n'
                                f'volume_percent = {VOLUME}',
                          extra=panel(reset_window_s))
        factory = MockFactory(pin_class=MockPWMPin)
        supervisor = build(parse_config(text), pin_factory=factory)
        thread = threading.Thread(target=supervisor.run, name="supervisor", daemon=True)
        box = RoomBox(supervisor, factory, speaker, state_dir, thread)
        boxes.append(box)
        if held_at_start:
            factory.pin(JOIN_PIN).drive_low()
        thread.start()
        observer.wait_for(lambda m: m.topic == device_topic(DEV, "state")
                          and b"ready" in m.payload, timeout=15)
        return box

    yield start
    for box in boxes:
        box.stop()
        box.factory.reset()


def status_where(observer, pred, after: float, timeout: float = 15.0) -> Status:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == STATUS and pred(decode(m.payload, Status)),
                             timeout=timeout, after=after)
    return decode(seen.payload, Status)


def event_where(observer, kind: str, after: float, timeout: float = 15.0) -> Event:  # noqa: ANN001
    seen = observer.wait_for(lambda m: m.topic == EVENT and decode(m.payload, Event).kind == kind,
                             timeout=timeout, after=after)
    return decode(seen.payload, Event)


def events(observer, after: float) -> list[Event]:  # noqa: ANN001
    return [decode(m.payload, Event) for m in observer.on(EVENT) if m.at >= after]


def test_an_invitation_joined_by_the_button_then_hand_floor_mute_and_leave(
        room_box, observer, tmp_path) -> None:  # noqa: ANN001
    box = room_box()
    box.wait_light("ready")
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        t0 = time.time()
        jti = observer.command(DEV, "meeting.invite", {
            "meeting_id": "m1", "title": "Họp giao ban", "publish": listener.url,
            "profile": "360p15", "starts_at": t0 + 60, "ends_at": t0 + 3600})
        assert observer.wait_reply(DEV, jti).code == 200
        assert status_where(observer, lambda s: s.meeting_state == "invited", t0
                            ).invited_meeting_id == "m1"
        box.wait_light("invited")

        # A short press joins, 60 s before the start: inside the join window.
        t1 = time.time()
        box.press(0.15)
        live = status_where(observer, lambda s: s.meeting_state == "live", t1, timeout=20)
        assert live.meeting_id == "m1" and live.stream.state == "live"
        assert event_where(observer, "joining", t1).detail == "button"
        box.wait_light("live")

        t2 = time.time()
        box.press(0.15)
        assert status_where(observer, lambda s: s.hand_raised, t2).meeting_state == "live"
        event_where(observer, "hand_raised", t2)
        box.wait_light("hand_raised")

        t3 = time.time()
        grant = observer.command(DEV, "floor.grant")
        assert observer.wait_reply(DEV, grant).code == 200
        granted = status_where(observer, lambda s: s.floor, t3)
        assert (granted.hand_raised, granted.muted) == (False, False)
        box.wait_light("floor")

        t4 = time.time()
        revoke = observer.command(DEV, "floor.revoke")
        assert observer.wait_reply(DEV, revoke).code == 200
        revoked = status_where(observer, lambda s: not s.floor, t4)
        assert revoked.muted is True
        box.wait_light("live_muted")

        t5 = time.time()
        box.press(0.15, pin=MUTE_PIN)
        assert status_where(observer, lambda s: not s.muted, t5).meeting_state == "live"
        box.wait_light("live")

        # Long: reported at 0.6 s while still held; the release adds nothing.
        t6 = time.time()
        box.press(0.9)
        assert status_where(observer, lambda s: s.meeting_state == "idle", t6, timeout=20
                            ).stream.state == "off"
        event_where(observer, "left", t6)
        box.wait_light("ready")
        assert listener.wait(10), "the stream did not end after the long press"
    finally:
        listener.stop()

    presses = [(e.data["button"], e.data["press"]) for e in events(observer, t0)
               if e.kind == "button"]
    assert presses == [("join", "short_press"), ("join", "short_press"), ("mute", "short_press"),
                       ("join", "long_press")]
    seqs = [e.seq for e in events(observer, t0)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Every prompt for what happened, in order, and nothing else.
    deadline = time.time() + 20
    expected = ["connected", "invited", "joining", "joined", "hand_raised", "floor_granted",
                "muted", "unmuted", "left"]
    while box.prompts() != expected and time.time() < deadline:
        time.sleep(0.2)
    assert box.prompts() == expected


def test_identify_flashes_the_light_and_says_the_site_name(room_box, observer) -> None:  # noqa: ANN001
    box = room_box()
    box.wait_light("ready")
    jti = observer.command(DEV, "device.identify", {"duration_s": 2})
    assert observer.wait_reply(DEV, jti).code == 200
    box.wait_light("identify")
    box.wait_light("ready", timeout=10)  # and back once the time is up
    deadline = time.time() + 20
    while "identify" not in box.prompts() and time.time() < deadline:
        time.sleep(0.2)
    assert box.prompts() == ["connected", "identify"]


def test_held_at_start_the_box_says_so_then_forgets_everything(room_box, observer) -> None:  # noqa: ANN001
    def enrolled(state_dir: Path) -> None:
        (state_dir / "identity").mkdir(parents=True)
        (state_dir / "identity" / "box.key").write_text("a private key")

    box = room_box(reset_window_s=30.0, before=enrolled)
    box.wait_light("ready")
    t0 = time.time()
    release = box.hold()
    try:
        marks = box.wait_light("resetting", timeout=10)
        box.thread.join(20)
    finally:
        release()
    assert not box.thread.is_alive()
    assert box.supervisor.factory_reset
    assert list(box.state_dir.iterdir()) == []
    kinds = [(e.kind, e.detail) for e in events(observer, t0)]
    assert kinds == [("button", "reset_hold"), ("factory_reset", "button held at start")]
    assert box.prompts()[-1] == "factory_reset"
    # The light said so before the box stopped: red and blue blinking, green dark.
    red, green, blue = (box.factory.pin(p).states[marks[p]:] for p in RGB_PINS)
    assert max(s.state for s in red) == 1 and max(s.state for s in blue) == 1
    assert max(s.state for s in green) == 0


def test_a_long_hold_after_the_reset_window_is_only_a_long_press(room_box, observer) -> None:  # noqa: ANN001
    box = room_box(reset_window_s=0.0)
    box.wait_light("ready")
    t0 = time.time()
    box.press(1.5)
    event_where(observer, "button", t0)
    time.sleep(0.5)
    assert [(e.kind, e.detail) for e in events(observer, t0)] == [("button", "long_press")]
    assert box.thread.is_alive() and any(box.state_dir.iterdir())


# ---------------------------------------------------------------- the real process


def test_an_invitation_survives_a_restart_and_a_mandatory_one_is_joined_at_its_start(
        make_box, observer, tmp_path) -> None:  # noqa: ANN001
    mic = make_microphone(tmp_path / "mic", seconds=120)
    box = make_box(env=mic.env, microphone=mic.pcm)
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)
    listener = SrtListener(tmp_path / "media")
    listener.start()
    try:
        t0 = time.time()
        # Time for the restart below (about 0.3 s, once the box is up) and not much more.
        starts = t0 + 5
        # Refused, nothing changed: the end before the start, an end already past.
        for bad, detail in (({"starts_at": starts, "ends_at": starts - 60},
                             "args.ends_at: must be after args.starts_at"),
                            ({"starts_at": t0 - 7200, "ends_at": t0 - 3600},
                             "args.ends_at: already past")):
            jti = observer.command(DEV, "meeting.invite", {"meeting_id": "bad", **bad})
            reply = observer.wait_reply(DEV, jti)
            assert (reply.status, reply.code, reply.detail) == ("rejected", 400, detail)
        jti = observer.command(DEV, "meeting.invite", {
            "meeting_id": "m9", "publish": listener.url, "profile": "360p15",
            "starts_at": starts, "ends_at": starts + 600, "mandatory": True})
        assert observer.wait_reply(DEV, jti).code == 200
        assert status_where(observer, lambda s: s.meeting_state == "invited", t0
                            ).invited_meeting_id == "m9"

        t1 = time.time()
        assert box.stop() == 0
        box.start()
        # After the restart, still invited: the schedule came back from the state directory.
        back = status_where(observer, lambda s: s.meeting_state == "invited", t1)
        assert back.invited_meeting_id == "m9"
        assert time.time() < starts, "the restart took too long for this test's schedule"

        live = status_where(observer, lambda s: s.meeting_state == "live", t1, timeout=40)
        assert live.meeting_id == "m9"
        joining = event_where(observer, "joining", t1)
        assert joining.detail == "mandatory meeting: joined at its start"
        assert joining.ts >= starts
        leave = observer.command(DEV, "meeting.leave")
        assert observer.wait_reply(DEV, leave, status="succeeded", timeout=15).code == 200
    finally:
        listener.stop()


def test_an_invitation_that_ended_while_the_box_was_off_is_dropped(
        make_box, observer) -> None:  # noqa: ANN001
    box = make_box()
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)
    t0 = time.time()
    jti = observer.command(DEV, "meeting.invite", {"meeting_id": "m5", "ends_at": t0 + 4})
    assert observer.wait_reply(DEV, jti).code == 200
    box.stop()
    time.sleep(max(0.0, t0 + 4.5 - time.time()))
    t1 = time.time()
    box.start()
    event_where(observer, "invitation_expired", t1)
    status_where(observer, lambda s: s.meeting_state == "idle" and s.invited_meeting_id is None,
                 t1)


def test_sigusr1_presses_the_mock_button_of_a_development_box(make_box, observer) -> None:  # noqa: ANN001
    """The demo's seam: only with ``panel.gpio = "mock"``."""
    box = make_box(extra='[panel]\ngpio = "mock"\n')
    box.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)
    t0 = time.time()
    assert box.pid is not None
    os.kill(box.pid, signal.SIGUSR1)
    pressed = event_where(observer, "button", t0)
    assert pressed.data["press"] == "short_press" and pressed.data["button"] == "join"
    event_where(observer, "call_request", t0)
    assert box.running



def test_contact_bounce_gives_one_press(room_box, observer) -> None:  # noqa: ANN001
    box = room_box()
    box.wait_light("ready")
    pin = box.factory.pin(JOIN_PIN)
    t0 = time.time()
    for _ in range(5):  # a bouncing contact: edges 3 ms apart, shorter than the debounce
        pin.drive_low()
        time.sleep(0.003)
        pin.drive_high()
        time.sleep(0.003)
    box.press(0.2)
    event_where(observer, "call_request", t0)
    time.sleep(0.5)
    assert [(e.kind, e.detail) for e in events(observer, t0)] == [
        ("button", "short_press"), ("call_request", "button")]


def test_a_button_held_while_the_box_starts_counts_for_nothing(room_box, observer) -> None:  # noqa: ANN001
    box = room_box(reset_window_s=30.0, held_at_start=True)
    box.wait_light("ready")
    t0 = time.time()
    time.sleep(1.5)  # longer than the reset hold
    box.factory.pin(JOIN_PIN).drive_high()
    time.sleep(0.5)
    assert [e for e in events(observer, t0) if e.kind in ("button", "factory_reset")] == []
    assert box.thread.is_alive() and any(box.state_dir.iterdir())
    # The next press counts again.
    t1 = time.time()
    box.press(0.2)
    assert event_where(observer, "button", t1).detail == "short_press"


@pytest.mark.parametrize("saved", [
    b"{not json",
    b'{"meeting_id": "m7", "publish": "srt://media.elsewhere.example:9000"}',
    b'{"meeting_id": "m7", "surprise": 1}',
])
def test_a_saved_invitation_the_box_cannot_use_is_dropped_at_start(
        room_box, observer, saved: bytes) -> None:  # noqa: ANN001
    def write(state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "invitation.json").write_bytes(saved)

    box = room_box(before=write)
    box.wait_light("ready")
    status = status_where(observer, lambda s: True, after=0)
    assert (status.meeting_state, status.invited_meeting_id) == ("idle", None)
    assert not (box.state_dir / "invitation.json").exists()


def test_a_saved_invitation_is_restored_with_what_a_press_needs(
        room_box, observer, tmp_path) -> None:  # noqa: ANN001
    listener = SrtListener(tmp_path / "media")
    listener.start()

    def write(state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "invitation.json").write_text(
            f'{{"meeting_id": "m8", "publish": "{listener.url}", "profile": "360p15", '
            f'"muted": true, "ends_at": {time.time() + 600}}}')

    try:
        box = room_box(before=write)
        box.wait_light("invited")
        t0 = time.time()
        box.press(0.15)
        live = status_where(observer, lambda s: s.meeting_state == "live", t0, timeout=20)
        assert (live.meeting_id, live.muted, live.stream.profile) == ("m8", True, "360p15")
        box.wait_light("live_muted")
    finally:
        listener.stop()


def test_a_press_while_the_centre_is_unreachable_asks_nothing_and_says_so(
        room_box, observer, broker) -> None:  # noqa: ANN001
    box = room_box()
    box.wait_light("ready")
    broker.stop()
    box.wait_light("connecting", timeout=20)  # the network is there, the broker is not
    t0 = time.time()
    box.press(0.15)
    deadline = time.time() + 20
    while box.prompts() != ["connected", "link_lost", "link_lost"] and time.time() < deadline:
        time.sleep(0.2)
    # Lost, then the press: "mất kết nối" again instead of "đã gửi yêu cầu tới trung tâm".
    assert box.prompts() == ["connected", "link_lost", "link_lost"]
    broker.start()
    box.wait_light("ready", timeout=20)
    # The press itself reaches the centre from the outbox; no call request does.
    event_where(observer, "button", t0, timeout=20)
    time.sleep(0.5)
    assert [e.kind for e in events(observer, t0)] == ["link_lost", "button"]
