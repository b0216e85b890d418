"""A renewed certificate reaches the box's MQTT link: after renewal the old certificate is
revoked and the broker restarted, and the link still gets in, so it used the new one."""

from __future__ import annotations

import datetime as dt
import queue
from pathlib import Path

import msgspec
import pytest
from cryptography import x509

from diemcau.adapters.enroll import enroll_once, renew_once
from diemcau.adapters.mqtt import MqttLink
from diemcau.adapters.statefile import Counters
from diemcau.config import load_config
from diemcau.core.events import LinkUp
from diemcau.protocol.enrollment import Broker as BrokerAddress
from diemcau_centre.ca import load_ca, write_crl
from diemcau_centre.enroll_service import ServiceSettings

from .conftest import A, start_fleet_broker
from .enrollment import RunningService, make_centre
from .test_enrollment import blank_config

pytestmark = pytest.mark.e2e


def wait_link_up(events: queue.Queue[object], timeout_s: float = 20.0) -> LinkUp:
    while True:
        event = events.get(timeout=timeout_s)
        if isinstance(event, LinkUp):
            return event


def test_the_link_connects_with_the_renewed_certificate(tmp_path: Path) -> None:
    centre = make_centre(tmp_path / "centre")
    broker = start_fleet_broker(centre.directory, tmp_path / "broker")
    centre.settings = ServiceSettings(centre.directory,
                                      BrokerAddress(host="127.0.0.1", port=broker.port),
                                      centre.settings.centre_keys)
    service = RunningService(centre)
    state = tmp_path / "state"
    events: queue.Queue[object] = queue.Queue()
    link = None
    try:
        identity = enroll_once(centre.enrollment_file(A), state)
        config = tmp_path / "endpoint.toml"
        config.write_text(blank_config(state, centre.enrollment_file(A)))
        cfg = load_config(config, overlay=identity.overlay())
        # One box: no storm to spread after the broker's restart.
        mqtt_cfg = msgspec.structs.replace(cfg.mqtt, reconnect_spread_s=0.5)
        link = MqttLink(mqtt_cfg, cfg.device.id, cfg.groups, Counters(state / "counters.json"),
                        events.put)
        link.start()
        wait_link_up(events)

        old = x509.load_pem_x509_certificate(identity.cert_file.read_bytes())
        renew_once(state)
        link.reload_certificate()
        # The old certificate is now useless: on the CRL the broker reads at start.
        ca = load_ca(centre.directory)
        write_crl(ca, [(old.serial_number, dt.datetime.now(dt.UTC))])
        (broker.workdir / "conf" / "crl.pem").write_bytes(ca.crl_file.read_bytes())
        broker.restart()
        assert wait_link_up(events).session > 1
    finally:
        if link is not None:
            link.stop()
        service.stop()
        broker.stop()
    log = broker.log_text()
    assert log.count(f"as {A} ") == 2, log
    assert "certificate revoked" not in log and "verify failed" not in log
