"""The optimizer: intents are checked, NES finds known optima, baselines behave, constraints hold."""

import re

import numpy as np
import pytest

from optimizer.baselines import LoadModel, fortz_thorup, fortz_thorup_cost, inverse_capacity_weights
from optimizer.intent import IntentError, load_intent, parse_duration, parse_intent, parse_intent_text
from optimizer.nes import snes
from optimizer.objective import score
from optimizer.search import InfeasibleIntent, limit_changes, optimize, undo_idle_changes
from twin.models.registry import SimulatorPredictor
from twin.state.model import Flow, Link, NetworkState


def two_route_state(load=0.9):
    """a->d over b (fast pair of links) or c (slow); every link starts at weight 1, so ties go via b."""
    links = []
    for u, v, cap in (("a", "b", 10e6), ("b", "d", 10e6), ("a", "c", 10e6), ("c", "d", 10e6)):
        links += [Link(u, v, cap, buffer=64), Link(v, u, cap, buffer=64)]
    flows = (Flow("a", "d", load * 10e6 * 0.6), Flow("b", "d", load * 10e6 * 0.4))
    return NetworkState(nodes=tuple("abcd"), links=tuple(links), flows=flows)


def test_intent_parsing_and_errors(tmp_path):
    intent = parse_intent({"objective": {"minimize": "delay_percentile", "percentile": 99},
                           "constraints": {"max_utilization": 0.8, "avoid_links": [["a", "b"]],
                                           "delay_bounds": [{"src": "a", "dst": "d", "max_delay": "10ms"},
                                                            {"name": "gold", "pairs": [["b", "d"]], "max_delay": 0.02}],
                                           "max_changed_weights": 2}})
    assert intent.delay_bounds[0].max_delay == pytest.approx(0.01)
    assert intent.delay_bounds[1].name == "gold"
    assert parse_duration("250us", "x") == pytest.approx(250e-6)
    for bad, message in [
        ({"objective": {"minimize": "speed"}}, "objective.minimize: 'speed' is not one of"),
        ({"constraints": {"max_utilization": -1}}, "constraints.max_utilization: must be > 0"),
        ({"constraints": {"weight_bounds": [5, 2]}}, "constraints.weight_bounds"),
        ({"constraints": {"delay_bounds": [{"src": "a", "dst": "d", "max_delay": "fast"}]}},
         "constraints.delay_bounds[0].max_delay: expected a delay"),
        ({"constraints": {"max_changed": 3}}, "constraints.max_changed: unknown field"),
        ({"search": {"max_evaluations": "many"}}, "search.max_evaluations: expected a number"),
    ]:
        with pytest.raises(IntentError, match=re.escape(message)):
            parse_intent(bad)
    path = tmp_path / "bad.yaml"
    path.write_text("objective: [unclosed\n")
    with pytest.raises(IntentError, match="not valid YAML at line"):
        load_intent(path)
    with pytest.raises(IntentError, match="pair a->z: unknown node 'z'"):
        parse_intent({"constraints": {"delay_bounds": [{"src": "a", "dst": "z", "max_delay": 1}]}}).check_against(
            two_route_state())


def test_snes_finds_the_integer_optimum():
    target = np.array([3, 17, 9, 1, 12, 5, 20, 8])

    def score_batch(candidates):
        return np.zeros(len(candidates)), np.sum((candidates - target) ** 2, axis=1).astype(float)

    result = snes(score_batch, np.full(8, 10), 1, 20, max_evaluations=4000, time_limit_s=30, seed=1)
    np.testing.assert_array_equal(result.best, target)


def test_snes_prefers_feasible_and_respects_repair():
    start = np.full(6, 5)
    repair = limit_changes(start, 2, np.random.default_rng(0))

    def score_batch(candidates):
        violation = np.maximum(8 - candidates[:, 0], 0).astype(float)  # feasible only when x0 >= 8
        return violation, candidates.sum(axis=1).astype(float)

    result = snes(score_batch, start, 1, 10, max_evaluations=3000, seed=2, repair=repair)
    assert result.best[0] >= 8
    assert np.sum(result.best != start) <= 2
    assert result.best_rank_key[0] == 0


def test_fortz_thorup_cost_is_the_integral():
    capacity = np.array([3.0])
    assert fortz_thorup_cost(np.array([1.0]), capacity) == pytest.approx(1.0)  # u = 1/3: slope 1 all the way
    assert fortz_thorup_cost(np.array([2.0]), capacity) == pytest.approx(1.0 + 3.0)  # u = 2/3
    assert fortz_thorup_cost(np.array([3.0]), capacity) == pytest.approx(1 + 3 + 10 * 0.7 + 70 * 0.3)


def test_fortz_thorup_moves_load_off_the_hot_path():
    state = two_route_state(load=1.2)
    model = LoadModel(state)
    start_cost = model.cost(np.ones(len(state.links), dtype=np.int64))
    weights = fortz_thorup(state, seed=0)
    assert model.cost(weights) < 0.5 * start_cost
    assert state.with_weights(weights).utilization().max() < 1.0


def test_inverse_capacity():
    state = two_route_state()
    assert set(inverse_capacity_weights(state)) == {1}


def test_optimize_with_the_simulator_meets_the_intent():
    state = two_route_state(load=0.95)
    intent = parse_intent({"constraints": {"max_utilization": 0.8, "weight_bounds": [1, 10]},
                           "search": {"max_evaluations": 120}})
    result = optimize(state, intent, SimulatorPredictor(packets_per_flow=300), seed=0)
    assert result.after.feasible and not result.before.feasible
    assert result.after.objective < result.before.objective
    assert state.with_weights(result.weights).utilization().max() <= 0.8
    assert result.changed_links


class RouteTaste:
    """A model that only cares whether a->d leaves a towards ``prefer``: 1 ms then, 2 ms otherwise."""

    def __init__(self, prefer: str):
        self.prefer, self.asked = prefer, 0

    def predict_delays(self, states):
        self.asked += len(states)
        return [np.array([1e-3 if s.links[s.flow_links[0][0]].dst == self.prefer else 2e-3, 1e-3]) for s in states]


def first_hop_of_a_to_d(state, weights):
    routed = state.with_weights(weights)
    return routed.links[routed.flow_links[0][0]].dst


def test_screening_hands_over_the_screens_final_answer():
    """With the screen's own model as the twin, screening can only add to a plain search: the screen
    runs the same NES and descent, and the twin's search starts from its answer."""
    from optimizer.bench import synthetic_state
    from twin.models.registry import get_predictor
    from twin.state.traffic import scale_to_utilization

    qt = get_predictor("qt")
    base = synthetic_state(10, seed=1)
    state = scale_to_utilization(base.with_weights(np.ones(len(base.links))), 1.0)
    intent = parse_intent({"search": {"max_evaluations": 400, "time_limit_s": 600}})
    plain = optimize(state, intent, qt, seed=1)
    screened = optimize(state, intent, qt, seed=1, screen=qt)
    assert screened.started_from_screen and plain.after.objective < plain.before.objective
    assert screened.after.objective <= plain.after.objective * (1 + 1e-12)


def test_screening_starts_the_twin_where_the_cheap_model_points_and_only_if_the_twin_agrees():
    state = two_route_state()
    intent = parse_intent({"constraints": {"weight_bounds": [1, 10], "max_changed_weights": 1},
                           "search": {"max_evaluations": 60}})
    screen = RouteTaste("c")
    result = optimize(state, intent, RouteTaste("c"), seed=0, screen=screen)
    assert screen.asked > 0 and result.screened > 0 and result.started_from_screen
    assert first_hop_of_a_to_d(state, result.weights) == "c"
    assert np.count_nonzero(result.weights != 1) <= 1, "changed weights count from the current ones"
    misled = optimize(state, intent, RouteTaste("c"), seed=0, screen=RouteTaste("b"))
    assert misled.screened > 0 and not misled.started_from_screen
    assert first_hop_of_a_to_d(state, misled.weights) == "c", "the twin's own search still finds its optimum"


def test_weight_changes_that_do_not_alter_the_routing_are_undone():
    state = two_route_state()
    current = np.ones(8, dtype=np.int64)
    chosen = current.copy()
    chosen[[0, 5, 7]] = [3, 4, 2]  # a->b (moves a->d to c), c->a and d->c (no path uses them)
    kept = undo_idle_changes(state, current, chosen)
    assert kept.tolist() == [3, 1, 1, 1, 1, 1, 1, 1]
    assert state.with_weights(kept).routing_key == state.with_weights(chosen).routing_key
    result = optimize(state.scaled(0.95 / 0.9), parse_intent({"search": {"max_evaluations": 60}}),
                      RouteTaste("c"), seed=0, screen=RouteTaste("c"))
    for link in np.flatnonzero(result.weights != 1):
        undone = result.weights.copy()
        undone[link] = 1
        assert state.with_weights(undone).routing_key != state.with_weights(result.weights).routing_key, \
            f"link {link}'s new weight changes nothing"


def test_infeasible_intent_is_reported():
    state = two_route_state(load=0.95)
    intent = parse_intent({"constraints": {"max_utilization": 0.1}, "search": {"max_evaluations": 40}})
    with pytest.raises(InfeasibleIntent, match="no routing found"):
        optimize(state, intent, SimulatorPredictor(packets_per_flow=200), seed=0)
    result = optimize(state, intent, SimulatorPredictor(packets_per_flow=200), seed=0, allow_infeasible=True)
    assert not result.after.feasible


def test_score_counts_avoided_traffic():
    state = two_route_state()
    intent = parse_intent({"constraints": {"avoid_links": [["a", "b"]]}})
    delays = np.array([0.01, 0.01])
    assert score(state, intent, delays).violation == pytest.approx(0.6)


def test_descent_reaches_a_single_move_optimum_and_respects_repair():
    from optimizer.local import descend, neighbours

    assert len(neighbours(np.array([1, 5]), 1, 20)) == 1 + 1 + 3 + 1  # 1 -> {2, 20}; 5 -> {1, 4, 6, 20}
    target = np.array([4, 1, 20, 7])

    def score_batch(candidates):
        return np.zeros(len(candidates)), np.abs(candidates - target).sum(axis=1).astype(float)

    start = np.array([1, 1, 1, 1])
    best, key, used = descend(score_batch, start, (0.0, 28.0), 1, 20, max_evaluations=10_000, deadline=1e18)
    assert best.tolist() == target.tolist() and key == (0.0, 0.0) and used > 0
    repair = limit_changes(start, 1, np.random.default_rng(0))
    best, key, _ = descend(score_batch, start, (0.0, 28.0), 1, 20, 10_000, 1e18, repair=repair)
    assert np.sum(best != start) == 1 and key == (0.0, 9.0)  # the best single change: link 2 to 20


def test_each_distinct_routing_reaches_the_predictor_once():
    from optimizer.search import RoutingScores

    calls = []

    class Counting:
        def predict_delays(self, states):
            calls.append(len(states))
            return [np.full(len(s.flows), 1e-3) for s in states]

    scores = RoutingScores(two_route_state(), parse_intent({}), Counting())
    alike = np.array([[1] * 8, [2] * 8, [1, 5, 1, 5, 1, 1, 1, 1]])  # three vectors, one routing
    scores(alike)
    scores(np.array([[5, 1, 1, 1, 1, 1, 1, 1], [1] * 8]))  # one new routing (a->d over c), one known
    assert calls == [1, 1] and len(scores.known) == 2


def test_figure4_bench_runs_every_method_and_plots(tmp_path):
    from optimizer.bench import METHODS, bench_optimize, plot

    report = bench_optimize(topologies=("sndlib/abilene",), intensities=(1.1,), twin_name="qt", budget=120,
                            time_limit_s=20.0, sim_runs=2)
    (row,) = report["intensities"]
    for method in METHODS:
        assert len(row[f"{method}_delay_runs"]) == 2
        assert row[f"{method}_delay"] == pytest.approx(np.mean(row[f"{method}_delay_runs"]))
    assert row["sp_max_util"] == pytest.approx(1.1)
    assert row["nes_twin_delay"] < row["sp_delay"], "above capacity, any delay-aware search beats shortest path"
    assert row["best_method"] == min(METHODS, key=lambda m: row[f"{m}_delay"])
    plot(report, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_figure4_cases_run_as_ray_tasks_in_order():
    from optimizer.bench import bench_optimize, intensity_row

    seen = []
    report = bench_optimize(topologies=("sndlib/abilene",), intensities=(0.9, 1.1), twin_name="qt", budget=60,
                            time_limit_s=20.0, sim_runs=1, workers=2, progress=lambda row: seen.append(row["load"]))
    assert [row["load"] for row in report["intensities"]] == [0.9, 1.1] and sorted(seen) == [0.9, 1.1]
    alone = intensity_row("sndlib/abilene", 1.1, "qt", 60, 20.0, 0, 1)
    assert report["intensities"][1]["sp_delay"] == alone["sp_delay"]  # the same seeded case wherever it ran


@pytest.mark.parametrize("text, words", [
    ("objective: {minimize: mean_delay}\nobjective: {minimize: max_utilization}\n", "line 2: key 'objective' is given twice"),
    ("a: &x [1, 2]\nb: *x\n", "line 2: YAML aliases"),
    ("objective: {percentile: 1" + "0" * 400 + "}\n", "objective.percentile: 1000"),
    ("constraints: {delay_bounds: [{src: a, dst: b, max_delay: 1" + "0" * 400 + "}]}\n", "is too large"),
    ("constraints: {delay_bounds: [{src: a, dst: b, max_delay: 5μs}]}\n", None),
    ("{1: a, b: c}\n", "1: unknown field"),
])
def test_intent_text_is_refused_by_line_and_field(text, words):
    if words is None:
        assert parse_intent_text(text).delay_bounds[0].max_delay == pytest.approx(5e-6)
        return
    with pytest.raises(IntentError) as refused:
        parse_intent_text(text)
    assert words in str(refused.value) and "cannot read" not in str(refused.value), refused.value


def test_jitter_and_loss_bounds_are_parsed_and_checked():
    intent = parse_intent({"constraints": {"delay_bounds": [
        {"name": "voice", "pairs": [["a", "d"]], "max_jitter": "2ms", "max_loss": "0.1%"},
        {"src": "b", "dst": "d", "max_delay": "9ms", "max_loss": 0.01}]}})
    voice, data = intent.delay_bounds
    assert (voice.max_delay, voice.max_jitter, voice.max_loss) == (None, pytest.approx(2e-3), pytest.approx(1e-3))
    assert intent.heads == ("jitter", "loss")
    assert parse_intent({"constraints": {"delay_bounds": [{"src": "a", "dst": "d", "max_delay": 1}]}}).heads == ()
    for bad, message in [
        ({"src": "a", "dst": "d"}, "delay_bounds[0]: missing max_delay (or max_jitter, max_loss, max_p99)"),
        ({"src": "a", "dst": "d", "max_p99": "0ms"}, "delay_bounds[0].max_p99: a delay bound must be positive"),
        ({"src": "a", "dst": "d", "max_loss": "150%"}, "delay_bounds[0].max_loss: a loss bound must lie between"),
        ({"src": "a", "dst": "d", "max_loss": "lots"}, "delay_bounds[0].max_loss: expected a share of packets"),
        ({"src": "a", "dst": "d", "max_jitter": "-1ms"}, "delay_bounds[0].max_jitter: expected a delay"),
    ]:
        with pytest.raises(IntentError, match=re.escape(message)):
            parse_intent({"constraints": {"delay_bounds": [bad]}})


def test_optimize_meets_a_jitter_bound_with_a_model_that_predicts_jitter():
    from twin.models.qt import QueueingModel

    state = two_route_state(load=0.9)
    intent = parse_intent({"constraints": {"weight_bounds": [1, 10], "delay_bounds": [
        {"src": "a", "dst": "d", "max_jitter": "4ms", "max_loss": "0.01%"}]}, "search": {"max_evaluations": 60}})
    result = optimize(state, intent, QueueingModel(), seed=0)
    assert not result.before.feasible and result.after.feasible
    assert first_hop_of_a_to_d(state, result.weights) == "c"
    with pytest.raises(IntentError, match="does not predict"):
        optimize(state, intent, RouteTaste("c"), seed=0)  # a model of delay only


def test_violations_name_the_jitter_and_loss_bounds():
    from optimizer.objective import violations

    state = two_route_state(load=0.9)
    intent = parse_intent({"constraints": {"delay_bounds": [
        {"name": "voice", "src": "a", "dst": "d", "max_delay": "1s", "max_jitter": "1ms", "max_loss": 0.5}]}})
    metrics = {"delay": np.array([0.01, 0.01]), "jitter": np.array([4e-6, 0.0]), "loss": np.array([0.1, 0.0])}
    found = violations(state, intent, metrics["delay"], metrics)
    assert [(v["constraint"], v["value"]) for v in found] == [("delay_bounds[voice].max_jitter", pytest.approx(2e-3))]
    assert violations(state, intent, metrics["delay"]) == []  # measured delays only: jitter cannot be judged


def test_a_p99_bound_is_judged_on_the_tail_the_mean_and_jitter_imply():
    """A p99 bound needs the jitter head, is met by a path with no spread and broken by a spread one with the
    same mean; the value it reports is the gamma tail of twin.models.tails."""
    from optimizer.objective import violations
    from twin.models.features import fixed_delays
    from twin.models.tails import delay_quantile

    state = two_route_state(load=0.9)
    intent = parse_intent({"constraints": {"delay_bounds": [{"name": "video", "src": "a", "dst": "d",
                                                             "max_p99": "20ms"}]}})
    assert intent.heads == ("jitter",) and intent.delay_bounds[0].max_p99 == pytest.approx(0.02)
    delay = np.array([0.01, 0.01])
    assert violations(state, intent, delay, {"delay": delay, "jitter": np.zeros(2)}) == []
    spread = {"delay": delay, "jitter": np.array([4e-5, 0.0])}  # a standard deviation of 6.3 ms on a 10-ms mean
    found = violations(state, intent, delay, spread)
    prop, _ = fixed_delays(state)
    expected = delay_quantile(delay, spread["jitter"], prop)[0]
    assert [(v["constraint"], v["value"]) for v in found] == [("delay_bounds[video].max_p99", pytest.approx(expected))]
    assert expected > 0.02
    simulated = violations(state, intent, delay, dict(spread, p99=np.array([0.019, 0.0])))  # the simulator's own
    assert simulated == []
    assert violations(state, intent, delay) == []  # measured delays only: the tail cannot be judged
    with pytest.raises(IntentError, match=re.escape("bounds the 99th percentile (from the jitter), which the model")):
        optimize(state, intent, RouteTaste("c"), seed=0)  # a model of delay only
