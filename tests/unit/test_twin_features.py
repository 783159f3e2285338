"""Twin features: scale-free, batched as a disjoint union that keeps every path's hops."""

from dataclasses import replace

import numpy as np
import pytest

from twin.data.dataset import DatasetConfig, make_state
from twin.models.features import build_batch, state_graph
from twin.state.errors import StateError
from twin.state.model import NetworkState

CONFIG = DatasetConfig(samples=2, min_nodes=6, max_nodes=9, real_fraction=0.0, seed=3)


def _state(i=0) -> NetworkState:
    return make_state(CONFIG, i)[0]


def _rescaled(state: NetworkState, k: float, sizes: bool) -> NetworkState:
    """The same network with capacities and rates × k; time / k (sizes fixed) or packet sizes × k (time fixed)."""
    t = 1.0 if sizes else 1.0 / k
    s = k if sizes else 1.0
    links = tuple(replace(l, capacity=l.capacity * k, prop_delay=l.prop_delay * t) for l in state.links)
    flows = tuple(
        replace(f, rate=f.rate * k, packet_size=f.packet_size * s,
                packet_sizes=None if f.packet_sizes is None else tuple(x * s for x in f.packet_sizes),
                on_time=None if f.on_time is None else f.on_time * t,
                off_time=None if f.off_time is None else f.off_time * t)
        for f in state.flows)
    return replace(state, links=links, flows=flows)


@pytest.mark.parametrize("sizes", [False, True])
def test_features_are_scale_free(sizes):
    state = _state()
    assert {f.time_dist for f in state.flows} == {"poisson", "cbr", "onoff"}
    a, b = state_graph(state), state_graph(_rescaled(state, 1000.0, sizes))
    for name in ("link_x", "queue_x", "path_x"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12)
    time_factor = 1.0 if sizes else 1e-3
    np.testing.assert_allclose(b.link_service, a.link_service * time_factor, rtol=1e-9)
    np.testing.assert_allclose(b.path_prop, a.path_prop * time_factor, rtol=1e-9)


def test_load_feature_is_offered_traffic_over_capacity():
    state = _state()
    graph = state_graph(state)
    np.testing.assert_allclose(graph.link_x[:, 0], state.utilization())


def test_batch_is_a_disjoint_union_sorted_by_length():
    states = [_state(0), _state(1)]
    batch = build_batch(states)
    lengths = np.bincount(batch.hop_path, minlength=batch.n_paths)
    assert np.all(np.diff(lengths) <= 0)
    assert batch.n_paths == sum(len(s.flows) for s in states)
    assert len(batch.link_x) == sum(len(s.links) for s in states)
    # every sorted path crosses, hop by hop, the links of its flow (offset into the union)
    hops = {}
    for link, path in zip(batch.hop_link, batch.hop_path):
        hops.setdefault(path, []).append(link)
    flows = [(k, links) for k, s in enumerate(states) for links in s.flow_links]
    for j, original in enumerate(batch.order):
        k, links = flows[original]
        assert hops[j] == list(links + batch.link_offsets[k])
    # values put in sorted order come back per state in flow order
    back = batch.unsort(batch.order.astype(float))
    np.testing.assert_array_equal(np.concatenate(back), np.arange(batch.n_paths))


def test_state_without_traffic_is_refused():
    with pytest.raises(StateError, match="no traffic"):
        state_graph(_state().with_flows([]))
