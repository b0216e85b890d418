"""The box's link moves to the next broker of its list when one fails (real Mosquittos)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from diemcau.adapters.mqtt import MqttLink
from diemcau.adapters.statefile import Counters
from diemcau.config import Mqtt, Tls
from diemcau.core.events import LinkDown, LinkUp
from tests.harness.broker import Broker, free_port


@pytest.mark.e2e
def test_the_link_tries_the_next_broker_and_keeps_counting_sessions(tmp_path: Path) -> None:
    ups: list[LinkUp] = []
    downs: list[LinkDown] = []
    changed = threading.Condition()

    def post(event: object) -> None:
        with changed:
            if isinstance(event, LinkUp):
                ups.append(event)
            elif isinstance(event, LinkDown):
                downs.append(event)
            changed.notify_all()

    def wait(predicate, timeout_s: float = 15.0) -> None:  # noqa: ANN001
        with changed:
            assert changed.wait_for(predicate, timeout_s)

    nobody = free_port()  # nothing listens there: the first address fails
    with Broker(tmp_path / "b1") as first, Broker(tmp_path / "b2") as second:
        cfg = Mqtt(host="127.0.0.1", port=nobody, reconnect_min_s=0.1, reconnect_max_s=0.3,
                   fallback_hosts=[f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"],
                   tls=Tls(enabled=False))
        link = MqttLink(cfg, "c00001-r1", ["all"], Counters(tmp_path / "counters.json"), post)
        link.start()
        try:
            wait(lambda: len(ups) == 1)
            assert "c00001-r1" in first.log_text() and "c00001-r1" not in second.log_text()
            first.crash()  # the broker under the box dies: on to the next one
            wait(lambda: len(ups) == 2)
            assert "c00001-r1" in second.log_text()
            assert len(downs) == 1
            # One session number per attempt: the failed ones counted too, none reused.
            assert ups[0].session == 2 and ups[1].session > ups[0].session
        finally:
            link.stop()
