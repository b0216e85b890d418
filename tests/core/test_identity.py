"""The identity rules: when to renew, when renewal failing becomes an alert."""

from __future__ import annotations

import pytest

from diemcau.core.alerts import AlertState, Observation, Thresholds, evaluate
from diemcau.core.identity import expiring_detail, renew_at

DAY = 86400.0
# A 365-day certificate from day 0: renew from day 243.3, alert from day 304.2.
NB, NA = 0.0, 365 * DAY


def cert(error: str = "") -> Observation:
    return Observation(certificate_not_before=NB, certificate_not_after=NA, renewal_error=error)


def test_renewal_is_due_at_two_thirds() -> None:
    assert renew_at(NB, NA) == pytest.approx(365 * DAY * 2 / 3)
    assert renew_at(1000.0, 1300.0) == 1200.0


def test_no_alert_while_renewal_still_has_time() -> None:
    assert expiring_detail(renew_at(NB, NA) + DAY, NB, NA, "timed out") is None
    assert expiring_detail(304 * DAY, NB, NA) is None


def test_the_alert_says_how_long_is_left_and_why() -> None:
    detail = expiring_detail(335 * DAY, NB, NA, "cannot reach https://enroll.example.vn")
    assert detail == ("certificate expires in 30 days and renewal keeps failing: cannot reach "
                      "https://enroll.example.vn")
    # Past the end it says 0, not a negative number.
    assert expiring_detail(400 * DAY, NB, NA).startswith("certificate expires in 0 days")  # type: ignore[union-attr]


def test_certificate_expiring_is_raised_then_cleared_by_a_renewal() -> None:
    limits, state = Thresholds(), AlertState()
    # The rule reads the certificate's wall-clock dates against ``ts``.
    quiet = evaluate(state, cert("timed out"), limits, now=1.0, ts=300 * DAY)
    assert quiet.raised == ()
    raised = evaluate(quiet.state, cert("timed out"), limits, now=2.0, ts=320 * DAY)
    assert [a.code for a in raised.raised] == ["certificate_expiring"]
    assert raised.raised[0].severity == "warning" and "timed out" in raised.raised[0].detail
    again = evaluate(raised.state, cert("timed out"), limits, now=3.0, ts=321 * DAY)
    assert again.raised == () and "certificate_expiring" in again.state.active
    renewed = Observation(certificate_not_before=320 * DAY, certificate_not_after=685 * DAY)
    cleared = evaluate(again.state, renewed, limits, now=4.0, ts=322 * DAY)
    assert cleared.cleared == ("certificate_expiring",)


def test_a_box_without_an_identity_neither_raises_nor_clears() -> None:
    limits = Thresholds()
    raised = evaluate(AlertState(), cert(), limits, now=1.0, ts=330 * DAY)
    kept = evaluate(raised.state, Observation(), limits, now=2.0, ts=331 * DAY)
    assert "certificate_expiring" in kept.state.active and kept.cleared == ()
