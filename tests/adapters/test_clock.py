"""The clock floor: no TLS and no expiry judgement on a clock known to be wrong."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diemcau.adapters.clock import TIMESYNCD_CLOCK_FILE, ClockTooEarly, check_clock, clock_floor
from diemcau.adapters.mqtt import MqttLink
from diemcau.adapters.statefile import Counters
from diemcau.config import Mqtt, Tls
from diemcau.core.events import LinkUp
from tests.harness.broker import Broker


def test_the_floor_is_the_clock_files_time(tmp_path: Path) -> None:
    assert clock_floor(str(tmp_path)) == 0.0  # no file: any clock is believed
    clock = tmp_path / TIMESYNCD_CLOCK_FILE
    clock.parent.mkdir(parents=True)
    clock.touch()
    os.utime(clock, (1_790_000_000, 1_790_000_000))
    assert clock_floor(str(tmp_path)) == 1_790_000_000


@given(floor=st.floats(0, 4e9), now=st.floats(0, 4e9))
def test_check_refuses_exactly_the_clocks_before_the_floor(floor: float, now: float) -> None:
    if now < floor:
        with pytest.raises(ClockTooEarly, match="waiting for the time to be set"):
            check_clock(floor, now)
    else:
        check_clock(floor, now)


@pytest.mark.e2e
def test_no_tls_connection_until_the_clock_is_past_the_floor(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    floor = [time.time() + 3600.0]  # as if the clock were an hour behind the build
    up = threading.Event()

    def post(event: object) -> None:
        if isinstance(event, LinkUp):
            up.set()

    with Broker(tmp_path / "broker", tls=True) as broker:
        cfg = Mqtt(host="localhost", port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.3,
                   tls=Tls(enabled=True, ca_file=str(broker.ca_file)))
        link = MqttLink(cfg, "c00001-r1", [], Counters(tmp_path / "counters.json"), post,
                        clock_floor=lambda: floor[0])
        with caplog.at_level(logging.WARNING, logger="diemcau.link"):
            link.start()
            try:
                assert not up.wait(2.0)
                assert "waiting for the time to be set" in caplog.text
                assert "New connection" not in broker.log_text()  # not even a TCP attempt
                floor[0] = 0.0  # the time is set
                assert up.wait(10.0)
            finally:
                link.stop()
