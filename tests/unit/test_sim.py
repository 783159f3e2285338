"""The packet-level simulator against queueing theory, and its bookkeeping."""

import math

import numpy as np
import pytest

from twin.data.sim_bench import mm1_state, with_policy
from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import Flow, Link, NetworkState

C = 10e6  # bit/s
SIZE = 8000.0  # bits
MU = C / SIZE  # packets/s


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mm1_mean_delay(rho):
    result = simulate(mm1_state(rho), duration=2_000_000 / (rho * MU), seed=3)
    expected = 1 / (MU - rho * MU)
    assert result.delay[0] == pytest.approx(expected, rel=0.02)
    # sojourn time of M/M/1 is exponential: median ln2/(mu - lambda), p90 ln10/(mu - lambda)
    assert result.p50[0] == pytest.approx(math.log(2) * expected, rel=0.03)
    assert result.p90[0] == pytest.approx(math.log(10) * expected, rel=0.03)
    assert result.utilization[0] == pytest.approx(rho, rel=0.01)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_pollaczek_khinchine(rho):
    state = NetworkState(nodes=("a", "b"), links=(Link("a", "b", C, buffer=10**6),),
                         flows=(Flow("a", "b", rho * C, size_dist="deterministic", packet_size=SIZE),))
    result = simulate(state, duration=1_500_000 / (rho * MU), seed=4)
    expected = 1 / MU + rho / (2 * MU * (1 - rho))
    assert result.delay[0] == pytest.approx(expected, rel=0.02)
    # mean number waiting (Little): lambda * Wq
    assert result.occupancy[0] == pytest.approx(rho * MU * rho / (2 * MU * (1 - rho)), rel=0.03)


def test_mm1k_loss():
    rho, system = 0.9, 10  # K = 10 packets in the system: 9 waiting + 1 in transmission
    state = NetworkState(nodes=("a", "b"), links=(Link("a", "b", C, buffer=system - 1),),
                         flows=(Flow("a", "b", rho * C, size_dist="exponential", packet_size=SIZE),))
    result = simulate(state, duration=1_000_000 / (rho * MU), seed=5)
    expected = (1 - rho) * rho**system / (1 - rho ** (system + 1))
    assert result.loss[0] == pytest.approx(expected, rel=0.10)


def test_tandem_deterministic_sizes():
    """Poisson arrivals, fixed sizes, two equal links: only the first hop queues (M/D/1), then fixed costs."""
    rho, prop = 0.7, 0.002
    links = (Link("a", "b", C, buffer=10**6, prop_delay=prop), Link("b", "c", C, buffer=10**6, prop_delay=prop))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", rho * C, packet_size=SIZE),))
    result = simulate(state, duration=1_000_000 / (rho * MU), seed=6)
    expected = (1 / MU + rho / (2 * MU * (1 - rho))) + 1 / MU + 2 * prop
    assert result.delay[0] == pytest.approx(expected, rel=0.02)
    assert result.occupancy[1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("policy", ["fifo", "wfq"])
def test_more_packets_in_flight_than_the_first_slot_pool(policy):
    """An 8-s wire before a second hop holds about 5,000 packets at once, several times the slots the
    loops start with: they grow their arrays mid-run and every packet still arrives, after exactly its
    transmissions and propagation (CBR at half the capacity never queues)."""
    prop = 8.0
    links = (Link("a", "b", C, buffer=16, prop_delay=prop), Link("b", "c", C, buffer=16))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", 0.5 * C, time_dist="cbr", packet_size=SIZE),))
    result = simulate(with_policy(state, policy), duration=20.0, warmup=1.0, seed=9)
    assert result.sent[0] == result.delivered[0] > 10_000
    assert result.delay[0] == pytest.approx(2 / MU + prop, rel=1e-9)
    assert result.jitter[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("policy", ["fifo", "sp"])
def test_a_run_shorter_than_a_transmission_reports_what_a_link_can_hold(policy):
    """A packet takes 8,000 s to send on a 1-bit/s link and the run lasts 0.3 s: the link is busy for
    the whole window and no more, and its queue holds at most its buffer (before, busy and waiting
    time past the window's end were counted in it: utilization 96,000, a queue of 3 million packets)."""
    links = (Link("a", "b", 1.0, buffer=32), Link("b", "a", 1e7, buffer=32))
    state = NetworkState(nodes=("a", "b"), links=links, flows=(Flow("a", "b", 4e6, packet_size=8000.0),))
    result = simulate(with_policy(state, policy), duration=0.3, warmup=0.05, seed=3)
    assert result.utilization[0] == pytest.approx(1.0)
    assert 0 < result.occupancy[0] <= 32
    assert result.utilization[1] == 0.0


def test_conservation_and_determinism():
    links = (Link("a", "b", C, buffer=4), Link("b", "c", C / 2, buffer=3), Link("a", "c", C, buffer=2))
    flows = (Flow("a", "c", 0.6 * C, time_dist="onoff", on_time=0.01, off_time=0.02, size_dist="binomial",
                  packet_sizes=(2000.0, 12000.0)),
             Flow("b", "c", 0.4 * C, time_dist="cbr", size_dist="exponential"),
             Flow("a", "b", 0.5 * C))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=flows, routing_kind="paths",
                         paths={("a", "c"): ("a", "b", "c"), ("b", "c"): ("b", "c"), ("a", "b"): ("a", "b")})
    one = simulate(state, duration=5.0, seed=7)
    two = simulate(state, duration=5.0, seed=7)
    other = simulate(state, duration=5.0, seed=8)
    np.testing.assert_array_equal(one.sent, one.delivered + one.dropped)
    assert one.dropped.sum() > 0  # the b->c bottleneck is overloaded
    np.testing.assert_array_equal(one.delay, two.delay)
    assert not np.array_equal(one.delay, other.delay)
    # the overloaded link is busy most of the time, never more than all of it
    assert 0.85 < one.utilization[1] <= 1.01
    assert one.link_drops[1] > 0 and one.link_drops[2] == 0


def test_rates_follow_traffic_models():
    for kw in ({"time_dist": "cbr"}, {"time_dist": "onoff", "on_time": 0.05, "off_time": 0.15},
               {"size_dist": "binomial", "packet_sizes": (2000.0, 10000.0)}, {"size_dist": "exponential"}):
        state = NetworkState(nodes=("a", "b"), links=(Link("a", "b", C, buffer=10**6),),
                             flows=(Flow("a", "b", 0.3 * C, **kw),))
        result = simulate(state, duration=200.0, warmup=0.0, seed=9)
        assert result.utilization[0] == pytest.approx(0.3, rel=0.03), kw


def test_bad_simulation_requests():
    state = mm1_state(0.5)
    with pytest.raises(StateError, match="warmup"):
        simulate(state, duration=1.0, warmup=2.0)
    with pytest.raises(StateError, match="no traffic"):
        simulate(state.with_flows([]))
    with pytest.raises(StateError, match="rate 0"):
        simulate(state.scaled(0.0))


def test_a_run_too_long_to_finish_is_refused_up_front():
    with pytest.raises(StateError, match=r"the run would generate about 6.25e\+11 packets in 1e\+09 s"):
        simulate(mm1_state(0.5), duration=1e9)
