"""OSPF routing: shortest paths under weights, deterministic ties, destination-based consistency."""

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.state.model import Flow, Link, NetworkState
import pytest

from twin.state.routing import next_hop_links, paths_from_table, split_hops


def square(weights=None):
    # a - b
    # |   |
    # c - d      two equal-cost paths a->d
    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "d"), ("d", "b"), ("c", "d"), ("d", "c")]
    weights = weights or [1] * len(pairs)
    links = tuple(Link(s, d, 1e6, weight=w) for (s, d), w in zip(pairs, weights))
    flows = tuple(Flow(s, d, 1e4) for s in "abcd" for d in "abcd" if s != d)
    return NetworkState(nodes=tuple("abcd"), links=links, flows=flows)


def test_ties_go_to_lowest_node_index():
    state = square()
    i = [k for k, f in enumerate(state.flows) if (f.src, f.dst) == ("a", "d")][0]
    assert state.flow_path(i) == ["a", "b", "d"]


def test_weights_steer_the_path():
    state = square([1, 1, 1, 1, 5, 1, 1, 1])  # b->d expensive
    i = [k for k, f in enumerate(state.flows) if (f.src, f.dst) == ("a", "d")][0]
    assert state.flow_path(i) == ["a", "c", "d"]


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 14), st.integers(0, 10**6))
def test_paths_are_shortest_and_destination_based(n, seed):
    rng = np.random.default_rng(seed)
    g = nx.connected_watts_strogatz_graph(n, 4, 0.3, seed=seed)
    pairs = [(u, v) for u, v in g.edges] + [(v, u) for u, v in g.edges]
    weights = rng.integers(1, 6, len(pairs)).astype(float)
    src = np.array([p[0] for p in pairs])
    dst = np.array([p[1] for p in pairs])
    table = next_hop_links(n, src, dst, weights)
    dg = nx.DiGraph()
    dg.add_weighted_edges_from((s, d, w) for (s, d), w in zip(pairs, weights))
    dist = dict(nx.all_pairs_dijkstra_path_length(dg))
    for v in range(n):
        for d in range(n):
            if v == d:
                assert table[v, d] == -1
                continue
            link = table[v, d]
            assert src[link] == v
            # the chosen next hop lies on a shortest path
            assert abs(weights[link] + dist[dst[link]][d] - dist[v][d]) < 1e-9


def test_paths_follow_the_table_pair_after_pair_and_name_the_first_unreachable_pair():
    # a chain a -> b -> c with no way back: links 0 (a->b), 1 (b->c)
    src, dst = np.array([0, 1]), np.array([1, 2])
    table = next_hop_links(3, src, dst, np.ones(2))
    hop_links, hop_counts = paths_from_table(table, dst, np.array([0, 1, 0]), np.array([2, 2, 1]))
    assert [links.tolist() for links in split_hops(hop_links, hop_counts)] == [[0, 1], [1], [0]]
    with pytest.raises(LookupError) as caught:
        paths_from_table(table, dst, np.array([0, 2, 1]), np.array([1, 0, 0]))
    assert caught.value.args == (1,)


def test_a_next_hop_table_with_a_loop_is_refused_not_followed_for_ever():
    table = np.array([[-1, 0, 0], [1, -1, 1], [-1, -1, -1]])  # towards c, a and b send to each other
    with pytest.raises(LookupError):
        paths_from_table(table, np.array([1, 0]), np.array([0]), np.array([2]))
