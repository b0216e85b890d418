"""The box's identity over time: when to renew its certificate, when to worry, new centre keys.

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

import re
from collections.abc import Mapping
from typing import Any

# Renew at two thirds of the lifetime (for a 365-day certificate, four months
# before it ends); raise the alert when half of what was left then is gone.
RENEW_FRACTION = 2 / 3
ALERT_FRACTION = 5 / 6
MAX_CENTRE_KEYS = 8
KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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


class BadKeyUpdate(ValueError):
    """A ``keys.update`` the box will not apply; the message says why (reply 400)."""


def key_update(args: Mapping[str, Any]) -> dict[str, str]:
    """The new key set a ``keys.update`` carries, checked in shape; BadKeyUpdate if not usable.

    ``args`` is ``{"keys": {kid: public key text, ...}}``: the whole set, which
    replaces the old one. It must keep at least one key, at most eight. The
    key that signed the command may leave the set (that is how a key is
    retired); the caller checks that each text really is an Ed25519 key.
    """
    if set(args) != {"keys"}:
        raise BadKeyUpdate("keys.update takes one argument, 'keys': {kid: public key}")
    keys = args["keys"]
    if not isinstance(keys, dict) or not keys:
        raise BadKeyUpdate("keys: a non-empty table {kid: public key}")
    if len(keys) > MAX_CENTRE_KEYS:
        raise BadKeyUpdate(f"keys: at most {MAX_CENTRE_KEYS} keys, not {len(keys)}")
    for kid, text in keys.items():
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise BadKeyUpdate(f"keys: kid {str(kid)[:70]!r} must be 1-64 letters, digits, "
                               "'.', '_' or '-'")
        if not isinstance(text, str) or not 0 < len(text) <= 512:
            raise BadKeyUpdate(f"keys.{kid}: a public key as text")
    return dict(keys)
