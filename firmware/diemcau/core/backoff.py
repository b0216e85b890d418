"""Reconnect delays: exponential, capped, with random jitter.

Jitter matters here: when a province's network comes back, thousands of
boxes must not reconnect in the same second.

    >>> backoff_delay(0, 1.0, 60.0, random=lambda: 1.0)
    1.0
    >>> backoff_delay(10, 1.0, 60.0, random=lambda: 1.0)
    60.0
"""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(attempt: int, min_s: float, max_s: float, random: Callable[[], float]) -> float:
    """Delay before retry number ``attempt`` (0-based), in seconds.

    "Equal jitter": half the exponential step is kept, half is random, so a
    delay is never shorter than half its step nor longer than ``max_s``.
    """
    step = min(max_s, min_s * 2 ** min(attempt, 32))
    return step / 2 + random() * step / 2
