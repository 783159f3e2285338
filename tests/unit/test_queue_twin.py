"""Queues as entities of their own: the per-(link, queue) features, QT's per-class formulas (SP against
Cobham, WFQ/DRR shares) and RouteNet-F's three heads, trained on a tiny scheduled set."""

import json
from dataclasses import replace

import numpy as np
import pytest

from twin.data.dataset import DatasetConfig, generate, iter_samples, make_state
from twin.models.features import CLASS_FEATURES, build_batch
from twin.models.learned import LearnedTwin, build, load_twin, make_network
from twin.models.model_files import ModelFileError, Normalizer
from twin.models.qt import QueueingModel
from twin.models.queueing import path_jitter, solve
from twin.models.train import TrainConfig, Trainer
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import POLICIES, Flow, Link, NetworkState

C = 10e6  # bit/s
SIZE = 8000.0  # bits
MU = C / SIZE  # packets/s
WIRE = 1e15  # bit/s: feeder links at no measurable cost
ROOM = 3000  # packets: buffers that lose (almost) nothing at these loads
SCHEDULED = DatasetConfig(samples=2, min_nodes=6, max_nodes=10, real_fraction=0.0, scheduled_fraction=1.0, seed=31)


def _two_classes(policy, rate0, rate1, weights=None):
    """Two flows sharing the port a->b in queues 0 and 1 (the second arrives over c->a)."""
    links = (Link("a", "b", C, policy=policy, queue_sizes=(ROOM, ROOM), queue_weights=weights),
             Link("c", "a", WIRE, buffer=ROOM), Link("b", "d", WIRE, buffer=ROOM))
    flows = (Flow("a", "b", rate0, size_dist="exponential", packet_size=SIZE, tos=0),
             Flow("c", "d", rate1, size_dist="exponential", packet_size=SIZE, tos=1))
    return NetworkState(nodes=("a", "b", "c", "d"), links=links, flows=flows, routing_kind="paths",
                        paths={("a", "b"): ("a", "b"), ("c", "d"): ("c", "a", "b", "d")})


@pytest.mark.parametrize("rho_high, rho_low", [(0.3, 0.5), (0.5, 0.3), (0.1, 0.8)])
def test_qt_strict_priority_is_cobham(rho_high, rho_low):
    """Non-preemptive priority M/M/1: W_k = W0 / ((1 - σ_{k-1})(1 - σ_k)), W0 = ρ / μ."""
    rho = rho_high + rho_low
    delays = QueueingModel().predict_delays([_two_classes("sp", rho_high * C, rho_low * C)])[0]
    w0 = rho / MU
    expected = [w0 / (1 - rho_high) + 1 / MU, w0 / ((1 - rho_high) * (1 - rho)) + 1 / MU]
    np.testing.assert_allclose(delays, expected, rtol=1e-3)


@pytest.mark.parametrize("policy", ["wfq", "drr"])
def test_qt_weighted_queues_favour_the_heavier_weight(policy):
    light, heavy = (QueueingModel().predict_delays([_two_classes(policy, 0.45 * C, 0.45 * C, w)])[0]
                    for w in ((1.0, 3.0), (3.0, 1.0)))
    assert heavy[0] < light[0] and heavy[1] > light[1]


def test_qt_wfq_serves_the_least_load_per_weight_first():
    """WFQ's never-reset finish tags put the queue with the smallest ρ / w ahead: here queue 0 (0.1 / 0.25)
    before queue 1 (0.7 / 0.75) despite its smaller weight, so the port behaves as SP with queue 0 first."""
    wfq = QueueingModel().predict_delays([_two_classes("wfq", 0.1 * C, 0.7 * C, (1.0, 3.0))])[0]
    sp = QueueingModel().predict_delays([_two_classes("sp", 0.1 * C, 0.7 * C)])[0]
    np.testing.assert_allclose(wfq, sp)
    swapped = QueueingModel().predict_delays([_two_classes("wfq", 0.1 * C, 0.7 * C, (1.0, 30.0))])[0]
    assert swapped[1] < wfq[1] and swapped[0] > wfq[0]  # 0.7 / (30/31) < 0.1 / (1/31): queue 1 goes first


def _three_classes(policy, loads, weights):
    """Three flows of ToS 0, 1, 2 sharing the port a->b (the second and third arrive over c->a and e->a),
    offering ``loads`` (shares of C), in queues of 50 packets."""
    links = (Link("a", "b", C, policy=policy, queue_sizes=(50, 50, 50), queue_weights=weights),
             Link("c", "a", WIRE, buffer=ROOM), Link("e", "a", WIRE, buffer=ROOM), Link("b", "d", WIRE, buffer=ROOM))
    flows = (Flow("a", "b", loads[0] * C, packet_size=SIZE, tos=0),
             Flow("c", "d", loads[1] * C, packet_size=SIZE, tos=1),
             Flow("e", "d", loads[2] * C, packet_size=SIZE, tos=2))
    return NetworkState(nodes=("a", "b", "c", "d", "e"), links=links, flows=flows, routing_kind="paths",
                        paths={("a", "b"): ("a", "b"), ("c", "d"): ("c", "a", "b", "d"),
                               ("e", "d"): ("e", "a", "b", "d")})


@pytest.mark.parametrize("policy", ["wfq", "drr"])
@pytest.mark.parametrize("loads, weights, served", [
    ((0.2, 0.6, 0.7), (1.0, 1.0, 1.0), (0.2, 0.4, 0.4)),  # two overloaded queues split the 0.8 left evenly
    ((0.1, 0.6, 0.9), (2.0, 1.0, 3.0), (0.1, 0.225, 0.675)),  # ... and by weight (1 : 3 of the 0.9 left)
])
def test_overloaded_fair_queues_share_what_the_others_leave_by_weight(policy, loads, weights, served):
    """WFQ and DRR: queues offered more than their fair share split the rest of the port by their weights,
    in ndt's simulator and in QT's per-class speeds (weighted max-min fairness), while a queue offered
    less than its share is served all it offers."""
    state = _three_classes(policy, loads, weights)
    measured = simulate(state, duration=20.0, seed=8).queue_utilization[:3]
    np.testing.assert_allclose(measured, served, atol=0.01)
    batch = build_batch([state])
    qt = solve(batch)
    port = batch.class_link == 0
    overloaded = np.array(loads) > np.array(served) + 1e-9
    speed = qt["class_speed"][port][np.argsort(batch.class_rank[port])]
    np.testing.assert_allclose(speed[overloaded], np.array(served)[overloaded], rtol=1e-6)
    assert np.all(speed[~overloaded] > np.array(loads)[~overloaded])


def test_fifo_classes_are_the_links():
    state = make_state(DatasetConfig(samples=1, min_nodes=8, max_nodes=8, real_fraction=0.0, seed=3), 0)[0]
    batch = build_batch([state])
    np.testing.assert_array_equal(batch.class_link, np.arange(len(state.links)))
    np.testing.assert_array_equal(batch.hop_class, batch.hop_link)
    np.testing.assert_array_equal(batch.class_service, batch.link_service)
    qt = solve(batch)
    np.testing.assert_array_equal(qt["class_sojourn"], qt["sojourn"])
    assert batch.class_x.shape == (len(state.links), len(CLASS_FEATURES))


def test_scheduled_states_have_a_class_per_queue():
    state = make_state(SCHEDULED, 0)[0]
    assert {link.policy for link in state.links} - {"fifo"} and {f.tos for f in state.flows} == {0, 1, 2}
    batch = build_batch([state])
    assert len(batch.class_link) == sum(len(link.queues) for link in state.links)
    for path, link, cls in zip(batch.hop_path, batch.hop_link, batch.hop_class):
        flow = state.flows[batch.order[path]]
        assert batch.class_link[cls] == link
        assert batch.class_rank[cls] == min(flow.tos, len(state.links[link].queues) - 1)
    policy = batch.class_x[:, 3:3 + len(POLICIES)]
    np.testing.assert_array_equal(np.argmax(policy, axis=1), batch.class_policy)


def test_a_random_tos_mix_lets_one_class_carry_most_of_the_traffic():
    uniform = DatasetConfig(samples=5, min_nodes=12, max_nodes=12, real_fraction=0.0, scheduled_fraction=1.0, seed=7)
    mixed = replace(uniform, tos_mix="random")
    largest = {"uniform": [], "random": []}
    for i in range(5):
        even, skewed = make_state(uniform, i)[0], make_state(mixed, i)[0]
        assert even.links == skewed.links and [f.rate for f in even.flows] == [f.rate for f in skewed.flows]
        for name, state in (("uniform", even), ("random", skewed)):
            largest[name].append(np.bincount([f.tos for f in state.flows], minlength=3).max() / len(state.flows))
    assert max(largest["uniform"]) < 0.45 and max(largest["random"]) > 0.5
    with pytest.raises(StateError, match="tos_mix must be one of uniform, random"):
        replace(uniform, tos_mix="skewed").check()


def test_dataset_draws_policies_without_changing_fifo_samples():
    fifo = DatasetConfig(samples=1, min_nodes=8, max_nodes=8, real_fraction=0.0, seed=9)
    mixed = DatasetConfig(**{**fifo.__dict__, "scheduled_fraction": 1.0})
    plain, scheduled = make_state(fifo, 0)[0], make_state(mixed, 0)[0]
    assert [f.rate for f in plain.flows] == [f.rate for f in scheduled.flows]
    assert not plain.scheduled and scheduled.scheduled


@pytest.fixture(scope="module")
def routenet_f():
    states = [make_state(SCHEDULED, i)[0] for i in range(2)]
    norm = Normalizer.fit(build_batch(states), classes=True)
    net = make_network("routenet_f", {"state_dim": 16, "iterations": 3})
    build(net, norm, build_batch(states[:1]))
    return LearnedTwin(net, norm, "routenet_f"), states


def test_three_heads_are_physical(routenet_f):
    twin, states = routenet_f
    batch = build_batch(states)
    for metrics, prop, transmit in zip(twin.predict_metrics(states), batch.unsort(batch.path_prop),
                                       batch.unsort(batch.path_transmit)):
        assert set(metrics) == {"delay", "jitter", "loss"}
        assert np.all(metrics["delay"] >= prop + transmit * (1 - 1e-5))
        assert np.all(metrics["jitter"] >= 0) and np.all((metrics["loss"] >= 0) & (metrics["loss"] < 1))
    np.testing.assert_allclose(twin.predict_delays(states)[1], twin.predict_metrics(states)[1]["delay"])


def test_routenet_f_waits_up_to_the_buffer_at_the_share_it_is_served():
    """With its readouts saturated, a hop waits a whole buffer at the share of the link QT serves its queue
    at: far beyond the buffer drained at the full rate for the low class of an overloaded SP port."""
    state = _two_classes("sp", 0.9 * C, 0.5 * C)
    state = replace(state, links=tuple(replace(link, queue_sizes=(32, 32)) if link.policy == "sp" else link
                                       for link in state.links))
    batch = build_batch([state])
    net = make_network("routenet_f", {"state_dim": 8, "iterations": 1})
    norm = Normalizer.fit(batch, classes=True)
    build(net, norm, batch)
    for readout in (net.readout, net.spread_readout):
        readout.layers[-1].bias.assign([30.0])  # sigmoid = 1
    twin = LearnedTwin(net, norm, "routenet_f")
    metrics = twin.predict_metrics([state])[0]
    speed = batch.class_speed[batch.hop_class]
    service = batch.class_service[batch.hop_class]
    transmit, prop = batch.unsort(batch.path_transmit)[0], batch.unsort(batch.path_prop)[0]
    reach = np.bincount(batch.hop_path, weights=32 / speed * service)  # per sorted path, s
    assert speed.min() < 0.2  # the low class (flow 1, ToS 1) gets what the high one leaves
    np.testing.assert_allclose(metrics["delay"], batch.unsort(reach)[0] + transmit + prop, rtol=1e-4)
    assert metrics["delay"][1] > 4 * 32 * SIZE / C


def test_an_earlier_routenet_f_file_is_refused_but_can_start_a_training_run(routenet_f, tmp_path):
    twin, states = routenet_f
    twin.save(tmp_path, "f")
    meta = tmp_path / "f.json"
    description = json.loads(meta.read_text())
    del description["config"]["wait_scale"]  # a file written before the readouts scaled by the served share
    meta.write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match="f.json: a RouteNet-F of an earlier ndt version.*retrain it"):
        load_twin("f", tmp_path)
    start = Trainer._start_model(TrainConfig(kind="routenet_f", state_dim=16, iterations=3,
                                             init_from=str(tmp_path / "f")))
    np.testing.assert_allclose(start.predict_delays(states)[0], twin.predict_delays(states)[0], rtol=1e-5)


def test_routenet_f_saves_loads_and_trains(routenet_f, tmp_path):
    twin, states = routenet_f
    twin.save(tmp_path, "f")
    again = load_twin("f", tmp_path)
    np.testing.assert_allclose(again.predict_metrics(states)[0]["jitter"], twin.predict_metrics(states)[0]["jitter"],
                               rtol=1e-5)
    data = tmp_path / "data"
    generate(DatasetConfig(samples=6, min_nodes=5, max_nodes=8, packets_per_flow=300, shard_size=3,
                           real_fraction=0.0, scheduled_fraction=1.0, seed=5), data, workers=1, progress=False)
    config = TrainConfig(kind="routenet_f", state_dim=16, iterations=2, epochs=4, batch_size=2, lr=5e-3,
                         val_every=5)
    summary = Trainer(data, tmp_path / "run", config, progress=False, log=lambda m: None).run()
    history = [h["train_loss"] for h in summary["history"]]
    assert history[-1] < history[0]
    best = load_twin("best", tmp_path / "run")
    assert best.heads == ("delay", "jitter", "loss") and "class_x" in best.norm.stats


def test_eval_reports_jitter_loss_and_policies(tmp_path):
    from twin.models.evaluate import figure3

    generate(DatasetConfig(samples=2, min_nodes=6, max_nodes=8, packets_per_flow=400, real_fraction=0.0,
                           scheduled_fraction=1.0, min_load=0.7, max_load=0.9, seed=4), tmp_path / "set",
             workers=1, progress=False)
    (row,) = figure3({"qt": QueueingModel()}, {"small": tmp_path / "set"})["buckets"]
    policies = [p["policy"] for p in row["by_policy"]]
    assert set(policies) - {"fifo"} and policies == [p for p in POLICIES if p in policies]
    assert sum(p["paths"] for p in row["by_policy"]) == sum(len(s.state.flows) for s in iter_samples(tmp_path / "set"))
    assert row["qt_jitter_mape"] > 0 and 0 <= row["qt_loss_mae"] < 1
    assert 0 < row["qt_p99_mape"] < 1 and all("qt_p99_mape" in p for p in row["by_policy"])
    worst = max(p["qt_mape"] for p in row["by_policy"])
    best = min(p["qt_mape"] for p in row["by_policy"])
    assert best <= row["qt_mape"] <= worst
    loads = [bucket["load"] for bucket in row["by_load"]]
    assert sum(b["paths"] for b in row["by_load"]) == sum(b["paths"] for b in row["by_policy"])
    assert loads == sorted(loads, key=lambda name: float(name.lstrip(">=").split("-")[0])) and len(loads) > 1
    assert min(b["qt_mape"] for b in row["by_load"]) <= row["qt_mape"] <= max(b["qt_mape"] for b in row["by_load"])


def test_bottlenecks_name_each_flows_busiest_port_and_its_load():
    from twin.models.evaluate import bottlenecks
    from twin.state.model import Flow, Link, NetworkState

    links = (Link("a", "b", 1e6, policy="wfq", queue_sizes=(16, 16, 16), queue_weights=(1.0, 2.0, 3.0)),
             Link("b", "c", 2e6), Link("a", "c", 1e6, weight=5.0))
    state = NetworkState(("a", "b", "c"), links, (Flow("a", "c", 9e5), Flow("b", "c", 3e5)))
    policy, load = bottlenecks(state)
    assert policy.tolist() == ["wfq", "fifo"]  # a->c goes a-b-c: a-b carries 0.9 of its 1 Mbit/s, b-c 0.6 of 2
    assert load == pytest.approx([0.9, 0.6])


def test_zero_shot_on_gnnet2020_reports_jitter_by_policy():
    from pathlib import Path

    from twin.models.evaluate import zero_shot

    directory = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "gnnet2020" / "train"
    if not directory.is_dir():
        pytest.skip("../shared/datasets/gnnet2020 is not beside the repository")
    report = zero_shot({"qt": QueueingModel()}, directory, limit=2)
    assert report["samples"] == 2 and report["qt_jitter_mape"] > 0 and report["delay_limit"] == 20.0
    assert 0 < report["qt_p90_mape"] < 1 and "qt_p99_mape" not in report  # the reference reports p90, not p99
    assert {p["policy"] for p in report["by_policy"]} & {"sp", "wfq", "drr"}
    assert sum(b["paths"] for b in report["by_load"]) == sum(b["paths"] for b in report["by_policy"])


def test_predictions_pass_through_a_reference_delay_limit():
    """A reference that counts each delay as at most L reports a mean of at most L and a variance of at most
    (L - mean) mean (Bhatia-Davis for values in [0, L])."""
    from twin.models.evaluate import within_delay_limit

    limited = within_delay_limit({"delay": np.array([1.0, 5.0, 25.0]), "jitter": np.array([0.1, 100.0, 100.0])}, 20.0)
    np.testing.assert_allclose(limited["delay"], [1.0, 5.0, 20.0])
    np.testing.assert_allclose(limited["jitter"], [0.1, 75.0, 0.0])
    tails = within_delay_limit({"delay": np.array([1.0]), "p90": np.array([30.0]), "p99": np.array([3.0])}, 20.0)
    np.testing.assert_allclose([tails["p90"][0], tails["p99"][0]], [20.0, 3.0])


def test_ecmp_jitter_pools_the_paths_of_a_flow():
    """A flow split over two paths of different delays varies more than either path."""
    links = tuple(Link(x, y, 10e6, buffer=64) for p, q in (("a", "b"), ("b", "d"), ("a", "c"), ("c", "d"))
                  for x, y in ((p, q), (q, p)))
    flows = (Flow("a", "d", 4e6), Flow("b", "d", 5e6))  # b->d loads one of a->d's two equal-cost paths
    state = NetworkState(nodes=tuple("abcd"), links=links, flows=flows, ecmp=True)
    assert len(state.routes.owner) == 3
    batch = build_batch([state], qt_features=False)
    answer = solve(batch)
    path_var = batch.unsort(path_jitter(batch, answer["class_sojourn"]))[0]
    jitter = QueueingModel().predict_metrics([state])[0]["jitter"]
    path_delay = batch.unsort(answer["delay"])[0]
    (r1, r2) = [r for r, owner in enumerate(state.routes.owner) if owner == 0]
    shares = state.routes.share[[r1, r2]]
    np.testing.assert_allclose(shares, [0.5, 0.5])
    within = 0.5 * (path_var[r1] + path_var[r2])
    between = 0.25 * (path_delay[r1] - path_delay[r2]) ** 2  # the spread of the two paths' means adds to it
    assert between > 0 and jitter[0] == pytest.approx(within + between)
    assert jitter[1] == pytest.approx(path_var[[r for r, o in enumerate(state.routes.owner) if o == 1][0]])


def test_loop_candidates_and_what_if_take_jitter_bounds():
    from analysis.scenario import Scenario
    from analysis.whatif import what_if
    from controller.loop.decisions import top_candidates
    from optimizer.intent import IntentError, parse_intent

    state = make_state(SCHEDULED, 0)[0]
    pair = (state.flows[0].src, state.flows[0].dst)
    intent = parse_intent({"constraints": {"delay_bounds": [{"src": pair[0], "dst": pair[1], "max_jitter": "1us"}]},
                           "search": {"max_evaluations": 20, "time_limit_s": 5}})
    candidates, result = top_candidates(state, intent, QueueingModel(), 2)
    assert result.evaluations > 0
    assert what_if(state, Scenario(traffic_scale=1.2), QueueingModel(), intent=intent)["after"]["violations"]

    class DelayOnly:
        name = "delay-only"

        def predict_delays(self, states):
            return QueueingModel().predict_delays(states)

    with pytest.raises(IntentError, match="does not predict"):
        what_if(state, Scenario(traffic_scale=1.2), DelayOnly(), intent=intent)


def test_shipped_routenet_f_beats_qt_on_fresh_scheduled_states():
    """The shipped RouteNet-F against QT on states it never saw (the simulator's labels): delay and jitter."""
    from twin.models.model_files import MODELS_DIR
    from twin.sim.simulator import simulate

    if not (MODELS_DIR / "routenet_f.weights.h5").exists():
        pytest.fail("twin/models/weights/routenet_f.* is missing: rebuild it (docs/twin.md, RouteNet-F)")
    twin = load_twin("routenet_f")
    config = DatasetConfig(samples=3, min_nodes=15, max_nodes=25, real_fraction=0.0, scheduled_fraction=1.0,
                           min_load=0.5, seed=515151)
    errors = {name: {"delay": [], "jitter": []} for name in ("twin", "qt")}
    for i in range(3):
        state, meta = make_state(config, i)
        result = simulate(state, seed=meta["sim_seed"], packets_per_flow=1500)
        ok = np.isfinite(result.delay) & (result.jitter > 0)
        for name, model in (("twin", twin), ("qt", QueueingModel())):
            predicted = model.predict_metrics([state])[0]
            for head in ("delay", "jitter"):
                label = getattr(result, head)[ok]
                errors[name][head].append(np.abs(predicted[head][ok] - label) / label)
    mape = {name: {head: float(np.mean(np.concatenate(v))) for head, v in heads.items()} for name, heads in errors.items()}
    assert mape["twin"]["delay"] < mape["qt"]["delay"] and mape["twin"]["jitter"] < mape["qt"]["jitter"], mape
