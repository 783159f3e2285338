"""Path delays reported by measurement agents: which reports fall in a window and how they average."""

from __future__ import annotations

import pytest

from controller.reported_delays import ReportedDelays


def test_reports_inside_the_window_average_by_their_length():
    reported = ReportedDelays()
    reported.add(100.0, 110.0, {("a", "b"): 0.010, ("a", "c"): 0.002})
    reported.add(110.0, 115.0, {("a", "b"): 0.004, ("a", "c"): float("nan")})
    reported.add(99.5, 105.0, {("a", "b"): 1.0})  # began before the window (another routing, perhaps): left out
    got = reported.delays(100.0, 115.0)
    assert got[("a", "b")] == pytest.approx((10 * 0.010 + 5 * 0.004) / 15)
    assert got[("a", "c")] == pytest.approx(0.002)  # its NaN is not a measurement
    assert reported.delays(120.0, 130.0) == {}


def test_old_reports_are_dropped_and_a_backwards_window_is_refused():
    reported = ReportedDelays(keep_s=60.0)
    reported.add(0.0, 10.0, {("a", "b"): 0.01})
    reported.add(100.0, 110.0, {("a", "b"): 0.02})
    assert reported.delays(-1.0, 200.0) == {("a", "b"): 0.02}
    with pytest.raises(ValueError, match="must end after it starts"):
        reported.add(5.0, 5.0, {("a", "b"): 0.01})
