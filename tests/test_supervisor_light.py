"""The supervisor drives the light from its own state: the hook a firmware update uses.

The box is composed as ``diemcau run`` composes it (``diemcau.app.build``),
its light on gpiozero's MockFactory; the loop is not run and nothing connects,
so the light shows what the supervisor's state says and nothing else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from diemcau.app import build
from diemcau.config import parse_config
from diemcau.core.light import MAGENTA
from diemcau.supervisor import Supervisor
from tests.harness.box import MOCK_RGB_PANEL, RGB_PINS, CentreKey, offline_config


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Supervisor, MockFactory]]:
    text = offline_config(tmp_path / "state", CentreKey(), extra=MOCK_RGB_PANEL)
    factory = MockFactory(pin_class=MockPWMPin)
    supervisor = build(parse_config(text), pin_factory=factory)
    yield supervisor, factory
    supervisor.a.light.close()
    supervisor.a.outbox.close()
    supervisor.a.replay.close()
    factory.reset()


def updating(supervisor: Supervisor, on: bool) -> None:
    """The light shown again, with an update under way or not (the panel's surface)."""
    supervisor.panel.show(supervisor.room, updating=on)


def shown(supervisor: Supervisor) -> str | None:
    pattern = supervisor.a.light.shown
    return pattern.state if pattern else None


def test_an_update_shows_on_the_light_until_it_ends(box: tuple[Supervisor, MockFactory]) -> None:
    supervisor, factory = box
    updating(supervisor, True)
    assert shown(supervisor) == "updating"
    # The pins: magenta fading in and out, green dark.
    time.sleep(0.6)
    for pin, channel in zip(RGB_PINS, MAGENTA.rgb, strict=True):
        values = [s.state for s in factory.pin(pin).states] + [factory.pin(pin).state]
        if channel:
            assert max(values) > 0 and len(set(values)) > 2, (pin, values)  # a fade, not a blink
        else:
            assert set(values) == {0}, (pin, values)
    updating(supervisor, False)
    assert shown(supervisor) == "starting"  # the loop has not run: its phase


def test_an_update_shows_over_a_meeting_but_not_over_identify(
        box: tuple[Supervisor, MockFactory]) -> None:
    supervisor, _ = box
    supervisor.room = dataclasses.replace(supervisor.room, state="live", meeting_id="m1")
    updating(supervisor, True)
    assert shown(supervisor) == "updating"
    supervisor.panel.identify(60.0, "UBND xã Thử Nghiệm")
    updating(supervisor, True)
    assert shown(supervisor) == "identify"
    supervisor.panel.identify(0.0, "UBND xã Thử Nghiệm")
    supervisor.panel.tick()  # identify is over
    updating(supervisor, False)
    assert shown(supervisor) == "live"
