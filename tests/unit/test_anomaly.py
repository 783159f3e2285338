"""Anomaly detection's pure logic (analysis/anomaly.py) on synthetic windows: the band and its
widening, persistence, the suspect ranking, the links' loads, quiet runs without alarms, and bad
input refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.anomaly import (AnomalyDetector, AnomalyError, DetectorSettings, LinkLoad, Observation, PathVerdict,
                              suspects)

# a line a-b-c-d: paths cross these directed links
ROUTES = {("a", "b"): (("a", "b"),), ("a", "c"): (("a", "b"), ("b", "c")), ("a", "d"): (("a", "b"), ("b", "c"), ("c", "d")),
          ("b", "c"): (("b", "c"),), ("b", "d"): (("b", "c"), ("c", "d")), ("c", "d"): (("c", "d"),),
          ("d", "a"): (("d", "c"), ("c", "b"), ("b", "a"))}
PREDICTED = {pair: 1e-3 * len(links) for pair, links in ROUTES.items()}
CAPACITY = 2e6  # bit/s, every link
EXPECTED = {link: 0.5e6 for links in ROUTES.values() for link in links}  # bit/s the traffic matrix puts on each link


def window(rng, extra=None, noise=0.05, bias=0.1, samples=6, skip=()) -> list[Observation]:
    """Every path measured with ``samples`` probes: the prediction × (1 + bias) plus the probes' own
    noise (relative sd ``noise`` per probe); ``extra``: link → delay added to paths crossing it, s."""
    out = []
    for pair, links in ROUTES.items():
        if pair in skip:
            continue
        truth = PREDICTED[pair] * (1 + bias) + sum((extra or {}).get(link, 0.0) for link in links)
        probes = truth + rng.normal(0, noise * PREDICTED[pair], samples)
        out.append(Observation(*pair, measured_s=float(probes.mean()), samples=samples,
                               stderr_s=float(probes.std(ddof=1) / math.sqrt(samples)),
                               predicted_s=PREDICTED[pair], links=links))
    return out


def loads(rng, change=None, noise=0.003, bias=0.004) -> list[LinkLoad]:
    """Every link's carried load: the expected one plus ``bias`` × capacity (probes, LLDP) and noise
    (``noise`` × capacity sd); ``change``: link → load added (bit/s; negative: lost)."""
    return [LinkLoad(*link, measured_bps=max(0.0, EXPECTED[link] + CAPACITY * (bias + rng.normal(0, noise))
                                             + (change or {}).get(link, 0.0)),
                     expected_bps=EXPECTED[link], capacity_bps=CAPACITY) for link in sorted(EXPECTED)]


def learned(settings=None, seed=0, **kw) -> tuple[AnomalyDetector, np.random.Generator]:
    detector = AnomalyDetector(settings or DetectorSettings(reference_windows=6, persistence=3))
    rng = np.random.default_rng(seed)
    for i in range(detector.settings.reference_windows):
        assert detector.judge(float(i), window(rng, **kw), loads(rng)).learning
    assert not detector.learning
    return detector, rng


def test_a_quiet_network_with_a_biased_twin_raises_no_alarm_in_a_thousand_windows():
    """The twin is 10 % low on every path (its residual on this network): the learned bias absorbs it."""
    detector, rng = learned()
    alarms = 0
    for i in range(1000):
        verdict = detector.judge(100.0 + i, window(rng))
        alarms += bool(verdict.anomalies)
        assert not verdict.learning and len(verdict.paths) == len(ROUTES)
    assert alarms == 0


def test_without_the_learned_bias_the_same_quiet_network_would_alarm():
    """The widening is what keeps it quiet: a detector that never saw the reference (a bias of 0
    and the floor spread) flags the 10 %-low twin at once (so the test above can fail)."""
    detector = AnomalyDetector(DetectorSettings(reference_windows=1, persistence=3, min_spread=0.01))
    rng = np.random.default_rng(1)
    detector.judge(0.0, window(rng, bias=0.0))  # the reference: a twin that was right
    verdicts = [detector.judge(1.0 + i, window(rng, bias=0.3, noise=0.01)) for i in range(3)]
    assert verdicts[-1].anomalies


def test_a_slow_link_is_detected_after_persistence_windows_and_named_first():
    detector, rng = learned(DetectorSettings(reference_windows=6, persistence=3, corroborated_persistence=3))
    verdicts = [detector.judge(10.0 + i, window(rng, extra={("b", "c"): 2e-3})) for i in range(3)]
    assert not verdicts[0].anomalies and not verdicts[1].anomalies  # outside, but not yet for 3 windows
    last = verdicts[2]
    assert {(p.src, p.dst) for p in last.anomalies} == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}
    assert sorted(last.new) == sorted((p.src, p.dst) for p in last.anomalies)
    assert all(p.side == 1 and p.since == 10.0 and p.measured_s > p.hi_s for p in last.anomalies)
    top = last.suspects[0]
    assert (top.src, top.dst) == ("b", "c") and top.score == 1.0 and top.normal_paths == 0
    # a-b is shared by two anomalous paths but crossed by the normal a->b: ranked below b-c
    ab = next(s for s in last.suspects if (s.src, s.dst) == ("a", "b"))
    assert ab.normal_paths == 1 and ab.score == pytest.approx((2 - 0.5) / 4)
    assert detector.judge(13.0, window(rng, extra={("b", "c"): 2e-3})).new == []  # counted once


def test_paths_sharing_a_slow_link_corroborate_each_other_a_window_sooner():
    """Four paths cross the slow b-c: outside together for 2 windows, they are anomalous then."""
    detector, rng = learned()
    first, second = (detector.judge(10.0 + i, window(rng, extra={("b", "c"): 2e-3})) for i in range(2))
    assert not first.anomalies and all(p.streak == 1 for p in first.paths if p.side)
    assert {(p.src, p.dst) for p in second.anomalies} == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}
    assert (second.suspects[0].src, second.suspects[0].dst) == ("b", "c")


def test_a_path_outside_alone_waits_for_the_full_persistence():
    """Only d->a crosses d-c: no other path corroborates it, so 2 windows outside are not enough."""
    detector, rng = learned()
    verdicts = [detector.judge(10.0 + i, window(rng, extra={("d", "c"): 2e-3})) for i in range(3)]
    assert [bool(v.anomalies) for v in verdicts] == [False, False, True]
    assert [(p.src, p.dst) for p in verdicts[2].anomalies] == [("d", "a")]


def slowed_alone(observations, pair=("a", "c"), factor=2.0) -> list[Observation]:
    """``observations`` with only ``pair`` measured ``factor`` times slower (a cause on no link)."""
    return [Observation(o.src, o.dst, o.measured_s * (factor if o.pair == pair else 1.0), o.samples, o.stderr_s,
                        o.predicted_s, o.links) for o in observations]


@pytest.mark.parametrize("extra", [1, 0])
def test_a_path_outside_while_paths_across_each_of_its_links_are_inside_waits_longer(extra):
    """a->c slows alone while a->b, a->d, b->c and b->d, which cross its two links, stay inside: no
    link explains it, so it needs ``contradicted_extra`` more windows than the persistence."""
    detector, rng = learned(DetectorSettings(reference_windows=6, persistence=3, contradicted_extra=extra))
    verdicts = [detector.judge(10.0 + i, slowed_alone(window(rng))) for i in range(4)]
    assert all({(p.src, p.dst) for p in v.paths if p.side} == {("a", "c")} for v in verdicts)
    flagged = [bool(v.anomalies) for v in verdicts]
    assert flagged == ([False, False, False, True] if extra else [False, False, True, True])
    assert [(p.src, p.dst) for p in verdicts[-1].anomalies] == [("a", "c")]


def test_paths_outside_on_opposite_sides_do_not_corroborate():
    """a->c above its band and b->c below it share b-c, but not a side: neither is anomalous after 2 windows."""
    detector, rng = learned()
    for i in range(2):
        observations = window(rng, skip={("a", "d"), ("b", "d")})
        shifted = [Observation(o.src, o.dst, o.measured_s * {("a", "c"): 2.0, ("b", "c"): 0.3}.get(o.pair, 1.0),
                               o.samples, o.stderr_s, o.predicted_s, o.links) for o in observations]
        verdict = detector.judge(10.0 + i, shifted)
    assert {(p.src, p.dst) for p in verdict.paths if p.side} == {("a", "c"), ("b", "c")}
    assert not verdict.anomalies


def test_a_corroborated_path_stays_anomalous_while_its_streak_goes_on_alone():
    """With persistence 5, the four paths across a slow b-c are anomalous after 2 windows; then only a->c
    stays slow: it stays anomalous (counted once), and clears once back inside."""
    detector, rng = learned(DetectorSettings(reference_windows=6, persistence=5, corroborated_persistence=2))
    verdicts = [detector.judge(10.0 + i, window(rng, extra={("b", "c"): 2e-3})) for i in range(2)]
    assert ("a", "c") in verdicts[1].new
    alone = []
    for i in range(2):
        observations = [Observation(o.src, o.dst, o.measured_s + (3e-3 if o.pair == ("a", "c") else 0.0), o.samples,
                                    o.stderr_s, o.predicted_s, o.links) for o in window(rng)]
        alone.append(detector.judge(12.0 + i, observations))
    assert all([(p.src, p.dst) for p in v.anomalies] == [("a", "c")] and not v.new for v in alone)
    assert not detector.judge(14.0, window(rng)).anomalies


def test_streaks_begun_windows_apart_do_not_corroborate():
    """b->c outside since 4 windows (an anomaly of its own), a->c for 2: a->c waits for the full persistence
    (paths across its links stay inside, which alone would make it wait longer: not counted here)."""
    detector, rng = learned(DetectorSettings(reference_windows=6, persistence=3, contradicted_extra=0))

    def judged(ts, slow):
        observations = [Observation(o.src, o.dst, o.measured_s + (3e-3 if o.pair in slow else 0.0), o.samples,
                                    o.stderr_s, o.predicted_s, o.links) for o in window(rng)]
        return detector.judge(ts, observations)

    for i in range(2):
        judged(10.0 + i, {("b", "c")})
    verdicts = [judged(12.0 + i, {("b", "c"), ("a", "c")}) for i in range(3)]
    assert [("a", "c") in [(p.src, p.dst) for p in v.anomalies] for v in verdicts] == [False, False, True]


def test_a_faster_path_is_anomalous_below_the_band_and_clears_when_back():
    detector, rng = learned()
    for i in range(3):
        verdict = detector.judge(10.0 + i, window(rng, extra={("c", "d"): -1.0e-3}))
    assert {(p.src, p.dst) for p in verdict.anomalies} >= {("c", "d")}
    assert all(p.side == -1 for p in verdict.anomalies)
    assert (verdict.suspects[0].src, verdict.suspects[0].dst) == ("c", "d")
    cleared = detector.judge(20.0, window(rng))
    assert not cleared.anomalies and not cleared.suspects


def test_a_streak_needs_the_same_side_and_is_not_broken_by_an_unmeasured_window():
    detector, rng = learned(DetectorSettings(reference_windows=6, persistence=3, corroborated_persistence=3))
    detector.judge(10.0, window(rng, extra={("b", "c"): 2e-3}))
    detector.judge(11.0, window(rng, extra={("b", "c"): 2e-3}, skip=[("b", "c")]))  # b->c not measured
    verdict = detector.judge(12.0, window(rng, extra={("b", "c"): 2e-3}))
    bc = next(p for p in verdict.paths if (p.src, p.dst) == ("b", "c"))
    assert bc.streak == 2 and not bc.anomalous
    flipped = detector.judge(13.0, window(rng, extra={("b", "c"): -0.9e-3}))
    bc = next(p for p in flipped.paths if (p.src, p.dst) == ("b", "c"))
    assert bc.side == -1 and bc.streak == 1 and bc.since == 13.0


def test_an_anomalous_path_no_longer_measured_expires_after_persistence_windows():
    detector, rng = learned()
    for i in range(3):
        detector.judge(10.0 + i, window(rng, extra={("c", "d"): 3e-3}))
    gone = [("a", "d"), ("b", "d"), ("c", "d")]
    kept = [detector.judge(20.0 + i, window(rng, skip=gone)).anomalies for i in range(3)]
    assert kept[0] and kept[1] and not kept[2]


def test_the_band_takes_the_paths_typical_probe_error_not_the_windows_own():
    detector, rng = learned(noise=0.3)
    spread = detector.model_spread()
    lucky = Observation("a", "b", 1e-3, 6, 1e-5, 1e-3, (("a", "b"),))  # six probes that happen to agree
    erratic = Observation("a", "b", 1e-3, 6, 5e-3, 1e-3, (("a", "b"),))  # a queue filling and draining
    lo, hi, stderr = detector.band(lucky, spread, 0.0)
    assert 5e-5 < stderr < 2e-4  # the typical error, about 1e-4
    assert detector.band(erratic, spread, 0.0) == (lo, hi, stderr)
    fewer = Observation("a", "b", 1e-3, 3, 1e-5, 1e-3, (("a", "b"),))
    assert detector.band(fewer, spread, 0.0)[2] == pytest.approx(stderr * math.sqrt(2))
    fresh = AnomalyDetector()  # no reference yet: the window's own error
    assert fresh.band(erratic, 0.05, 0.0)[2] == 5e-3


def test_a_path_that_varies_from_window_to_window_gets_its_own_wider_band():
    """b->c's true delay wanders ±40 % between windows (its traffic's draw), the others' not: its
    band is wider, so its wandering raises no alarm, while a steady path keeps a narrow band."""
    detector = AnomalyDetector(DetectorSettings(reference_windows=10, persistence=2))
    rng = np.random.default_rng(5)

    def wandering(i):
        return [o if o.pair != ("b", "c") else Observation("b", "c", o.measured_s * (1 + 0.4 * math.sin(i)), o.samples,
                                                           o.stderr_s, o.predicted_s, o.links) for o in window(rng)]

    for i in range(10):
        detector.judge(float(i), wandering(i))
    spread, bias = detector.model_spread(), 0.0
    bands = {o.pair: detector.band(o, spread, bias) for o in window(rng)}
    width = {pair: (hi - lo) / PREDICTED[pair] for pair, (lo, hi, _) in bands.items()}
    assert width[("b", "c")] > 2 * width[("c", "d")]
    assert not any(detector.judge(20.0 + i, wandering(i)).anomalies for i in range(50))


def test_one_stalled_reference_window_does_not_widen_the_band():
    """A probe stalled 50 ms in one reference window makes that window's variance huge; the band
    takes the typical (median) variance, so a 2-ms slowdown is still seen."""
    detector = AnomalyDetector(DetectorSettings(reference_windows=6, persistence=1))
    rng = np.random.default_rng(3)
    for i in range(6):
        observations = window(rng)
        if i == 2:
            observations = [Observation(o.src, o.dst, o.measured_s, o.samples, 0.05 / math.sqrt(o.samples),
                                        o.predicted_s, o.links) for o in observations]
        detector.judge(float(i), observations)
    verdict = detector.judge(10.0, window(rng, extra={("b", "c"): 2e-3}))
    assert ("b", "c") in {(p.src, p.dst) for p in verdict.anomalies}


def test_the_model_spread_subtracts_the_probe_noise_and_keeps_its_floor():
    quiet, _ = learned(noise=0.3)  # residuals spread only by the probes
    assert quiet.model_spread() < 0.06
    floor = AnomalyDetector(DetectorSettings(min_spread=0.2))
    assert floor.model_spread() == 0.2


def test_the_twins_interval_is_the_core_of_the_band():
    detector, _ = learned()
    plain = Observation("a", "b", 1e-3, 6, 1e-4, 1e-3, (("a", "b"),))
    wide = Observation("a", "b", 1e-3, 6, 1e-4, 1e-3, (("a", "b"),), twin_lo_s=0.5e-3, twin_hi_s=2e-3)
    lo, hi, _ = detector.band(plain, 0.05, 0.0)
    lo2, hi2, _ = detector.band(wide, 0.05, 0.0)
    center = (lo + hi) / 2  # the prediction with the path's learned bias (about 10 % up)
    assert center == pytest.approx(1.1e-3, rel=0.05)
    assert lo2 == pytest.approx(lo - 0.5 * center) and hi2 == pytest.approx(hi + 1.0 * center)


def test_a_rerouted_path_starts_again():
    detector, rng = learned()
    for i in range(2):
        detector.judge(10.0 + i, window(rng, extra={("b", "c"): 2e-3}))
    moved = [o if o.pair != ("b", "c") else Observation("b", "c", o.measured_s, o.samples, o.stderr_s, o.predicted_s,
                                                       (("b", "x"), ("x", "c")))
             for o in window(rng, extra={("b", "c"): 2e-3})]
    verdict = detector.judge(12.0, moved)
    bc = next(p for p in verdict.paths if (p.src, p.dst) == ("b", "c"))
    assert bc.streak == 1 and not bc.anomalous


def test_suspect_scores_follow_the_documented_rule():
    def path(src, dst, *links):
        return PathVerdict(src, dst, 1.0, 1.0, 0.0, 2.0, 0.1, 5, 1, 3, True, 0.0, tuple(links))

    x, y, z = ("p", "q"), ("q", "r"), ("r", "s")
    ranked = suspects([path("p", "r", x, y), path("p", "s", x, y, z)], [path("q", "r", y)], penalty=0.5)
    assert [(s.src, s.dst, s.score) for s in ranked] == [("p", "q", 1.0), ("q", "r", 0.75), ("r", "s", 0.5)]
    assert suspects([], [path("q", "r", y)], 0.5) == []


def test_quiet_link_loads_with_a_bias_raise_no_alarm_in_a_thousand_windows():
    detector, rng = learned()
    alarms = sum(bool(detector.judge(100.0 + i, window(rng), loads(rng)).link_anomalies) for i in range(1000))
    assert alarms == 0


def test_traffic_the_matrix_does_not_see_makes_its_link_anomalous_and_first_suspect():
    """An unannounced flow of 0.3 × capacity on c->d: its paths' delay barely moves, its port counters show it."""
    detector, rng = learned()
    flow = {("c", "d"): 0.3 * CAPACITY}
    first = detector.judge(10.0, window(rng), loads(rng, flow))
    assert not first.link_anomalies and not first.anomalous  # outside once: not yet anomalous
    assert next(lk for lk in first.links if (lk.src, lk.dst) == ("c", "d")).side == 1
    second = detector.judge(11.0, window(rng), loads(rng, flow))
    assert [(lk.src, lk.dst) for lk in second.link_anomalies] == [("c", "d")] and second.new_links == [("c", "d")]
    assert second.anomalous and not second.anomalies  # no path is anomalous, the link is
    cd = second.link_anomalies[0]
    assert cd.since == 10.0 and cd.streak == 2 and cd.measured_bps > cd.hi_bps
    assert cd.deviation == pytest.approx(0.3, abs=0.02)  # the bias of the quiet windows taken out
    top = second.suspects[0]
    assert (top.src, top.dst, top.score) == ("c", "d", 0.0) and top.load_deviation == cd.deviation
    assert detector.judge(12.0, window(rng), loads(rng, flow)).new_links == []  # counted once
    assert not detector.judge(13.0, window(rng), loads(rng)).link_anomalies  # gone once back inside


def test_a_link_that_loses_traffic_ranks_before_the_links_after_it_and_the_paths_suspects():
    """b->c drops 8 % of capacity, so c->d (after it) carries 6 % less; the paths from a are slow (a->b)."""
    detector, rng = learned()
    lost = {("b", "c"): -0.08 * CAPACITY, ("c", "d"): -0.06 * CAPACITY}
    for i in range(3):
        verdict = detector.judge(10.0 + i, window(rng, extra={("a", "b"): 2e-3}), loads(rng, lost))
    assert {(lk.src, lk.dst) for lk in verdict.link_anomalies} == {("b", "c"), ("c", "d")}
    assert all(lk.side == -1 and lk.measured_bps < lk.lo_bps for lk in verdict.link_anomalies)
    ranked = [(s.src, s.dst) for s in verdict.suspects]
    assert ranked[:3] == [("b", "c"), ("c", "d"), ("a", "b")]  # by lost load, then the links the paths point to
    assert verdict.suspects[2].load_deviation == 0.0 and verdict.suspects[2].score > 0


def test_a_link_anomaly_ends_when_its_counters_are_gone():
    detector, rng = learned()
    flow = {("c", "d"): 0.3 * CAPACITY}
    for i in range(2):
        verdict = detector.judge(10.0 + i, window(rng), loads(rng, flow))
    assert verdict.link_anomalies
    without_cd = [lk for lk in loads(rng, flow) if (lk.src, lk.dst) != ("c", "d")]
    assert not detector.judge(12.0, window(rng), without_cd).link_anomalies


@pytest.mark.parametrize("bad, message", [
    (dict(capacity_bps=0.0), "capacity"), (dict(measured_bps=-1.0), "measured load"),
    (dict(expected_bps=math.inf), "expected load")])
def test_link_loads_that_cannot_be_judged_are_refused_with_the_link_named(bad, message):
    fields = dict(src="a", dst="b", measured_bps=1e6, expected_bps=1e6, capacity_bps=2e6)
    with pytest.raises(AnomalyError, match=f"link a->b: {message}"):
        AnomalyDetector().judge(0.0, [], [LinkLoad(**{**fields, **bad})])


@pytest.mark.parametrize("bad, message", [
    (dict(predicted_s=0.0), "predicted delay"), (dict(measured_s=math.nan), "measured delay"),
    (dict(samples=0), "needs >= 1 probe"), (dict(twin_hi_s=-1.0), "the twin.s interval bounds")])
def test_observations_that_cannot_be_judged_are_refused_with_the_path_named(bad, message):
    fields = dict(src="a", dst="b", measured_s=1e-3, samples=5, stderr_s=1e-4, predicted_s=1e-3, links=(("a", "b"),))
    with pytest.raises(AnomalyError, match=f"path a->b: {message}"):
        AnomalyDetector().judge(0.0, [Observation(**{**fields, **bad})])


def test_bad_settings_are_refused():
    with pytest.raises(AnomalyError, match="persistence must be >= 1"):
        DetectorSettings(persistence=0)
    with pytest.raises(AnomalyError, match="corroborating_paths"):
        DetectorSettings(corroborating_paths=1)
    with pytest.raises(AnomalyError, match="corroborated_persistence"):
        DetectorSettings(corroborated_persistence=0)
    with pytest.raises(AnomalyError, match="contradicted_extra"):
        DetectorSettings(contradicted_extra=-1)
    with pytest.raises(AnomalyError, match="penalty"):
        DetectorSettings(penalty=2.0)
    with pytest.raises(AnomalyError, match="min_load_spread"):
        DetectorSettings(min_load_spread=0.0)


def counted(rng, lose=None, usual=0.001, offered=2500) -> list[LinkLoad]:
    """Every link's load as expected, with its packet counters: ``offered`` (Poisson) packets sent to
    its port, of which the port lost ``usual`` (LLDP and counter timing make such a small share) plus
    ``lose``'s share for the links in it."""
    out = []
    for lk in loads(rng, noise=0.003):
        sent = int(rng.poisson(offered))
        lost = int(rng.binomial(sent, usual + (lose or {}).get(lk.pair, 0.0)))
        out.append(LinkLoad(lk.src, lk.dst, lk.measured_bps, lk.expected_bps, lk.capacity_bps, sent, sent - lost))
    return out


def counted_detector() -> tuple[AnomalyDetector, np.random.Generator]:
    detector = AnomalyDetector(DetectorSettings(reference_windows=6, persistence=3))
    rng = np.random.default_rng(3)
    for i in range(6):
        detector.judge(float(i), window(rng), counted(rng))
    return detector, rng


def test_quiet_packet_counters_raise_no_loss_alarm_in_a_thousand_windows():
    detector, rng = counted_detector()
    alarms = sum(bool(detector.judge(100.0 + i, window(rng), counted(rng)).link_anomalies) for i in range(1000))
    assert alarms == 0


def test_a_link_losing_packets_is_lost_and_first_suspect_though_its_load_stays_in_its_band():
    """b->c loses 4 % of the packets sent to it: about 0.02 of its capacity, inside the load band
    (5 × at least 0.5 %); the counters show it, and the paths' suspects (a->b) rank after it."""
    detector, rng = counted_detector()
    lose = {("b", "c"): 0.04}
    first = detector.judge(10.0, window(rng, extra={("a", "b"): 2e-3}), counted(rng, lose))
    assert not first.link_anomalies
    bc = next(lk for lk in first.links if (lk.src, lk.dst) == ("b", "c"))
    assert bc.side == 0 and bc.loss == pytest.approx(0.04, abs=0.012) and bc.loss_streak == 1 and not bc.lost
    verdict = None
    for i in range(2):
        verdict = detector.judge(11.0 + i, window(rng, extra={("a", "b"): 2e-3}), counted(rng, lose))
    assert [(lk.src, lk.dst) for lk in verdict.link_anomalies] == [("b", "c")]
    lost = verdict.link_anomalies[0]
    assert lost.lost and lost.side == 0 and lost.since == 10.0 and lost.loss_streak == 3
    assert verdict.new_links == [] and verdict.suspects[0].loss_ratio == pytest.approx(0.04, abs=0.012)
    assert [(s.src, s.dst) for s in verdict.suspects[:2]] == [("b", "c"), ("a", "b")]
    assert verdict.suspects[0].load_deviation == 0.0
    assert not detector.judge(13.0, window(rng), counted(rng)).link_anomalies  # over once the loss is


def test_loss_is_not_judged_on_too_few_packets_or_without_counters():
    detector, rng = counted_detector()
    few = detector.judge(10.0, window(rng), counted(rng, {("b", "c"): 0.5}, offered=100))
    assert all(math.isnan(lk.loss) and not lk.lost for lk in few.links)
    uncounted = detector.judge(11.0, window(rng), loads(rng))
    assert all(math.isnan(lk.loss) for lk in uncounted.links) and not uncounted.link_anomalies


@pytest.mark.parametrize("bad, message", [(dict(offered_packets=-1), "offered packets"),
                                          (dict(carried_packets=2.5), "carried packets")])
def test_packet_counts_that_cannot_be_judged_are_refused_with_the_link_named(bad, message):
    fields = dict(src="a", dst="b", measured_bps=1e6, expected_bps=1e6, capacity_bps=2e6, offered_packets=10,
                  carried_packets=10)
    with pytest.raises(AnomalyError, match=f"link a->b: {message}"):
        AnomalyDetector().judge(0.0, [], [LinkLoad(**{**fields, **bad})])


def test_a_loss_every_link_shows_at_once_is_the_counters_out_of_step_not_a_fault():
    """Open vSwitch refreshes its rules' counts in rounds; when that round's phase against the polling
    moves, every link's offered packets jump by the same share of its window. Two such windows on
    every link list nothing; the same jump on one link lists it."""
    detector, rng = counted_detector()

    def shifted(share, only=None):
        out = []
        for lk in counted(rng):
            if only is None or lk.pair == only:
                lk = LinkLoad(lk.src, lk.dst, lk.measured_bps, lk.expected_bps, lk.capacity_bps,
                              round(lk.offered_packets * (1 + share)), lk.carried_packets)
            out.append(lk)
        return out

    for i in range(2):
        assert not detector.judge(10.0 + i, window(rng), shifted(0.05)).link_anomalies
    for i in range(2):
        verdict = detector.judge(12.0 + i, window(rng), shifted(0.05, only=("b", "c")))
    assert [(lk.src, lk.dst, lk.lost) for lk in verdict.link_anomalies] == [("b", "c", True)]
