"""Fixtures shared by the end-to-end tests; a module may define its own ``box`` instead."""

from __future__ import annotations

import pytest

from diemcau.protocol import device_topic
from tests.harness.alsa import make_microphone

DEV = "c00001-r1"


@pytest.fixture
def box(make_box, observer, tmp_path):  # noqa: ANN001, ANN201
    """One box with a real (ALSA file-plugin) microphone, started and born; alive at the end."""
    mic = make_microphone(tmp_path / "mic", seconds=60)
    b = make_box(env=mic.env, microphone=mic.pcm)
    b.start()
    observer.wait_for(lambda m: m.topic == device_topic(DEV, "state") and b"ready" in m.payload)
    yield b
    assert b.running, "the box died"
