"""The light away from the centre: ``no_network`` or ``connecting``, read from the light's pins.

Each box runs in a network namespace the test makes (``unshare --net``), so
what its health reading finds is what the test built: no interface at all; a
cable in but no DHCP answer (only link-local addresses); an address on the
network but no broker there. The box is the one ``diemcau run`` builds,
driven by ``tests.harness.light_probe``, with its light on gpiozero's
MockFactory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diemcau.core.light import PATTERNS
from tests.harness.box import MOCK_RGB_PANEL, RGB_PINS, box_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

VETH = "ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up"
NETWORKS = {
    # what the namespace holds before the box starts: the light's state
    "nothing, not even loopback": ("true", "no_network"),
    "a cable, no DHCP answer": (f"{VETH} && ip link set lo up", "no_network"),
    "an address, no broker": (f"{VETH} && ip addr add 192.0.2.7/24 dev v0 && ip link set lo up",
                              "connecting"),
}


@pytest.fixture(scope="module")
def netns() -> None:
    done = subprocess.run(["unshare", "--net", "sh", "-c", VETH], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a network namespace with a veth pair here: {done.stderr}")


@pytest.mark.parametrize("network", list(NETWORKS))
def test_the_light_says_whether_the_network_or_the_centre_is_missing(
        netns: None, network: str, tmp_path: Path, broker, centre) -> None:  # noqa: ANN001
    setup, expected = NETWORKS[network]
    config = tmp_path / "endpoint.toml"
    # The broker runs, but outside the box's namespace: nothing answers the box there.
    config.write_text(box_config(device_id="c00001-r1", broker=broker,
                                 state_dir=tmp_path / "state",
                                 keys={centre.kid: centre.public_text}, health_interval_s=2,
                                 extra=MOCK_RGB_PANEL))
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         f'{setup} && exec "$0" -m tests.harness.light_probe "$1" "$2" --timeout 20',
         sys.executable, str(config), expected],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert (done.returncode, report["shown"], report["at_end"]) == (0, expected, expected), \
        done.stderr[-3000:]
    # The pins: the state's colour blinking, the other channels dark.
    pattern = PATTERNS[expected]
    assert pattern.rgb.kind == "blink"
    for pin, channel in zip(RGB_PINS, pattern.colour.rgb, strict=True):
        values = report["pins"][str(pin)]
        if channel:
            assert max(values) == pytest.approx(channel) and min(values) == 0, (pin, values)
        else:
            assert set(values) == {0.0}, (pin, values)
    assert "cannot reach broker" in done.stderr
