"""The probes' payload, schedule and delay estimate (pure), and the online calibration fed with them."""

from __future__ import annotations

import numpy as np
import pytest

from controller.probes import (
    LOOPBACK_SHARE,
    PathDelays,
    ProbeSample,
    ProbeSchedule,
    loopback_times,
    path_delays,
    path_stats,
    probe_id,
    probe_payload,
    sampling_mape,
)
from mininet_topos.topologies import emulation_state
from twin.calibration.correction import CalibratedPredictor, Correction, emulated_delays, fit
from twin.calibration.online import OnlineCalibration
from twin.models.registry import get_predictor
from twin.state.metrics import mape


def test_payload_round_trip_and_foreign_packets():
    payload = probe_payload(123456789, 22)
    assert len(payload) == 22 and probe_id(payload) == 123456789
    assert probe_id(b"NOTPROBE" + bytes(8)) is None
    assert probe_id(b"NDT") is None


def test_schedule_covers_every_pair_and_loopback_at_the_asked_rate():
    schedule = ProbeSchedule(rate_pps=50.0, seed=1)
    assert schedule.next() is None  # no switch with a host yet
    schedule.set_switches(["c", "a", "b"])
    picked = [schedule.next() for _ in range(4000)]
    pairs = {p for p in picked if p[0] != p[1]}
    loops = [p for p in picked if p[0] == p[1]]
    assert pairs == {(x, y) for x in "abc" for y in "abc" if x != y}
    assert {p[0] for p in loops} == {"a", "b", "c"}
    assert len(loops) / len(picked) == pytest.approx(LOOPBACK_SHARE, abs=0.03)
    gaps = [schedule.gap() for _ in range(4000)]
    assert np.mean(gaps) == pytest.approx(1 / 50.0, rel=0.05)
    assert np.std(gaps) == pytest.approx(1 / 50.0, rel=0.1)  # exponential: Poisson sampling


def test_delay_is_raw_time_minus_half_of_each_ends_loopback():
    rng = np.random.default_rng(0)
    overhead = {"a": 0.0004, "b": 0.0010}  # control channel + packet-out/in handling, both ways
    true_delay = 0.0030
    samples, t = [], 0.0
    for _ in range(300):
        t += 0.01
        for switch in "ab":
            raw = overhead[switch] * (1 + 0.05 * rng.standard_normal())
            samples.append(ProbeSample(switch, switch, t, t + raw))
        raw = true_delay + 0.5 * (overhead["a"] + overhead["b"]) + 0.0005 * rng.standard_normal()
        samples.append(ProbeSample("a", "b", t, t + raw))
    assert loopback_times(samples)["b"] == pytest.approx(0.0010, rel=0.02)  # mean of the loopbacks
    assert path_delays(samples)[("a", "b")] == pytest.approx(true_delay, rel=0.02)
    assert path_delays([s for s in samples if s.dst != "b" or s.src != "b"]) == {}  # no loopback at b: no delay
    assert path_delays(samples[:6], min_samples=3) == {}
    expected = np.sqrt(2 / np.pi) * 0.0005 / np.sqrt(300) / true_delay
    assert sampling_mape(samples) == pytest.approx(expected, rel=0.15)
    assert np.isnan(sampling_mape(samples[:6]))


def test_path_stats_give_the_mean_its_count_and_its_standard_error():
    rng = np.random.default_rng(0)
    samples = [ProbeSample("a", "a", t, t + 0.001) for t in range(10)]
    samples += [ProbeSample("b", "b", t, t + 0.002) for t in range(10)]
    raws = 0.004 + rng.normal(0, 0.001, 8)
    samples += [ProbeSample("a", "b", t, t + r) for t, r in enumerate(raws)]
    stat = path_stats(samples)[("a", "b")]
    assert stat.samples == 8
    assert stat.mean == pytest.approx(raws.mean() - 0.0015)
    assert stat.stderr == pytest.approx(raws.std(ddof=1) / np.sqrt(8))  # constant loopbacks add nothing
    assert path_delays(samples) == {("a", "b"): stat.mean}
    assert path_stats(samples[:20] + samples[20:22]) == {}  # two probes: below min_samples


def test_robust_path_stats_shrug_off_a_stalled_probe():
    rng = np.random.default_rng(1)
    samples = [ProbeSample(s, s, t, t + 0.001) for s in "ab" for t in range(10)]
    raws = 0.004 + rng.normal(0, 0.0002, 7)
    samples += [ProbeSample("a", "b", t, t + r) for t, r in enumerate(raws)]
    stalled = samples + [ProbeSample("a", "b", 9.0, 9.0 + 0.060)]  # one probe 60 ms late in the controller
    plain, robust = path_stats(stalled)[("a", "b")], path_stats(stalled, robust=True)[("a", "b")]
    assert plain.mean > 0.009 and plain.stderr > 0.005  # the mean moved by 7 ms
    assert robust.mean == pytest.approx(np.median(np.append(raws, 0.060)) - 0.001)
    assert robust.mean < 0.0035 and robust.stderr < 0.0005


def test_path_delays_keep_a_bounded_window():
    record = PathDelays(keep_s=10.0)
    for t in range(100):
        record.add(ProbeSample("a", "a", t, t + 0.001))
    assert len(record.samples(0, 1000)) == 11
    assert len(record.samples(95, 98)) == 3


def test_online_calibration_recovers_the_networks_correction():
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.3, per_hop_s=0.0007, base_s=0.0002)
    calibration = OnlineCalibration(Correction(), min_flows=30, min_windows=3)
    states = [emulation_state("ring:6", load, seed=k) for k, load in enumerate((0.3, 0.5, 0.7, 0.8))]
    for k, state in enumerate(states):
        calibration.add(state, emulated_delays(state, qt.predict_delays([state])[0], truth))
        if k == 1:
            assert not calibration.current(qt).fitted  # two windows: the prior still
    assert not calibration.last.fitted
    fitted = calibration.current(qt)
    assert fitted.fitted and fitted.windows == 4
    held_out = emulation_state("ring:6", 0.6, seed=9)
    measured = emulated_delays(held_out, qt.predict_delays([held_out])[0], truth)
    before = mape(CalibratedPredictor(qt, Correction()).predict_delays([held_out])[0], measured)
    after = mape(CalibratedPredictor(qt, fitted.correction).predict_delays([held_out])[0], measured)
    assert before > 0.2 and after < 0.02 and fitted.mape < 0.02


def test_online_calibration_keeps_a_prior_that_explains_the_windows_better():
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.3, per_hop_s=0.0007, base_s=0.0002)
    calibration = OnlineCalibration(truth, min_flows=1, min_windows=1)
    state = emulation_state("ring:6", 0.6)
    measured = emulated_delays(state, qt.predict_delays([state])[0], truth)
    calibration.add(state, measured)
    kept = calibration.current(qt)
    assert kept.correction == truth and not kept.fitted and kept.mape < 1e-9


def test_online_calibration_keeps_the_prior_until_enough_flows():
    prior = Correction(per_hop_s=0.001)
    calibration = OnlineCalibration(prior, min_flows=1000)
    state = emulation_state("ring:4", 0.5)
    calibration.add(state, np.full(len(state.flows), 0.004))
    assert calibration.current(get_predictor("qt")).correction == prior
    calibration.add(state, np.full(len(state.flows), np.nan))  # nothing measured: not a window
    assert calibration.last.windows == 0 and calibration.flows == len(state.flows)
    with pytest.raises(ValueError, match="flows"):
        calibration.add(state, np.zeros(3))


def test_the_online_fit_is_not_pulled_to_zero_by_few_samples_per_path():
    """Each path's measurement the mean of a few queue samples (modelled as the true mean times an
    exponential draw): least relative deviation (ndt calibrate's fit) collapses the queueing to
    almost nothing, the online least-squares fit keeps it."""
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.0, per_hop_s=0.0002, base_s=0.0)
    rng = np.random.default_rng(3)
    calibration = OnlineCalibration(Correction(), min_flows=30, min_windows=3)
    states = [emulation_state("ring:6", load, seed=k) for k, load in enumerate((0.5, 0.7, 0.8, 0.9))]
    measured = []
    for state in states:
        clean = emulated_delays(state, qt.predict_delays([state])[0], truth)
        measured.append(clean * rng.exponential(1.0, len(clean)))
        calibration.add(state, measured[-1])
    fitted = calibration.current(qt)
    assert fitted.fitted and 0.8 < fitted.correction.queue_scale < 1.25
    assert fit(states, measured, qt).queue_scale < 0.3
