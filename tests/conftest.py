"""Shared fixtures: a real Mosquitto, the centre's key, an observer, boxes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.harness.box import Box, CentreKey
from tests.harness.broker import Broker
from tests.harness.observer import Observer

# Tests do not assert on wall-clock time, and that includes hypothesis's
# per-example deadline: a loaded CI machine must not fail an example for being slow.
settings.register_profile("diemcau", deadline=None)
settings.load_profile("diemcau")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def centre() -> CentreKey:
    return CentreKey()


@pytest.fixture
def observer(broker: Broker, centre: CentreKey) -> Iterator[Observer]:
    obs = Observer(broker, centre)
    yield obs
    obs.close()


@pytest.fixture
def make_box(tmp_path: Path, broker: Broker, centre: CentreKey,
             request: pytest.FixtureRequest) -> Iterator[Callable[..., Box]]:
    """Make (and afterwards stop) boxes on the test broker; their logs go into failures."""
    boxes: list[Box] = []

    def make(device_id: str = "c00001-r1", **kw: object) -> Box:
        box = Box(tmp_path / device_id, broker, centre, device_id=device_id, **kw)  # type: ignore[arg-type]
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for box in boxes:
            print(f"----- log of box {box.device_id} -----\n{box.log_text()[-6000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)
