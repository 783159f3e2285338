"""Ports with several queues (SP, WFQ, DRR) against queueing theory, and FIFO left as it was."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from twin.data.datanet_reader import _read_graph, read_datanet
from twin.data.datanet_writer import write_datanet
from twin.data.reference import compare_with_reference
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import Flow, Link, NetworkState

C = 10e6  # bit/s
SIZE = 8000.0  # bits
MU = C / SIZE  # packets/s
WIRE = 1e15  # bit/s: links that only carry a second flow onto the shared port, at no measurable cost
BIG = 10**6  # packets: no loss


def _two_classes(policy, rate0, rate1, weights=None, sizes=(BIG, BIG), size_dist="exponential", tos=(0, 1)):
    """Two flows sharing the port a->b, ToS ``tos``: a->b directly, c->d over c->a->b->d."""
    links = (Link("a", "b", C, policy=policy, queue_sizes=sizes, queue_weights=weights),
             Link("c", "a", WIRE, buffer=BIG), Link("b", "d", WIRE, buffer=BIG))
    flows = (Flow("a", "b", rate0, size_dist=size_dist, packet_size=SIZE, tos=tos[0]),
             Flow("c", "d", rate1, size_dist=size_dist, packet_size=SIZE, tos=tos[1]))
    return NetworkState(nodes=("a", "b", "c", "d"), links=links, flows=flows, routing_kind="paths",
                        paths={("a", "b"): ("a", "b"), ("c", "d"): ("c", "a", "b", "d")})


def _mixed_state(policy="fifo", **port):
    links = (Link("a", "b", C, buffer=4, policy=policy, **port), Link("b", "c", C / 2, buffer=3, policy=policy, **port),
             Link("a", "c", C, buffer=2, policy=policy, **port))
    flows = (Flow("a", "c", 0.6 * C, time_dist="onoff", on_time=0.01, off_time=0.02, size_dist="binomial",
                  packet_sizes=(2000.0, 12000.0), tos=1),
             Flow("b", "c", 0.4 * C, time_dist="cbr", size_dist="exponential", tos=2),
             Flow("a", "b", 0.5 * C))
    return NetworkState(nodes=("a", "b", "c"), links=links, flows=flows, routing_kind="paths",
                        paths={("a", "c"): ("a", "b", "c"), ("b", "c"): ("b", "c"), ("a", "b"): ("a", "b")})


def test_fifo_numbers_are_unchanged():
    """A state without scheduling fields runs the FIFO loop: these are its numbers from before queues existed
    (seed 11, numpy and numba of the project's lock); they change only with a deliberate change of the loop."""
    result = simulate(_mixed_state(), duration=2.0, seed=11)
    np.testing.assert_allclose(result.delay, [0.008317434587918957, 0.00409946633351797, 0.0018340889956029133],
                               rtol=1e-12)
    np.testing.assert_array_equal(result.dropped, [987, 212, 210])
    assert result.packet_hops == 4543
    np.testing.assert_allclose(result.utilization, [0.7271111111111053, 0.911033891552866, 0.0], rtol=1e-12)


def test_one_queue_ports_reproduce_fifo():
    """A port with one queue serves it first come, first served: the scheduled loop gives FIFO's packets."""
    fifo = simulate(_mixed_state(), duration=2.0, seed=11)
    for policy in ("sp", "wfq", "drr"):
        one_queue = simulate(_mixed_state(policy), duration=2.0, seed=11)
        np.testing.assert_array_equal(one_queue.sent, fifo.sent)
        np.testing.assert_array_equal(one_queue.dropped, fifo.dropped)
        np.testing.assert_allclose(one_queue.delay, fifo.delay, rtol=1e-9)
        np.testing.assert_allclose(one_queue.utilization, fifo.utilization, rtol=1e-9)


@pytest.mark.parametrize("rho_high, rho_low", [(0.3, 0.5), (0.5, 0.3)])
def test_non_preemptive_priority_cobham(rho_high, rho_low):
    """M/M/1 with two classes under SP (ToS 0 first), served without preemption: Cobham's waiting times
    W_k = W0 / ((1 - σ_{k-1})(1 - σ_k)), W0 = Σ λ_i E[S_i²] / 2 = ρ / μ for exponential sizes."""
    rho = rho_high + rho_low
    result = simulate(_two_classes("sp", rho_high * C, rho_low * C), duration=1_500_000 / (rho * MU), seed=3)
    w0 = rho / MU
    expected = [w0 / (1 - rho_high) + 1 / MU, w0 / ((1 - rho_high) * (1 - rho)) + 1 / MU]
    assert result.delay[0] == pytest.approx(expected[0], rel=0.02)
    assert result.delay[1] == pytest.approx(expected[1], rel=0.03)
    np.testing.assert_allclose(result.queue_utilization[:2], [rho_high, rho_low], rtol=0.02)


@pytest.mark.parametrize("policy", ["wfq", "drr"])
@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 4.0)])
def test_backlogged_classes_share_by_weight(policy, weights):
    """Both classes offer twice the port's capacity: each gets the fraction of it its weight gives."""
    state = _two_classes(policy, 2 * C, 2 * C, weights=weights, sizes=(50, 50), size_dist="deterministic")
    result = simulate(state, duration=100.0, seed=4)
    shares = np.array(weights) / sum(weights)
    np.testing.assert_allclose(result.queue_utilization[:2], shares, rtol=0.01)
    assert result.utilization[0] == pytest.approx(1.0, rel=1e-3)


def test_drr_shares_with_mixed_packet_sizes():
    """DRR shares bits, not packets: a class of small packets still gets its weight of the capacity."""
    links = (Link("a", "b", C, policy="drr", queue_sizes=(50, 50), queue_weights=(1.0, 1.0)),
             Link("c", "a", WIRE, buffer=BIG), Link("b", "d", WIRE, buffer=BIG))
    flows = (Flow("a", "b", 2 * C, packet_size=2000.0, tos=0), Flow("c", "d", 2 * C, packet_size=12000.0, tos=1))
    state = NetworkState(nodes=("a", "b", "c", "d"), links=links, flows=flows, routing_kind="paths",
                         paths={("a", "b"): ("a", "b"), ("c", "d"): ("c", "a", "b", "d")})
    result = simulate(state, duration=100.0, seed=5)
    np.testing.assert_allclose(result.queue_utilization[:2], [0.5, 0.5], rtol=0.02)


@pytest.mark.parametrize("policy, weights", [("sp", None), ("wfq", (0.7, 0.3)), ("drr", (0.2, 0.8))])
def test_conservation_law(policy, weights):
    """Kleinrock's conservation law: a work-conserving port that does not pick by packet size (here all
    packets are alike) keeps the M/D/1 number of waiting packets ρ²/(2(1-ρ)), whichever class it serves
    first; the busy fraction stays ρ."""
    rho = 0.8
    state = _two_classes(policy, 0.3 * C, 0.5 * C, weights=weights, size_dist="deterministic")
    result = simulate(state, duration=1_500_000 / (rho * MU), seed=6)
    assert result.occupancy[0] == pytest.approx(rho**2 / (2 * (1 - rho)), rel=0.03)
    assert result.utilization[0] == pytest.approx(rho, rel=0.01)
    assert result.queue_occupancy[:2].sum() == pytest.approx(result.occupancy[0], rel=1e-9)


@pytest.mark.parametrize("policy", ["sp", "wfq", "drr"])
def test_every_packet_is_delivered_or_dropped(policy):
    port = {"queue_sizes": (3, 2, 2)} | ({} if policy == "sp" else {"queue_weights": (5.0, 3.0, 2.0)})
    state = _mixed_state(policy, **port)
    one = simulate(state, duration=3.0, seed=7)
    np.testing.assert_array_equal(one.sent, one.delivered + one.dropped)
    assert one.dropped.sum() > 0
    np.testing.assert_array_equal(one.link_drops, [sum(one.queue_drops[one.queue_first[j]:one.queue_first[j + 1]])
                                                   for j in range(3)])
    np.testing.assert_array_equal(one.delay, simulate(state, duration=3.0, seed=7).delay)


def test_tos_beyond_the_queues_takes_the_last_queue():
    state = _two_classes("sp", 0.2 * C, 0.2 * C, sizes=(BIG, BIG), tos=(0, 7))
    result = simulate(state, duration=200.0, seed=8)
    np.testing.assert_allclose(result.queue_utilization[:2], [0.2, 0.2], rtol=0.05)


def test_result_lists_tos_and_queues():
    report = simulate(_two_classes("wfq", 0.2 * C, 0.3 * C, weights=(1.0, 1.0)), duration=20.0, seed=9).to_dict()
    assert [p["tos"] for p in report["paths"]] == [0, 1]
    assert len(report["links"][0]["queues"]) == 2 and len(report["links"][1]["queues"]) == 1
    assert set(report["links"][0]["queues"][0]) == {"utilization", "occupancy", "drops"}


def test_state_fields_round_trip_and_old_files_stay_as_they_were():
    state = _two_classes("drr", 1e6, 1e6, weights=(2.0, 1.0), sizes=(10, 20))
    again = NetworkState.from_dict(state.to_dict())
    assert again.links[0].queue_sizes == (10, 20) and again.links[0].queue_weights == (2.0, 1.0)
    assert again.links[0].policy == "drr" and again.flows[1].tos == 1
    plain = _mixed_state().to_dict()
    assert all(set(link) == {"src", "dst", "capacity", "buffer", "prop_delay", "weight"} for link in plain["links"])
    assert all("tos" not in flow for flow in plain["traffic"][2:])
    assert not _mixed_state().scheduled and _mixed_state("sp").scheduled


@pytest.mark.parametrize("link, message", [
    ({"policy": "cbq"}, r"link a->b: policy 'cbq' is not one of"),
    ({"queue_sizes": [8, 8]}, r"link a->b: queue_sizes: a fifo port has one queue"),
    ({"policy": "sp", "queue_sizes": [8, 0]}, r"link a->b: queue_sizes must be whole numbers of packets"),
    ({"policy": "sp", "queue_sizes": 8}, r"links\[0\]: queue_sizes must be a list"),
    ({"policy": "sp", "queue_weights": [1]}, r"link a->b: queue_weights apply to wfq and drr ports"),
    ({"policy": "wfq", "queue_sizes": [8, 8], "queue_weights": [1]}, r"link a->b: queue_weights needs one weight "
                                                                     r"per queue \(2\)"),
    ({"policy": "drr", "queue_weights": [-1]}, r"link a->b: queue_weights must be positive"),
])
def test_bad_scheduling_fields_are_refused(link, message):
    data = {"nodes": ["a", "b"], "links": [{"src": "a", "dst": "b", "capacity": C, **link}]}
    with pytest.raises(StateError, match=message):
        NetworkState.from_dict(data)


@pytest.mark.parametrize("tos", [-1, 256, 1.5, True])
def test_bad_tos_is_refused(tos):
    with pytest.raises(StateError, match=r"flow a->b: tos must be a whole number from 0 to 255"):
        NetworkState(nodes=("a", "b"), links=(Link("a", "b", C),), flows=(Flow("a", "b", 1e6, tos=tos),))


def test_restricted_states_keep_the_ports():
    state = _mixed_state("wfq", queue_sizes=(4, 4, 4), queue_weights=(1.0, 1.0, 2.0)).with_weights([1.0] * 3)
    restricted = state.restricted(state.links, np.ones(3, dtype=bool))
    assert restricted.scheduled and replace(restricted.links[0]) == state.links[0]


# ----------------------------------------------------------------------------- the datanet format, 2020 variant

GNNET2020 = Path(__file__).resolve().parents[3] / "shared/datasets/gnnet2020/train"


def test_datanet_round_trip_keeps_ports_and_tos(tmp_path):
    state = _mixed_state("wfq", queue_sizes=(4, 6, 8), queue_weights=(5.0, 3.0, 2.0))
    state = replace(state, links=tuple(replace(lk, prop_delay=0.0) for lk in state.links),
                    flows=tuple(replace(f, size_dist="deterministic") for f in state.flows))  # the format's sizes
    result = simulate(state, duration=2.0, seed=10)
    write_datanet(tmp_path / "dn", [(state, result)])
    back = next(read_datanet(tmp_path / "dn")).state
    assert [(lk.policy, lk.queue_sizes, lk.queue_weights) for lk in back.links] == [
        ("wfq", (4, 6, 8), (5.0, 3.0, 2.0))] * 3
    assert [f.tos for f in back.flows] == [0, 1, 2]  # read back in (src, dst) order: a->b, a->c, b->c


def test_datanet_graph_with_other_tos_mapping_is_refused(tmp_path):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs/g.txt").write_text('graph [\n directed 1\n multigraph 1\n node [\n id 0\n label "0"\n'
                                           ' schedulingPolicy "SP"\n queueSizes "32,32"\n tosToQoSqueue "1;0"\n ]\n'
                                           ' node [\n id 1\n label "1"\n queueSizes "32"\n ]\n]\n')
    with pytest.raises(StateError, match=r"g\.txt: node 0: tosToQoSqueue '1;0'; ndt maps ToS k to queue k only"):
        _read_graph(tmp_path / "graphs/g.txt")


@pytest.mark.skipif(not GNNET2020.is_dir(), reason="needs ../shared/datasets/gnnet2020")
def test_gnnet2020_samples_read_and_agree():
    sample = next(read_datanet(GNNET2020))
    state = sample.state
    assert len(state.nodes) == 14 and state.scheduled
    assert {lk.policy for lk in state.links} == {"wfq"} and all(lk.queue_sizes == (31, 31, 31) for lk in state.links)
    assert {f.tos for f in state.flows} == {0, 1, 2}
    report = compare_with_reference(GNNET2020, limit=1, packets_per_flow=2000)
    assert report["mape_vs_reference"] < 0.04 and report["jitter_mape_vs_reference"] < 0.12
    assert report["by_policy"][0]["policy"] == "wfq"


def test_a_delay_limit_caps_each_packet_in_the_statistics():
    state = _two_classes("fifo", 0.6 * C, 0.5 * C, sizes=None)  # 110 % load: the 32-packet buffer stays full
    free = simulate(state, duration=20.0, seed=5)
    capped = simulate(state, duration=20.0, seed=5, max_delay=0.01)
    np.testing.assert_array_equal(capped.delivered, free.delivered)  # the same run, counted differently
    assert np.all(free.delay > 0.015) and np.all(capped.delay <= 0.01 + 1e-12)
    assert np.all(capped.jitter < free.jitter)
    with pytest.raises(StateError, match="max_delay must be positive"):
        simulate(state, duration=1.0, max_delay=0.0)


@pytest.mark.skipif(not GNNET2020.is_dir(), reason="needs ../shared/datasets/gnnet2020")
def test_gnnet2020_samples_carry_their_documented_delay_limit():
    from twin.data.datanet_reader import GNNET2020_DELAY_LIMIT

    sample = next(read_datanet(GNNET2020))
    assert sample.delay_limit == GNNET2020_DELAY_LIMIT == 20.0
    assert np.nanmax(sample.delay) <= sample.delay_limit
