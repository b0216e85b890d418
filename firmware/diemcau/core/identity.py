"""The box's identity over time: when to renew its certificate, when to worry.

Pure: times are Unix seconds passed in (a certificate's dates are wall-clock
dates, so these rules use the wall clock; a box whose clock is not yet set
simply finds nothing due).

    >>> renew_at(0.0, 300.0)
    200.0
    >>> expiring_detail(now=260.0, not_before=0.0, not_after=300.0, last_error="timed out")
    'certificate expires in 0 days and renewal keeps failing: timed out'
    >>> expiring_detail(now=240.0, not_before=0.0, not_after=300.0) is None
    True
"""

from __future__ import annotations

# Renew at two thirds of the lifetime (for a 365-day certificate, four months
# before it ends); raise the alert when half of what was left then is gone.
RENEW_FRACTION = 2 / 3
ALERT_FRACTION = 5 / 6


def renew_at(not_before: float, not_after: float) -> float:
    """When to start renewing a certificate valid from ``not_before`` to ``not_after``."""
    return not_before + (not_after - not_before) * RENEW_FRACTION


def expiring_detail(now: float, not_before: float, not_after: float,
                    last_error: str = "") -> str | None:
    """The ``certificate_expiring`` alert's detail when renewal is overdue, else None."""
    if now < not_before + (not_after - not_before) * ALERT_FRACTION:
        return None
    days = max(0.0, (not_after - now) / 86400)
    why = f": {last_error}" if last_error else ""
    return f"certificate expires in {days:.0f} days and renewal keeps failing{why}"
