"""systemd's notify protocol, over a real datagram socket as systemd provides it."""

from __future__ import annotations

import socket
import time

import pytest

from diemcau.protocol import device_topic

pytestmark = pytest.mark.e2e


def test_ready_then_watchdog_pings_then_stopping(make_box, observer, tmp_path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        box = make_box(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        box.start()
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1")
        pings = [sock.recv(4096).decode() for _ in range(5)]
        assert pings == ["WATCHDOG=1"] * 5
        observer.wait_for(lambda m: m.topic == device_topic("c00001-r1", "state"))
        box.stop()
        rest = []
        deadline = time.monotonic() + 10
        while "STOPPING=1" not in rest and time.monotonic() < deadline:
            rest.append(sock.recv(4096).decode())
        assert "STOPPING=1" in rest
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent() -> None:
    from diemcau.adapters.service import ServiceManager

    service = ServiceManager(environ={})
    assert not service.enabled and service.watchdog_interval_s is None
    service.ready()
    service.alive()  # no socket, no error
