"""Path delays reported by measurement agents: which reports fall in a window and how they average."""

from __future__ import annotations

import pytest

from controller.reported_delays import Mean, ReportedDelays


def test_reports_inside_the_window_average_by_their_length():
    reported = ReportedDelays()
    reported.add(100.0, 110.0, {("a", "b"): 0.010, ("a", "c"): 0.002})
    reported.add(110.0, 115.0, {("a", "b"): 0.004, ("a", "c"): float("nan")})
    reported.add(99.5, 105.0, {("a", "b"): 1.0})  # began before the window (another routing, perhaps): left out
    got = reported.means(100.0, 115.0)
    assert got[("a", "b")].delay == pytest.approx((10 * 0.010 + 5 * 0.004) / 15)
    assert got[("a", "c")] == Mean(pytest.approx(0.002), 0)  # its NaN is not a measurement
    assert reported.means(120.0, 130.0) == {}


def test_reports_that_say_their_packets_average_by_them_else_by_their_length():
    reported = ReportedDelays()
    reported.add(100.0, 105.0, {("a", "b"): 0.010, ("a", "c"): 0.002}, {("a", "b"): 30, ("a", "c"): 8})
    reported.add(105.0, 110.0, {("a", "b"): 0.004, ("a", "c"): 0.006}, {("a", "b"): 10})
    reported.add(110.0, 120.0, {("a", "b"): 0.008}, {("a", "b"): 60})
    got = reported.means(100.0, 120.0)
    assert got[("a", "b")].delay == pytest.approx((30 * 0.010 + 10 * 0.004 + 60 * 0.008) / 100)
    assert got[("a", "b")].samples == 100
    assert got[("a", "c")].delay == pytest.approx((5 * 0.002 + 5 * 0.006) / 10)  # one report did not say: by length
    assert got[("a", "c")].samples == 0


def test_old_reports_are_dropped_and_a_backwards_window_is_refused():
    reported = ReportedDelays(keep_s=60.0)
    reported.add(0.0, 10.0, {("a", "b"): 0.01})
    reported.add(100.0, 110.0, {("a", "b"): 0.02})
    assert reported.means(-1.0, 200.0) == {("a", "b"): Mean(0.02, 0)}
    with pytest.raises(ValueError, match="must end after it starts"):
        reported.add(5.0, 5.0, {("a", "b"): 0.01})


def test_since_hands_each_kept_report_over_once_in_order():
    reported = ReportedDelays(keep_s=60.0)
    assert reported.since(0) == ([], 0)
    reported.add(0.0, 10.0, {("a", "b"): 0.01})
    reported.add(10.0, 20.0, {("a", "b"): 0.02})
    first, cursor = reported.since(0)
    assert [r.end for r in first] == [10.0, 20.0] and cursor == 2
    assert reported.since(cursor) == ([], 2)
    reported.add(200.0, 210.0, {("a", "b"): 0.03})  # the first two are dropped as it comes
    new, cursor = reported.since(cursor)
    assert [r.end for r in new] == [210.0] and cursor == 3
    assert [r.end for r in reported.since(0)[0]] == [210.0]  # a stale cursor gets what is still kept
