"""What-if scenarios and the N-1 sweep, on small states and the QT model (fast, deterministic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis.scenario import Scenario, ScenarioError, apply, apply_failure
from analysis.whatif import n_minus_1, single_failures, what_if
from optimizer.intent import parse_intent
from twin.models.intervals import Intervals, SafeRange
from twin.models.qt import QueueingModel
from twin.models.tails import tail_delays
from twin.state.model import Flow, Link, NetworkState

# a ring of four with a tail: d-e is a bridge, e a leaf
RING = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("d", "e")]


def ring_state(ecmp: bool = False) -> NetworkState:
    links = tuple(Link(x, y, 1e7) for p, q in RING for x, y in ((p, q), (q, p)))
    flows = (Flow("a", "c", 2e6), Flow("b", "d", 1e6), Flow("a", "e", 1.5e6), Flow("c", "b", 0.5e6))
    return NetworkState(nodes=("a", "b", "c", "d", "e"), links=links, flows=flows, ecmp=ecmp)


def load(state: NetworkState, src: str, dst: str) -> float:
    return float(state.link_loads()[state.link_index[(src, dst)]])


def test_a_failed_link_moves_its_traffic_and_keeps_every_demand():
    state = ring_state()
    after, lost = apply(state, Scenario(failed_links=(("a", "b"),)))
    assert lost == [] and len(after.flows) == len(state.flows)
    assert ("a", "b") not in after.link_index and ("b", "a") not in after.link_index
    assert state.flow_path(0) == ["a", "b", "c"] and after.flow_path(0) == ["a", "d", "c"]
    assert state.flow_path(1) == ["b", "a", "d"] and after.flow_path(1) == ["b", "c", "d"]
    total = sum(f.rate * len(links) for f, links in zip(after.flows, after.flow_links))
    assert after.link_loads().sum() == pytest.approx(total)


def test_a_failed_node_takes_its_links_and_its_own_demands():
    after, lost = apply(ring_state(), Scenario(failed_nodes=("b",)))
    assert sorted(lost) == [("b", "d"), ("c", "b")]
    assert all("b" not in (lk.src, lk.dst) for lk in after.links)
    assert [(f.src, f.dst) for f in after.flows] == [("a", "c"), ("a", "e")]


def test_shared_risk_groups_fail_together():
    groups = {"conduit": [("a", "b"), ("c", "d")], "duct": [("b", "c")]}
    after, _ = apply(ring_state(), Scenario(failed_groups=("duct",)), groups)
    assert {("b", "c"), ("c", "b")}.isdisjoint(after.link_index) and len(after.links) == 8
    with pytest.raises(ScenarioError, match="fail group conduit: disconnects the demand a->c"):
        apply(ring_state(), Scenario(failed_groups=("conduit",)), groups)
    with pytest.raises(ScenarioError, match="group 'trench' is not defined"):
        apply(ring_state(), Scenario(failed_groups=("trench",)), groups)


def test_traffic_scaling_globally_per_node_and_per_pair():
    state = ring_state()
    rates = {(f.src, f.dst): f.rate for f in state.flows}
    after, _ = apply(state, Scenario(traffic_scale=2.0, node_scale=(("e", 3.0),), pair_scale=(("c", "b", 0.5),)))
    got = {(f.src, f.dst): f.rate for f in after.flows}
    assert got[("a", "c")] == 2 * rates[("a", "c")]
    assert got[("a", "e")] == 6 * rates[("a", "e")]
    assert got[("c", "b")] == 1 * rates[("c", "b")]


def test_weights_reroute_and_capacities_change_utilization():
    state = ring_state()
    assert load(state, "a", "b") > 0
    after, _ = apply(state, Scenario(weights=(("a", "b", 10.0),), capacities=(("a", "d", 2e7),)))
    assert load(after, "a", "b") == 0 and load(after, "a", "d") > load(state, "a", "d")
    i = after.link_index[("a", "d")]
    assert after.utilization()[i] == pytest.approx(load(after, "a", "d") / 2e7)


@pytest.mark.parametrize("scenario, words", [
    (Scenario(failed_links=(("a", "z"),)), "failed link a-z: 'z' is not a node"),
    (Scenario(failed_links=(("a", "c"),)), "failed link a-c: no such link"),
    (Scenario(failed_nodes=("q",)), "failed node 'q' is not a node"),
    (Scenario(failed_links=(("d", "e"),)), "disconnects the demand a->e"),
    (Scenario(node_scale=(("q", 2.0),)), "traffic of 'q': not a node"),
    (Scenario(pair_scale=(("b", "a", 2.0),)), "traffic b->a: the traffic matrix has no such demand"),
    (Scenario(traffic_scale=-1.0), "traffic scale: a factor from 0"),
    (Scenario(weights=(("a", "b", 0.0),)), "weight a->b: must be > 0"),
    (Scenario(capacities=(("a", "b", float("nan")),)), "capacity a->b: must be"),
    (Scenario(capacities=(("a", "b", 0.5),)), r"capacity a->b: must be >= 1 and <= 1e\+15, got 0.5"),
])
def test_bad_scenarios_name_what_is_wrong(scenario, words):
    with pytest.raises(ScenarioError, match=words):
        apply(ring_state(), scenario)


def test_the_sweep_reports_cut_demands_instead_of_refusing():
    after, lost, cut = apply_failure(ring_state(), Scenario(failed_links=(("d", "e"),)))
    assert cut == [("a", "e")] and lost == [] and len(after.flows) == 3


def test_n_minus_1_covers_every_single_failure_and_ranks_the_worst_first():
    state = ring_state()
    report = n_minus_1(state, QueueingModel())
    cases = report["cases"]
    assert len(cases) == len(RING) + len(state.nodes) == len(single_failures(state))
    assert cases[0].failed == "d-e" or cases[0].failed == "node d"  # both cut a->e off
    assert {c.failed for c in cases if c.cut} == {"d-e", "node d"}
    for case in cases:
        if case.kind == "link" and not case.cut:
            after = state.without_links([case.elements, case.elements[::-1]])
            assert case.max_utilization == pytest.approx(after.utilization().max())
            expected = np.average(QueueingModel().predict_delays([after])[0], weights=[f.rate for f in after.flows])
            assert case.mean_delay == pytest.approx(expected)
            base = np.average(QueueingModel().predict_delays([state])[0], weights=[f.rate for f in state.flows])
            assert case.mean_delay_increase == pytest.approx(expected - base)
    keys = [c.impact() for c in cases]
    assert keys == sorted(keys)


def test_what_if_reports_intervals_links_and_intent_violations():
    state = ring_state()
    intent = parse_intent({"constraints": {"max_utilization": 0.35,
                                           "delay_bounds": [{"src": "a", "dst": "c", "max_delay": "2.5ms"}]}})
    intervals = Intervals("qt", 0.9, [0.95] * 4, [1.2] * 4, [100] * 4, SafeRange.of([state, state.scaled(1.2)]))
    report = what_if(state, Scenario(failed_links=(("a", "b"),), traffic_scale=1.5), QueueingModel(),
                     intervals=intervals, intent=intent)
    assert report["before"]["in_safe_range"] is True
    assert report["after"]["in_safe_range"] is False  # 1.5x the traffic on fewer links: beyond the checked load
    assert all(p["delay_lo"] is None for p in report["paths"])
    inside = what_if(state, Scenario(traffic_scale=1.1), QueueingModel(), intervals=intervals)
    for path in inside["paths"]:
        assert path["delay_lo"] == pytest.approx(0.95 * path["delay"]) and path["delay_hi"] == pytest.approx(1.2 * path["delay"])
    assert report["before"]["violations"] == []
    broken = {v["constraint"] for v in report["after"]["violations"]}
    assert broken == {"max_utilization", "delay_bounds[a->c]"}
    failed_rows = [r for r in report["links"] if r["utilization_after"] is None]
    assert {(r["src"], r["dst"]) for r in failed_rows} == {("a", "b"), ("b", "a")}
    a_to_c = next(p for p in report["paths"] if (p["src"], p["dst"]) == ("a", "c"))
    assert a_to_c["delay"] > a_to_c["delay_before"] > 0
    assert a_to_c["jitter"] > 0 and 0 <= a_to_c["loss"] < 1  # QT predicts them, so the rows carry them
    after_state, _ = apply(state, Scenario(failed_links=(("a", "b"),), traffic_scale=1.5))
    index = next(i for i, f in enumerate(after_state.flows) if (f.src, f.dst) == ("a", "c"))
    expected_p99 = tail_delays(after_state, np.array([p["delay"] for p in report["paths"]]),
                               np.array([p["jitter"] for p in report["paths"]]),
                               np.array([p["loss"] for p in report["paths"]]))[index]
    assert a_to_c["p99"] == pytest.approx(expected_p99) and a_to_c["p99"] > a_to_c["delay"]
    jittery = what_if(state, Scenario(failed_links=(("a", "b"),), traffic_scale=1.5), QueueingModel(), intent=parse_intent(
        {"constraints": {"delay_bounds": [{"src": "a", "dst": "c", "max_jitter": "1us"}]}}))
    assert {v["constraint"] for v in jittery["after"]["violations"]} == {"delay_bounds[a->c].max_jitter"}


def ndt(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ndt.cli", *args], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def test_cli_n_minus_1_json_contract_and_picture(tmp_path):
    path = tmp_path / "ring.json"
    ring_state().save(path)
    done = ndt("whatif", "--state", str(path), "--n-1", "--model", "qt", "--plot", str(tmp_path / "n1.png"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["elapsed_s"] > 0 and len(report["cases"]) == 10
    assert {"failed", "max_utilization", "mean_delay", "violations"} <= set(report["cases"][0])
    assert (tmp_path / "n1.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, words", [
    (["--fail-link", "a,z"], "failed link a-z: 'z' is not a node of the network"),
    (["--fail-link", "d,e"], "disconnects the demand a->e"),
    (["--fail-link", "ab"], "expected NODE,NODE"),
    (["--fail-link", "a->b->c"], "expected NODE,NODE"),
    ([], "nothing to change"),
    (["--n-1", "--scale", "2"], "--n-1 sweeps single failures"),
    (["--links-only", "--scale", "2"], "--links-only belongs to --n-1"),
    (["--plot", "x.txt", "--scale", "2"], "a picture is written as .png, .svg, .pdf"),
])
def test_cli_bad_input_is_one_line(tmp_path, argv, words):
    path = tmp_path / "ring.json"
    ring_state().save(path)
    done = ndt("whatif", "--state", str(path), "--model", "qt", *argv)
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr


def test_cli_asks_the_running_controller_through_grpc():
    from controller.api.server import NdtService, serve
    from telemetry.exporter import Metrics
    from telemetry.store import TelemetryStore
    from tests.api_stand_in import StandIn
    from twin.models.registry import get_predictor

    server, port = serve(NdtService(StandIn(), TelemetryStore(), Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    try:
        done = ndt("whatif", "--controller", f"127.0.0.1:{port}", "--fail-node", "s2", "--model", "qt", "--json")
    finally:
        server.stop(None)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["lost"] == [{"src": "s2", "dst": "s4"}]  # the stand-in's running network: s3-s4 is down
    assert [(p["src"], p["dst"]) for p in report["paths"]] == [("s1", "s3")]
    assert {(r["src"], r["dst"]) for r in report["links"]} >= {("s1", "s2"), ("s2", "s1")}


def test_cli_asks_a_controller_behind_a_token_and_mutual_tls(tmp_path):
    from controller.api.server import NdtService, serve
    from telemetry.exporter import Metrics
    from telemetry.store import TelemetryStore
    from tests.api_stand_in import StandIn
    from tests.unit.test_controller_api import self_signed
    from twin.models.registry import get_predictor

    self_signed(tmp_path, "server")
    self_signed(tmp_path, "client")
    server, port = serve(NdtService(StandIn(), TelemetryStore(), Metrics(), get_predictor, "qt"), "127.0.0.1:0",
                         token="s3cret", tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server-key.pem",
                         tls_client_ca=tmp_path / "client.pem")
    tls = ("--tls-ca", str(tmp_path / "server.pem"), "--tls-cert", str(tmp_path / "client.pem"),
           "--tls-key", str(tmp_path / "client-key.pem"))
    ask = ("whatif", "--controller", f"localhost:{port}", "--fail-node", "s2", "--model", "qt", "--json")
    try:
        done = ndt(*ask, *tls, env={"NDT_API_TOKEN": "s3cret"})
        wrong_token = ndt(*ask, *tls, env={"NDT_API_TOKEN": "nope"})
        no_tls = ndt(*ask, env={"NDT_API_TOKEN": "s3cret"})
    finally:
        server.stop(None)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["lost"] == [{"src": "s2", "dst": "s4"}]
    assert wrong_token.returncode == 2 and "UNAUTHENTICATED" in wrong_token.stderr, wrong_token.stderr
    assert no_tls.returncode == 2 and "no ndt controller API answers there" in no_tls.stderr, no_tls.stderr


def test_predict_returns_intervals_inside_the_safe_range_and_reasons_outside(tmp_path):
    from twin.state.topologies import load_topology
    from twin.state.traffic import scale_to_utilization

    state = scale_to_utilization(load_topology("sndlib/abilene"), 0.5)
    inside, outside = tmp_path / "in.json", tmp_path / "out.json"
    state.save(inside)
    state.scaled(3.0).save(outside)  # the busiest link at 1.5, beyond what the intervals were checked on
    report = json.loads(ndt("predict", "--state", str(inside), "--json").stdout)  # RouteNet-E, as shipped
    assert report["in_safe_range"] is True and report["out_of_range_reasons"] == []
    for path in report["paths"]:
        assert path["delay_lo"] <= path["delay"] <= path["delay_hi"]
    assert all("p99" not in path for path in report["paths"])  # RouteNet-E predicts no jitter
    report = json.loads(ndt("predict", "--state", str(outside), "--model", "qt", "--json").stdout)
    assert report["in_safe_range"] is False and any("beyond" in r for r in report["out_of_range_reasons"])
    assert all(p["delay_lo"] is None and p["delay_hi"] is None for p in report["paths"])
    overloaded = state.scaled(3.0)
    expected = tail_delays(overloaded, *(np.array([p[k] for p in report["paths"]]) for k in ("delay", "jitter", "loss")))
    assert [p["p99"] for p in report["paths"]] == pytest.approx(list(expected))
    assert all(p["p99"] >= p["delay"] for p in report["paths"])


def test_a_restricted_state_carries_columns_and_routes_like_a_validated_one():
    state = ring_state()
    _ = state.flow_columns  # cached on the parent: the restricted state must inherit a matching slice
    after, _, cut = apply_failure(state, Scenario(failed_links=(("d", "e"),)))
    fresh = NetworkState(nodes=after.nodes, links=after.links, flows=after.flows)
    for name, values in fresh.flow_columns.items():
        assert np.array_equal(after.flow_columns[name], values), name
    assert [list(x) for x in after.flow_links] == [list(x) for x in fresh.flow_links]
    assert np.allclose(after.utilization(), fresh.utilization())


def test_explicit_paths_survive_a_failure_they_avoid_and_only_broken_ones_move():
    state = ring_state()
    explicit = NetworkState(nodes=state.nodes, links=state.links, flows=state.flows, routing_kind="paths",
                            paths={("a", "c"): ("a", "d", "c"), ("b", "d"): ("b", "c", "d"),
                                   ("a", "e"): ("a", "d", "e"), ("c", "b"): ("c", "d", "a", "b")})
    after, _ = apply(explicit, Scenario(failed_links=(("a", "b"),)))
    assert after.routing_kind == "paths"
    assert after.paths[("a", "c")] == ("a", "d", "c") and after.paths[("b", "d")] == ("b", "c", "d")
    assert after.paths[("a", "e")] == ("a", "d", "e")
    assert after.paths[("c", "b")] == ("c", "b")  # its path broke: the IGP's shortest path on what is left


def test_cli_names_links_of_nodes_whose_names_hold_a_comma(tmp_path):
    names = ("a", "Washington, DC", "c")
    links = tuple(Link(x, y, 1e7) for p, q in ((0, 1), (1, 2), (0, 2)) for x, y in ((names[p], names[q]), (names[q], names[p])))
    state = NetworkState(nodes=names, links=links, flows=(Flow("a", "c", 1e6), Flow("c", "a", 1e6)))
    path = tmp_path / "dc.json"
    state.save(path)
    done = ndt("whatif", "--state", str(path), "--model", "qt", "--fail-link", "a->c",
               "--weight", "Washington, DC->c=3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after"]["mean_delay"] > report["before"]["mean_delay"]  # a->c now runs through Washington


def test_cli_says_when_a_weight_change_replaces_explicit_paths(tmp_path):
    state = ring_state()
    explicit = NetworkState(nodes=state.nodes, links=state.links, flows=state.flows, routing_kind="paths",
                            paths={("a", "c"): ("a", "d", "c"), ("b", "d"): ("b", "c", "d"),
                                   ("a", "e"): ("a", "d", "e"), ("c", "b"): ("c", "d", "a", "b")})
    note = "--weight routes all of it by OSPF"
    for routed, path in ((explicit, tmp_path / "paths.json"), (state, tmp_path / "ospf.json")):
        routed.save(path)
        done = ndt("whatif", "--state", str(path), "--model", "qt", "--weight", "a,b=5", "--json")
        assert done.returncode == 0, done.stderr
        assert (note in done.stderr) == (routed is explicit) and json.loads(done.stdout)["paths"]


def test_a_failure_that_takes_every_demand_is_reported_not_predicted():
    links = tuple(Link(x, y, 1e7) for p, q in (("a", "b"), ("b", "c"), ("c", "a")) for x, y in ((p, q), (q, p)))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "b", 1e6), Flow("b", "a", 1e6)))
    report = what_if(state, Scenario(failed_nodes=("a",)), QueueingModel())
    assert report["lost"] == [{"src": "a", "dst": "b"}, {"src": "b", "dst": "a"}] and report["paths"] == []
    assert report["after"]["mean_delay"] is None and report["before"]["mean_delay"] > 0


def test_cli_names_an_unreachable_controller_in_one_line():
    from mininet_topos.network import free_port

    done = ndt("whatif", "--controller", f"127.0.0.1:{free_port()}", "--fail-link", "a,b", "--model", "qt")
    assert done.returncode == 2 and "no ndt controller API answers there" in done.stderr, done.stderr
