"""OVS's forwarding as its thread walks the ports (mininet_topos.forwarding), without Mininet: reading the
walk from a trace, the per-flow features, their average over random walks, and the fit of their costs."""

from __future__ import annotations

import numpy as np
import pytest

from mininet_topos.forwarding import parse_walk, walk_of
from twin.calibration.correction import CalibratedPredictor, Correction, fit
from twin.calibration.port_walk import Walk, walk_features
from twin.state.metrics import mape
from twin.state.model import Flow, Link, NetworkState

NAMES = {11: "s1-eth1", 12: "s1-eth2", 13: "s2-eth1", 14: "s2-eth2", 15: "s2-eth3", 16: "s3-eth1", 17: "s3-eth2"}
ORDER = ["s2-eth2", "s3-eth1", "s1-eth2", "s1-eth1", "s2-eth3", "s3-eth2", "s2-eth1"]
FD = {name: fd for fd, name in NAMES.items()}


def recvmmsg(name: str, got: int = -1) -> str:
    result = f"= {got}" if got >= 0 else "= -1 EAGAIN (Resource temporarily unavailable)"
    return f"recvmmsg({FD[name]}, 0x7ffc7450a920, 32, MSG_TRUNC, NULL) {result}"


def test_the_walk_is_read_from_unbroken_runs_of_recvmmsg_between_other_calls():
    loop = ["recvmsg(14, {msg_namelen=0}, MSG_DONTWAIT) = -1 EAGAIN", "read(22, 0x7ffc, 16) = -1 EAGAIN",
            "poll([{fd=22, events=POLLIN}], 9, 100) = 1 ([{fd=22, revents=POLLIN}])"]
    walk = [recvmmsg(name, got=2 if name == "s1-eth2" else -1) for name in ORDER]
    trace = "\n".join(walk[3:] + loop + walk + loop + walk + loop + walk[:2])  # attached mid-walk, cut mid-walk
    assert parse_walk(trace, NAMES) == ORDER
    assert parse_walk("\n".join(loop + walk[:4]), NAMES) == [], "no complete round after the first break"


def line() -> NetworkState:
    links = (Link("a", "b", capacity=2e6), Link("b", "a", capacity=2e6), Link("b", "c", capacity=2e6),
             Link("c", "b", capacity=2e6))
    flows = (Flow("a", "c", rate=1e6), Flow("c", "a", rate=0.5e6), Flow("b", "c", rate=0.5e6))
    return NetworkState(nodes=("a", "b", "c"), links=links, flows=flows)


HOST_PORTS = {"a": "s1-eth1", "b": "s2-eth1", "c": "s3-eth1"}
LINK_PORTS = {("a", "b"): "s2-eth2", ("b", "a"): "s1-eth2", ("b", "c"): "s3-eth2", ("c", "b"): "s2-eth3"}


def test_features_follow_the_walk_hop_by_hop():
    state = line()
    walk = walk_of(ORDER, HOST_PORTS, LINK_PORTS)
    assert walk == Walk(host={"a": 3, "b": 6, "c": 1}, link={("a", "b"): 0, ("b", "a"): 2, ("b", "c"): 5,
                                                                ("c", "b"): 4}, ports=7)
    assert walk_of(ORDER[1:], HOST_PORTS, LINK_PORTS) is None, "a port missing from the walk"
    rho = state.utilization()  # a->b 0.5, b->a 0.25, b->c 0.75, c->b 0.25
    features = walk_features(state, walk, 0)
    # a->c: from the host at 3 (random), over a->b to 0 (wraps: 7 - 3 + 0), over b->c to 5 (5 - 0)
    queued = [rho[0], rho[2]]
    walked = 3 + queued[0] * 0 + (1 - queued[0]) * (0 - 3 + 7) + queued[1] * 5 + (1 - queued[1]) * (5 - 0)
    assert features[0] == pytest.approx([1 + sum(queued), walked, 1 - queued[0]])
    # b->c: from the host at 6, over b->c to 5 (wraps)
    assert features[2] == pytest.approx([1 + rho[2], 6 + rho[2] * 5 + (1 - rho[2]) * (5 - 6 + 7), 1 - rho[2]])
    assert walk.from_dict(walk.to_dict()) == walk


def test_without_a_walk_the_features_are_their_average_over_random_walks():
    state = line()
    rng = np.random.default_rng(0)
    ports = 12  # the network's 7 input ports and 5 of another network's
    names = [f"p{i}" for i in range(ports)]
    samples = []
    for _ in range(4000):
        order = list(rng.permutation(names))
        mapping = dict(zip([*HOST_PORTS.values(), *LINK_PORTS.values()], names))
        walk = walk_of(order, {n: mapping[p] for n, p in HOST_PORTS.items()},
                       {k: mapping[p] for k, p in LINK_PORTS.items()})
        samples.append(walk_features(state, walk, 0))
    assert walk_features(state, None, ports) == pytest.approx(np.mean(samples, axis=0), rel=0.03)
    assert not walk_features(state, None, 0).any()


def test_fit_recovers_the_walk_costs_and_uses_them_only_when_the_walk_is_known():
    from twin.models.qt import QueueingModel

    rng = np.random.default_rng(1)
    model = QueueingModel()
    names = [f"p{i}" for i in range(10)]
    truth = Correction(queue_scale=0.9, per_hop_s=20e-6, base_s=50e-6, random_hop_s=40e-6, port_s=6e-6,
                       wrap_s=380e-6, capacity_scale=0.99, walk_ports=10)
    states, walks = [], []
    for load in (0.4, 0.8, 1.2, 1.6, 0.6, 1.0):
        order = list(rng.permutation(names))
        mapping = dict(zip([*HOST_PORTS.values(), *LINK_PORTS.values()], names))
        walks.append(walk_of(order, {n: mapping[p] for n, p in HOST_PORTS.items()},
                             {k: mapping[p] for k, p in LINK_PORTS.items()}))
        states.append(line().scaled(load))
    measured = [CalibratedPredictor(model, truth, w).predict_delays([s])[0] for s, w in zip(states, walks)]
    fitted = fit(states, measured, model, walks)
    assert fitted.capacity_scale == pytest.approx(0.99) and fitted.walk_ports == 10
    for name in ("random_hop_s", "port_s", "wrap_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    known = [mape(CalibratedPredictor(model, fitted, w).predict_delays([s])[0], m)
             for s, w, m in zip(states, walks, measured)]
    unknown = [mape(CalibratedPredictor(model, fitted).predict_delays([s])[0], m) for s, m in zip(states, measured)]
    assert max(known) < 0.01 < np.mean(unknown)
    without = fit(states, measured, model)
    assert without.port_s == without.wrap_s == without.random_hop_s == 0 and without.walk_ports == 0
