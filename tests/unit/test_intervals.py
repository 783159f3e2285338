"""Prediction intervals: split-conformal coverage, the safe operating range, the intervals file."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.api_stand_in import square_state
from twin.data.dataset import Sample
from twin.models.intervals import (
    IntervalError,
    Intervals,
    SafeRange,
    conformal_bounds,
    coverage,
    fit_intervals,
    judge,
    load_bucket,
    path_max_load,
)
from twin.models.qt import QueueingModel


def test_conformal_bounds_cover_the_nominal_share_of_fresh_draws():
    rng = np.random.default_rng(3)
    lo, hi = conformal_bounds(rng.lognormal(0.0, 0.2, 2000), 0.9)
    fresh = rng.lognormal(0.0, 0.2, 20000)
    inside = np.mean((fresh >= lo) & (fresh <= hi))
    assert 0.88 <= inside <= 0.92
    assert lo < 1.0 < hi


def test_path_max_load_is_the_busiest_link_on_the_path():
    state = square_state()
    utilization = state.utilization()
    for i, links in enumerate(state.flow_links):
        assert path_max_load(state)[i] == pytest.approx(utilization[links].max())
    ecmp = replace(state, ecmp=True)  # a flow split over several routes: the busiest link of any of them
    routes, utilization = ecmp.routes, ecmp.utilization()
    for i in range(len(ecmp.flows)):
        mine = [links for owner, links in zip(routes.owner, routes.links) if owner == i]
        assert path_max_load(ecmp)[i] == pytest.approx(max(utilization[links].max() for links in mine))
    assert list(load_bucket(np.array([0.1, 0.5, 0.69, 0.95]))) == [0, 1, 1, 3]


class NoisyTruth:
    """QT's delays times a log-normal factor whose spread grows with load: a stand-in simulator."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def sample(self, state):
        base = QueueingModel().predict_delays([state])[0]
        spread = 0.05 + 0.3 * path_max_load(state)
        return Sample(state=state, labels={"delay": base * self.rng.lognormal(0.0, spread)}, meta={})


def random_square(rng) -> "object":
    state = square_state()
    return state.scaled(float(rng.uniform(0.5, 5.0)))  # busiest link 0.1-1.0


def test_fitted_intervals_cover_held_out_samples_in_every_load_bucket():
    rng = np.random.default_rng(0)
    truth = NoisyTruth(1)
    fit_set = [truth.sample(random_square(rng)) for _ in range(600)]
    check_set = [truth.sample(random_square(rng)) for _ in range(600)]
    intervals = fit_intervals(fit_set, QueueingModel(), "qt")
    report = coverage(check_set, QueueingModel(), intervals)
    assert 0.86 <= report["coverage"] <= 0.94
    checked = [row for row in report["by_load"] if row["paths"] >= 100]
    assert len(checked) >= 3
    for row in checked:
        assert 0.84 <= row["coverage"] <= 0.96, row
    widths = [r["median_relative_width"] for r in report["by_load"] if r["paths"] >= 100]
    assert widths == sorted(widths)  # the noisier the bucket, the wider its interval


def test_a_state_outside_the_safe_range_gets_reasons_and_no_interval():
    state = square_state()
    safe = SafeRange.of([state])
    assert safe.reasons(state) == []
    crowded = state.scaled(3.0)
    reasons = safe.reasons(crowded)
    assert any("loaded to" in r for r in reasons)
    small_buffers = replace(state, links=tuple(replace(lk, buffer=2) for lk in state.links))
    assert any("buffers of 2-2 packets" in r for r in safe.reasons(small_buffers))
    assert safe.reasons(replace(state, ecmp=True)) == ["ECMP splits traffic over equal-cost paths, which no checked "
                                                       "sample did"]
    assert SafeRange.of([replace(state, ecmp=True)]).reasons(replace(state, ecmp=True)) == []
    intervals = Intervals("qt", 0.9, [0.9] * 4, [1.1] * 4, [100] * 4, safe)
    judged = judge(crowded, np.ones(2), intervals)
    assert judged.in_safe_range is False and judged.lo is None and judged.reasons == reasons
    inside = judge(state, np.array([1.0, 2.0]), intervals)
    assert inside.in_safe_range and list(inside.hi) == [1.1, 2.2]
    rows = inside.path_rows(state)
    assert rows[1] == {"src": "s2", "dst": "s4", "delay": 2.0, "delay_lo": 1.8, "delay_hi": 2.2}
    assert judge(state, np.ones(2), None).in_safe_range is None


def test_intervals_file_round_trip_and_damage(tmp_path):
    state = square_state()
    intervals = Intervals("qt", 0.9, [0.8, 0.9, 0.9, 0.7], [1.2, 1.1, 1.3, 1.6], [60, 70, 80, 90],
                          SafeRange.of([state]), {"data": "x"})
    path = intervals.save(tmp_path / "qt.intervals.json")
    again = Intervals.load(path)
    assert again == intervals
    data = json.loads(path.read_text())
    data["load_edges"] = [0.3]
    path.write_text(json.dumps(data))
    with pytest.raises(IntervalError, match="refit with 'ndt intervals fit'"):
        Intervals.load(path)
    path.write_text("{")
    with pytest.raises(IntervalError, match="not a readable intervals file"):
        Intervals.load(path)


def test_too_few_held_out_paths_is_refused():
    truth = NoisyTruth(2)
    with pytest.raises(IntervalError, match="at least 50 are needed"):
        fit_intervals([truth.sample(square_state())], QueueingModel(), "qt")
