"""The emulation's pure parts, without Mininet: traffic plans, per-flow statistics, the delay model and
its fit, the loop's decisions, the tc commands."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from controller.loop.decisions import choose, should_roll_back, traffic_shifted
from mininet_topos.network import EmulationError, require_free_port, shaping_commands
from mininet_topos.topologies import TopologyError, emulation_state
from mininet_topos.traffic import FRAME_OVERHEAD_BYTES, fifo_waits, flow_stats, plan_packets
from telemetry.store import PairValue
from telemetry.traffic_matrix import TrafficMatrixError, estimated_state, traffic_matrix
from twin.calibration.correction import (
    CalibratedPredictor,
    CalibrationError,
    Correction,
    emulated_delays,
    fit,
    least_relative_deviation,
    measurement_noise,
    path_components,
)
from twin.state.errors import StateError
from twin.state.metrics import mape
from twin.state.model import Flow, Link, NetworkState
from twin.state.traffic import shift_traffic


def line(flows) -> NetworkState:
    links = (Link("a", "b", capacity=2e6), Link("b", "a", capacity=2e6), Link("b", "c", capacity=2e6),
             Link("c", "b", capacity=2e6))
    return NetworkState(nodes=("a", "b", "c"), links=links, flows=tuple(flows))


def test_plans_follow_rates_time_and_size_models():
    state = line([Flow("a", "c", rate=1e6, time_dist="poisson"), Flow("a", "b", rate=0.4e6, time_dist="cbr"),
                  Flow("c", "a", rate=0.8e6, time_dist="onoff", on_time=0.05, off_time=0.05, size_dist="binomial",
                       packet_sizes=(2400.0, 12000.0))])
    plans = plan_packets(state, duration=200.0, seed=1)
    assert set(plans) == {1, 3}
    a = plans[1]
    assert np.all(np.diff(a["t"]) >= 0) and a["t"].max() < 200.0
    poisson, cbr = a["flow"] == 0, a["flow"] == 1
    assert poisson.sum() / 200.0 == pytest.approx(1e6 / 8000, rel=0.03)
    assert np.ptp(np.diff(a["t"][cbr])) < 1e-9 and cbr.sum() == pytest.approx(0.4e6 / 8000 * 200, abs=1)
    assert np.all(a["size"] == 1000 - FRAME_OVERHEAD_BYTES) and np.all(a["dst"][poisson] == 3)
    c = plans[3]
    frames = c["size"] + FRAME_OVERHEAD_BYTES
    assert set(np.unique(frames)) == {300, 1500}
    assert np.sum(frames * 8) / 200.0 == pytest.approx(0.8e6, rel=0.1)
    assert np.array_equal(np.sort(c["seq"]), np.arange(len(c["seq"])))


def test_flow_stats_count_only_the_window_and_the_losses():
    start = 1000.0
    rows = np.array([[0, 0, start + 0.5, start + 0.6],  # warm-up: ignored
                     [0, 1, start + 2.0, start + 2.010], [0, 2, start + 3.0, start + 3.030],
                     [1, 0, start + 2.5, start + 2.501]])
    stats = flow_stats(rows, planned=np.array([4, 1, 2]), start=start, warmup=1.0, n_flows=3)
    assert stats["delay"][0] == pytest.approx(0.020) and stats["jitter"][0] == pytest.approx(1e-4)
    assert stats["loss"][0] == pytest.approx(0.5) and stats["loss"][1] == 0.0
    assert stats["received"].tolist() == [2, 1, 0] and np.isnan(stats["delay"][2]) and stats["loss"][2] == 1.0


def test_fifo_waits_queue_exact_packets_hop_by_hop():
    state = line([Flow("a", "c", rate=1.0), Flow("a", "b", rate=1.0)])
    state = NetworkState(nodes=state.nodes, links=tuple(Link(lk.src, lk.dst, capacity=8000.0) for lk in state.links),
                         flows=state.flows)
    payload = 1000 - FRAME_OVERHEAD_BYTES  # 1 s of service per frame at 8 kbit/s
    plans = {1: {"t": np.array([0.0, 0.5, 1.2]), "flow": np.array([0, 1, 0]), "seq": np.array([0, 0, 1]),
                 "size": np.full(3, payload)}}
    waits = fifo_waits(state, plans)
    # a->b serves flow 0 in [0, 1], flow 1 in [1, 2], flow 0's second packet in [2, 3]; b->c is never busy
    assert waits == pytest.approx({(0, 0): 0.0, (1, 0): 0.5, (0, 1): 0.8})
    assert fifo_waits(state, plans, capacity_scale=0.5)[(1, 0)] == pytest.approx(1.5)


def test_delay_model_drops_transmission_and_propagation_and_fit_recovers_a_known_correction():
    from twin.models.qt import QueueingModel

    state = line([Flow("a", "c", rate=1e6), Flow("a", "b", rate=0.5e6), Flow("c", "b", rate=0.2e6)])
    fixed = np.array([2 * 8000 / 2e6, 8000 / 2e6, 8000 / 2e6])
    queueing = np.array([0.010, 0.004, 0.001])
    queue, switches = path_components(state, fixed + queueing)
    assert queue == pytest.approx(queueing) and switches.tolist() == [3, 2, 2]
    truth = Correction(queue_scale=0.8, per_hop_s=150e-6, base_s=200e-6, capacity_scale=0.99)
    model = QueueingModel()
    states = [state.scaled(k) for k in (0.6, 1.2, 1.7)]
    measured = CalibratedPredictor(model, truth).predict_delays(states)
    assert measured[2][0] > emulated_delays(states[2], model.predict_delays(states)[2:][0], truth)[0], \
        "a slower link queues more"
    fitted = fit(states, measured, model)
    assert fitted.capacity_scale == pytest.approx(0.99) and fitted.queue_scale == pytest.approx(0.8, rel=1e-6)
    assert fitted.per_hop_s == pytest.approx(150e-6, rel=1e-6) and fitted.base_s == pytest.approx(200e-6, rel=1e-6)
    assert mape(CalibratedPredictor(model, fitted).predict_delays(states)[1], measured[1]) < 1e-9
    unmeasured = [np.full(len(state.flows), np.nan)]
    assert fit(states + [state], measured + unmeasured, model) == fitted, "a state measured nothing: left out"
    with pytest.raises(CalibrationError, match="no measured flow"):
        fit([state], unmeasured, model)


def test_least_mape_fit_ignores_an_outlier_that_pulls_least_squares():
    rng = np.random.default_rng(0)
    design = np.column_stack([rng.uniform(1e-3, 8e-3, 40), rng.integers(2, 7, 40), np.ones(40)])
    truth = np.array([0.9, 250e-6, 100e-6])
    measured = design @ truth
    measured[0] *= 3.0  # one flow measured three times too slow
    coef = least_relative_deviation(design / measured[:, None])
    assert coef == pytest.approx(truth, rel=1e-6)
    squares, *_ = np.linalg.lstsq(design / measured[:, None], np.ones(40), rcond=None)
    assert not np.allclose(squares, truth, rtol=1e-3), "least squares is pulled by the outlier"
    assert np.all(least_relative_deviation(-design / measured[:, None]) >= 0), "coefficients stay non-negative"


def test_loop_decisions():
    assert choose([5.0, 4.9, 6.0], margin=0.05) == 0, "2 % better is within the margin: keep the routing"
    assert choose([5.0, 3.0, 2.0], margin=0.05) == 2
    assert choose([5.0, float("nan"), 4.0], margin=0.05) == 2
    assert should_roll_back(before=2.0, after=2.2, tolerance=0.05)
    assert not should_roll_back(before=2.0, after=2.05, tolerance=0.05)
    samples = [PairValue(10.0, "a", "c", 0.0), PairValue(11.0, "a", "c", 1e6), PairValue(12.0, "a", "c", 5e6),
               PairValue(30.0, "a", "c", 9e9), PairValue(11.0, "c", "a", 5e5), PairValue(11.0, "a", "b", 0.0)]
    rates = traffic_matrix(samples, 10.0, 20.0)
    assert rates == {("a", "c"): 2e6, ("c", "a"): 5e5}, "zero samples count; a pair that never sent is left out"
    state = estimated_state(line([]), rates, packet_size=8000.0)
    assert [(f.src, f.dst, f.rate, f.packet_size) for f in state.flows] == [("a", "c", 2e6, 8000.0), ("c", "a", 5e5, 8000.0)]
    with pytest.raises(TrafficMatrixError, match="no traffic matrix"):
        estimated_state(line([]), {}, packet_size=8000.0)


def test_traffic_shifts():
    old = {("a", "c"): 1e6, ("c", "a"): 1e6}
    assert not traffic_shifted(old, {("a", "c"): 1.1e6, ("c", "a"): 0.95e6})
    assert traffic_shifted(old, {("a", "c"): 1.5e6, ("c", "a"): 1e6})
    assert traffic_shifted(old, {("a", "c"): 1e6})
    state = line([Flow("a", "c", rate=1e6), Flow("b", "c", rate=2e6), Flow("c", "a", rate=1e6)])
    shifted = shift_traffic(state, "c", 1.5)
    assert [f.rate for f in shifted.flows] == [1.5e6, 3e6, 1e6]
    with pytest.raises(StateError, match="'x' is not in the topology"):
        shift_traffic(state, "x", 2.0)


def test_shaping_and_states():
    cmds = shaping_commands("ls1-eth2", 2e6, 32)
    assert cmds[0] == "qdisc replace dev ls1-eth2 root handle 1: htb default 1"
    assert "rate 2000000bit ceil 2000000bit burst 25b cburst 25b" in cmds[1]
    assert cmds[2].endswith("pfifo limit 32")
    ring = emulation_state("ring:5", 0.8)
    assert len(ring.nodes) == 5 and len(ring.flows) == 20 and ring.utilization().max() == pytest.approx(0.8)
    assert {lk.capacity for lk in ring.links} == {2e6}
    with pytest.raises(TopologyError, match="grid: 5 switches"):
        emulation_state("grid:5", 0.5)
    with pytest.raises(TopologyError, match="ring:x"):
        emulation_state("ring:x", 0.5)


def test_measurement_noise_falls_with_the_window():
    """A perfect model's error against a measurement shrinks as the measurement grows."""
    state = emulation_state("line:3", 0.8)
    short, long = (measurement_noise(state, Correction(), d, 2.0, min_packets=20) for d in (6.0, 120.0))
    assert 0 < long < short < 1


def test_tuning_states_span_loads_and_routings():
    from twin.calibration.correction import tuned_model_stem, tuned_predictor
    from twin.calibration.finetune import tuning_states

    base = emulation_state("ring:5", 1.0)
    states = tuning_states(base, 40, seed=1, loads=(0.3, 0.9))
    sp_peaks = [float(s.with_weights(np.ones(len(base.links))).utilization().max()) for s in states]
    assert min(sp_peaks) >= 0.3 - 1e-9 and max(sp_peaks) <= 0.9 + 1e-9
    weights = [s.link_arrays["weight"] for s in states]
    unit = sum(bool(np.all(w == 1)) for w in weights)
    assert 0 < unit < 20 and all(1 <= w.min() and w.max() <= 20 for w in weights)
    assert [f.dst for f in states[0].flows] == [f.dst for f in base.flows]
    assert tuned_model_stem(Path("/x/calibration-routenet.json")) == Path("/x/calibration-routenet-twin")
    assert tuned_predictor(Path("/x/c.json"), {"tuned": True, "topology": "ring:5"}, "ring:6") is None
    assert tuned_predictor(Path("/x/c.json"), {"tuned": False, "topology": "ring:5"}, "ring:5") is None


def test_calibration_measures_shortest_path_an_optimized_and_random_routings():
    from controller.calibration import calibration_weights
    from twin.models.qt import QueueingModel

    state = emulation_state("ring:6", 0.95)
    routings = calibration_weights(state, 4, seed=2)
    labels = [label for label, _ in routings]
    assert labels == ["shortest path", "optimized (QT)", "random weights", "random weights"]
    unit, optimized = routings[0][1], routings[1][1]
    assert np.all(unit == 1)
    mean = [float(np.average(QueueingModel().predict_delays([state.with_weights(w)])[0],
                             weights=[f.rate for f in state.flows])) for w in (unit, optimized)]
    assert mean[1] < mean[0]
    assert all(np.all((1 <= w) & (w <= 5)) for _, w in routings[2:])
    assert [label for label, _ in calibration_weights(state, 1)] == ["shortest path"]


def test_calibration_files_round_trip_and_errors_name_the_field(tmp_path):
    from twin.calibration.correction import CalibrationError, load, save

    path = tmp_path / "c.json"
    save(path, Correction(0.9, 1e-4, 2e-4, 0.99), {"model": "qt"})
    assert load(path) == (Correction(0.9, 1e-4, 2e-4, 0.99), {"model": "qt"})
    path.write_text('{"queue_scale": 1, "per_hop_s": 0, "base_s": 0}')
    assert load(path)[0].capacity_scale == 1.0, "files from before the capacity scale still load"
    path.write_text('{"queue_scale": 1, "per_hop_s": 0, "base_s": 0, "capacity_scale": 0}')
    with pytest.raises(CalibrationError, match="capacity_scale must be a number > 0"):
        load(path)
    path.write_text('{"queue_scale": "x", "per_hop_s": 0, "base_s": 0}')
    with pytest.raises(CalibrationError, match="queue_scale must be a number >= 0, got 'x'"):
        load(path)
    for other in ('{"nodes": ["a", "b"], "links": []}', "[1, 2]"):  # a state file, a list
        path.write_text(other)
        with pytest.raises(CalibrationError, match="not a calibration file"):
            load(path)


def test_a_port_something_listens_on_is_named_before_a_controller_is_started():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(EmulationError, match=rf"port {busy.getsockname()[1]} \(the metrics\) is already in use"):
            require_free_port(busy.getsockname()[1], "the metrics")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    require_free_port(port, "the metrics")  # nothing listens: no error
