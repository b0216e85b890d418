"""A factory reset in the real ``diemcau run`` process, on an enrolled box, all real.

The box enrolls through ``diemcau-centre enroll-service`` and connects over
mutual TLS (the fleet of ``test_blank_box``). Its button is gpiozero's mock pin
(``panel.gpio = "mock"``), held from outside with SIGUSR2 for the real ten
seconds; its speaker is ALSA's ``file`` plugin. Then the technician's runbook:
the burnt token is refused, a new one (``diemcau-centre fleet token``) enrolls
the box again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from diemcau.adapters.voice import render, scaled
from diemcau.core.prompts import PROMPTS
from diemcau.protocol import Event, device_topic
from tests.harness.alsa import SimulatedSpeaker, make_microphone, make_speaker
from tests.harness.box import Box
from tests.test_config_panel import PANEL

from .conftest import A
from .test_blank_box import Fleet, fleet  # noqa: F401 - the fixture
from .test_enrollment import blank_config

pytestmark = pytest.mark.e2e

VOLUME = 80


@pytest.fixture
def panel_box(fleet: Fleet, tmp_path: Path,  # noqa: F811 - the fixture imported above
              request: pytest.FixtureRequest) -> Iterator[tuple[Box, SimulatedSpeaker]]:
    """A blank box with its enrollment file, a mock button and light, and a speaker."""
    mic = make_microphone(tmp_path / "mic", seconds=90)
    speaker = make_speaker(tmp_path / "speaker", also=mic)
    box = Box(tmp_path / "box", fleet.broker, fleet.centre.signing, device_id=A,
              env=speaker.env)
    boot = tmp_path / "box" / "boot"
    boot.mkdir()
    enroll_file = boot / "diemcau-enroll.toml"
    enroll_file.write_bytes(fleet.centre.enrollment_file(A).read_bytes())
    box.config_file.write_text(
        blank_config(box.state_dir, enroll_file).replace(
            "[media]\n", f'[media]\nmicrophone = "{mic.pcm}"\n')
        + f'\n[voice]\npcm = "{speaker.pcm}"\nvolume_percent = {VOLUME}\n' + PANEL)
    yield box, speaker
    box.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"----- box log -----\n{box.log_text()[-6000:]}")


def events(fleet: Fleet) -> list[Event]:  # noqa: F811
    return [msgspec.json.decode(m.payload, type=Event) for m in list(fleet.console.messages)
            if m.topic == device_topic(A, "event")]


def test_held_ten_seconds_at_start_the_box_erases_its_identity_exits_75_and_enrolls_again(
        fleet: Fleet, panel_box: tuple[Box, SimulatedSpeaker]) -> None:  # noqa: F811
    box, speaker = panel_box
    box.start()
    first = fleet.wait_ready()
    assert (box.state_dir / "identity" / "key.pem").exists()
    assert (box.state_dir / "identity" / "cert.pem").exists()

    # A technician holds the button, within the minute after start, for ten seconds and more.
    pressed = time.monotonic()
    box.hold()
    code = box.wait(timeout_s=60)
    held_s = time.monotonic() - pressed
    assert code == 75, box.log_text()[-3000:]
    assert held_s >= 10.0  # nothing happened before the real reset hold
    # Everything under the state directory is gone, the identity included; the directory stays.
    assert box.state_dir.is_dir() and list(box.state_dir.iterdir()) == []

    kinds = [(e.kind, e.detail) for e in events(fleet) if e.kind in ("button", "factory_reset")]
    assert kinds == [("button", "reset_hold"), ("factory_reset", "button held at start")]
    # Said before the box went on to erase: the voice's confirmation, not its time limit.
    confirmation = scaled(render(PROMPTS["factory_reset"]).pcm, VOLUME)
    assert speaker.openings()[-1].startswith(confirmation)
    log = box.log_text()
    assert "did not confirm in time" not in log
    assert "factory reset: " in log and "erased; the box starts afresh" in log

    # systemd starts it again: the token on the card is burnt, so it waits for a new one...
    box.start()
    deadline = time.monotonic() + 30
    while "enrollment failed (used)" not in box.log_text():
        assert time.monotonic() < deadline, box.log_text()[-3000:]
        time.sleep(0.2)
    assert box.running and list(box.state_dir.glob("identity/cert.pem")) == []

    # ...which the centre issues and the technician copies to the card: enrolled again.
    token = subprocess.run([sys.executable, "-m", "diemcau_centre", "fleet", "token", A,
                            "--dir", str(fleet.centre.directory)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert token.returncode == 0, token.stderr
    enroll_file = box.workdir / "boot" / "diemcau-enroll.toml"
    enroll_file.write_bytes(fleet.centre.enrollment_file(A).read_bytes())
    # Its session counter went with the state: it counts from 1 again, as a reflashed box.
    deadline = time.monotonic() + 30
    while len([s for s in fleet.states() if s.state == "ready"]) < 2:
        assert time.monotonic() < deadline, (fleet.states(), box.log_text()[-3000:])
        time.sleep(0.1)
    assert [s.session for s in fleet.states() if s.state == "ready"] == [first.session, 1]
    assert (box.state_dir / "identity" / "cert.pem").exists()
