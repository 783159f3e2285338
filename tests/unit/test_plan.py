"""Capacity planning (analysis/plan.py, ndt plan): growth arithmetic, per-node and per-pair growth, the
fit to a traffic history, the upgrades and their cost, bad input, and the command's JSON contract."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from analysis.plan import (Growth, PlanError, fit_growth, grown, plan, plan_upgrades, timeline, utilization_by_month,
                           SECONDS_PER_MONTH)
from optimizer.intent import parse_intent
from telemetry.store import TelemetryStore
from tests.unit.test_optimizer import two_route_state
from twin.models.qt import QueueingModel
from twin.state.model import Flow, Link, NetworkState


def pair_state(utilization=0.5, prop_delay=0.0) -> NetworkState:
    """s1 <-> s2 at 10 Mbit/s, one flow s1->s2 loading the link to ``utilization``."""
    links = (Link("s1", "s2", 1e7, prop_delay=prop_delay), Link("s2", "s1", 1e7, prop_delay=prop_delay))
    return NetworkState(nodes=("s1", "s2"), links=links, flows=(Flow("s1", "s2", utilization * 1e7),))


def line_state() -> NetworkState:
    """a - b - c, 10 Mbit/s each way; a->b, b->c and a->c at 1 Mbit/s."""
    links = []
    for u, v in (("a", "b"), ("b", "c")):
        links += [Link(u, v, 1e7), Link(v, u, 1e7)]
    flows = (Flow("a", "b", 1e6), Flow("b", "c", 1e6), Flow("a", "c", 1e6))
    return NetworkState(nodes=("a", "b", "c"), links=tuple(links), flows=flows)


def test_a_link_at_half_load_growing_2_percent_a_month_crosses_0_8_in_month_24():
    state = pair_state(0.5)
    result = plan(state, Growth(0.02), 36, predictor=None, budget=0)
    expected = math.ceil(math.log(1.6) / math.log(1.02))
    assert expected == 24
    rows = {(r["src"], r["dst"]): r for r in result.to_dict()["links"]}
    assert rows[("s1", "s2")]["month_over_threshold"] == expected
    assert rows[("s2", "s1")]["month_over_threshold"] is None
    assert rows[("s1", "s2")]["utilization_at_horizon"] == pytest.approx(0.5 * 1.02**36)
    assert result.to_dict()["first_month"] == 24


def test_exact_utilization_by_month_matches_the_grown_states():
    state = two_route_state(0.5)
    per_flow = Growth(0.03, pairs=(("b", "d", 0.1),)).per_flow(state)
    by_month = utilization_by_month(state, per_flow, 12)
    for month in (0, 5, 12):
        assert by_month[month] == pytest.approx(grown(state, per_flow, month).utilization())


def test_per_node_growth_moves_only_that_nodes_links():
    state = line_state()
    per_flow = Growth(0.0, nodes=(("c", 0.05),)).per_flow(state)
    assert list(per_flow) == [0.0, 0.05, 0.05]  # a->b untouched; b->c and a->c end at c
    months = utilization_by_month(state, per_flow, 10)
    index = state.link_index
    assert months[10, index[("a", "b")]] == pytest.approx(0.1 + 0.1 * 1.05**10)  # a->b stays, a->c grows
    assert months[10, index[("b", "c")]] == pytest.approx(0.2 * 1.05**10)
    for still in (("b", "a"), ("c", "b")):
        assert months[10, index[still]] == 0.0
    assert months[10, index[("a", "b")]] < months[10, index[("b", "c")]]


def test_overrides_a_pair_beats_its_nodes_and_two_nodes_give_the_larger():
    state = line_state()
    per_flow = Growth(0.01, nodes=(("a", 0.02), ("c", 0.04)), pairs=(("b", "c", 0.0),)).per_flow(state)
    assert list(per_flow) == [0.02, 0.0, 0.04]


def test_fit_growth_recovers_a_known_monthly_rate():
    rng = np.random.default_rng(1)
    t = 1.7e9 + 86400 * np.arange(365.0)  # a year of daily totals
    months = (t - t[0]) / SECONDS_PER_MONTH
    exact = fit_growth(t, 5e9 * 1.03**months)
    assert exact.rate == pytest.approx(0.03, abs=1e-9) and exact.points == 365 and exact.r2 == pytest.approx(1.0)
    noisy = fit_growth(t, 5e9 * 1.03**months * rng.lognormal(0, 0.05, len(t)))  # slope's error ~0.0008
    assert noisy.rate == pytest.approx(0.03, abs=0.003) and 0.5 < noisy.r2 < 1
    assert fit_growth(t, 5e9 * 0.99**months).rate == pytest.approx(-0.01, abs=1e-9)


def test_upgrades_keep_every_link_under_the_threshold_and_cost_steps_times_the_price():
    state = pair_state(0.5)
    result = plan(state, Growth(0.05), 24, predictor=None, budget=0, cost_per_step=7.5)
    # 0.5 x 1.05^24 = 1.61, twice the threshold: x2 is not enough, x4 (two steps) is
    (upgrade,) = result.upgrades.upgrades
    assert (upgrade.src, upgrade.dst, upgrade.steps, upgrade.multiple) == ("s1", "s2", 2, 4.0)
    assert upgrade.capacity == upgrade.reverse_capacity == 4e7  # both directions together
    assert upgrade.month == math.ceil(math.log(1.6) / math.log(1.05))
    assert result.upgrades.cost == 7.5 * 2
    assert result.upgrades.feasible and result.upgrades.unmet == []
    assert result.upgrades.upgraded.utilization.max() <= 0.8
    assert result.to_dict()["cost"] == 15.0


def test_a_ladder_too_short_is_reported_unmet():
    result = plan(pair_state(0.5), Growth(0.05), 24, predictor=None, budget=0, steps=(1.5,))
    assert not result.upgrades.feasible
    assert result.upgrades.unmet[0]["what"] == "s1->s2" and "top step" in result.upgrades.unmet[0]["reason"]


def test_delay_bounds_are_met_greedily_by_upgrades_checked_by_the_twin():
    state = two_route_state(0.5)
    twin = QueueingModel()
    now = twin.predict_delays([state])[0][0]
    intent = parse_intent({"constraints": {"delay_bounds": [{"src": "a", "dst": "d", "max_delay": 1.5 * now}]}})
    result = plan(state, Growth(0.02), 36, twin, intent=intent, threshold=5.0, budget=0)
    broken = result.current.first_violated()
    assert ("delay_bounds[a->d]", "a->d") in broken  # growth breaks the bound within the horizon
    assert result.upgrades.upgrades and result.upgrades.feasible
    assert result.upgrades.cost == sum(u.steps for u in result.upgrades.upgrades)
    assert result.upgrades.upgraded.first_violated() == {}


def test_a_bound_below_the_propagation_delay_is_unmet_and_says_why():
    state = pair_state(0.3, prop_delay=0.01)
    intent = parse_intent({"constraints": {"delay_bounds": [{"src": "s1", "dst": "s2", "max_delay": "5ms"}]}})
    result = plan(state, Growth(0.01), 12, QueueingModel(), intent=intent, budget=0)
    assert result.upgrades.upgrades == []  # no capacity can help, none is bought
    (unmet,) = result.upgrades.unmet
    assert unmet["month"] == 0 and "propagation delay alone is 10 ms" in unmet["reason"]


def test_reoptimized_weights_postpone_the_crossing():
    result = plan(two_route_state(0.5), Growth(0.02), 36, predictor=None, budget=200, seed=1)
    report = result.to_dict()
    assert report["first_month"] == 24  # b->d at 0.5 under the current weights
    assert report["reoptimized"]["optimized_for_month"] == 24
    assert report["reoptimized"]["changed_links"]
    later = report["reoptimized"]["first_month"]
    assert later is None or later > 24
    assert report["cost_reoptimized"] < report["cost"]


@pytest.mark.parametrize("kwargs, words", [
    ({"growth": Growth(-0.01)}, "growth: a fraction per month from 0 to 1"),
    ({"horizon": 0}, "horizon: a whole number of months from 1 to 240, got 0"),
    ({"growth": Growth(0.02, nodes=(("nowhere", 0.1),))}, "growth of node 'nowhere': not a node of the network"),
    ({"growth": Growth(0.02, pairs=(("s2", "s1", 0.1),))}, "growth of pair s2->s1: the traffic matrix has no such"),
    ({"growth": Growth(0.5), "horizon": 240}, "multiplies traffic by"),
    ({"steps": (4, 2)}, "capacity steps: increasing multiples above 1"),
    ({"intent": parse_intent({"constraints": {"delay_bounds": [{"src": "s1", "dst": "s2", "max_jitter": "1ms"}]}})},
     "the intent bounds jitter; ndt plan upgrades capacity for utilization and delay bounds only"),
])
def test_bad_input_is_one_clear_line(kwargs, words):
    args = {"growth": Growth(0.02), "horizon": 36} | kwargs
    with pytest.raises(PlanError) as caught:
        plan(pair_state(0.5), args.pop("growth"), args.pop("horizon"), predictor=None, budget=0, **args)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_the_timeline_asks_the_twin_once_for_every_month():
    calls = []

    class Counting(QueueingModel):
        def predict_delays(self, states):
            calls.append(len(states))
            return super().predict_delays(states)

    intent = parse_intent({"constraints": {"delay_bounds": [{"src": "s1", "dst": "s2", "max_delay": "1s"}]}})
    result = timeline(pair_state(0.5), np.array([0.02]), 10, intent, Counting())
    assert calls == [11] and len(result.violations) == 11


def test_upgrades_under_a_fixed_routing_only_touch_links_over_the_target():
    state = line_state().scaled(1.5)  # at month 24: a->b 0.15 + 0.15 x 1.05^24 = 0.63, b->c 0.3 x 1.05^24 = 0.97
    per_flow = Growth(0.0, nodes=(("c", 0.05),)).per_flow(state)
    current = timeline(state, per_flow, 24, None, None)
    result = plan_upgrades(current, per_flow, 24, 0.8, None, None, (2.0, 4.0, 10.0), 1.0)
    assert [(u.src, u.dst) for u in result.upgrades] == [("b", "c")]


def ndt(*args):
    return subprocess.run([sys.executable, "-m", "ndt.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_plan_json_contract_and_picture(tmp_path):
    state, picture = tmp_path / "s.json", tmp_path / "plan.png"
    two_route_state(0.5).save(state)
    proc = ndt("plan", "--state", str(state), "--growth", "0.02", "--horizon", "36", "--model", "qt",
               "--budget", "60", "--plot", str(picture), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"src", "dst", "month_over_threshold"} <= set(report["links"][0])
    assert report["links"][0]["month_over_threshold"] == 24
    assert report["upgrades"] and {"src", "dst", "capacity"} <= set(report["upgrades"][0])
    assert report["cost"] == sum(u["steps"] for u in report["upgrades"])
    assert report["growth"]["rate"] == 0.02 and report["growth"]["fitted"] is None
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(picture)


def test_cli_plan_fits_growth_to_the_store(tmp_path):
    state, db = tmp_path / "s.json", tmp_path / "ndt.db"
    pair_state(0.5).save(state)
    store = TelemetryStore(db)
    for day in range(0, 60, 3):
        store.add_traffic_matrix(1.7e9 + day * 86400, {("s1", "s2"): 4e6 * 1.04 ** (day * 86400 / SECONDS_PER_MONTH),
                                                        ("s2", "s1"): 1e6 * 1.04 ** (day * 86400 / SECONDS_PER_MONTH)})
    store.close()
    before = db.read_bytes()
    proc = ndt("plan", "--state", str(state), "--growth-from-store", str(db), "--model", "qt", "--budget", "0",
               "--json")
    assert proc.returncode == 0, proc.stderr
    assert db.read_bytes() == before  # read-only
    report = json.loads(proc.stdout)
    assert report["growth"]["rate"] == pytest.approx(0.04, abs=1e-6)
    assert report["growth"]["fitted"]["points"] == 20
    assert report["links"][0]["month_over_threshold"] == math.ceil(math.log(1.6) / math.log(1.04))


def test_cli_plan_refuses_the_store_of_another_network_and_flat_traffic(tmp_path):
    state, other, flat = tmp_path / "s.json", tmp_path / "other.db", tmp_path / "flat.db"
    pair_state(0.5).save(state)
    for db, pairs, growth in ((other, {("x", "y"): 4e6}, 1.04), (flat, {("s1", "s2"): 4e6}, 1.0)):
        store = TelemetryStore(db)
        for day in range(0, 30, 3):
            store.add_traffic_matrix(1.7e9 + day * 86400, {p: r * growth ** day for p, r in pairs.items()})
        store.close()
    for db, words in ((other, "nodes the state does not have ('x', 'y'); is it the store of another network?"),
                      (flat, "the traffic does not grow")):
        proc = ndt("plan", "--state", str(state), "--growth-from-store", str(db), "--model", "qt")
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, words", [
    (("--growth", "-0.1"), "argument --growth: must be >= 0 and <= 1"),
    (("--growth", "0.02", "--horizon", "0"), "argument --horizon: must be >= 1 and <= 240, got 0"),
    (("--growth", "0.02", "--growth-node", "nowhere=0.1"), "growth of node 'nowhere': not a node of the network"),
    (("--growth-from-store", "/nonexistent/ndt.db"), "telemetry store /nonexistent/ndt.db: no such file"),
])
def test_cli_plan_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, words):
    state, picture = tmp_path / "s.json", tmp_path / "plan.png"
    pair_state(0.5).save(state)
    proc = ndt("plan", "--state", str(state), "--model", "qt", "--plot", str(picture), *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in proc.stderr
    assert not picture.exists() and proc.stdout == ""
