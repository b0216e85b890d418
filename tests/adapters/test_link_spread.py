"""The box's link after its broker restarts: the first attempt spread over a window."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from diemcau.adapters.mqtt import MqttLink
from diemcau.adapters.statefile import Counters
from diemcau.config import Mqtt, Tls
from diemcau.core.backoff import spread_delay
from diemcau.core.events import LinkDown, LinkUp
from tests.harness.broker import Broker

BOXES = 6
WINDOW_S = 3.0


@pytest.mark.e2e
def test_boxes_come_back_after_a_broker_restart_each_at_its_drawn_moment(
        tmp_path: Path) -> None:
    ups: dict[str, list[float]] = {}
    downs: dict[str, list[float]] = {}
    lock = threading.Lock()

    def post_for(dev: str):  # noqa: ANN202
        def post(event: object) -> None:
            with lock:
                if isinstance(event, LinkUp):
                    ups.setdefault(dev, []).append(time.monotonic())
                elif isinstance(event, LinkDown):
                    downs.setdefault(dev, []).append(time.monotonic())
        return post

    with Broker(tmp_path / "broker", boxes=BOXES) as broker:
        cfg = Mqtt(host="127.0.0.1", port=broker.port, reconnect_min_s=0.2, reconnect_max_s=0.5,
                   reconnect_spread_s=WINDOW_S, tls=Tls(enabled=False))
        devices = [f"c{n:05d}-r1" for n in range(1, BOXES + 1)]
        # Each box's random source is seeded: the moment it draws is known beforehand.
        links = [MqttLink(cfg, dev, [], Counters(tmp_path / dev / "counters.json"),
                          post_for(dev), rng=random.Random(n))
                 for n, dev in enumerate(devices)]
        drawn = {dev: spread_delay(WINDOW_S, random.Random(n).random)
                 for n, dev in enumerate(devices)}
        for link in links:
            link.start()
        try:
            deadline = time.monotonic() + 10
            while len(ups) < BOXES and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ups) == BOXES
            broker.restart()
            deadline = time.monotonic() + 10 + WINDOW_S
            while (sum(len(v) >= 2 for v in ups.values()) < BOXES
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            assert all(len(ups[dev]) == 2 for dev in devices), ups
            for dev in devices:
                # Back no sooner than its drawn delay after it saw the broker go.
                assert ups[dev][1] - downs[dev][0] >= drawn[dev] - 0.05, (dev, drawn[dev])
            # And they do not all come back together: the spread shows in the order.
            early = min(devices, key=drawn.__getitem__)
            late = max(devices, key=drawn.__getitem__)
            if drawn[late] - drawn[early] > 1.0:
                assert ups[late][1] > ups[early][1]
        finally:
            for link in links:
                link.stop()
