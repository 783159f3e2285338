"""ECMP: traffic split evenly at each hop over equal-cost OSPF next hops, through routing, the simulator and the twin."""

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.models.qt import QueueingModel
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import Flow, Link, NetworkState


def diamond(ecmp=True, rate=2e5):
    """a→d over b or c at equal cost, and d→a back."""
    pairs = [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d"), ("d", "b"), ("b", "a"), ("d", "c"), ("c", "a")]
    links = tuple(Link(s, d, 1e6) for s, d in pairs)
    flows = (Flow("a", "d", rate), Flow("d", "a", rate / 2))
    return NetworkState(nodes=tuple("abcd"), links=links, flows=flows, ecmp=ecmp)


def test_split_is_even_at_each_hop():
    state = diamond()
    routes = state.routes
    assert list(routes.owner) == [0, 0, 1, 1]
    assert np.allclose(routes.share, 0.5)
    load = dict(zip(state.link_index, state.link_loads()))
    assert load[("a", "b")] == load[("a", "c")] == 1e5
    single = diamond(ecmp=False)
    assert single.routes.links[0].tolist() == single.flow_links[0].tolist()
    assert dict(zip(single.link_index, single.link_loads()))[("a", "c")] == 0.0


def test_uneven_fanout_splits_per_hop_not_per_path():
    # a→e: a splits over b and c; b splits again over x and y; so the three paths carry 1/4, 1/4, 1/2
    pairs = [("a", "b"), ("a", "c"), ("b", "x"), ("b", "y"), ("x", "e"), ("y", "e"), ("c", "z"), ("z", "e")]
    links = tuple(Link(s, d, 1e6) for s, d in pairs)
    state = NetworkState(nodes=tuple("abcxyze"), links=links, flows=(Flow("a", "e", 4e5),), ecmp=True)
    assert sorted(state.routes.share.tolist()) == [0.25, 0.25, 0.5]
    load = dict(zip(state.link_index, state.link_loads()))
    assert load[("b", "x")] == load[("y", "e")] == 1e5 and load[("z", "e")] == 2e5


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 12), st.integers(0, 10**6))
def test_routes_are_all_shortest_paths_with_shares_summing_to_one(n, seed):
    rng = np.random.default_rng(seed)
    graph = nx.connected_watts_strogatz_graph(n, 4, 0.3, seed=seed)
    pairs = [(u, v) for u, v in graph.edges] + [(v, u) for u, v in graph.edges]
    weights = rng.integers(1, 3, len(pairs))  # small integers: many ties
    links = tuple(Link(str(u), str(v), 1e6, weight=float(w)) for (u, v), w in zip(pairs, weights))
    flows = tuple(Flow(str(s), str(d), 1e3) for s in range(n) for d in range(n) if s != d)
    state = NetworkState(nodes=tuple(map(str, range(n))), links=links, flows=flows, ecmp=True)
    digraph = nx.DiGraph()
    digraph.add_weighted_edges_from((str(u), str(v), float(w)) for (u, v), w in zip(pairs, weights))
    routes = state.routes
    assert np.allclose(np.bincount(routes.owner, weights=routes.share), 1.0)
    for i, flow in enumerate(state.flows):
        mine = [tuple(links) for links, owner in zip(routes.links, routes.owner) if owner == i]
        expected = {tuple(state.link_index[(a, b)] for a, b in zip(p, p[1:]))
                    for p in nx.all_shortest_paths(digraph, flow.src, flow.dst, weight="weight")}
        assert set(mine) == expected and len(mine) == len(expected)


def test_json_round_trip_and_bad_input():
    state = diamond()
    again = NetworkState.from_dict(state.to_dict())
    assert again.ecmp and again.to_dict()["routing"] == {"kind": "ospf", "ecmp": True}
    data = state.to_dict()
    data["routing"]["ecmp"] = "yes"
    with pytest.raises(StateError, match="ecmp must be true or false"):
        NetworkState.from_dict(data)
    data["routing"] = {"kind": "paths", "ecmp": True, "paths": [["a", "b", "d"], ["d", "b", "a"]]}
    with pytest.raises(StateError, match="needs \"kind\": \"ospf\""):
        NetworkState.from_dict(data)


def test_too_many_equal_cost_paths_is_refused_naming_the_flow():
    # a chain of 7 diamonds: 2**7 = 128 equal-cost paths from the first node to the last
    nodes, links = ["n0"], []
    for k in range(7):
        top, bottom, nxt = f"t{k}", f"b{k}", f"n{k + 1}"
        nodes += [top, bottom, nxt]
        links += [Link(f"n{k}", top, 1e6), Link(f"n{k}", bottom, 1e6),
                  Link(top, nxt, 1e6), Link(bottom, nxt, 1e6)]
    with pytest.raises(StateError, match="n0->n7: more than 64 equal-cost paths"):
        NetworkState(nodes=tuple(nodes), links=tuple(links), flows=(Flow("n0", "n7", 1e3),), ecmp=True)


def test_weights_and_failures_keep_ecmp():
    state = diamond()
    assert state.with_weights(np.ones(len(state.links))).ecmp
    failed = state.without_links([("a", "b"), ("b", "a")])
    assert failed.ecmp and len(failed.routes.links) == 2


def test_simulator_pools_a_flows_packets_over_its_routes():
    state = diamond(rate=4e5)
    split = simulate(state, seed=3, packets_per_flow=4000)
    single = simulate(replace(state, ecmp=False), seed=3, packets_per_flow=4000)
    # each of a→d's two paths runs at load 0.2 instead of one at 0.4: less waiting, the same fixed part
    assert split.delay[0] < single.delay[0]
    assert split.sent[0] == pytest.approx(single.sent[0], rel=0.05)
    assert split.delivered[0] + split.dropped[0] == split.sent[0]
    assert split.p50[0] <= split.p90[0] <= split.p99[0]
    util = dict(zip(state.link_index, split.utilization))
    assert util[("a", "b")] == pytest.approx(util[("a", "c")], rel=0.1)
    assert util[("a", "b")] == pytest.approx(0.2, rel=0.1)


def test_twin_predicts_the_share_weighted_mean_of_its_routes():
    state = diamond(rate=4e5)
    qt = QueueingModel()
    split = qt.predict_delays([state])[0]
    halves = qt.predict_delays([replace(state, ecmp=False).scaled(0.5)])[0]
    assert len(split) == len(state.flows)
    # by symmetry both routes of a flow see one half of the traffic alone
    assert split == pytest.approx(halves, rel=1e-9)
