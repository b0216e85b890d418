"""The unit guards updates with the committed release's commands (docs/updates.md)."""

from __future__ import annotations

import re
from pathlib import Path

from diemcau.config import Updates
from tests.harness.unit_runner import UNIT, Unit

ROOT, CONFIG = Path("/r"), Path("/c.toml")


def test_check_and_wait_run_from_the_committed_release_around_the_current_one() -> None:
    unit = Unit.read(UNIT, root=ROOT, config=CONFIG)
    assert unit.pre[0] == ["/r/committed/bin/diemcau", "release", "check", "--config", "/c.toml"]
    assert unit.start == ["/r/current/bin/diemcau", "run", "--config", "/c.toml"]
    assert unit.post == [["/r/committed/bin/diemcau", "release", "wait", "--config", "/c.toml"]]
    assert 75 not in unit.prevent_exit  # the restart into a new release must be restarted


def test_the_start_timeout_leaves_room_for_release_wait() -> None:
    text = UNIT.read_text()
    timeout = int(re.search(r"^TimeoutStartSec=(\d+)$", text, re.M)[1])  # type: ignore[index]
    assert timeout > Updates().health_deadline_s + 60
    assert re.search(r"^ReadWritePaths=.*/opt/diemcau\b", text, re.M)
