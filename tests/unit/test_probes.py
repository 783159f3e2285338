"""The probes' payload, schedule and delay estimate (pure), and the online calibration fed with them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controller.probes import (
    HOST_EDGE_MIN_PAIRS,
    LOOPBACK_SHARE,
    MAX_POOLED_LINKS,
    PathDelays,
    PathStat,
    ProbeSample,
    MIN_PATH_PROBES,
    ProbeSchedule,
    loopback_times,
    path_stats,
    pooled_path_stats,
    probe_id,
    probe_ids_in,
    probe_payload,
    fit_host_edge,
    rate_needed,
    sampling_mape,
)
from controller.routing_rules import probe_routes
from mininet_topos.topologies import emulation_state
from twin.calibration.correction import CalibratedPredictor, Correction, emulated_delays, fit
from twin.calibration.online import OnlineCalibration, disturbed_windows, fit_least_squares, sample_weights
from twin.models.registry import get_predictor
from twin.state.metrics import mape


def test_payload_round_trip_and_foreign_packets():
    payload = probe_payload(123456789, 22)
    assert len(payload) == 22 and probe_id(payload) == 123456789
    assert probe_id(b"NOTPROBE" + bytes(8)) is None
    assert probe_id(b"NDT") is None


def test_probe_ids_are_found_anywhere_in_what_is_sent():
    two = b"\x04\x0d" + probe_payload(7, 22) + b"flow-mod" + probe_payload(2**40, 30)
    assert probe_ids_in(two) == [7, 2**40]
    assert probe_ids_in(bytearray(b"no probe here")) == []
    assert probe_ids_in(b"xx" + probe_payload(9, 16)[:12]) == []  # a cut-off header is no probe


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


def test_the_rate_needed_gives_every_pair_its_probes_in_the_window():
    """The schedule at ``rate_needed`` gives each ordered pair about MIN_PATH_PROBES probes per window."""
    switches, window_s = [f"s{i}" for i in range(6)], 20.0
    rate = rate_needed(len(switches), window_s)
    assert rate == pytest.approx(MIN_PATH_PROBES * 30 / (0.75 * 20.0))
    schedule = ProbeSchedule(rate, seed=3)
    schedule.set_switches(switches)
    picked, elapsed = [], 0.0
    while True:
        elapsed += schedule.gap()
        if elapsed > 50 * window_s:
            break
        picked.append(schedule.next())
    per_pair = [sum(1 for p in picked if p == (a, b)) / 50 for a in switches for b in switches if a != b]
    assert np.mean(per_pair) == pytest.approx(MIN_PATH_PROBES, rel=0.1)


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
    assert path_stats(samples)[("a", "b")].mean == pytest.approx(true_delay, rel=0.02)
    assert path_stats([s for s in samples if s.dst != "b" or s.src != "b"]) == {}  # no loopback at b: no delay
    assert path_stats(samples[:6], min_samples=3) == {}
    expected = np.sqrt(2 / np.pi) * 0.0005 / np.sqrt(300) / true_delay  # the loopbacks' spread adds ~0.3 %
    assert sampling_mape(path_stats(samples)) == pytest.approx(expected, rel=0.15)
    assert np.isnan(sampling_mape(path_stats(samples[:6])))


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
    record = PathDelays()
    for sample in samples:
        record.add(sample)
    assert record.delays(-1.0, 100.0) == {("a", "b"): stat.mean}
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


LINE_ROUTES = {("a", "b"): ("ab",), ("b", "c"): ("bc",), ("c", "d"): ("cd",), ("a", "c"): ("ab", "bc"),
               ("b", "d"): ("bc", "cd"), ("a", "d"): ("ab", "bc", "cd")}
LINE_DELAYS = {"ab": 0.001, "bc": 0.003, "cd": 0.002}


def noisy_line_stats(rng, per_probe_sd=0.002, probes=20) -> dict:
    """Each path of the line a-b-c-d measured by ``probes`` probes, each off by noise growing with
    the hops (s)."""
    stats = {}
    for pair, route in LINE_ROUTES.items():
        raws = sum(LINE_DELAYS[link] for link in route) + rng.normal(0, per_probe_sd * np.sqrt(len(route)), probes)
        stats[pair] = PathStat(float(raws.mean()), probes, float(raws.std(ddof=1) / np.sqrt(probes)))
    return stats


def test_pooled_paths_are_closer_to_the_truth_and_their_errors_are_honest():
    rng = np.random.default_rng(3)
    own_errors, pooled_errors, stderrs = [], [], []
    for _ in range(400):
        stats = noisy_line_stats(rng)
        pooled = pooled_path_stats(stats, LINE_ROUTES)
        truth = {pair: sum(LINE_DELAYS[link] for link in route) for pair, route in LINE_ROUTES.items()}
        own_errors.append([stats[p].mean - truth[p] for p in LINE_ROUTES])
        pooled_errors.append([pooled[p].mean - truth[p] for p in LINE_ROUTES])
        stderrs.append([pooled[p].stderr for p in LINE_ROUTES])
        assert all(pooled[p].samples == stats[p].samples for p in LINE_ROUTES)
    own_sd, pooled_sd = np.std(own_errors, axis=0), np.std(pooled_errors, axis=0)
    assert np.all(np.abs(np.mean(pooled_errors, axis=0)) < 0.2 * pooled_sd)  # unbiased
    assert np.all(pooled_sd < own_sd) and pooled_sd[-1] < 0.65 * own_sd[-1]  # the 3-hop path gains most
    assert np.mean(stderrs, axis=0) == pytest.approx(pooled_sd, rel=0.2)  # its standard error says so


def test_pooling_leaves_paths_without_a_route_and_needs_more_paths_than_links():
    rng = np.random.default_rng(4)
    stats = noisy_line_stats(rng)
    stats[("d", "a")] = PathStat(0.009, 5, 0.001)  # no route known: split over equal-cost routes
    pooled = pooled_path_stats(stats, LINE_ROUTES)
    assert pooled[("d", "a")] == stats[("d", "a")] and pooled[("a", "d")] != stats[("a", "d")]
    three = {pair: stats[pair] for pair in (("a", "b"), ("b", "c"), ("a", "c"))}  # 2 links, 3 paths
    assert pooled_path_stats(three, LINE_ROUTES)[("a", "c")] != three[("a", "c")]
    two = {pair: stats[pair] for pair in (("a", "b"), ("a", "c"))}  # 2 links, 2 paths: nothing to pool
    assert pooled_path_stats(two, LINE_ROUTES) == two
    assert pooled_path_stats(stats, {}) == stats
    wide = {pair: tuple(f"{link}-{k}" for k in range(MAX_POOLED_LINKS // 3 + 1) for link in route)
            for pair, route in LINE_ROUTES.items()}  # the same line with every link split: too many to fit
    assert pooled_path_stats(stats, wide) == stats


def test_probe_routes_follow_the_route_rules_and_skip_split_pairs():
    state = emulation_state("sndlib/abilene", 0.5)
    routes = probe_routes(state, frozenset(), list(state.nodes))
    names = [(lk.src, lk.dst) for lk in state.links]
    assert len(routes) == len(state.flows) == 132
    for i, flow in enumerate(state.flows):
        assert routes[(flow.src, flow.dst)] == tuple(names[k] for k in state.routes.links[i])
    first = routes[("ATLAng", "STTLng")][0]
    rerouted = probe_routes(state, frozenset({first}), ["ATLAng", "STTLng"])
    assert set(rerouted) == {("ATLAng", "STTLng"), ("STTLng", "ATLAng")} and first not in rerouted[("ATLAng", "STTLng")]
    ecmp = probe_routes(replace(state, ecmp=True), frozenset(), list(state.nodes))
    routed = replace(state, ecmp=True).routes
    single = {(state.flows[o].src, state.flows[o].dst) for o in set(routed.owner.tolist())
              if np.count_nonzero(routed.owner == o) == 1}
    assert set(ecmp) == single and len(single) < 132


def test_path_delays_pool_only_windows_under_the_current_routes():
    rng = np.random.default_rng(5)
    record, t = PathDelays(), 0.0
    for _ in range(40):
        for pair, route in LINE_ROUTES.items():
            t += 0.01
            for end in pair:
                record.add(ProbeSample(end, end, t, t + 0.001))
            delay = sum(LINE_DELAYS[link] for link in route) + rng.normal(0, 0.002)
            record.add(ProbeSample(*pair, t, t + 0.001 + delay))
    own = record.stats(0.0, 100.0)
    record.set_routes(LINE_ROUTES, since=0.5)
    assert record.stats(0.0, 100.0) == own  # the window began before these routes
    assert record.stats(0.5, 100.0) != record.stats(0.5, 100.0, pooled=False)
    record.set_routes(dict(LINE_ROUTES), since=1.0)  # the same routes installed again
    assert record.stats(0.5, 100.0) != record.stats(0.5, 100.0, pooled=False)
    record.set_routes({**LINE_ROUTES, ("a", "d"): ("ab", "bd")}, since=1.0)  # a route moved
    assert record.stats(0.5, 100.0) == record.stats(0.5, 100.0, pooled=False)
    assert record.delays(0.5, 100.0) == {pair: stat.mean for pair, stat in record.stats(0.5, 100.0).items()}


def test_the_host_edge_fit_recovers_a_common_term_and_each_switchs_own():
    rng = np.random.default_rng(11)
    switches = [f"s{i}" for i in range(8)]
    sending = dict(zip(switches, rng.uniform(-2e-4, 2e-4, 8)))
    receiving = dict(zip(switches, rng.uniform(-2e-4, 2e-4, 8)))
    differences = {(a, b): (4e-4 + sending[a] + receiving[b] + rng.normal(0, 2e-5), 50.0)
                   for a in switches for b in switches if a != b}
    fit = fit_host_edge(differences)
    truth = {pair: 4e-4 + sending[pair[0]] + receiving[pair[1]] for pair in differences}
    errors = [fit.offset(pair) - truth[pair] for pair in differences]
    common_only = [fit.mean - truth[pair] for pair in differences]
    # each pair's own edge, not only the common one (the pull to the common term costs a little)
    assert np.sqrt(np.mean(np.square(errors))) < 0.4 * np.sqrt(np.mean(np.square(common_only)))
    assert fit.pairs == 56 and fit.mean == pytest.approx(np.mean([d for d, _ in differences.values()]), abs=2e-5)
    assert fit.offset(("s0", "elsewhere")) == pytest.approx(fit.common + fit.sending["s0"])  # unknown: no own term


def test_the_host_edge_needs_pairs_and_one_far_off_pair_moves_only_its_own_switches():
    assert fit_host_edge({(f"s{k}", "t"): (1e-3, 5.0) for k in range(HOST_EDGE_MIN_PAIRS - 1)}) is None
    differences = {(a, b): (5e-4, 10.0) for a in "abcd" for b in "abcd" if a != b}
    differences[("e", "a")] = (5e-3, 10.0)  # one pair from e, far off
    fit = fit_host_edge(differences)
    assert fit.common == pytest.approx(5e-4)
    assert fit.offset(("b", "c")) == pytest.approx(5e-4, abs=1e-4) and fit.offset(("b", "a")) < 1.2e-3
    assert fit.offset(("x", "y")) == pytest.approx(5e-4)  # switches no report informs: the common term
    assert 5e-4 < fit.offset(("e", "a")) < 5e-3 and fit.offset(("e", "b")) > fit.offset(("c", "b"))


def test_reports_beside_the_probes_add_the_hosts_edge_to_every_path():
    rng = np.random.default_rng(12)
    record, t, edge = PathDelays(), 0.0, 3e-4
    for _ in range(60):
        for pair, route in LINE_ROUTES.items():
            t += 0.01
            for end in pair:
                record.add(ProbeSample(end, end, t, t + 0.001))
            delay = sum(LINE_DELAYS[link] for link in route) + rng.normal(0, 2e-4)
            record.add(ProbeSample(*pair, t, t + 0.001 + delay))
    raw = record.delays(0.0, 100.0)
    assert record.host_edge is None
    reported = {pair: sum(LINE_DELAYS[link] for link in LINE_ROUTES[pair]) + edge
                for pair in [("a", "b"), ("b", "c"), ("a", "c"), ("b", "d")]}  # ("c", "d"), ("a", "d") not reported
    assert record.compare_reports([(0.0, 1.8, reported), (1.8, 100.0, reported)]) == 8
    assert record.host_edge.pairs == 4 and record.host_edge.mean == pytest.approx(edge, abs=1e-4)
    got = record.delays(0.0, 100.0)
    for pair in [("c", "d"), ("a", "d")]:
        truth = sum(LINE_DELAYS[link] for link in LINE_ROUTES[pair]) + edge
        assert abs(got[pair] - truth) < abs(raw[pair] - truth) and abs(got[pair] - truth) < 1.5e-4
    assert {p: s.mean for p, s in record.stats(0.0, 100.0, host_edge=False).items()} == raw


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


def test_one_noisy_window_of_high_load_does_not_make_the_online_fit_alone():
    """Windows at four loads measured exactly, one at 95 % whose delays came out 40 % high (a short
    window at that load is that noisy): each window's errors relative to its own scale, the fit stays
    near the truth on the others; every flow's error in seconds, the high-load window pulls it off."""
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.0, per_hop_s=0.0004, base_s=0.0001)
    states = [emulation_state("ring:6", load, seed=k) for k, load in enumerate((0.3, 0.5, 0.6, 0.7, 0.95))]
    measured = [emulated_delays(s, qt.predict_delays([s])[0], truth) for s in states]
    measured[-1] = 1.4 * measured[-1]
    calibration = OnlineCalibration(Correction(per_hop_s=0.0003), min_flows=30, min_windows=3)
    for state, delays in zip(states, measured):
        calibration.add(state, delays)
    fitted = calibration.current(qt)
    weighted, unweighted = fitted.correction, fit_least_squares(states, measured, qt)

    def error_on_the_others(correction):
        predicted = CalibratedPredictor(qt, correction).predict_delays(states[:-1])
        return float(np.mean([mape(p, m) for p, m in zip(predicted, measured[:-1])]))

    assert fitted.fitted and error_on_the_others(weighted) < 0.07 < error_on_the_others(unweighted)


def test_a_disturbed_stretch_is_left_out_of_the_online_fit():
    """Six windows measured exactly, two in a row whose delays came out 2.5 times too long (the
    machine stalled): they are left out and the fit matches the others; fitting every window, the
    stall bends the correction for all."""
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.0, per_hop_s=0.0004, base_s=0.0001)
    states = [emulation_state("ring:6", load, seed=k) for k, load in enumerate((0.4, 0.5, 0.6, 0.7, 0.5, 0.6, 0.8, 0.6))]
    measured = [emulated_delays(s, qt.predict_delays([s])[0], truth) for s in states]
    measured[4], measured[5] = 2.5 * measured[4], 2.5 * measured[5]
    robust, every = OnlineCalibration(min_flows=30, min_windows=3), OnlineCalibration(min_flows=30, min_windows=3,
                                                                                      leave_out_disturbed=False)
    for state, delays in zip(states, measured):
        robust.add(state, delays), every.add(state, delays)
    clean = [0, 1, 2, 3, 6, 7]

    def error_on_the_clean(correction):
        predicted = CalibratedPredictor(qt, correction).predict_delays([states[k] for k in clean])
        return float(np.mean([mape(p, measured[k]) for p, k in zip(predicted, clean)]))

    kept, bent = robust.current(qt), every.current(qt)
    assert kept.fitted and kept.left_out == 2 and kept.windows == 8 and kept.mape < 0.01
    assert bent.left_out == 0 and error_on_the_clean(kept.correction) < 0.01 < 0.1 < error_on_the_clean(bent.correction)
    too_few = OnlineCalibration(min_flows=30, min_windows=7)  # leaving two out would leave six: all are fitted
    for state, delays in zip(states, measured):
        too_few.add(state, delays)
    assert too_few.current(qt).left_out == 0 and too_few.last.correction == bent.correction


def test_disturbed_windows_stand_out_by_robust_spreads_and_a_least_excess():
    assert list(disturbed_windows(np.array([0.08, 0.09, 0.10, 0.085, 0.40]))) == [False] * 4 + [True]
    assert not disturbed_windows(np.array([0.1, 0.2, 0.3, 0.4, 0.5])).any()  # 0.2 above: within 3 spreads (0.44)
    assert not disturbed_windows(np.array([0.001, 0.001, 0.001, 0.02])).any()  # no spread, but below the least excess
    assert list(disturbed_windows(np.array([0.1, np.nan, 0.1, 0.1, 0.5]))) == [False, False, False, False, True]
    assert not disturbed_windows(np.array([np.nan, np.nan])).any()


def test_flows_measured_over_few_packets_pull_the_online_fit_less_when_their_counts_are_given():
    """In each window half the flows are measured over 2,000 packets (exactly), the other half over
    5 (the true mean times an exponential draw, as a short sample of a queue): given the counts, the
    fit stays near the truth on the well-measured flows; without them the few-packet means pull it."""
    qt = get_predictor("qt")
    truth = Correction(queue_scale=1.0, per_hop_s=0.0004, base_s=0.0001)
    rng = np.random.default_rng(5)
    counted = OnlineCalibration(Correction(), min_flows=30, min_windows=3)
    uncounted = OnlineCalibration(Correction(), min_flows=30, min_windows=3, weigh_samples=False)
    states, exact, heavy_flows = [], [], []
    for k, load in enumerate((0.5, 0.6, 0.7, 0.8, 0.9)):
        state = emulation_state("ring:6", load, seed=k)
        clean = emulated_delays(state, qt.predict_delays([state])[0], truth)
        heavy = rng.random(len(clean)) < 0.5
        measured = np.where(heavy, clean, clean * rng.exponential(1.0, len(clean)))
        samples = np.where(heavy, 2000.0, 5.0)
        counted.add(state, measured, samples)
        uncounted.add(state, measured)
        states.append(state), exact.append(clean), heavy_flows.append(heavy)

    def error_on_the_heavy_flows(correction):
        predicted = CalibratedPredictor(qt, correction).predict_delays(states)
        return float(np.mean([mape(p[h], m[h]) for p, m, h in zip(predicted, exact, heavy_flows)]))

    with_counts, without = (c.current(qt) for c in (counted, uncounted))
    assert with_counts.fitted and error_on_the_heavy_flows(with_counts.correction) < 0.03
    assert error_on_the_heavy_flows(without.correction) > 2 * error_on_the_heavy_flows(with_counts.correction)


def test_sample_weights_are_relative_to_the_window_and_neutral_where_unknown():
    measured = np.array([0.002, 0.004, np.nan, 0.003])
    assert sample_weights(measured, None) == 1.0
    assert sample_weights(measured, np.zeros(4)) == 1.0
    weights = sample_weights(measured, np.array([100.0, 400.0, 9.0, 0.0]))  # the third not measured, the last not counted
    assert weights == pytest.approx([np.sqrt(100 / 250), np.sqrt(400 / 250), 1.0, 1.0])
    bounded = sample_weights(np.full(4, 0.003), np.array([1.0, 100.0, 100.0, 4e9]))  # an absurd count: ten flows' worth
    assert bounded == pytest.approx(np.sqrt([0.1, 1.0, 1.0, 10.0]))
    with pytest.raises(ValueError, match="sample counts"):
        OnlineCalibration().add(emulation_state("ring:4", 0.5), np.full(12, 0.004), np.ones(3))


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
