"""Reconnect delays: exponential, capped, with random jitter.

Jitter matters here: when a province's network comes back, thousands of
boxes must not reconnect in the same second.

    >>> backoff_delay(0, 1.0, 60.0, random=lambda: 1.0)
    1.0
    >>> backoff_delay(10, 1.0, 60.0, random=lambda: 1.0)
    60.0
    >>> spread_delay(30.0, random=lambda: 0.5)
    15.0
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


def spread_delay(window_s: float, random: Callable[[], float]) -> float:
    """Delay before the first attempt after a connection that was up is lost: anywhere in
    ``window_s`` ("full jitter").

    When the broker restarts, every box loses it at the same instant; the
    backoff's first step (half a second to a second) would bring them all back
    inside one second, each with a TLS handshake. Spread uniformly over the
    window, N boxes arrive at N / window a second.
    """
    return random() * max(window_s, 0.0)
