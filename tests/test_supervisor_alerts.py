"""What the box's log says about alerts: a clearing is logged only for an alert that was raised.

After a start the box takes every alert code down once (the broker may retain
one from before); that is housekeeping, not news for the journal. The box is
composed as ``diemcau run`` composes it; health is measured on this machine,
and the disk limit is moved to raise and clear ``disk_low`` for real.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from diemcau.app import build
from diemcau.config import parse_config
from diemcau.core.events import HealthDue
from diemcau.protocol import ALERT_CODES
from diemcau.supervisor import Supervisor
from tests.harness.box import CentreKey, offline_config


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Supervisor]:
    text = offline_config(tmp_path / "state", CentreKey(), extra='[health]\nclock_check = "none"\n')
    supervisor = build(parse_config(text))
    yield supervisor
    supervisor.a.outbox.close()
    supervisor.a.replay.close()


def cleared_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "diemcau.supervisor" and r.getMessage().endswith(" cleared")]


def test_only_a_raised_alert_is_logged_as_cleared(box: Supervisor,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diemcau.supervisor")
    reporting = box.reporting
    reporting.thresholds = dataclasses.replace(reporting.thresholds, disk_low_mb=1e15)  # no disk is this big
    box.handle(HealthDue())
    assert "disk_low" in reporting.alerts.active
    # Every other code was taken down at start (queued for the broker), and none was logged.
    emptied = {p.topic.rsplit("/", 1)[1] for p in box.a.outbox.pending() if p.payload == b""}
    assert emptied == set(ALERT_CODES) - {"disk_low"}
    assert cleared_lines(caplog) == []

    reporting.thresholds = dataclasses.replace(reporting.thresholds, disk_low_mb=0)
    box.handle(HealthDue())
    box.handle(HealthDue())
    assert "disk_low" not in reporting.alerts.active
    assert cleared_lines(caplog) == ["alert disk_low cleared"]
