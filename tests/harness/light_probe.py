"""Run a box with its panel on gpiozero's MockFactory and report what its light did.

    python -m tests.harness.light_probe CONFIG STATE [--timeout S] [--window S]

For a box that must run where the test process cannot be, such as a network
namespace of its own (``unshare --net``): the box is built as ``diemcau run``
builds it (``diemcau.app.build``), with a MockFactory of PWM pins this process
holds. It waits until the light shows STATE, records the light's pins for
``--window`` seconds, stops the box and prints one JSON object:

    {"shown": "no_network", "pins": {"5": [0.0, 1.0, 0.0], "6": [0.0], ...}}

``pins`` lists each pin's values from the moment STATE showed (its history,
then its value at the end). Exit code 0 when STATE showed, 1 when it did not
in time (``shown`` then says what the light showed instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

from gpiozero.pins.mock import MockFactory, MockPWMPin

from diemcau.app import build
from diemcau.config import load_config
from diemcau.core.events import StopRequested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="light_probe")
    parser.add_argument("config")
    parser.add_argument("state")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=2.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config)
    assert cfg.panel is not None, "the configuration has no [panel]"
    pins = [int(pin) for pin in cfg.panel.light.pins().values()]
    factory = MockFactory(pin_class=MockPWMPin)
    supervisor = build(cfg, pin_factory=factory)
    thread = threading.Thread(target=supervisor.run, name="supervisor", daemon=True)
    thread.start()
    light = supervisor.a.light
    deadline = time.monotonic() + args.timeout
    while (light.shown is None or light.shown.state != args.state) and time.monotonic() < deadline:
        time.sleep(0.02)
    shown = light.shown.state if light.shown else None
    marks = {pin: len(factory.pin(pin).states) - 1 for pin in pins}
    time.sleep(args.window)
    seen = {str(pin): [float(s.state) for s in factory.pin(pin).states[marks[pin]:]]
            + [float(factory.pin(pin).state)] for pin in pins}
    still = light.shown.state if light.shown else None
    supervisor.post(StopRequested("probe done"))
    thread.join(20)
    print(json.dumps({"shown": shown, "at_end": still, "pins": seen}))
    return 0 if shown == args.state else 1


if __name__ == "__main__":
    sys.exit(main())
