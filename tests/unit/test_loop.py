"""The closed loop against a fake network: its measurements are the simulator's on whatever
routing was last pushed, so the loop's sequence (measure, telemetry, optimize, validate, push,
verify, roll back) is checked without Mininet."""

from __future__ import annotations

import numpy as np

from controller.loop.closed_loop import ClosedLoop, LoopSettings
from mininet_topos.sandbox import Validation
from mininet_topos.traffic import Measurement
from optimizer.intent import Intent
from twin.calibration.correction import Correction
from twin.models.registry import get_predictor
from twin.sim.simulator import simulate
from twin.state.model import Flow, Link, NetworkState

FRAME = 8000.0  # bits


def square(rate: float = 1.2e6) -> NetworkState:
    """Flows 1->2 and 1->3 share link 1->2 under unit weights (1.2 of 2 Mbit/s each: overloaded);
    1->3 round by 4 relieves it."""
    edges = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1")]
    links = tuple(Link(a, b, capacity=2e6, buffer=20) for x, y in edges for a, b in ((x, y), (y, x)))
    flows = (Flow("s1", "s2", rate=rate, packet_size=FRAME), Flow("s1", "s3", rate=rate, packet_size=FRAME))
    return NetworkState(nodes=("s1", "s2", "s3", "s4"), links=links, flows=flows, name="square")


def simulated(state: NetworkState, duration: float, warmup: float, seed: int, slowdown: float = 1.0) -> Measurement:
    result = simulate(state, duration=duration, warmup=warmup, seed=seed)
    nan = np.full(len(state.flows), np.nan)
    return Measurement(delay=result.delay * slowdown, jitter=nan, loss=result.loss, p50=nan, p90=nan, p99=nan,
                       received=result.delivered, duration=duration, warmup=warmup, sender_late_p99=0.0,
                       cpu_busy=0.0, load_average=0.0)


class FakeNetwork:
    """Routes by the weights last pushed; ``slow_after_push``: every routing but the first measures
    this many times slower (a network that turned worse after the push)."""

    def __init__(self, state: NetworkState, slow_after_push: float = 1.0):
        self.weights = {(lk.src, lk.dst): lk.weight for lk in state.links}
        self.initial = dict(self.weights)
        self.slow_after_push = slow_after_push
        self.pushes, self.failed, self.traffic = [], [], state

    def measure(self, state, duration, warmup, seed, label):
        self.traffic = state
        routed = state.with_weights(np.array([self.weights[(lk.src, lk.dst)] for lk in state.links]))
        slowdown = 1.0 if self.weights == self.initial else self.slow_after_push
        return simulated(routed, duration, warmup, seed, slowdown)

    def traffic_matrix(self, start, end):
        return {(f.src, f.dst): f.rate for f in self.traffic.flows}

    def push(self, weights, links, who):
        self.weights.update({(lk.src, lk.dst): float(w) for lk, w in zip(links, weights)})
        self.pushes.append(who)
        return len(self.pushes)

    def fail_link(self, a, b):
        self.failed.append((a, b))

    def walk(self, state):
        return None


class FakeSandbox:
    """Each candidate simulated on the estimated traffic."""

    def __init__(self):
        self.asked = []

    def validate(self, state, candidates, predictor, correction, duration, warmup, seed):
        self.asked.append(len(candidates))
        routed = [state.with_weights(w) for w in candidates]
        predicted = predictor.predict_delays(routed)
        return [Validation(weights=np.asarray(w, dtype=float), predicted=p, expected=p,
                           measured=simulated(r, duration, warmup, seed), route_version=0, wall_s=0.0)
                for w, r, p in zip(candidates, routed, predicted)]


SETTINGS = LoopSettings(duration=20.0, validate_s=20.0, verify_s=20.0, warmup=1.0, candidates=1,
                        intent=Intent(max_evaluations=200, time_limit_s=10.0))


def loop_over(network: FakeNetwork, sandbox: FakeSandbox | None = None) -> ClosedLoop:
    return ClosedLoop(network, sandbox or FakeSandbox(), get_predictor("qt"), Correction(), SETTINGS,
                      log=lambda _msg: None)


def test_the_loop_pushes_the_routing_the_sandbox_measured_better():
    state = square()
    network, sandbox = FakeNetwork(state), FakeSandbox()
    (result,) = loop_over(network, sandbox).run(state)
    assert sandbox.asked == [2], "the current routing and one candidate validated"
    assert result.reoptimized and result.pushed and not result.rolled_back
    assert network.pushes == ["ndt loop: validated winner"]
    assert state.with_weights(result.final_weights).flow_path(1) == ["s1", "s4", "s3"]
    assert result.final.mean_delay(state) < 0.5 * result.before.mean_delay(state)
    assert result.loop_s is not None and result.loop_s >= 0
    assert np.isfinite(result.twin_mape) and 0 < result.noise_mape < 1


def test_a_push_that_measures_worse_is_rolled_back():
    state = square()
    network = FakeNetwork(state, slow_after_push=50.0)
    (result,) = loop_over(network).run(state)
    assert result.pushed and result.rolled_back
    assert network.pushes == ["ndt loop: validated winner", "ndt loop: rollback"]
    assert network.weights == network.initial
    assert np.array_equal(result.final_weights, state.link_arrays["weight"])


def test_unchanged_traffic_keeps_the_routing_and_a_failure_reoptimizes_without_the_link():
    state = square()
    network = FakeNetwork(state)
    first, same, failed = loop_over(network).run(state, shifts=(state,), failures=(("s1", "s4"),))
    assert first.pushed
    assert not same.reoptimized and not same.pushed and same.loop_s is None
    assert network.failed == [("s1", "s4")]
    assert failed.event == "fail s1-s4" and failed.reoptimized
    assert len(failed.final_weights) == len(state.links) - 2
