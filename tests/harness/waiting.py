"""Waiting on a condition instead of sleeping a fixed time: a loaded machine is slow."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02) -> T:
    """Return the first true value ``check`` gives; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout_s} s: {getattr(check, '__name__', check)}")
        time.sleep(interval_s)
